"""Speech to text with faster-whisper: one model, loaded once, used from any thread or the event loop.

Usage (this is the API other packages use, e.g. `koe voice label`):

    from asr.transcriber import Transcriber

    transcriber = Transcriber("tiny.en", models_dir=config.models.dir)   # or a model folder path
    transcript = transcriber.transcribe("clip.wav")                      # or float32 16 kHz mono array
    transcript.text, transcript.language, transcript.duration, transcript.elapsed
    for segment in transcript.segments:
        segment.start, segment.end, segment.text                         # seconds, stripped text
    transcript = await transcriber.transcribe_async(audio)               # runs in a worker thread

    Transcriber.from_config(config.asr, config.models.dir)               # the same from [asr]

Constructor arguments: `model` (a size name such as "small", resolved to
`<models_dir>/faster-whisper-<name>/`, or a local model directory), `device` ("auto" = CUDA when
present), `compute_type` ("auto" = int8 on CPU, float16 on CUDA), `language` (None = detect),
`beam_size`, `initial_prompt`, `hotwords`, `cpu_threads` (0 = library default), `vad_filter` (False:
callers hand us speech already cut by our own endpointer; True: faster-whisper's Silero pass drops
silences of 700 ms or more first, as the official GPT-SoVITS labeller does). Every user mistake
(missing model, bad language code, unreadable file) raises `KoeError` with an actionable message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agent.config import AsrConfig
from agent.errors import KoeError
from asr.audio import SAMPLE_RATE, load_audio, to_float32_mono

log = logging.getLogger(__name__)

MODEL_FOLDER_PREFIX = "faster-whisper-"
VAD_FILTER_MIN_SILENCE_MS = 700  # the official labeller's setting for faster-whisper's own VAD pass
# Languages written without spaces between words: their segments are joined without one.
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue"})


@dataclass
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str


@dataclass
class Transcript:
    text: str
    language: str
    duration: float  # seconds of audio
    segments: list[Segment] = field(default_factory=list)
    elapsed: float = 0.0  # seconds the transcription took
    language_probability: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def known_model_names() -> list[str]:
    from faster_whisper.utils import available_models

    return list(available_models())


def resolve_model_dir(model: str | os.PathLike, models_dir: str | os.PathLike | None) -> Path:
    """A model folder: `model` itself when it is a directory, else `<models_dir>/faster-whisper-<model>`."""
    path = Path(model).expanduser()
    looks_like_path = path.is_dir() or os.sep in str(model) or str(model).startswith(".")
    if looks_like_path:
        if not path.is_dir():
            raise KoeError(f"model folder not found: {path}")
        if not (path / "model.bin").is_file():
            raise KoeError(
                f"{path} is not a faster-whisper model folder (no model.bin; expected a CTranslate2 export)"
            )
        return path
    name = str(model)
    known = known_model_names()
    if name not in known:
        raise KoeError(f"unknown ASR model {name!r} (known: {', '.join(known)}; or pass a model folder path)")
    if models_dir is None:
        raise KoeError(f"ASR model {name!r} given by name but no models folder is configured ([models] dir)")
    folder = Path(models_dir) / f"{MODEL_FOLDER_PREFIX}{name}"
    if not (folder / "model.bin").is_file():
        raise KoeError(
            f"ASR model {name!r} is not installed: {folder} is missing "
            f"(run `koe models download {MODEL_FOLDER_PREFIX}{name}`)"
        )
    return folder


def check_language_code(language: str | None) -> None:
    """Reject codes Whisper does not know before any model is loaded."""
    if language is None:
        return
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    if language not in _LANGUAGE_CODES:
        raise KoeError(
            f"unknown language code {language!r} (expected a Whisper code such as en, de, fr, ja, zh)"
        )


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def pick_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


class Transcriber:
    """A loaded faster-whisper model plus the decoding options used for every call."""

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        models_dir: str | os.PathLike | None = None,
        device: str = "auto",
        compute_type: str = "auto",
        language: str | None = None,
        beam_size: int = 1,
        initial_prompt: str | None = None,
        hotwords: str | None = None,
        cpu_threads: int = 0,
        vad_filter: bool = False,
    ) -> None:
        from faster_whisper import WhisperModel

        check_language_code(language)
        self.model_dir = resolve_model_dir(model, models_dir)
        self.device = pick_device(device)
        self.compute_type = pick_compute_type(compute_type, self.device)
        self.language = language
        self.beam_size = beam_size
        self.initial_prompt = initial_prompt
        self.hotwords = hotwords
        self.vad_filter = vad_filter
        started = time.perf_counter()
        try:
            self.model = WhisperModel(
                str(self.model_dir),
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=cpu_threads,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise KoeError(f"cannot load ASR model from {self.model_dir}: {exc}") from None
        if language is not None and language not in self.model.supported_languages:
            raise KoeError(
                f"ASR model {self.model_dir.name} is English-only and cannot transcribe language {language!r} "
                "(use a multilingual model such as small or large-v3)"
            )
        self._lock = threading.Lock()  # one decode at a time: calls from several threads queue up
        log.info(
            "ASR model %s loaded on %s (%s) in %.2f s",
            self.model_dir,
            self.device,
            self.compute_type,
            time.perf_counter() - started,
        )

    @classmethod
    def from_config(cls, config: AsrConfig, models_dir: str | os.PathLike | None) -> Transcriber:
        return cls(
            config.model,
            models_dir=models_dir,
            device=config.device,
            compute_type=config.compute_type,
            language=config.language,
            beam_size=config.beam_size,
            initial_prompt=config.initial_prompt,
            hotwords=config.hotwords,
            cpu_threads=config.cpu_threads,
        )

    @property
    def is_multilingual(self) -> bool:
        return self.model.model.is_multilingual

    def transcribe(
        self, audio: np.ndarray | str | os.PathLike, *, without_timestamps: bool = False
    ) -> Transcript:
        """Transcribe a float32 16 kHz mono array or an audio file (any format, rate, channel count)."""
        samples = load_audio(audio) if isinstance(audio, (str, os.PathLike)) else to_float32_mono(audio)
        duration = len(samples) / SAMPLE_RATE
        if len(samples) == 0:
            return Transcript(text="", language=self.language or "en", duration=0.0)
        started = time.perf_counter()
        with self._lock:
            segments, info = self.model.transcribe(
                samples,
                language=self.language,
                beam_size=self.beam_size,
                initial_prompt=self.initial_prompt,
                hotwords=self.hotwords,
                without_timestamps=without_timestamps,
                vad_filter=self.vad_filter,
                vad_parameters={"min_silence_duration_ms": VAD_FILTER_MIN_SILENCE_MS},
            )
            # Whisper's timestamps come in 20 ms steps and may overshoot the audio: clamp to its end.
            segments = [
                Segment(round(min(s.start, duration), 3), round(min(s.end, duration), 3), s.text.strip())
                for s in segments
            ]
        separator = "" if info.language in UNSPACED_LANGUAGES else " "
        return Transcript(
            text=separator.join(s.text for s in segments if s.text),
            language=info.language,
            language_probability=float(info.language_probability),
            duration=duration,
            segments=segments,
            elapsed=time.perf_counter() - started,
        )

    async def transcribe_async(self, audio: np.ndarray | str | os.PathLike) -> Transcript:
        """`transcribe` in a worker thread, so the event loop keeps serving audio and sockets."""
        return await asyncio.to_thread(self.transcribe, audio)
