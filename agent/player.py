"""Local playback for `koe chat`: pieces of the reply in order on the speakers, and what was heard.

A PortAudio callback pulls 20 ms blocks from the pending audio, so nothing blocks on a slow device and
a barge-in (`clear()`) silences the speakers within one block plus the device's own latency. Each
piece reports how much of it was handed to the device, which is what the history keeps when the user
cuts in. The echo canceller, when set, gets every block played as its far-end reference.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from agent.errors import KoeError


class Player:
    """Plays pieces in order on the speakers and reports what of each was heard.

    A PortAudio callback pulls 20 ms blocks from the pending audio, so nothing blocks on a slow device,
    and `clear()` (barge-in) silences the speakers within one block plus the device's own latency. The
    samples counted as played are the ones handed to the device.
    """

    def __init__(self, rate: int, device=None):
        import sounddevice as sd

        self.rate = rate
        self.echo = None  # an EchoCanceller that gets every block played (voice mode on speakers)
        self.played_samples = 0  # of piece audio handed to the device, all pieces together
        self.first_sample_at: float | None = None  # perf_counter of the first block since `mark_turn()`
        self._pending: deque[_Playing] = deque()
        self._lock = threading.Lock()  # the callback runs on PortAudio's thread
        try:
            self.stream = sd.OutputStream(
                samplerate=rate, channels=1, dtype="int16", device=device, blocksize=rate // 50,
                latency="low", callback=self._fill,
            )  # fmt: skip
            self.stream.start()
        except Exception as exc:  # no PortAudio device: tell the user how to go on
            raise KoeError(f"cannot open the speakers ({exc}); use --mute to chat without audio") from None

    def play(self, piece, audio: np.ndarray) -> None:
        """Queue one piece's whole audio (int16) after what is pending; call from the event loop."""
        playing = _Playing(piece, np.asarray(audio, dtype=np.int16), asyncio.get_running_loop())
        with self._lock:
            self._pending.append(playing)

    def mark_turn(self) -> None:
        """A turn starts: `first_sample_at` will be set when its first audio reaches the device."""
        with self._lock:
            self.first_sample_at = None

    def clear(self) -> None:
        """Barge-in: drop everything pending and stop the current piece where it is."""
        with self._lock:
            current = self._pending[0] if self._pending else None
            self._pending.clear()
        if current is not None and current.offset > 0:
            current.report(min(current.offset / len(current.audio), 0.99))

    def _fill(self, outdata, frames: int, time_info, status) -> None:
        out = outdata[:, 0]
        filled = 0
        finished = []
        with self._lock:
            while filled < frames and self._pending:
                playing = self._pending[0]
                n = min(frames - filled, len(playing.audio) - playing.offset)
                out[filled : filled + n] = playing.audio[playing.offset : playing.offset + n]
                playing.offset += n
                filled += n
                if playing.offset >= len(playing.audio):
                    finished.append(self._pending.popleft())
            self.played_samples += filled
            if filled and self.first_sample_at is None:
                self.first_sample_at = time.perf_counter()
        out[filled:] = 0
        if self.echo is not None:
            self.echo.far_end(out.copy(), self.rate)
        for playing in finished:
            playing.report(1.0)

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


@dataclass
class _Playing:
    """One piece in the player: its audio, how far it has played, the loop to report progress to."""

    piece: object
    audio: np.ndarray
    loop: asyncio.AbstractEventLoop
    offset: int = 0

    def report(self, fraction: float) -> None:
        self.loop.call_soon_threadsafe(self.piece.heard, fraction)
