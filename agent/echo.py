"""Echo cancellation: keep the character's own voice, heard by the microphone, out of the listener.

WebRTC's audio processing (the `livekit` package's `rtc.AudioProcessingModule`) gets what koe plays as
the far-end reference and cleans the microphone signal with it, in 10 ms frames at 16 kHz. Without it,
local speakers would make the character interrupt itself. Headphone mode skips it.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import numpy as np

from agent.errors import KoeError

RATE = 16000
FRAME = RATE // 100  # 10 ms, the module's frame size


def _to_int16(audio: np.ndarray) -> np.ndarray:
    if audio.dtype == np.int16:
        return audio
    return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


class EchoCanceller:
    """One echo canceller: `far_end()` for what is played, `process()` for what the microphone hears."""

    def __init__(self, noise_suppression: bool = True, delay_ms: int = 0):
        try:
            from livekit import rtc
        except ImportError:
            raise KoeError("echo cancellation needs the livekit package: pip install 'koe[aec]'") from None
        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=True, noise_suppression=noise_suppression, high_pass_filter=True
        )
        if delay_ms:
            self._apm.set_stream_delay_ms(delay_ms)
        self._far = np.zeros(0, dtype=np.int16)
        self._near = np.zeros(0, dtype=np.int16)
        self._lock = threading.Lock()  # playback and capture run on different threads

    def _frame(self, samples: np.ndarray):
        frame = self._rtc.AudioFrame.create(RATE, 1, FRAME)
        np.frombuffer(frame.data, dtype=np.int16)[:] = samples
        return frame

    def far_end(self, audio: np.ndarray, rate: int) -> None:
        """Audio handed to the speakers (any rate, int16 or float): the echo reference."""
        import soxr

        samples = audio if rate == RATE else soxr.resample(audio.astype(np.float32) / 32768.0, rate, RATE)
        with self._lock:
            self._far = np.concatenate([self._far, _to_int16(samples)])
            while len(self._far) >= FRAME:
                self._apm.process_reverse_stream(self._frame(self._far[:FRAME]))
                self._far = self._far[FRAME:]

    def process(self, mic: np.ndarray) -> np.ndarray:
        """Microphone audio at 16 kHz (float32 in [-1, 1]) -> the same with the echo removed.

        Returns whole 10 ms frames only; a remainder waits for the next call.
        """
        with self._lock:
            self._near = np.concatenate([self._near, _to_int16(mic)])
            n = len(self._near) // FRAME * FRAME
            out = np.empty(n, dtype=np.int16)
            for start in range(0, n, FRAME):
                frame = self._frame(self._near[start : start + FRAME])
                self._apm.process_stream(frame)
                out[start : start + FRAME] = np.frombuffer(frame.data, dtype=np.int16)
            self._near = self._near[n:]
        return out.astype(np.float32) / 32768.0


class EchoCancelledSource:
    """Wraps a 16 kHz audio source so that every block passes the echo canceller."""

    def __init__(self, source, canceller: EchoCanceller):
        self.source = source
        self.canceller = canceller
        self.realtime = getattr(source, "realtime", True)
        self.name = getattr(source, "name", "microphone")

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        async for block in self.source:
            cleaned = self.canceller.process(block)
            if len(cleaned):
                yield cleaned
