"""HuBERT base (chinese-hubert-base): a 16 kHz waveform -> content features, 50 frames per second.

koe's own inference-only implementation of the architecture, loading the official Hugging Face
folder as it is (config.json + model.safetensors or pytorch_model.bin, the key names the official
pipeline's model saves). Sizes for the base config:

  feature_extractor   7 strided convs (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2), GELU after each;
                      GroupNorm after the first only ("group" mode)       [B, N] -> [B, T, 512]
  feature_projection  LayerNorm + Linear 512 -> 768                       [B, T, 768]
  encoder             x + positional conv (kernel 128, 16 groups), LayerNorm, then 12 post-LN
                      transformer layers (12 heads, feed-forward 3072)    [B, T, 768]

T = floor((N - 400) / 320) + 1. There is no padding mask: one clip per call, never masked or dropped
out. The positional conv's weight norm is folded into a plain weight at load.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from agent.errors import KoeError

SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"
DOWNLOAD_HINT = "koe models download chinese-hubert-base"
HEAD_PREFIX = "hubert."  # keys of a checkpoint saved from a model with a head (e.g. CTC) on top
UNUSED_KEYS = ("masked_spec_embed",)  # the training-time mask embedding
POS_CONV = "encoder.pos_conv_embed.conv."
POS_WEIGHT, POS_G, POS_V = POS_CONV + "weight", POS_CONV + "weight_g", POS_CONV + "weight_v"
# The weight-norm halves of the positional conv as newer saves name them -> the legacy names.
CURRENT_TO_LEGACY = {
    POS_CONV + "parametrizations.weight.original0": POS_G,
    POS_CONV + "parametrizations.weight.original1": POS_V,
}
# config.json values this implementation supports (key -> allowed values).
SUPPORTED = {
    "feat_extract_norm": ("group", "layer"),
    "do_stable_layer_norm": (False,),
    "conv_pos_batch_norm": (False,),
    "hidden_act": ("gelu",),
    "feat_extract_activation": ("gelu",),
}


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class HubertConfig:
    """The config.json fields that shape the model (same names); defaults are chinese-hubert-base."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-5
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16

    @classmethod
    def from_json(cls, path: str | Path) -> HubertConfig:
        """Read config.json; KoeError naming the file and key for a value koe does not implement."""
        path = Path(path)
        raw = _read_json(path)
        check_supported(path, raw)
        config = cls(
            **{f.name: _field_value(path, raw, f.name, f.default) for f in fields(cls) if f.name in raw}
        )
        if not len(config.conv_dim) == len(config.conv_kernel) == len(config.conv_stride):
            raise KoeError(f"{path}: conv_dim, conv_kernel and conv_stride must have the same length")
        if config.hidden_size % config.num_attention_heads:
            raise KoeError(f"{path}: hidden_size must be a multiple of num_attention_heads")
        return config


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KoeError(f"{path}: cannot read the HuBERT config ({exc})") from None
    if not isinstance(raw, dict):
        raise KoeError(f"{path}: not a HuBERT config (expected a JSON object)")
    return raw


def check_supported(path: Path, raw: dict) -> None:
    """KoeError for a variant of the architecture koe does not implement (absent keys take the default)."""
    for key, allowed in SUPPORTED.items():
        value = allowed[0] if raw.get(key) is None else raw[key]
        if value not in allowed or type(value) is not type(allowed[0]):
            raise KoeError(
                f"{path}: {key} = {json.dumps(value)} is not supported; koe's HuBERT implements "
                f"{' or '.join(json.dumps(a) for a in allowed)}"
            )


