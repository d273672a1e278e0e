"""`koe voice slice`: cut recordings into clips the way the official `tools/slice_audio.py` does.

Inputs (files, or folders taken in sorted name order) are decoded to 32 kHz mono, cut by the slicer,
mixed per clip and written as `<input basename>_<start:010d>_<end:010d>.wav` (32 kHz, mono, 16-bit).
Resumable: after an input is done, a small manifest in `<out>/.koe-slice/` records its clips and the
settings; a rerun skips inputs whose manifest, settings and clips are all still there.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agent.errors import KoeError
from training.audio import SAMPLE_RATE, load_audio_32k, write_clip_int16
from training.slicer import SlicerParams, clip_name, loudness_mix, slice_points

log = logging.getLogger(__name__)

MANIFEST_DIR = ".koe-slice"


@dataclass(frozen=True)
class MixParams:
    """The per-clip loudness mix: share `alpha` of the clip peak-normalised to `max_peak`."""

    max_peak: float = 0.9
    alpha: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.max_peak <= 1:
            raise KoeError(f"slicer: normalize max must be in (0, 1], got {self.max_peak}")
        if not 0 <= self.alpha <= 1:
            raise KoeError(f"slicer: alpha mix must be in [0, 1], got {self.alpha}")


@dataclass
class SliceSummary:
    written: list[Path] = field(default_factory=list)  # clips written by this run
    reused: list[Path] = field(default_factory=list)  # clips of inputs already done by an earlier run
    failed: list[tuple[Path, str]] = field(default_factory=list)  # inputs that could not be sliced
    silent_dropped: list[str] = field(default_factory=list)  # digital-silence clips not written
    seconds_written: float = 0.0


def collect_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files to slice: each file given, plus the files of each folder in sorted name order."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise KoeError(f"slice input not found: {path} (give audio files or folders of them)")
    names = [p.name for p in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KoeError(
            f"inputs share basenames {duplicates}: their clips would get the same names; rename or slice separately"
        )
    return files


def _manifest_path(out_dir: Path, source: Path) -> Path:
    return out_dir / MANIFEST_DIR / f"{source.name}.json"


def _fingerprint(source: Path, slicer: SlicerParams, mix: MixParams) -> dict:
    stat = source.stat()
    return {
        "source": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "slicer": asdict(slicer),
        "mix": asdict(mix),
    }


def _previous_run(out_dir: Path, source: Path) -> dict | None:
    try:
        return json.loads(_manifest_path(out_dir, source).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def slice_one(
    source: Path, out_dir: Path, slicer: SlicerParams, mix: MixParams
) -> tuple[list[Path], list[str]]:
    """Slice one input; returns the clips written and the names of digital-silence clips left out."""
    audio = load_audio_32k(source)
    written, silent = [], []
    for start, end in slice_points(audio, slicer):
        name = clip_name(source.name, start, end)
        chunk = audio[start:end]
        if not np.any(chunk):
            silent.append(name)  # the mix would divide by zero; the trainers cannot use silence anyway
            continue
        write_clip_int16(out_dir / name, loudness_mix(chunk, mix.max_peak, mix.alpha))
        written.append(out_dir / name)
    return written, silent


def slice_inputs(
    inputs: list[Path],
    out_dir: Path,
    slicer: SlicerParams,
    mix: MixParams,
    *,
    force: bool = False,
    on_progress: Callable[[Path], None] | None = None,
) -> SliceSummary:
    """Slice every input into `out_dir`; a bad input is reported in the summary and the rest go on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_DIR).mkdir(exist_ok=True)
    summary = SliceSummary()
    for source in inputs:
        fingerprint = _fingerprint(source, slicer, mix)
        previous = _previous_run(out_dir, source)
        if previous is not None and not force:
            clips = [out_dir / n for n in previous.get("clips", [])]
            same = {k: previous.get(k) for k in fingerprint} == fingerprint
            if same and all(p.is_file() for p in clips):
                summary.reused.extend(clips)
                if on_progress:
                    on_progress(source)
                continue
        started = time.perf_counter()
        try:
            written, silent = slice_one(source, out_dir, slicer, mix)
        except KoeError as exc:
            summary.failed.append((source, str(exc)))
            log.warning("skipped %s: %s", source, exc)
        else:
            stale = set(previous.get("clips", [])) - {p.name for p in written} if previous else set()
            for name in stale:  # clips of an earlier run with other settings
                (out_dir / name).unlink(missing_ok=True)
            manifest = dict(fingerprint, clips=[p.name for p in written], silent_dropped=silent)
            _manifest_path(out_dir, source).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            summary.written.extend(written)
            summary.silent_dropped.extend(silent)
            seconds = sum(_clip_seconds(p) for p in written)
            summary.seconds_written += seconds
            log.info(
                "%s: %d clips, %.1f s of audio, in %.2f s",
                source.name,
                len(written),
                seconds,
                time.perf_counter() - started,
            )
        if on_progress:
            on_progress(source)
    return summary


def _clip_seconds(path: Path) -> float:
    import soundfile

    return soundfile.info(path).frames / SAMPLE_RATE
