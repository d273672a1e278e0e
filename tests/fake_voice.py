"""A fake TTS + audio output for turn tests and benchmarks (in the spirit of livekit's fake engines).

`FakeVoice.speak(piece)` "synthesises" for `synth_s`, then queues the piece; a player task "plays" each
piece for `play_s`, reporting progress with `piece.heard(k / steps)` like a real playback callback.
`stop()` is the barge-in flush. `log` records (what, piece index, time) for ordering and overlap checks.
"""

from __future__ import annotations

import asyncio
import time

from agent.errors import KoeError
from agent.turn import Piece


class FakeVoice:
    def __init__(self, synth_s: float = 0.0, play_s: float = 0.0, steps: int = 4, fail_on: int | None = None):
        self.synth_s = synth_s
        self.play_s = play_s
        self.steps = steps
        self.fail_on = fail_on  # piece index whose synthesis raises KoeError (a broken TTS)
        self.spoken: list[Piece] = []
        self.log: list[tuple[str, int, float]] = []
        self.stopped = 0
        self._queue: asyncio.Queue[Piece] = asyncio.Queue()
        self._player: asyncio.Task | None = None

    async def speak(self, piece: Piece) -> None:
        self.log.append(("synth_start", piece.index, time.perf_counter()))
        if piece.index == self.fail_on:
            raise KoeError(f"TTS failed on piece {piece.index}")
        if self.synth_s:
            await asyncio.sleep(self.synth_s)
        self.spoken.append(piece)
        self.log.append(("queued", piece.index, time.perf_counter()))
        if self._player is None or self._player.done():
            self._player = asyncio.create_task(self._play())
        self._queue.put_nowait(piece)

    async def _play(self) -> None:
        while True:
            piece = await self._queue.get()
            self.log.append(("play_start", piece.index, time.perf_counter()))
            for k in range(1, self.steps + 1):
                if self.play_s:
                    await asyncio.sleep(self.play_s / self.steps)
                piece.heard(k / self.steps)
            self.log.append(("play_end", piece.index, time.perf_counter()))

    def stop(self) -> None:
        self.stopped += 1
        if self._player is not None:
            self._player.cancel()
        while not self._queue.empty():
            self._queue.get_nowait()

    async def aclose(self) -> None:
        self.stop()
        if self._player is not None:
            await asyncio.gather(self._player, return_exceptions=True)
