"""SoVITS synthesizer: semantic tokens + phonemes + reference spectrograms -> 32 kHz waveform.

`SynthesizerTrn` covers v1, v2, v2Pro and v2ProPlus (one class, differences driven by
`SoVITSConfig.version`); `SynthesizerTrnV3` holds the v3/v4 front (content path, text encoder, style
encoder, bridge and WaveNet feature encoder) whose output conditions the flow-matching decoder
(tts/models/cfm.py). Parameter names equal the official state-dict keys.

Decode path (v2):
    codes [1, 1, Tc] --codebook--> [1, 768, Tc] --nearest x2--> [1, 768, 2Tc]
    ref spec [1, 1025, Tr] --first 704 bins--> ref_enc --> ge [1, gin, 1]   (Pro: PReLU(ge + sv_emb(sv)))
    enc_p(content, phonemes, ge) --> m_p, logs_p [1, inter, T']  (T' = 2Tc, or int(2Tc/speed)+1)
    z_p = m_p + N(0,1) * exp(logs_p) * noise_scale --flow^-1(ge)--> z --generator(ge)--> audio [1, 1, 640 T']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tts.models.generator import Generator
from tts.models.quantizer import ResidualVectorQuantizer
from tts.models.sovits_modules import (
    CouplingFlow,
    MelStyleEncoder,
    TextEncoder,
    WaveNetEncoder,
    streaming_window,
)

SSL_DIM = 768  # CNHuBERT feature width
CODEBOOK_SIZE = 1024
SV_DIM = 20480  # ERes2NetV2 forward3 embedding (v2Pro / v2ProPlus)
MRTE_STYLE_DIM = 512  # width of the style vector the text encoder's MRTE block adds
REF_BINS = 704  # v2+ reference encoder sees only the lowest 704 of the 1025 spectrogram bins
N_SYMBOLS = {"v1": 322}  # phoneme table size; 732 for every later version
POSTERIOR_LAYERS = 16  # enc_q WaveNet depth
V3_FEATURE_DIM = 512  # v3/v4 bridge / wns1 width (CFM condition features)
V3_MEL_BINS = 100
VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus", "v3", "v4")


@dataclass
class SoVITSConfig:
    """Hyper-parameters of a SoVITS file (`config.model` plus the spectrogram settings of `config.data`).

    Defaults are the official v2 values (configs/s2.json).
    """

    version: str = "v2"
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    p_dropout: float = 0.1
    resblock: str = "1"
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    upsample_rates: list[int] = field(default_factory=lambda: [10, 8, 2, 2, 2])
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16, 8, 2, 2])
    gin_channels: int = 512
    sampling_rate: int = 32000
    filter_length: int = 2048
    hop_length: int = 640
    win_length: int = 2048

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ValueError(f"unknown SoVITS version {self.version!r} (known: {', '.join(VERSIONS)})")

    @property
    def spec_channels(self) -> int:
        return self.filter_length // 2 + 1

    @property
    def is_pro(self) -> bool:
        return self.version in ("v2Pro", "v2ProPlus")

    @property
    def n_symbols(self) -> int:
        return N_SYMBOLS.get(self.version, 732)

    @property
    def ref_bins(self) -> int:
        return self.spec_channels if self.version == "v1" else REF_BINS


def _reference_mask(spec: torch.Tensor) -> torch.Tensor:
    """All-ones [1, 1, T] mask of a single reference spectrogram [1, bins, T]."""
    return torch.ones(spec.shape[0], 1, spec.shape[2], dtype=spec.dtype, device=spec.device)


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _record(trace: dict | None, name: str, value: torch.Tensor) -> None:
    if trace is not None:
        trace[name] = value


class SynthesizerTrn(nn.Module):
    """SoVITS v1 / v2 / v2Pro / v2ProPlus.

    `weight_norm=True` builds the weight-normed layers with `weight_g`/`weight_v` parameters (training,
    writing official files); inference models use plain weights. `posterior=True` adds the training-only
    posterior encoder `enc_q`.
    """

    def __init__(self, config: SoVITSConfig, weight_norm: bool = False, posterior: bool = False):
        super().__init__()
        if config.version in ("v3", "v4"):
            raise ValueError(f"SoVITS {config.version} is built by SynthesizerTrnV3")
        if not config.is_pro and config.gin_channels != MRTE_STYLE_DIM:
            raise ValueError(
                f"SoVITS {config.version} needs gin_channels {MRTE_STYLE_DIM} (its style vector is added to "
                f"the {MRTE_STYLE_DIM}-wide MRTE block), got {config.gin_channels}"
            )
        self.config = c = config
        self.enc_p = TextEncoder(
            c.inter_channels, c.hidden_channels, c.filter_channels, c.n_heads, c.n_layers,
            c.kernel_size, c.p_dropout, c.n_symbols,
        )  # fmt: skip
        self.dec = Generator(
            c.inter_channels, c.resblock, c.resblock_kernel_sizes, c.resblock_dilation_sizes, c.upsample_rates,
            c.upsample_initial_channel, c.upsample_kernel_sizes, c.gin_channels, weight_norm=weight_norm,
        )  # fmt: skip
        if posterior:
            self.enc_q = WaveNetEncoder(
                c.spec_channels, 2 * c.inter_channels, c.hidden_channels, 5, 1, POSTERIOR_LAYERS,
                c.gin_channels, weight_norm,
            )  # fmt: skip
        self.flow = CouplingFlow(c.inter_channels, c.hidden_channels, c.gin_channels, weight_norm)
        self.ref_enc = MelStyleEncoder(c.ref_bins, c.gin_channels)
        self.ssl_proj = nn.Conv1d(SSL_DIM, SSL_DIM, 2, stride=2)  # 50 Hz SSL -> 25 Hz semantic frames
        self.quantizer = ResidualVectorQuantizer(SSL_DIM, CODEBOOK_SIZE, 1)
        if c.is_pro:
            self.sv_emb = nn.Linear(SV_DIM, c.gin_channels)
            self.ge_to512 = nn.Linear(c.gin_channels, MRTE_STYLE_DIM)
            self.prelu = nn.PReLU(num_parameters=c.gin_channels)

    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """SSL features [B, 768, T] -> semantic codes [B, n_q, T // 2]."""
        return self.quantizer.encode(self.ssl_proj(ssl)).transpose(0, 1)

    def style_vector(self, refer, sv_emb=None, trace: dict | None = None) -> torch.Tensor:
        """Reference spectrograms (list of [1, 1025, Tr]) -> ge [1, gin, 1], the mean over references.

        v2Pro/v2ProPlus also take one speaker embedding [1, 20480] per reference.
        """
        specs = _as_list(refer)
        if self.config.is_pro:
            if sv_emb is None:
                raise ValueError(f"SoVITS {self.config.version} needs one speaker embedding per reference")
            svs = _as_list(sv_emb)
            if len(svs) != len(specs):
                raise ValueError(f"{len(specs)} references but {len(svs)} speaker embeddings")
        styles, pro_styles = [], []
        for i, spec in enumerate(specs):
            ge = self.ref_enc(spec[:, : self.config.ref_bins], _reference_mask(spec))  # [1, gin, 1]
            styles.append(ge)
            if self.config.is_pro:
                ge = self.prelu(ge + self.sv_emb(svs[i]).unsqueeze(-1))
                pro_styles.append(ge)
        _record(trace, "ref_enc_out", torch.stack(styles))
        if pro_styles:
            _record(trace, "ge_after_prelu_each", torch.stack(pro_styles))
        ge = torch.stack(pro_styles or styles).mean(0)
        _record(trace, "ge", ge)
        return ge

    def _encode(self, codes, text, refer, sv_emb, trace, style=None):
        """-> (ge [1, gin, 1], 50 Hz text-encoder hidden [1, C, 2Tc] and its mask); `style` is ge when
        the caller already has it (it depends on the references only)."""
        ge = self.style_vector(refer, sv_emb, trace) if style is None else style  # [1, gin, 1]
        ge_text = ge
        if self.config.is_pro:
            ge_text = self.ge_to512(ge.transpose(1, 2)).transpose(1, 2)  # [1, 512, 1]
            _record(trace, "ge512", ge_text)
        content = self.quantizer.decode(codes)  # [1, 768, Tc]
        content = F.interpolate(content, size=content.shape[-1] * 2, mode="nearest")  # 25 Hz -> 50 Hz
        content_lengths = torch.tensor([content.shape[-1]], device=codes.device)
        text_lengths = torch.tensor([text.shape[-1]], device=text.device)
        y, mask = self.enc_p.encode(content, content_lengths, text, text_lengths, ge_text)
        return ge, y, mask

    def _synthesize(self, y, mask, ge, noise_scale, speed, trace):
        """Hidden [1, C, T] -> waveform [1, 1, 640 * T'] through prior sampling, reverse flow, generator."""
        x, m_p, logs_p, mask = self.enc_p.prior(y, mask, speed)
        noise = torch.randn_like(m_p)  # the only random draw, also when noise_scale is 0
        z_p = m_p + noise * torch.exp(logs_p) * noise_scale
        z = self.flow(z_p, mask, g=ge, reverse=True)
        dec_in = z * mask
        pre_tanh = self.dec.forward_pre_tanh(dec_in, g=ge)
        for name, value in (
            ("enc_p_out", x), ("m_p", m_p), ("logs_p", logs_p), ("y_mask", mask), ("noise", noise),
            ("z_p", z_p), ("z", z), ("dec_in", dec_in), ("dec_pre_tanh", pre_tanh),
        ):  # fmt: skip
            _record(trace, name, value)
        return torch.tanh(pre_tanh)

    @torch.no_grad()
    def decode(
        self,
        codes: torch.Tensor,
        text: torch.Tensor,
        refer,
        noise_scale: float = 0.5,
        speed: float = 1.0,
        sv_emb=None,
        trace: dict | None = None,
        style: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Synthesize a waveform [1, 1, 640 * T'].

        codes [n_q, 1, Tc] semantic tokens, text [1, L] target phoneme ids, refer one or a list of
        reference spectrograms [1, 1025, Tr] (their style vectors are averaged), sv_emb the matching
        speaker embeddings (Pro only). Exactly one random draw (`torch.randn_like` of the prior
        mean), so seeded runs match the official code. `trace`, if given, collects the intermediate
        tensors by name. `style`: the references' `style_vector`, when already computed.
        """
        ge, y, mask = self._encode(codes, text, refer, sv_emb, trace, style)
        return self._synthesize(y, mask, ge, noise_scale, speed, trace)

    @torch.no_grad()
    def decode_streaming(
        self,
        codes: torch.Tensor,
        text: torch.Tensor,
        refer,
        noise_scale: float = 0.5,
        speed: float = 1.0,
        sv_emb=None,
        result_length: int | None = None,
        overlap_frames: torch.Tensor | None = None,
        padding_length: int = 0,
        style: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`decode` of one streaming chunk (spec 4.8): -> (audio, hidden before speed, its mask).

        The whole token history is encoded; then `padding_length` trailing tokens are dropped, only
        the last `result_length` tokens are kept and their start is crossfaded with
        `overlap_frames` (the previous chunk's returned hidden tail). Lengths are in 25 Hz tokens.
        """
        ge, y, mask = self._encode(codes, text, refer, sv_emb, None, style)
        keep = None if result_length is None else 2 * result_length
        y, mask = streaming_window(y, mask, keep, overlap_frames, 2 * padding_length)
        return self._synthesize(y, mask, ge, noise_scale, speed, None), y, mask


class SynthesizerTrnV3(nn.Module):
    """SoVITS v3 / v4 front end: tokens + phonemes + reference -> CFM condition features [1, 512, T_mel].

    The flow-matching decoder `cfm` is passed in (tts/models/cfm.py builds it); without it the module
    still loads and runs `decode_encp`.
    """

    def __init__(self, config: SoVITSConfig, weight_norm: bool = False, cfm: nn.Module | None = None):
        super().__init__()
        if config.version not in ("v3", "v4"):
            raise ValueError(f"SynthesizerTrnV3 builds v3/v4, not {config.version}")
        self.config = c = config
        self.enc_p = TextEncoder(
            c.inter_channels, c.hidden_channels, c.filter_channels, c.n_heads, c.n_layers,
            c.kernel_size, c.p_dropout, c.n_symbols,
        )  # fmt: skip
        self.ref_enc = MelStyleEncoder(REF_BINS, c.gin_channels)
        self.ssl_proj = nn.Conv1d(SSL_DIM, SSL_DIM, 2, stride=2)
        self.quantizer = ResidualVectorQuantizer(SSL_DIM, CODEBOOK_SIZE, 1)
        self.bridge = nn.Sequential(nn.Conv1d(c.hidden_channels, V3_FEATURE_DIM, 1), nn.LeakyReLU())
        self.wns1 = WaveNetEncoder(
            V3_FEATURE_DIM, V3_FEATURE_DIM, V3_FEATURE_DIM, 5, 1, 8, c.gin_channels, weight_norm
        )
        self.linear_mel = nn.Conv1d(V3_FEATURE_DIM, V3_MEL_BINS, 1)  # training-only auxiliary head
        if cfm is not None:
            self.cfm = cfm

    @property
    def _frames_per_token(self) -> tuple[float, float]:
        """(feature upsampling of the 50 Hz encoder output, mask frames per semantic token)."""
        return (1.875, 3.875) if self.config.version == "v3" else (2.0, 4.0)

    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.ssl_proj(ssl)).transpose(0, 1)

    @torch.no_grad()
    def decode_encp(self, codes, text, refer, ge=None, speed: float = 1.0):
        """-> (features [1, 512, T_mel], ge [1, gin, 1]); ge is computed from `refer` if not given."""
        if ge is None:
            ge = self.ref_enc(refer[:, :REF_BINS], _reference_mask(refer))
        upsample, per_token = self._frames_per_token
        n_tokens = codes.shape[2]
        mask_frames = int(n_tokens * per_token) if speed == 1 else int(n_tokens * per_token / speed) + 1
        content = self.quantizer.decode(codes)
        content = F.interpolate(content, scale_factor=2, mode="nearest")
        content_lengths = torch.tensor([content.shape[-1]], device=codes.device)
        text_lengths = torch.tensor([text.shape[-1]], device=text.device)
        x, _, _, _ = self.enc_p(content, content_lengths, text, text_lengths, ge, speed)
        fea = F.interpolate(self.bridge(x), scale_factor=upsample, mode="nearest")
        fea, _ = self.wns1(fea, torch.tensor([mask_frames], device=codes.device), g=ge)
        return fea, ge
