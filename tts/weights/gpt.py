"""GPT (T2S) weight files: read and write the official `.ckpt` layout.

A `torch.save` zip of `{"weight": OrderedDict("model.<key>" -> float16 tensor), "config": the
training config dict, "info": "GPT-e<epoch>"}`. The official loader is strict: every key of the
model, with the `model.` prefix, and nothing else. Weights are stored in fp16 and cast to the
requested dtype on load.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from agent.errors import KoeError
from tts.models.t2s import T2SConfig, T2SModel
from tts.weights import classify, expect_kind, read_checkpoint, save_atomic

PREFIX = "model."
# Keys only a T2S state dict has (without the prefix): such a file gets the strict GPT key check.
T2S_MARKER_KEYS = {"bert_proj.weight", "ar_predict_layer.weight", "ar_audio_embedding.word_embeddings.weight"}
MAX_LISTED = 12  # key names listed in an error message


@dataclass
class GPTWeights:
    """A loaded GPT file: the model (eval mode) plus the file's config and info string."""

    model: T2SModel
    config: dict
    info: str


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


def _not_gpt(path: Path, why: str) -> KoeError:
    return KoeError(f"{path} is not a GPT-SoVITS GPT (.ckpt) weight file: {why}")


def read_gpt_file(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (`weight`, `config`, `info`), read with the restricted unpickler.

    A file of another kind (SoVITS, speaker model, Lightning training checkpoint) is refused with a
    message that says what it is.
    """
    path = Path(path)
    if not path.is_file():
        raise KoeError(
            f"GPT weight file not found: {path} (expected an official GPT .ckpt, e.g. GPT_weights_v2/*.ckpt)"
        )
    read = read_checkpoint(path)
    checkpoint = read.payload
    weight = checkpoint.get("weight") if isinstance(checkpoint, dict) else None
    looks_like_t2s = isinstance(weight, dict) and any(
        k.removeprefix(PREFIX) in T2S_MARKER_KEYS for k in weight
    )
    if not looks_like_t2s:
        if isinstance(checkpoint, dict) and "state_dict" in checkpoint and "weight" not in checkpoint:
            raise _not_gpt(path, "it is a Lightning training checkpoint; use the exported GPT_weights file")
        expect_kind(path, classify(read), "gpt")
    if not isinstance(weight, dict) or not all(isinstance(v, torch.Tensor) for v in weight.values()):
        raise _not_gpt(path, "'weight' is not a dict of tensors")
    if not isinstance(checkpoint.get("config"), dict):
        raise _not_gpt(path, "'config' is missing or not a dict")
    return checkpoint


def load_gpt(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> GPTWeights:
    """Build the T2S model from a GPT .ckpt (strict keys and shapes) in `dtype` on `device`, eval mode."""
    path = Path(path)
    checkpoint = read_gpt_file(path)
    try:
        config = T2SConfig.from_checkpoint_config(checkpoint["config"])
    except KoeError as exc:
        raise KoeError(f"{path}: {exc}") from None
    weight = checkpoint["weight"]
    if not any(k.startswith(PREFIX) for k in weight):
        raise KoeError(
            f"{path}: no weight key starts with {PREFIX!r} (found e.g. {_listing(sorted(weight)[:3])}); official GPT files keep the Lightning prefix"
        )
    state = {k[len(PREFIX) :]: v for k, v in weight.items() if k.startswith(PREFIX)}

    model = T2SModel(config)
    expected = model.state_dict()
    missing = [PREFIX + k for k in expected if k not in state]
    unexpected = [k for k in weight if not k.startswith(PREFIX) or k[len(PREFIX) :] not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        raise KoeError(
            f"{path}: weights do not match the GPT architecture in its config ({'; '.join(parts)})"
        )
    wrong = [
        f"{PREFIX}{k} {list(state[k].shape)} (expected {list(v.shape)})"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise KoeError(f"{path}: weight shapes do not match its config: {_listing(wrong)}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    model.to(device=device, dtype=dtype).eval()
    return GPTWeights(model, checkpoint["config"], str(checkpoint.get("info", "")))


def save_gpt(
    path: str | os.PathLike, model: T2SModel, config: dict | None = None, info: str = "GPT-e1"
) -> None:
    """Write `model` as the official exporter does: fp16 weights with the `model.` prefix, config, info.

    `config` is the full training config dict (its `model` section must describe `model`); without
    one, a minimal config with the `model` and `data.max_sec` sections is written, atomically.
    """
    path = Path(path)
    if config is None:
        config = {
            "model": model.config.to_checkpoint_model_section(),
            "data": {"max_sec": model.config.max_sec},
        }
    described = T2SConfig.from_checkpoint_config(config)
    if described != model.config:
        raise KoeError(f"save_gpt: config['model'] describes {described}, but the model is {model.config}")
    weight = OrderedDict(
        (PREFIX + k, v.detach().to("cpu", torch.float16)) for k, v in model.state_dict().items()
    )
    checkpoint = OrderedDict([("weight", weight), ("config", config), ("info", info)])
    save_atomic(checkpoint, path)