def _field_value(path: Path, raw: dict, key: str, default):
    """raw[key] as the type of the field's default (lists become tuples of ints)."""
    value = raw[key]
    try:
        if isinstance(default, tuple):
            return tuple(int(v) for v in value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise KoeError(f"{path}: {key} = {json.dumps(value)} is invalid ({exc})") from None


# ------------------------------------------------------------------------------------- pure math
def conv_length(length: int, kernel: int, stride: int) -> int:
    """Output length of an unpadded strided conv."""
    return (length - kernel) // stride + 1


def num_frames(config: HubertConfig, num_samples: int) -> int:
    """Frames of a waveform of `num_samples`: floor((N - 400) / 320) + 1 for the base config."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        num_samples = conv_length(num_samples, kernel, stride)
    return num_samples


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Weight norm over dim 2 -> plain weight: g * v / |v|, the norm over dims 0 and 1 per kernel tap."""
    return v * (g / torch.linalg.vector_norm(v, dim=(0, 1), keepdim=True))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, heads * d] -> [B, heads, T, d]."""
    batch, frames, width = x.shape
    return x.view(batch, frames, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, d] -> [B, T, heads * d]."""
    batch, heads, frames, dim = x.shape
    return x.transpose(1, 2).reshape(batch, frames, heads * dim)


# --------------------------------------------------------------------------------------- modules
class ConvLayer(nn.Module):
    """One feature-extractor conv, its optional norm (GroupNorm per channel, or LayerNorm over
    channels), then GELU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, bias=bias)
        self.layer_norm: nn.Module | None = None
        if norm == "group":
            self.layer_norm = nn.GroupNorm(cout, cout, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if isinstance(self.layer_norm, nn.LayerNorm):
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.gelu(x)


class FeatureExtractor(nn.Module):
    """The raw waveform -> conv features [B, conv_dim[-1], T]."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        cins = (1, *cfg.conv_dim[:-1])
        self.conv_layers = nn.ModuleList(
            ConvLayer(cin, cout, kernel, stride, cfg.conv_bias, _conv_norm(cfg.feat_extract_norm, i))
            for i, (cin, cout, kernel, stride) in enumerate(
                zip(cins, cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride, strict=True)
            )
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


def _conv_norm(mode: str, index: int) -> str | None:
    """In "group" mode only the first conv is normalised; in "layer" mode every conv is."""
    return mode if mode == "layer" or index == 0 else None


class FeatureProjection(nn.Module):
    """Conv features [B, T, conv_dim[-1]] -> model width [B, T, hidden]."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        width = cfg.conv_dim[-1]
        self.layer_norm = nn.LayerNorm(width, eps=cfg.layer_norm_eps) if cfg.feat_proj_layer_norm else None
        self.projection = nn.Linear(width, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.projection(x)


class PositionalConvEmbedding(nn.Module):
    """Relative position information: a wide grouped conv over time, "same" length, then GELU."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        width, kernel = cfg.hidden_size, cfg.num_conv_pos_embeddings
        self.conv = nn.Conv1d(
            width, width, kernel, padding=kernel // 2, groups=cfg.num_conv_pos_embedding_groups
        )
        self.trim = 1 if kernel % 2 == 0 else 0  # an even kernel gives one frame too many

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, hidden] -> [B, T, hidden]."""
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention over every frame (no mask)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.out_proj(merge_heads(y))


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear, per frame."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Post-LN transformer layer: norm(x + attention(x)), then norm(x + feed_forward(x))."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    """Add the positional conv, normalise, run the transformer layers."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x + self.pos_conv_embed(x))
        for layer in self.layers:
            x = layer(x)
        return x


