"""SoVITS `.pth` weight files: read, build the synthesizer, write in the official export format.

File layout (spec 2.3, training spec 8.1): a torch zip of {"weight": {key: fp16 tensor}, "config":
HParams or dict, "info": "<epoch>epoch_<step>iteration"}; keys without prefix, `enc_q.*` absent in
exported files; v2Pro / v2ProPlus files replace the zip's first two bytes with "05" / "06".
Weight-normed layers are stored as `<name>.weight_g` + `<name>.weight_v`; they are folded into one
`<name>.weight` at load (w = g * v / |v|, norm over every axis but 0).
"""

from __future__ import annotations

import dataclasses
import io
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from agent.errors import KoeError
from tts.models.sovits import SoVITSConfig, SynthesizerTrn, SynthesizerTrnV3
from tts.weights import ZIP_MAGIC, classify, expect_kind, plain_config, read_checkpoint, write_atomic

POSTERIOR_PREFIX = "enc_q."  # training-only posterior encoder: dropped by the exporter and at load
WRITE_HEADERS = {"v2Pro": b"05", "v2ProPlus": b"06"}  # v1 / v2 files stay plain zips
WRITABLE_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")
REQUIRED_MODEL_KEYS = (
    "inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers", "kernel_size",
    "resblock", "resblock_kernel_sizes", "resblock_dilation_sizes", "upsample_rates",
    "upsample_initial_channel", "upsample_kernel_sizes", "gin_channels",
)  # fmt: skip
DATA_KEYS = ("sampling_rate", "filter_length", "hop_length", "win_length")


@dataclass
class SoVITSFile:
    """The contents of a SoVITS weight file, tensors as stored (fp16, weight-norm pairs kept)."""

    path: Path
    version: str
    weights: dict[str, torch.Tensor]
    config: dict  # plain nested dict (HParams converted)
    info: str
    header: bytes
    pretrained_name: str | None = None


def read_sovits(path: str | Path) -> SoVITSFile:
    """Read and identify a SoVITS file; KoeError for other kinds of file and for LoRA files."""
    checkpoint = read_checkpoint(path)
    info = classify(checkpoint)
    expect_kind(path, info, "sovits")
    if info.is_lora:
        raise KoeError(
            f"{path} is a SoVITS {info.version} LoRA fine-tune; LoRA files are not supported yet. "
            f"Merge it into its base model with GPT-SoVITS and export a full weight file."
        )
    payload = checkpoint.payload
    config = plain_config(payload.get("config"))
    if not isinstance(config, dict):
        raise KoeError(f"{path}: the SoVITS file has no config section (found {type(config).__name__})")
    return SoVITSFile(
        path=Path(path),
        version=info.version,
        weights=dict(payload["weight"]),
        config=config,
        info=str(payload.get("info", "")),
        header=checkpoint.header,
        pretrained_name=info.pretrained_name,
    )


def config_from_file(config: Mapping, version: str, source: str = "config") -> SoVITSConfig:
    """Official file config (sections `model`, `data`) -> SoVITSConfig; names missing keys."""
    model = config.get("model") or {}
    data = config.get("data") or {}
    missing = [f"model.{k}" for k in REQUIRED_MODEL_KEYS if k not in model]
    missing += [f"data.{k}" for k in DATA_KEYS if k not in data]
    if missing:
        raise KoeError(f"{source}: the SoVITS config lacks {', '.join(missing)}")
    fields = {f.name for f in dataclasses.fields(SoVITSConfig)}
    values = {k: v for k, v in model.items() if k in fields and k != "version"}
    values.update({k: data[k] for k in DATA_KEYS})
    return SoVITSConfig(version=version, **values)


