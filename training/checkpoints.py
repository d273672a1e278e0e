"""Crash-safe training checkpoints: atomic writes, finding the latest one, pruning old ones.

A checkpoint is written to a hidden temporary file in the target folder, flushed to disk and then
renamed over the final name, so a run killed at any moment leaves either the previous complete file
or the new complete file, never a truncated one (`tts.weights.save_atomic`, which the exported
weight files use too). Both trainers (GPT and SoVITS) use these helpers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from agent.errors import KoeError
from tts.weights import PARTIAL_PREFIX


def checkpoints(folder: str | os.PathLike, pattern: str) -> list[tuple[tuple[int, ...], Path]]:
    """Files in `folder` whose name fully matches the regex `pattern`, sorted by its integer groups.

    Example pattern: r"epoch=(\\d+)-step=(\\d+)\\.ckpt" sorts by (epoch, step); r"G_(\\d+)\\.pth" by step.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    regex = re.compile(pattern)
    found = []
    for path in folder.iterdir():
        match = regex.fullmatch(path.name)
        if match and path.is_file():
            found.append((tuple(int(g) for g in match.groups()), path))
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike, pattern: str) -> Path | None:
    """The checkpoint with the highest numbers in its name (see `checkpoints`), or None."""
    found = checkpoints(folder, pattern)
    return found[-1][1] if found else None


def prune(folder: str | os.PathLike, pattern: str, keep: int) -> list[Path]:
    """Delete all but the `keep` newest checkpoints matching `pattern`, and stale partial files."""
    found = checkpoints(folder, pattern)
    doomed = [path for _, path in found[: max(len(found) - keep, 0)]]
    folder = Path(folder)
    if folder.is_dir():
        doomed += [p for p in folder.iterdir() if p.name.startswith(PARTIAL_PREFIX)]  # in-progress writes
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `tts.weights.save_atomic` (tensors and plain containers only)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # any failure here means the file cannot be resumed from
        raise KoeError(f"cannot read training checkpoint {path}: {exc}; delete it to start over") from None
    if not isinstance(state, dict):
        raise KoeError(f"{path} is not a koe training checkpoint (found {type(state).__name__})")
    return state
