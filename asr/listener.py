"""Listening: audio source -> endpointer -> transcriber, as one async stream of events.

    listener = Listener(MicrophoneSource(), transcriber, config.vad, config.asr.partial_interval_ms)
    async for event in listener.events():
        SpeechStarted     -> the user began talking (barge-in: stop speaking)
        PartialTranscript -> live caption of the utterance in progress (only with partial_interval_ms > 0)
        Utterance         -> the user finished a turn (or a part of a long monologue): its audio
        Heard             -> the same utterance with its text and latency

Transcription runs in a worker thread, one at a time and in order, while audio keeps flowing. It
starts early: once the tail after the last word is complete (200 ms of silence) the utterance's audio
can no longer change unless the user speaks again, so it is transcribed while the endpointer still
waits for end_silence_ms; the result is used when the turn ends, thrown away if the user goes on.

With a source faster than real time (`FileSource(fast=True)`) each transcription finishes before more
audio is read, and latencies are computed as a live stream would see them. `latency_ms` runs from the
end of speech to the text being ready (never before the endpoint is decided).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from agent.config import VadConfig
from asr.endpointer import Endpointer, SpeechStarted, Utterance
from asr.sources import AudioSource
from asr.transcriber import Transcriber, Transcript


@dataclass
class PartialTranscript:
    text: str
    start: float  # speech start of the utterance in progress, seconds from the stream start
    t: float  # stream time the transcribed audio reaches


@dataclass(eq=False)
class Heard:
    utterance: Utterance
    transcript: Transcript
    latency_ms: float

    @property
    def text(self) -> str:
        return self.transcript.text


ListenerEvent = SpeechStarted | PartialTranscript | Utterance | Heard
_DONE = object()


@dataclass(eq=False)
class _Job:
    """One transcription: a background task (live source) or already finished (lockstep)."""

    key: tuple[float, float]  # (audio_start, end) of the audio it transcribes
    launched_at: float  # stream time when it started
    task: asyncio.Task | None = None
    transcript: Transcript | None = None
    finished_wall: float = 0.0

    async def result(self) -> Transcript:
        return await self.task if self.task is not None else self.transcript


class Listener:
    """Turns one audio source into speech events and transcripts."""

    def __init__(
        self,
        source: AudioSource,
        transcriber: Transcriber,
        vad: VadConfig | None = None,
        partial_interval_ms: int = 0,
        endpointer: Endpointer | None = None,
    ) -> None:
        self.source = source
        self.transcriber = transcriber
        self.endpointer = endpointer or Endpointer(vad or VadConfig())
        self.partial_interval = partial_interval_ms / 1000
        self._lockstep = not source.realtime
        self._order = asyncio.Lock()  # FIFO: transcriptions run one at a time, in order
        self._early: _Job | None = None  # the early transcription of the utterance in progress
        self._partial_running = False
        self._last_partial = 0.0

    async def events(self) -> AsyncIterator[ListenerEvent]:
        out: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        reader = asyncio.create_task(self._read(out, tasks))
        try:
            while (item := await out.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reader.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

    # -- reading ----------------------------------------------------------------------------------

    async def _read(self, out: asyncio.Queue, tasks: set[asyncio.Task]) -> None:
        try:
            async with contextlib.aclosing(aiter(self.source)) as blocks:
                async for block in blocks:
                    await self._handle(self.endpointer.process(block), out, tasks)
                    await self._maybe_transcribe_early(tasks)
                    await self._maybe_partial(out, tasks)
            await self._handle(self.endpointer.flush(), out, tasks)
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # hand errors (a vanished microphone) to the consumer
            out.put_nowait(exc)
            return
        out.put_nowait(_DONE)

    async def _handle(self, events: list, out: asyncio.Queue, tasks: set[asyncio.Task]) -> None:
        for event in events:
            out.put_nowait(event)
            if isinstance(event, Utterance):
                early, self._early = self._early, None
                if early is None or early.key != (event.audio_start, event.end):
                    early = await self._launch(event.audio, (event.audio_start, event.end), tasks)
                await self._background(self._hear(event, early, time.perf_counter(), out), tasks)

    async def _maybe_transcribe_early(self, tasks: set[asyncio.Task]) -> None:
        endpointer = self.endpointer
        if not endpointer.speaking or self._order.locked():
            return
        if self._early is not None and self._early.key[1] == endpointer.last_speech_end:
            return  # already transcribing this ending
        ending = endpointer.ending_audio()
        if ending is not None:
            audio_start, end, audio = ending
            self._early = await self._launch(audio, (audio_start, end), tasks)

    async def _maybe_partial(self, out: asyncio.Queue, tasks: set[asyncio.Task]) -> None:
        endpointer = self.endpointer
        if (
            not (self.partial_interval and endpointer.speaking)
            or self._partial_running
            or self._order.locked()
        ):
            return
        if endpointer.time - max(self._last_partial, endpointer.speech_start) < self.partial_interval:
            return
        self._partial_running = True
        self._last_partial = endpointer.time
        partial = self._partial(endpointer.current_audio(), endpointer.speech_start, endpointer.time, out)
        await self._background(partial, tasks)

    # -- transcribing -----------------------------------------------------------------------------

    async def _launch(self, audio: np.ndarray, key: tuple[float, float], tasks: set[asyncio.Task]) -> _Job:
        job = _Job(key=key, launched_at=self.endpointer.time)
        if self._lockstep:
            job.transcript = await self._transcribe(audio)
        else:
            job.task = asyncio.create_task(self._transcribe(audio, job))
            tasks.add(job.task)
            job.task.add_done_callback(tasks.discard)
        return job

    async def _transcribe(self, audio: np.ndarray, job: _Job | None = None) -> Transcript:
        async with self._order:
            transcript = await self.transcriber.transcribe_async(audio)
        if job is not None:
            job.finished_wall = time.perf_counter()
        return transcript

    async def _hear(self, utterance: Utterance, job: _Job, decided_wall: float, out: asyncio.Queue) -> None:
        transcript = await job.result()
        endpoint_wait = utterance.detected_at - utterance.end
        if self._lockstep:  # as if the stream had gone on in real time while the model worked
            ready = max(utterance.detected_at, job.launched_at + transcript.elapsed)
            latency = ready - utterance.end
        else:
            latency = endpoint_wait + max(0.0, job.finished_wall - decided_wall)
        out.put_nowait(Heard(utterance, transcript, latency_ms=latency * 1000))

    async def _partial(self, audio: np.ndarray, start: float, t: float, out: asyncio.Queue) -> None:
        try:
            transcript = await self._transcribe(audio)
            out.put_nowait(PartialTranscript(transcript.text, start=start, t=t))
        finally:
            self._partial_running = False

    async def _background(self, job, tasks: set[asyncio.Task]) -> None:
        """Await `job` now (lockstep) or run it in the background while audio keeps coming."""
        if self._lockstep:
            await job
            return
        task = asyncio.create_task(job)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
