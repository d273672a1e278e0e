"""Where audio comes from. Every source is an async iterable of float32 16 kHz mono blocks.

- `MicrophoneSource`: a sounddevice input stream (device by name or index, any native rate,
  resampled with soxr), overflows counted and logged, a vanished device ends it with a `KoeError`.
- `FileSource`: an audio file played as if it were live, in real time or as fast as possible.
- `PushSource`: fed by other code (the WebSocket server pushes Unity's microphone through it).

`realtime` tells consumers whether blocks arrive at the speed of speech (False: as fast as possible).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import numpy as np
import soxr

from agent.errors import KoeError
from asr.audio import SAMPLE_RATE, load_audio, to_float32_mono

log = logging.getLogger(__name__)

SILENT_DEVICE_TIMEOUT_S = 3.0  # no block for this long from a running stream: the device is gone


class AudioSource(Protocol):
    realtime: bool

    def __aiter__(self) -> AsyncIterator[np.ndarray]: ...


class FileSource:
    """Plays an audio file (any rate, mono or stereo) in `block_ms` blocks, paced like a live stream."""

    def __init__(self, path: str | Path, block_ms: int = 20, fast: bool = False) -> None:
        self.path = Path(path)
        self.audio = load_audio(self.path)  # read now, so a bad file fails before anything starts
        self.block = SAMPLE_RATE * block_ms // 1000
        self.realtime = not fast

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        started = time.perf_counter()
        for offset in range(0, len(self.audio), self.block):
            if self.realtime:
                # Sleep until this block would have been fully captured by a microphone.
                due = started + (offset + self.block) / SAMPLE_RATE
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            else:
                await asyncio.sleep(0)  # let other tasks run between blocks
            yield self.audio[offset : offset + self.block]


class PushSource:
    """Audio pushed by other code on the event loop's thread; `close()` ends the stream."""

    realtime = True

    def __init__(self) -> None:
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._resamplers: dict[int, soxr.ResampleStream] = {}

    def push(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        """Queue int16 or float32 audio, mono or (frames, channels), at any rate."""
        audio = to_float32_mono(audio)
        if sample_rate != SAMPLE_RATE:
            if sample_rate not in self._resamplers:
                self._resamplers[sample_rate] = soxr.ResampleStream(
                    sample_rate, SAMPLE_RATE, 1, dtype="float32"
                )
            audio = self._resamplers[sample_rate].resample_chunk(audio)
        if len(audio):
            self._queue.put_nowait(audio)

    def close(self) -> None:
        """End the stream, after what the resamplers still hold back."""
        for resampler in self._resamplers.values():
            rest = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(rest):
                self._queue.put_nowait(rest)
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        while (block := await self._queue.get()) is not None:
            yield block


def list_input_devices() -> list[tuple[int, str]]:
    sd = _sounddevice()
    return [(i, d["name"]) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


def find_input_device(spec: str | int | None) -> int | None:
    """Device index for a name (case-insensitive substring; an exact name wins) or index; None = default."""
    if spec is None or spec == "":
        return None
    devices = list_input_devices()
    described = ", ".join(f"{i}: {name}" for i, name in devices) or "none"
    if isinstance(spec, int) or str(spec).isdigit():
        index = int(spec)
        if index not in {i for i, _ in devices}:
            raise KoeError(f"no input device with index {index} (input devices: {described})")
        return index
    matches = [i for i, name in devices if spec.lower() in name.lower()]
    exact = [i for i, name in devices if spec.lower() == name.lower()]
    if not matches:
        raise KoeError(
            f"no input device matches {spec!r} (input devices: {described}); set [audio] input_device"
        )
    return (exact or matches)[0]


class MicrophoneSource:
    """A live microphone through sounddevice (PortAudio), converted to 16 kHz mono."""

    realtime = True

    def __init__(self, device: str | int | None = None, block_ms: int = 20) -> None:
        sd = _sounddevice()
        self.device = find_input_device(device)
        try:
            info = sd.query_devices(self.device, "input")  # checked now, before any model is loaded
        except (sd.PortAudioError, ValueError):
            raise KoeError(
                "no microphone found: PortAudio sees no input device (is a sound card or audio server available?)"
            ) from None
        self.name = info["name"]
        self.rate = int(info["default_samplerate"])  # the device's native rate, resampled to 16 kHz
        self.max_channels = int(info["max_input_channels"])
        self.block_ms = block_ms
        self.overflows = 0  # blocks PortAudio dropped because we read too slowly

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        sd = _sounddevice()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        rate = self.rate
        resampler = (
            soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32") if rate != SAMPLE_RATE else None
        )

        def on_block(indata: np.ndarray, frames: int, time_info, status) -> None:  # PortAudio's thread
            if status.input_overflow:
                loop.call_soon_threadsafe(self._count_overflow)
            loop.call_soon_threadsafe(queue.put_nowait, indata.mean(axis=1, dtype=np.float32))

        def on_finished() -> None:  # the stream stopped: closed by us, or the device went away
            loop.call_soon_threadsafe(queue.put_nowait, None)

        stream = self._open(sd, rate, min(2, self.max_channels), on_block, on_finished)
        log.info("listening on %s (%d Hz -> %d Hz)", self.name, rate, SAMPLE_RATE)
        try:
            stream.start()
            while True:
                try:
                    block = await asyncio.wait_for(queue.get(), SILENT_DEVICE_TIMEOUT_S)
                except TimeoutError:
                    block = None
                if block is None:
                    raise KoeError(
                        f"microphone {self.name!r} stopped delivering audio (unplugged, or its audio server "
                        "stopped?); check the device or choose another with [audio] input_device"
                    )
                block = resampler.resample_chunk(block) if resampler else block
                if len(block):
                    yield block
        finally:
            try:
                stream.abort()
                stream.close()
            except sd.PortAudioError:
                pass  # the device is already gone
            if self.overflows:
                log.warning("microphone overflowed %d times (audio was lost)", self.overflows)

    def _open(self, sd, rate: int, max_channels: int, on_block, on_finished):
        """Open mono if the device allows it, else its first channels (averaged in `on_block`)."""
        error = None
        for channels in dict.fromkeys((1, max(1, max_channels))):
            try:
                return sd.InputStream(
                    device=self.device,
                    samplerate=rate,
                    channels=channels,
                    dtype="float32",
                    blocksize=rate * self.block_ms // 1000,
                    callback=on_block,
                    finished_callback=on_finished,
                )
            except sd.PortAudioError as exc:
                error = exc
        raise KoeError(f"cannot open microphone {self.name!r}: {error}")

    def _count_overflow(self) -> None:
        self.overflows += 1
        if self.overflows == 1 or self.overflows % 100 == 0:
            log.warning(
                "microphone input overflow (%d so far): the machine is too busy to keep up", self.overflows
            )


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio library is missing
        raise KoeError(
            f"cannot use the microphone: {exc} (install PortAudio: apt install libportaudio2)"
        ) from None
    return sounddevice
