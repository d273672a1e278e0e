"""The speaking engine: a voice plus the pipeline, as an async generator of audio chunks.

`TtsEngine.synthesize(text)` never blocks the event loop: the pipeline runs in one worker thread and
hands its pieces over as they are made. Streaming happens at two levels, as in the official code:
sentence by sentence (`stream="sentence"`, the official `return_fragment`) and token chunks inside a
sentence (`stream="tokens"`, the official `streaming_mode`, chunks spliced by SOLA). Leaving the
generator early (or `cancel()`) stops the work within one decoder step.

Join tolerance: with the same seed the streamed chunks carry the same tokens as a one-shot run, so
joined they have its length and its loudness envelope (RMS over 20 ms windows, correlation >= 0.99);
the samples themselves differ, because each SoVITS decode call draws its own noise, as officially.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from agent.config import TtsConfig
from agent.errors import KoeError
from tts.pipeline import TTSPipeline

log = logging.getLogger(__name__)

StreamMode = Literal["none", "sentence", "tokens"]


@dataclass(frozen=True)
class VoiceSpec:
    """A voice: GPT + SoVITS weights and a reference clip with its transcript and language."""

    gpt: Path
    sovits: Path
    ref_audio: Path
    ref_text: str = ""
    ref_lang: str = "en"
    aux_refs: tuple[Path, ...] = field(default_factory=tuple)


@dataclass
class AudioChunk:
    """A piece of synthesized speech: int16 mono at `sample_rate`."""

    audio: np.ndarray
    sample_rate: int
    index: int  # 0, 1, ... in order

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class SynthesisStats:
    """Time to first audio and real-time factor of the last synthesis."""

    first_audio_s: float | None = None
    total_s: float = 0.0
    audio_s: float = 0.0

    @property
    def rtf(self) -> float:
        return self.total_s / self.audio_s if self.audio_s else float("inf")


def request_params(text: str, lang: str, voice: VoiceSpec, settings: TtsConfig, stream: StreamMode) -> dict:
    """The official request dict for one text with this voice and these settings."""
    return {
        "text": text,
        "text_lang": lang,
        "ref_audio_path": str(voice.ref_audio),
        "aux_ref_audio_paths": [str(p) for p in voice.aux_refs],
        "prompt_text": voice.ref_text,
        "prompt_lang": voice.ref_lang,
        "top_k": settings.top_k,
        "top_p": settings.top_p,
        "temperature": settings.temperature,
        "text_split_method": settings.text_split_method,
        "batch_size": settings.batch_size,
        "speed_factor": settings.speed,
        "fragment_interval": settings.pause_s,
        "seed": settings.seed,
        "parallel_infer": settings.parallel_infer,
        "repetition_penalty": settings.repetition_penalty,
        "return_fragment": stream == "sentence",
        "streaming_mode": stream == "tokens",
        "min_chunk_length": settings.stream_chunk_tokens,
        "first_chunk_length": settings.stream_first_chunk_tokens,
        "overlap_length": settings.stream_overlap_tokens,
    }


class TtsEngine:
    """One loaded voice (and optional per-emotion reference clips) speaking through a `TTSPipeline`."""

    def __init__(self, pipeline: TTSPipeline, voice: VoiceSpec, settings: TtsConfig | None = None):
        """`pipeline`: the in-process `TTSPipeline`, or an `ApiV2Client` (same `run`/`check`/`stop`)."""
        self.pipeline = pipeline
        self.voice = voice
        self.settings = settings or TtsConfig()
        self.stats = SynthesisStats()
        self._busy = threading.Lock()  # one synthesis at a time per loaded model

    @classmethod
    def load(
        cls,
        voice: VoiceSpec,
        models_dir: Path,
        settings: TtsConfig | None = None,
        device: str = "cpu",
        clips: tuple[Path, ...] = (),
    ) -> TtsEngine:
        """Load the voice's weights plus HuBERT, BERT (and the speaker model) from the models folder,
        and prepare the reference features of its clip and of `clips` (other clips it will speak with).

        With `[tts] backend = "api_v2"` nothing is loaded: an existing GPT-SoVITS api_v2 server (or
        `koe tts-serve`) at `[tts] api_v2_url` synthesizes, with this voice's files given by path.
        """
        from agent.model_manager import ModelManager

        settings = settings or TtsConfig()
        if settings.backend == "api_v2":
            from tts.remote import ApiV2Client

            return cls(ApiV2Client(settings.api_v2_url), voice, settings)
        for path, what in ((voice.gpt, "GPT weights"), (voice.sovits, "SoVITS weights")):
            if not Path(path).is_file():
                raise KoeError(f"{what} not found: {path} (train a voice or `koe models download gsv-v2`)")
        manager = ModelManager(models_dir)
        hubert = manager.require("chinese-hubert-base")
        bert = models_dir / "chinese-roberta-wwm-ext-large"
        sv_path = models_dir / "sv" / "pretrained_eres2netv2w24s4ep4.ckpt"
        pipeline = TTSPipeline.from_paths(
            voice.gpt, voice.sovits, bert if bert.is_dir() else None, hubert, device=device,
            cache_dir=settings.cache_dir, sv_path=sv_path if sv_path.is_file() else None,
            use_g2pw=settings.g2pw, g2pw_dir=models_dir / "G2PWModel", precision=settings.precision,
        )  # fmt: skip
        engine = cls(pipeline, voice, settings)
        engine.prepare(clips)
        return engine

    def prepare(self, clips: tuple[Path, ...] = ()) -> None:
        """Compute the reference features of the voice's clips (and of `clips`, e.g. emotion clips) and
        load the text frontend now rather than during the first reply, then release HuBERT unless
        `[tts] keep_hubert`: a conversation knows its clips up front, and a new clip later loads
        HuBERT again."""
        if not isinstance(self.pipeline, TTSPipeline):  # a remote api_v2 server prepares its own
            return
        started = time.perf_counter()
        references = self.pipeline.references
        references.prepare(self.voice.ref_audio, self.voice.aux_refs)
        for clip in clips:
            references.prepare(clip)
        if self.voice.ref_text:  # cached for every reply; loads the language's frontend (and BERT) now
            self.pipeline.prompt_features(self.voice.ref_text, self.voice.ref_lang)
        if not self.settings.keep_hubert:
            self.pipeline.hubert.release()
        log.info("reference clips and text frontend prepared in %.2f s", time.perf_counter() - started)

    @property
    def sample_rate(self) -> int:
        return self.pipeline.sample_rate

    def check(self, text: str, lang: str, voice: VoiceSpec | None = None) -> None:
        """Reject what would fail (missing clip, clip outside 3-10 s, bad language, empty text) up front."""
        self.pipeline.check(request_params(text, lang, voice or self.voice, self.settings, "none"))

    def cancel(self) -> None:
        """Stop the running synthesis within one decoder step."""
        self.pipeline.stop()

    async def synthesize(
        self,
        text: str,
        lang: str | None = None,
        stream: StreamMode = "tokens",
        voice: VoiceSpec | None = None,
    ) -> AsyncIterator[AudioChunk]:
        """Speak `text` (language mode `lang`, default the voice's); chunks arrive as they are made."""
        params = request_params(text, lang or self.voice.ref_lang, voice or self.voice, self.settings, stream)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()
        started = time.perf_counter()
        self.stats = stats = SynthesisStats()

        def work() -> None:
            with self._busy:
                try:
                    for rate, audio in self.pipeline.run(params):
                        loop.call_soon_threadsafe(queue.put_nowait, (rate, audio))
                except BaseException as exc:  # handed to the consumer, raised there
                    loop.call_soon_threadsafe(queue.put_nowait, exc)
                finally:
                    loop.call_soon_threadsafe(queue.put_nowait, done)

        worker = threading.Thread(target=work, name="koe-tts", daemon=True)
        worker.start()
        index = 0
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                rate, audio = item
                if stats.first_audio_s is None:
                    stats.first_audio_s = time.perf_counter() - started
                stats.audio_s += len(audio) / rate
                yield AudioChunk(audio, rate, index)
                index += 1
        finally:
            if worker.is_alive():
                self.pipeline.stop()
                await asyncio.to_thread(worker.join)
            stats.total_s = time.perf_counter() - started
            log.debug(
                "tts: %.2f s of audio in %.2f s (first audio %.3f s)",
                stats.audio_s, stats.total_s, stats.first_audio_s or float("nan"),
            )  # fmt: skip
