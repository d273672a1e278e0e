"""Conditional flow matching (CFM) mel decoder of GPT-SoVITS v3/v4, with its DiT velocity estimator.

The sampler starts from Gaussian noise and integrates the DiT's velocity field with fixed Euler
steps from t = 0 to 1, conditioned on the semantic features `mu` and a prompt mel (the reference
audio's normalised mel occupies the first frames and is held at zero in the noisy signal).

DiT (keys `cfm.estimator.*` inside a v3/v4 SoVITS file; official size dim 1024, 22 blocks):
  time / step-size embeddings  sinusoid(1000 t) -> MLP, summed into one conditioning vector c  [B, dim]
  text embedding              cond + sinusoidal positions -> ConvNeXt-V2 blocks              [B, T, 512]
  input embedding             Linear(cat(x, prompt, text)) + convolutional positions           [B, T, dim]
  blocks                      AdaLN-Zero attention (rotary on the first dim_head channels) + MLP
  output                      AdaLN final norm -> Linear(dim -> 100)                            [B, T, 100]
v3 and v4 share this network; they differ in the mel analysis, chunk sizes and vocoder (`VARIANTS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from agent.errors import KoeError
from tts.weights.sovits import check_keys

CONV_POS_KERNEL = 31
CONV_POS_GROUPS = 16
TEXT_MAX_POSITIONS = 4096  # positions beyond are clipped to the last one
TIME_FREQ_DIM = 256
TIME_SCALE = 1000.0
ROPE_BASE = 10000.0
LN_EPS = 1e-6


@dataclass
class DiTConfig:
    """DiT sizes; the defaults are the official v3/v4 estimator."""

    dim: int = 1024
    depth: int = 22
    heads: int = 16
    dim_head: int = 64
    ff_mult: int = 2
    mel_dim: int = 100
    text_dim: int = 512
    conv_layers: int = 4

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        """Read the official DiT constructor arguments (dropout is irrelevant at inference)."""
        if d.get("long_skip_connection"):
            raise KoeError("DiT config: long_skip_connection=True is not supported (v3/v4 use False)")
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in names})


@dataclass(frozen=True)
class CFMVariant:
    """Runtime constants that distinguish v3 from v4 around the same CFM/DiT (spec 4.11)."""

    sample_rate: int  # rate of the reference audio for the prompt mel
    n_fft: int
    hop: int
    win: int
    n_mels: int
    max_prompt_frames: int  # T_ref: longest reference prompt kept
    chunk_frames: int  # T_chunk: prompt + target frames per CFM call
    feature_upsample: float  # bridge features (25 Hz x2) -> mel frame rate
    vocoder_upsample: int  # samples per mel frame at the output rate
    output_rate: int


VARIANTS = {
    "v3": CFMVariant(24000, 1024, 256, 1024, 100, 468, 934, 1.875, 256, 24000),
    "v4": CFMVariant(32000, 1280, 320, 1280, 100, 500, 1000, 2.0, 480, 48000),
}
SPEC_MIN, SPEC_MAX = -12.0, 2.0


def normalize_mel(log_mel: torch.Tensor) -> torch.Tensor:
    """Log mel -> the CFM's [-1, 1] range: (x + 12) / 14 · 2 − 1."""
    return (log_mel - SPEC_MIN) / (SPEC_MAX - SPEC_MIN) * 2 - 1


