"""Safe reading of official GPT-SoVITS weight files and telling the kinds apart.

Every file goes through `torch.load(weights_only=True)`: torch's restricted unpickler, which builds
tensors and plain containers only. The one extra class allowed is `utils.HParams`, the attribute bag
the official SoVITS exporter pickles as `config`; it maps to `HParams` below, which accepts nothing
but a dict of plain values as its state. A file that pickles anything else (e.g. an object with a
crafted `__reduce__`) is refused before any of its code can run.

SoVITS files may start with a two-byte version code instead of the zip magic `PK` (spec 2.3);
`read_checkpoint` puts `PK` back before unpickling and remembers the code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from agent.errors import KoeError

ZIP_MAGIC = b"PK"
# Two-byte SoVITS version codes: code -> (model version, is LoRA).
HEADER_VERSIONS: dict[bytes, tuple[str, bool]] = {
    b"00": ("v1", False),
    b"01": ("v2", False),
    b"02": ("v3", False),
    b"03": ("v3", True),
    b"04": ("v4", True),
    b"05": ("v2Pro", False),
    b"06": ("v2ProPlus", False),
}
# MD5 of the first 8192 bytes of the official pretrained SoVITS generators -> (file name, model version).
PRETRAINED_MD5: dict[str, tuple[str, str]] = {
    "dc3c97e17592963677a4a1681f30c653": ("s2G488k.pth", "v2"),  # becomes v1 through its 322-row phoneme table
    "43797be674a37c1c83ee81081941ed0f": ("s2Gv3.pth", "v3"),
    "6642b37f3dbb1f76882b69937c95a5f3": ("s2G2333k.pth", "v2"),
    "4f26b9476d0c5033e04162c486074374": ("s2Gv4.pth", "v4"),
    "c7e9fce2223f3db685cdfa1e6368728a": ("s2Gv2Pro.pth", "v2Pro"),
    "66b313e39455b57ab1b0bc0b239c9d0a": ("s2Gv2ProPlus.pth", "v2ProPlus"),
}
V1_SYMBOLS = 322  # rows of enc_p.text_embedding in v1 files
GPT_V1_PHONEMES = 512  # config.model.phoneme_vocab_size of v1 GPT files

KIND_NAMES = {
    "gpt": "a GPT (text-to-semantic) weight file (.ckpt)",
    "sovits": "a SoVITS weight file (.pth)",
    "sv": "the ERes2NetV2 speaker-verification model",
    "vocoder": "a vocoder state dict",
    "training_checkpoint": "a full training checkpoint (G_*.pth / D_*.pth with optimizer state), not an exported weight",
    "unknown": "not a GPT-SoVITS weight file we know",
}


class HParams:
    """Stand-in for GPT-SoVITS's `utils.HParams`: a bag of attributes (nested sections are HParams too)."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise pickle.UnpicklingError("utils.HParams state must be a dict with string keys")
        self.__dict__.update(state)


def plain_config(value: Any) -> Any:
    """HParams / dicts nested in any way -> plain nested dicts (lists and scalars unchanged)."""
    if isinstance(value, HParams):
        value = vars(value)
    if isinstance(value, dict):
        return {k: plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_config(v) for v in value)
    return value