def fold_weight_norm(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every `<name>.weight_g` / `<name>.weight_v` pair by `<name>.weight` (float32)."""
    out = {}
    for key, value in weights.items():
        if key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            base = key[: -len("_g")]
            v = weights[base + "_v"].float()
            norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True)
            out[base] = v * (value.float() / norm)
        else:
            out[key] = value
    return out


def unfold_weight_norm(weights: Mapping[str, torch.Tensor], expected_keys) -> dict[str, torch.Tensor]:
    """Inverse of `fold_weight_norm` for keys the official model stores as pairs (g = |w|, v = w)."""
    expected = set(expected_keys)
    out = {}
    for key, value in weights.items():
        if key.endswith(".weight") and key + "_g" in expected and key not in expected:
            w = value.float()
            out[key + "_g"] = torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim)), keepdim=True)
            out[key + "_v"] = w
        else:
            out[key] = value
    return out


def build_sovits(config: SoVITSConfig, weight_norm: bool = False, posterior: bool = False) -> nn.Module:
    """The synthesizer class for `config.version` (random weights); v3/v4 with the official-size CFM."""
    if config.version in ("v3", "v4"):
        from tts.models.cfm import build_sovits_cfm  # imported here: cfm.py itself uses this module

        return SynthesizerTrnV3(config, weight_norm=weight_norm, cfm=build_sovits_cfm(config))
    return SynthesizerTrn(config, weight_norm=weight_norm, posterior=posterior)


def _list(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(
    path, got: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str
) -> None:
    """KoeError listing missing keys, unexpected keys and shape mismatches between file and model."""
    missing = set(expected) - set(got)
    unexpected = set(got) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(unexpected)}")
    wrong = [
        f"{k} {tuple(got[k].shape)} (model expects {tuple(expected[k].shape)})"
        for k in sorted(set(got) & set(expected))
        if tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    if wrong:
        problems.append(f"shape mismatches: {', '.join(wrong[:8])}" + (" ..." if len(wrong) > 8 else ""))
    if problems:
        raise KoeError(f"{path} does not fit {what}: " + "; ".join(problems))


def load_sovits(path: str | Path, device: str | torch.device = "cpu") -> SynthesizerTrn | SynthesizerTrnV3:
    """Read a SoVITS file and return the float32 inference model (eval mode, weight norm folded).

    The model's `config` says the detected version; its `source` is the SoVITSFile without tensors.
    """
    sovits_file = read_sovits(path)
    config = config_from_file(sovits_file.config, sovits_file.version, source=str(path))
    weights = fold_weight_norm(
        {k: v for k, v in sovits_file.weights.items() if not k.startswith(POSTERIOR_PREFIX)}
    )
    try:
        with torch.device("meta"):
            model = build_sovits(config)
    except ValueError as exc:  # a config the official classes cannot build either
        raise KoeError(f"{path}: {exc}") from None
    if config.version in ("v3", "v4"):
        from tts.models.cfm import with_rope_frequencies  # some official files omit this buffer

        weights = with_rope_frequencies(weights, model.cfm.estimator.cfg)
    expected = model.state_dict()
    check_keys(path, weights, expected, f"a SoVITS {config.version} model with this config")
    model.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()}, strict=True, assign=True)
    model.source = dataclasses.replace(sovits_file, weights={})
    return model.to(device).eval()


def save_sovits(
    path: str | Path,
    weights: Mapping[str, torch.Tensor],
    config: Mapping,
    info: str,
    version: str,
) -> None:
    """Write an inference weight file exactly as the official SoVITS exporter lays it out.

    weights: a generator state dict (with or without `enc_q.*`, weight norm folded or not);
    config: the run configuration (sections `train`, `data`, `model`, ...), stored as a plain dict,
    which every official reader accepts; info: "<epoch>epoch_<step>iteration".
    """
    if version not in WRITABLE_VERSIONS:
        raise KoeError(f"cannot write SoVITS {version} files (supported: {', '.join(WRITABLE_VERSIONS)})")
    config = plain_config(dict(config))
    sovits_config = config_from_file(config, version, source="save_sovits config")
    with torch.device("meta"):
        expected = SynthesizerTrn(sovits_config, weight_norm=True).state_dict()
    kept = {k: v for k, v in weights.items() if "enc_q" not in k}
    kept = unfold_weight_norm(kept, expected)
    check_keys(path, kept, expected, f"the SoVITS {version} export layout")
    payload = OrderedDict()
    payload["weight"] = {k: kept[k].detach().to("cpu", torch.float16) for k in expected}
    payload["config"] = config
    payload["info"] = info
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    assert data[:2] == ZIP_MAGIC
    data = WRITE_HEADERS.get(version, ZIP_MAGIC) + data[2:]
    write_atomic(path, data)