class Hubert(nn.Module):
    """The whole model: waveform [B, N] (raw, not normalised) -> last hidden state [B, T, hidden]."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.config = cfg
        self.feature_extractor = FeatureExtractor(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(wav).transpose(1, 2)
        return self.encoder(self.feature_projection(features))


# ---------------------------------------------------------------------------------------- loading
def weights_file(folder: Path) -> Path:
    """model.safetensors if present, else pytorch_model.bin; KoeError when there is neither."""
    for name in (SAFETENSORS_FILE, PYTORCH_FILE):
        if (folder / name).is_file():
            return folder / name
    raise KoeError(
        f"HuBERT weights not found in {folder} (needs {SAFETENSORS_FILE} or {PYTORCH_FILE}); "
        f"fetch them with `{DOWNLOAD_HINT}`"
    )


@contextmanager
def open_weights(path: Path) -> Iterator[tuple[list[str], Callable[[str], torch.Tensor]]]:
    """The file's key names and a function reading one tensor (CPU, dtype as stored).

    A .bin is unpickled with `weights_only=True` (tensors and plain containers, never arbitrary
    objects); its reader hands each tensor over and forgets it, so no second copy stays around.
    """
    if path.suffix != ".safetensors":
        from tts.weights import read_state_dict

        state = read_state_dict(path, "HuBERT weights not found")
        yield list(state), state.pop
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            yield list(f.keys()), f.get_tensor
    except SafetensorError as exc:
        raise KoeError(f"{path}: cannot read as safetensors ({exc}); download it again") from None


def model_names(keys: Iterable[str]) -> dict[str, str]:
    """File key -> model key: the head-model prefix stripped (the head's own keys dropped), the unused
    mask embedding dropped, both namings of the weight-norm halves mapped to `weight_g` / `weight_v`."""
    keys = list(keys)
    prefixed = any(key.startswith(HEAD_PREFIX) for key in keys)
    names = {}
    for key in keys:
        name = key
        if prefixed:
            if not key.startswith(HEAD_PREFIX):
                continue  # lm_head, projector, classifier: not part of the base model
            name = key[len(HEAD_PREFIX) :]
        if name not in UNUSED_KEYS:
            names[key] = CURRENT_TO_LEGACY.get(name, name)
    return names


def check_names(path: Path, names: set[str], expected: set[str]) -> None:
    """KoeError naming a few missing and unexpected keys (the positional conv may come folded or as
    weight-norm halves)."""
    if POS_WEIGHT not in names:
        expected = (expected - {POS_WEIGHT}) | {POS_G, POS_V}
    problems = [
        f"{what} keys: {', '.join(sorted(keys)[:5])}{' ...' if len(keys) > 5 else ''}"
        for what, keys in (("missing", expected - names), ("unexpected", names - expected))
        if keys
    ]
    if problems:
        raise KoeError(f"{path} does not fit the HuBERT model of its config.json: {'; '.join(problems)}")


def load_hubert(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Hubert:
    """Build the model of a Hugging Face HuBERT folder, weights in `dtype` on `device`, eval mode.

    The modules are made on the meta device (no memory, no random init) and take the file's tensors
    as they are read, each cast and moved once: the weights are never held twice.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise KoeError(
            f"HuBERT model not found in {folder} (no config.json); fetch it with `{DOWNLOAD_HINT}`"
        )
    config = HubertConfig.from_json(folder / "config.json")
    path = weights_file(folder)
    with torch.device("meta"):
        model = Hubert(config)
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    with open_weights(path) as (keys, read):
        names = model_names(keys)
        check_names(path, set(names.values()), set(shapes))
        halves, fold_dtype = {}, torch.promote_types(dtype, torch.float32)  # never fold in half precision
        for key, name in names.items():
            if name in (POS_G, POS_V):
                halves[name] = read(key).to(fold_dtype)
            else:
                state[name] = _placed(path, name, read(key), shapes[name], device, dtype)
    if halves:
        weight = fold_weight_norm(halves.pop(POS_G), halves.pop(POS_V))
        state[POS_WEIGHT] = _placed(path, POS_WEIGHT, weight, shapes[POS_WEIGHT], device, dtype)
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False)


def _placed(path: Path, name: str, tensor: torch.Tensor, shape: torch.Size, device, dtype) -> torch.Tensor:
    """The tensor in the model's dtype and device; KoeError when its shape does not fit the config."""
    if tensor.shape != shape:
        raise KoeError(
            f"{path}: {name} has shape {tuple(tensor.shape)}, but its config.json makes it {tuple(shape)}"
        )
    return tensor.to(device=device, dtype=dtype)