@dataclass
class Checkpoint:
    """A weight file as read from disk: its two header bytes and the unpickled object."""

    path: Path
    header: bytes
    head_md5: str  # MD5 of the first 8192 bytes, as the official version detection uses
    size: int
    payload: Any


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read any official weight file with the restricted unpickler; clear KoeError on bad files."""
    path = Path(path)
    if not path.is_file():
        raise KoeError(f"weight file not found: {path}")
    data = path.read_bytes()
    header = data[:2]
    if header != ZIP_MAGIC and header not in HEADER_VERSIONS:
        raise KoeError(
            f"{path} is not a GPT-SoVITS weight file: it starts with {header!r}, expected a PyTorch zip "
            f"('PK') or a SoVITS version code ({', '.join(c.decode() for c in HEADER_VERSIONS)})"
        )
    try:
        with torch.serialization.safe_globals([(HParams, "utils.HParams")]):
            payload = torch.load(io.BytesIO(ZIP_MAGIC + data[2:]), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KoeError(
            f"refused to load {path}: it contains pickled objects other than tensors, plain containers and "
            f"utils.HParams ({reason}). Such a file can run code when opened with plain pickle; nothing in "
            f"it was executed. Use weight files exported by GPT-SoVITS or koe."
        ) from None
    except Exception as exc:  # zip / storage errors of a truncated or damaged file
        raise KoeError(
            f"cannot read {path}: the file is truncated or damaged ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no details'}). Copy or download it again."
        ) from None
    return Checkpoint(path, header, hashlib.md5(data[:8192]).hexdigest(), len(data), payload)


@dataclass
class WeightsInfo:
    """What a weight file is: kind (see KIND_NAMES), model version and LoRA flag where they apply."""

    kind: str
    version: str | None = None
    is_lora: bool = False
    pretrained_name: str | None = None

    def describe(self) -> str:
        text = KIND_NAMES[self.kind]
        if self.version:
            text += f", version {self.version}"
        if self.is_lora:
            text += " (LoRA fine-tune)"
        return text


def _sovits_version_from_content(checkpoint: Checkpoint, weights: dict, initial: str | None) -> str:
    """Spec 2.4 steps 2-4, with the content checks the spec recommends for plain-zip files."""
    if initial in ("v2Pro", "v2ProPlus", "v3", "v4"):
        return initial
    config = plain_config(checkpoint.payload.get("config")) or {}
    config_version = (config.get("model") or {}).get("version") if isinstance(config, dict) else None
    if any(k.startswith("cfm.") for k in weights):
        return config_version if config_version in ("v3", "v4") else "v3"  # official size rule: large -> v3
    if "sv_emb.weight" in weights:
        if config_version in ("v2Pro", "v2ProPlus"):
            return config_version
        raise KoeError(
            f"{checkpoint.path} holds v2Pro/v2ProPlus weights (sv_emb.*) but has neither the '05'/'06' header "
            f"nor config.model.version saying which; re-export it with koe or GPT-SoVITS"
        )
    embedding = weights.get("enc_p.text_embedding.weight")
    return "v1" if embedding is not None and embedding.shape[0] == V1_SYMBOLS else "v2"


def classify(checkpoint: Checkpoint) -> WeightsInfo:
    """Decide the kind and version of an already read file (spec 2.4 for SoVITS files)."""
    obj = checkpoint.payload
    if not isinstance(obj, dict):
        return WeightsInfo("unknown")
    weights = obj.get("weight")
    if isinstance(weights, dict):
        if weights and all(k.startswith("model.") for k in weights):
            model = (obj.get("config") or {}).get("model", {}) if isinstance(obj.get("config"), dict) else {}
            version = "v1" if model.get("phoneme_vocab_size") == GPT_V1_PHONEMES else "v2"
            return WeightsInfo("gpt", version)
        initial, is_lora = HEADER_VERSIONS.get(checkpoint.header, (None, False))
        pretrained = PRETRAINED_MD5.get(checkpoint.head_md5)
        if pretrained is not None:
            initial = pretrained[1]
        is_lora = is_lora or "lora_rank" in obj
        if is_lora:
            return WeightsInfo("sovits", initial, True, None)
        version = _sovits_version_from_content(checkpoint, weights, initial)
        return WeightsInfo("sovits", version, False, pretrained[0] if pretrained else None)
    if "model" in obj and "optimizer" in obj:
        return WeightsInfo("training_checkpoint")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        if "layer3_ds.weight" in obj and "fuse34.local_att.0.weight" in obj:
            return WeightsInfo("sv")
        if "conv_pre.weight" in obj and any(k.startswith("ups.") for k in obj):
            return WeightsInfo("vocoder")
    return WeightsInfo("unknown")


def detect_weights(path: str | Path) -> WeightsInfo:
    """Say what a weight file is (GPT, SoVITS and its version, speaker model, ...)."""
    return classify(read_checkpoint(path))


def expect_kind(path: str | Path, info: WeightsInfo, kind: str) -> None:
    """Raise a KoeError naming both kinds when a file of another kind was given."""
    if info.kind != kind:
        hint = {
            ("sovits", "gpt"): " Pass it as the GPT model (.ckpt) instead.",
            ("gpt", "sovits"): " Pass it as the SoVITS model (.pth) instead.",
        }.get((kind, info.kind), "")
        raise KoeError(f"{path} is {info.describe()}, expected {KIND_NAMES[kind]}.{hint}")


__all__ = [
    "Checkpoint",
    "HParams",
    "WeightsInfo",
    "classify",
    "detect_weights",
    "expect_kind",
    "plain_config",
    "read_checkpoint",
]


def read_state_dict(path: str | Path, missing: str) -> dict[str, torch.Tensor]:
    """A plain `name -> tensor` checkpoint (speaker model, vocoder), read with `weights_only=True`.

    `missing` is the message for a file that does not exist (which file it should be, where it comes from).
    """
    path = Path(path)
    if not path.is_file():
        raise KoeError(f"{missing}: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the file is unusable
        raise KoeError(f"{path}: cannot read as a torch checkpoint of tensors ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KoeError(f"{path}: expected a plain state dict (name -> tensor), got {type(state).__name__}")
    return state


PARTIAL_PREFIX = ".partial-"  # in-progress writes; never ends in .ckpt/.pth, so no loader lists it


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically: a hidden temporary file in the same folder, flushed to disk,
    then renamed over `path`. A process killed at any moment leaves the old file or the new one."""
    return _replace_atomically(Path(path), lambda f: f.write(data))


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path` atomically (see `write_atomic`), streamed to the file."""
    return _replace_atomically(Path(path), lambda f: torch.save(obj, f))


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=PARTIAL_PREFIX + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
