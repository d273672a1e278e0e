"""Audio in and out for voice building, decoded exactly the way the official GPT-SoVITS tools do it.

The official slicer and dataset steps decode every input with ffmpeg to mono float32 at 32 kHz
(`-ac 1 -ar 32000 -f f32le`). The cut points depend on the RMS of that exact signal, so we decode through
the same library: PyAV (bundled with faster-whisper) wraps ffmpeg's libswresample with its default
settings, which gives the same samples as the ffmpeg command (checked bit for bit against ffmpeg 5.1
on 44.1 kHz mono and stereo input; a 32 kHz 16-bit input comes out as value / 32768). Another
resampler, soxr included, moves cut points inside pauses, so it is not used here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from agent.errors import KoeError

SAMPLE_RATE = 32_000  # every training step works at 32 kHz


def load_audio_32k(path: str | os.PathLike) -> np.ndarray:
    """Decode any audio file ffmpeg reads to mono float32 at 32 kHz (the official tools' input).

    Raises `KoeError` naming the file when it is missing, has no audio stream or cannot be decoded.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise KoeError(f"audio file not found: {path}")
    pieces: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise KoeError(f"{path}: no audio stream (expected an audio file: WAV, FLAC, MP3, ...)")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                pieces.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            pieces.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except KoeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise KoeError(
            f"cannot decode audio file {path}: {exc} (expected WAV, FLAC, MP3 or similar)"
        ) from None
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32, copy=False)


def write_clip_int16(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM WAV atomically (a crash never leaves a half-written clip behind)."""
    import soundfile

    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    soundfile.write(partial, np.asarray(samples, dtype=np.int16), sample_rate, subtype="PCM_16", format="WAV")
    os.replace(partial, path)
