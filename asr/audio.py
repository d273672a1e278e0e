"""Audio helpers shared by the sources and the transcriber: everything becomes float32, 16 kHz, mono.

`load_audio` reads any file soundfile can (WAV, FLAC, OGG, MP3) and falls back to PyAV (bundled with
faster-whisper) for the rest; `to_float32_mono` normalises arrays handed to us by other code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr

from agent.errors import KoeError

SAMPLE_RATE = 16_000  # what the VAD and Whisper expect


def to_float32_mono(audio: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1], one channel. int16 input is scaled; (frames, channels) input is averaged."""
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    elif audio.dtype != np.float32:
        audio = audio.astype(np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    elif audio.ndim != 1:
        raise ValueError(f"audio must be 1-D or (frames, channels), got shape {audio.shape}")
    return audio


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Whole-array resampling (soxr, high quality); a no-op when the rates match."""
    if rate == target:
        return audio
    return soxr.resample(audio, rate, target).astype(np.float32, copy=False)


def load_audio(path: str | Path) -> np.ndarray:
    """Read an audio file as float32 16 kHz mono; a `KoeError` names the file when it cannot be read."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise KoeError(f"audio file not found: {path}")
    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return _load_with_pyav(path)
    return resample(to_float32_mono(audio), rate)


def _load_with_pyav(path: Path) -> np.ndarray:
    import av
    from faster_whisper import decode_audio

    try:
        return decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise KoeError(
            f"cannot read audio file {path}: {exc} (expected WAV, FLAC, OGG, MP3 or similar)"
        ) from None


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """Little-endian 16-bit PCM bytes (what webrtcvad reads)."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