def denormalize_mel(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize_mel`, applied to the CFM output before the vocoder."""
    return (mel + 1) / 2 * (SPEC_MAX - SPEC_MIN) + SPEC_MIN


# ---------------------------------------------------------------------------- small math


def sinusoid_time_features(t: torch.Tensor, dim: int = TIME_FREQ_DIM) -> torch.Tensor:
    """[B] times in [0, 1] -> [B, dim] = [sin(1000 t f), cos(1000 t f)], f_i = exp(−i ln(1e4)/(dim/2 − 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    angles = TIME_SCALE * t.unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def text_position_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[T] integer positions -> [T, dim] = [cos(p g), sin(p g)] with g_i = 10000^(−2i/dim)."""
    freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=positions.device)[: dim // 2].float() / dim))
    angles = torch.outer(positions.float(), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def rope_inv_freq(dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Rotary frequencies 1 / base^(2i/dim), [dim/2]."""
    return 1.0 / (ROPE_BASE ** (torch.arange(0, dim, 2, device=device).float() / dim))


def rope_angles(inv_freq: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[T, 2·len(inv_freq)] angles, each frequency repeated for its interleaved pair (x_transformers layout)."""
    angles = torch.arange(seq_len, device=inv_freq.device).type_as(inv_freq)[:, None] * inv_freq[None, :]
    return angles.repeat_interleave(2, dim=-1)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (−x1, x0, −x3, x2, ...) over the last axis."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the first angles.shape[-1] channels of x [B, T, C]; the rest pass through."""
    rot = angles.shape[-1]
    head, tail = x[..., :rot], x[..., rot:]
    head = head * angles.cos() + rotate_pairs(head) * angles.sin()
    return torch.cat([head, tail], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation of a normalised x [B, T, D] with per-item shift/scale [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


def valid_frames(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, max_len] bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


# ---------------------------------------------------------------------------- modules


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [B] -> [B, dim]
        return self.time_mlp(sinusoid_time_features(t).to(t.dtype))


class GRN(nn.Module):
    """Global response normalisation; the L2 norm runs over the time axis (axis 1 of [B, T, C])."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.norm(x, p=2, dim=1, keepdim=True)  # [B, 1, C]
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * n) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.grn = GRN(hidden)
        self.pwconv2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B, T, C]
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        h = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(h)))))
        return x + h


class TextEmbedding(nn.Module):
    """Condition features + absolute sinusoidal positions, refined by ConvNeXt-V2 blocks."""

    def __init__(self, text_dim: int, conv_layers: int):
        super().__init__()
        self.text_blocks = nn.Sequential(
            *(ConvNeXtV2Block(text_dim, 2 * text_dim) for _ in range(conv_layers))
        )

    def forward(self, text: torch.Tensor) -> torch.Tensor:  # [B, T, text_dim]
        if len(self.text_blocks) == 0:
            return text
        positions = torch.arange(text.shape[1], device=text.device).clamp(max=TEXT_MAX_POSITIONS - 1)
        return self.text_blocks(text + text_position_embedding(positions, text.shape[-1]))


class ConvPositionEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        k = CONV_POS_KERNEL
        self.conv1d = nn.Sequential(
            nn.Conv1d(dim, dim, k, padding=k // 2, groups=CONV_POS_GROUPS),
            nn.Mish(),
            nn.Conv1d(dim, dim, k, padding=k // 2, groups=CONV_POS_GROUPS),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        return self.conv1d(x.transpose(1, 2)).transpose(1, 2)


class InputEmbedding(nn.Module):
    def __init__(self, mel_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(2 * mel_dim + text_dim, dim)
        self.conv_pos_embed = ConvPositionEmbedding(dim)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.proj(torch.cat([x, prompt, text], dim=-1))  # [B, T, dim]
        return h + self.conv_pos_embed(h)


class RotaryEmbedding(nn.Module):
    """Holds the rotary frequencies; official files may store them (fp16-rounded), which are then used."""

    def __init__(self, dim_head: int):
        super().__init__()
        # computed on the CPU even when the model is built on the meta device (meta arithmetic is slow to set up)
        self.register_buffer("inv_freq", rope_inv_freq(dim_head, device="cpu"))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, angles: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # rotary on the first dim_head channels of the whole projection (i.e. head 0), as upstream does
        q = apply_rope(self.to_q(x), angles)
        k = apply_rope(self.to_k(x), angles)
        v = self.to_v(x)
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, H, T, dh]
        attn_mask = None if mask is None else mask[:, None, None, :].expand(B, self.heads, T, T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.to_out[0](out.transpose(1, 2).reshape(B, T, -1))  # [B, T, dim]
        return out if mask is None else out.masked_fill(~mask[..., None], 0.0)


class AdaLayerNormZero(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """c [B, dim] -> shift/scale/gate for attention, then for the MLP, each [B, dim]."""
        return self.linear(F.silu(c)).chunk(6, dim=1)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        hidden = dim * mult
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh")),
            nn.Identity(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.attn_norm = AdaLayerNormZero(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dim_head)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask, angles: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.attn_norm(c)
        h = modulate(F.layer_norm(x, x.shape[-1:], eps=LN_EPS), shift_a, scale_a)
        x = x + gate_a[:, None] * self.attn(h, mask, angles)
        h = modulate(F.layer_norm(x, x.shape[-1:], eps=LN_EPS), shift_m, scale_m)
        return x + gate_m[:, None] * self.ff(h)


class AdaLayerNormFinal(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(c)).chunk(2, dim=1)
        return modulate(F.layer_norm(x, x.shape[-1:], eps=LN_EPS), shift, scale)


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.time_embed = TimestepEmbedding(cfg.dim)
        self.d_embed = TimestepEmbedding(cfg.dim)
        self.text_embed = TextEmbedding(cfg.text_dim, cfg.conv_layers)
        self.input_embed = InputEmbedding(cfg.mel_dim, cfg.text_dim, cfg.dim)
        self.rotary_embed = RotaryEmbedding(cfg.dim_head)
        self.transformer_blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = AdaLayerNormFinal(cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)

    def embed_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """cond [B, T, text_dim] -> text embedding [B, T, text_dim]; constant across Euler steps."""
        return self.text_embed(cond)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, mel] noisy mel
        prompt: torch.Tensor,  # [B, T, mel] prompt mel, zeros after the prompt
        text: torch.Tensor,  # [B, T, text_dim] embedded condition (`embed_condition`)
        lengths: torch.Tensor,  # [B]
        t: torch.Tensor,  # [B] flow time
        dt: torch.Tensor,  # [B] Euler step size
    ) -> torch.Tensor:
        """Velocity estimate [B, T, mel]."""
        T = x.shape[1]
        c = self.time_embed(t) + self.d_embed(dt)  # [B, dim]
        mask = None if bool((lengths >= T).all()) else valid_frames(lengths, T)
        h = self.input_embed(x, prompt, text)  # [B, T, dim]
        angles = rope_angles(self.rotary_embed.inv_freq, T)  # [T, dim_head]
        for block in self.transformer_blocks:
            h = block(h, c, mask, angles)
        return self.proj_out(self.norm_out(h, c))


class CFM(nn.Module):
    """Euler flow-matching sampler around a DiT estimator (`cfm.*` keys of a v3/v4 SoVITS file)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.mel_dim = cfg.mel_dim
        self.estimator = DiT(cfg)

    @torch.inference_mode()
    def inference(
        self,
        mu: torch.Tensor,  # [B, T, text_dim] condition features
        lengths: torch.Tensor,  # [B]
        prompt: torch.Tensor,  # [B, mel, P] normalised prompt mel
        n_timesteps: int,
        temperature: float = 1.0,
        trace: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Generate a normalised mel [B, mel, T]; the first P frames come out as zeros.

        Draws exactly one `torch.randn([B, mel, T])` from the default generator, so a
        `torch.manual_seed` right before the call reproduces the official sampler. When `trace` is
        a dict it receives the draw ("noise" [B, mel, T]) and each step's velocity ("velocities",
        a list of [B, T, mel]).
        """
        B, T, _ = mu.shape
        noise = torch.randn([B, self.mel_dim, T], dtype=mu.dtype, device=mu.device)
        x = noise * temperature
        if trace is not None:
            trace["noise"], trace["velocities"] = noise, []
        P = prompt.shape[-1]
        prompt_x = torch.zeros_like(x)
        prompt_x[..., :P] = prompt[..., :P]
        x[..., :P] = 0
        prompt_x = prompt_x.transpose(1, 2)  # [B, T, mel]
        text = self.estimator.embed_condition(mu)
        d = 1 / n_timesteps
        d_tensor = torch.full((B,), d, dtype=mu.dtype, device=mu.device)
        t = 0.0
        for _ in range(n_timesteps):
            t_tensor = torch.full((B,), t, dtype=mu.dtype, device=mu.device)
            v = self.estimator(x.transpose(1, 2), prompt_x, text, lengths, t_tensor, d_tensor)  # [B, T, mel]
            if trace is not None:
                trace["velocities"].append(v)
            x = x + d * v.transpose(1, 2)
            t = t + d
            x[..., :P] = 0
        return x


@torch.inference_mode()
def sample_mel_chunked(
    cfm: CFM,
    ref_features: torch.Tensor,  # [1, text_dim, Tf] prompt features (decode_encp of the reference)
    ref_mel: torch.Tensor,  # [1, mel, Tm] normalised reference mel
    features: torch.Tensor,  # [1, text_dim, T] target features
    variant: CFMVariant,
    n_timesteps: int,
) -> torch.Tensor:
    """v3/v4 single-item synthesis: CFM over windows, each prompted by the previous window's tail.

    Returns the normalised mel of the target, [1, mel, T].
    """
    t_min = min(ref_features.shape[-1], ref_mel.shape[-1])
    t_min = min(t_min, variant.max_prompt_frames)
    ref_features, ref_mel = ref_features[..., -t_min:], ref_mel[..., -t_min:]
    chunk = variant.chunk_frames - t_min
    pieces = []
    for start in range(0, features.shape[-1], chunk):
        window = features[..., start : start + chunk]
        cond = torch.cat([ref_features, window], dim=-1).transpose(1, 2)  # [1, P + w, text_dim]
        lengths = torch.tensor([cond.shape[1]], device=cond.device)
        out = cfm.inference(cond, lengths, ref_mel, n_timesteps)[..., ref_mel.shape[-1] :]  # [1, mel, w]
        pieces.append(out)
        ref_mel, ref_features = out[..., -t_min:], window[..., -t_min:]
    return torch.cat(pieces, dim=-1)


# ---------------------------------------------------------------------------- loading

CFM_PREFIX = "cfm."
ROPE_KEY = "estimator.rotary_embed.inv_freq"  # recomputable; absent with some x_transformers versions


def build_sovits_cfm(config: Any = None) -> CFM:
    """The `cfm` module of a v3/v4 SynthesizerTrnV3: the official class hard-codes the DiT sizes
    (dim 1024, depth 22, heads 16, dim_head 64, ff_mult 2, text_dim 512, conv_layers 4), so the
    SoVITS config does not change it."""
    return CFM(DiTConfig())


def with_rope_frequencies(weights: dict[str, torch.Tensor], cfg: DiTConfig, prefix: str = CFM_PREFIX) -> dict:
    """Add the rotary frequencies when a file lacks them; stored (fp16-rounded) values are kept."""
    key = prefix + ROPE_KEY
    if key in weights:
        return weights
    return {**weights, key: rope_inv_freq(cfg.dim_head, device="cpu")}


def load_cfm_state(cfm: CFM, weights: dict[str, torch.Tensor], source: str) -> CFM:
    """Copy the `cfm.*` entries of a state dict into `cfm` (strict keys and shapes), as float32."""
    weights = with_rope_frequencies(weights, cfm.estimator.cfg)
    sub = {k[len(CFM_PREFIX) :]: v.float() for k, v in weights.items() if k.startswith(CFM_PREFIX)}
    check_keys(source, sub, cfm.state_dict(), f"a CFM/DiT decoder with {cfm.estimator.cfg}")
    cfm.load_state_dict(sub, assign=True)
    return cfm.eval()


def load_cfm_component(path: str | Path) -> CFM:
    """Load a file {weight: {cfm.*: tensor}, config: {DiT: {...}}} (the parity fixture's layout)."""
    path = Path(path)
    if not path.is_file():
        raise KoeError(f"CFM weights not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the file is unusable
        raise KoeError(f"{path}: cannot read as a torch checkpoint of tensors ({exc})") from exc
    if not isinstance(ckpt, dict) or "weight" not in ckpt or "DiT" not in (ckpt.get("config") or {}):
        raise KoeError(f"{path}: expected a dict with 'weight' and 'config' -> 'DiT' entries")
    with torch.device("meta"):  # no random init: every tensor comes from the file
        cfm = CFM(DiTConfig.from_dict(ckpt["config"]["DiT"]))
    return load_cfm_state(cfm, ckpt["weight"], str(path))
