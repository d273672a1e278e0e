"""Training forward pass of the SoVITS generator (v1 / v2 / v2Pro / v2ProPlus), spec section 6.4.

The utterance is its own reference: the style vector comes from its spectrogram (first 704 bins;
v2Pro adds the speaker embedding). The content path (`ssl_proj` + frozen quantizer) runs without
gradient: upstream puts it in eval mode, so the quantized vectors are pure codebook rows, `ssl_proj`
never receives a gradient and the commitment loss is 0; `no_grad` gives the same result with less
memory. The posterior encoder `enc_q` encodes the linear spectrogram, the flow maps its sample to the
prior space, and the decoder renders one random 32-frame (0.64 s) window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tts.models.sovits import SynthesizerTrn


@dataclass
class GeneratorOutput:
    audio: torch.Tensor  # [B, 1, segment_frames * hop] decoded window
    starts: torch.Tensor  # [B] first frame of each window
    mask: torch.Tensor  # [B, 1, T] spectrogram frames
    z_p: torch.Tensor  # [B, C, T] posterior sample mapped through the flow
    logs_q: torch.Tensor  # [B, C, T]
    m_p: torch.Tensor  # [B, C, T] prior mean
    logs_p: torch.Tensor  # [B, C, T]
    commitment: torch.Tensor  # [] quantizer commitment loss (0: the quantizer is frozen)


def style_vectors(model: SynthesizerTrn, spec, mask, sv=None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (ge [B, gin, 1] for flow / decoder / posterior, style for the text encoder's MRTE [B, 512, 1])."""
    c = model.config
    ge = model.ref_enc(spec[:, : c.ref_bins] * mask, mask)  # [B, gin, 1]
    if not c.is_pro:
        return ge, ge
    ge = model.prelu(ge + model.sv_emb(sv).unsqueeze(-1))
    return ge, model.ge_to512(ge.transpose(1, 2)).transpose(1, 2)


@torch.no_grad()
def frozen_content(model: SynthesizerTrn, ssl: torch.Tensor) -> torch.Tensor:
    """HuBERT [B, 768, T] -> quantized content [B, 768, T] (25 Hz codebook rows repeated to 50 Hz)."""
    with torch.autocast(ssl.device.type, enabled=False):
        codes = model.quantizer.encode(model.ssl_proj(ssl.float()))  # [1, B, T / 2]
        content = model.quantizer.decode(codes)  # [B, 768, T / 2]
    return F.interpolate(content, size=content.shape[-1] * 2, mode="nearest")


def random_windows(lengths: torch.Tensor, window: int) -> torch.Tensor:
    """[B] start frames, uniform in [0, length - window] (upstream's rand_slice_segments)."""
    highest = (lengths - window + 1).clamp(min=1)
    return (torch.rand(lengths.shape[0], device=lengths.device) * highest).long()


def slice_windows(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """x [B, C, T] -> [B, C, size] windows starting at `starts` [B]."""
    return torch.stack([x[i, :, s : s + size] for i, s in enumerate(starts.tolist())])


def generator_forward(
    model: SynthesizerTrn, batch: dict[str, torch.Tensor], segment_frames: int
) -> GeneratorOutput:
    spec, lengths = batch["spec"], batch["spec_lengths"]
    mask = (
        (torch.arange(spec.shape[-1], device=spec.device)[None] < lengths[:, None])
        .unsqueeze(1)
        .to(spec.dtype)
    )
    ge, ge_text = style_vectors(model, spec, mask, batch.get("sv"))
    content = frozen_content(model, batch["ssl"])
    hidden, prior_mask = model.enc_p.encode(content, lengths, batch["text"], batch["text_lengths"], ge_text)
    _, m_p, logs_p, _ = model.enc_p.prior(hidden, prior_mask)
    stats, _ = model.enc_q(spec, lengths, g=ge)  # [B, 2C, T]
    m_q, logs_q = stats.chunk(2, dim=1)
    z = (m_q + torch.randn_like(m_q) * torch.exp(logs_q)) * mask
    z_p = model.flow(z, mask, g=ge)
    starts = random_windows(lengths, segment_frames)
    audio = model.dec(slice_windows(z, starts, segment_frames), g=ge)
    return GeneratorOutput(audio, starts, mask, z_p, logs_q, m_p, logs_p, spec.new_zeros(()))
