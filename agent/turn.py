"""One reply turn: LLM tokens in, speakable pieces out to the voice, what was heard recorded.

    LLM stream -> StreamFilter (think, code, line markdown) -> Segmenter -> emotion tags, clean_piece
               -> Piece -> speak(piece) ... playback calls piece.heard(...)

The turn talks to the rest of koe through three small interfaces, so the real TTS and audio output
(or fakes in tests) plug in unchanged:

- `stream(messages) -> AsyncIterator[str]`: the reply text as it arrives (`LlmClient.stream`).
- `speak(piece)`: async; synthesise the piece and queue it for playback, returning once it is queued
  (not once it is played). Pieces arrive in order while the LLM is still writing; at most `max_ahead`
  pieces are handed over before the oldest has been heard, so the TTS of piece k+1 runs while piece k
  plays.
- playback reports progress on the piece itself: `piece.heard(0.4)` (fraction played) or
  `piece.heard("the words heard")`; `piece.heard(1.0)` when it finished. Call it on the event loop
  (from an audio thread: `loop.call_soon_threadsafe(piece.heard, 1.0)`).

Barge-in: `interrupt()` (or cancelling the task running `run()`) stops the LLM stream at once (the
HTTP response is closed), calls `stop_playback()`, and the result holds only what was heard, marked
interrupted. Events for the avatar/UI go to `on_event` as JSON-ready dicts.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import regex

from agent.character import Character
from agent.errors import KoeError
from agent.reply_text import StreamFilter, clean_piece, take_emotion_tags
from agent.segmenter import Segmenter

log = logging.getLogger(__name__)

CJK_EDGE = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}ー。！？、，「」『』（）]")

ChatStream = Callable[[list[dict]], AsyncIterator[str]]
Event = dict


class Piece:
    """One piece of the reply as spoken and shown, and how much of it the listener has heard."""

    def __init__(self, index: int, text: str, emotion: str | None, expression: str | None) -> None:
        self.index = index
        self.text = text
        self.emotion = emotion  # tag, or None for the character's default emotion
        self.expression = expression  # the avatar expression for that emotion
        self.heard_text = ""
        self._played = asyncio.Event()

    def heard(self, progress: str | float) -> None:
        """Playback progress: a fraction of the piece (1.0 = finished) or the words heard so far."""
        if isinstance(progress, str):
            self.heard_text = progress.strip()
            finished = self.heard_text == self.text
        else:
            self.heard_text = heard_prefix(self.text, progress)
            finished = progress >= 1.0
        if finished:
            self.heard_text = self.text
            self._played.set()

    @property
    def played(self) -> bool:
        return self._played.is_set()

    async def wait_played(self) -> None:
        await self._played.wait()

    def __repr__(self) -> str:
        return f"Piece({self.index}, {self.text!r}, emotion={self.emotion!r})"


@dataclass
class TurnResult:
    reply: str  # everything the character meant to say (cleaned pieces)
    heard: str  # what the listener actually heard
    interrupted: bool = False
    error: str | None = None
    emotions: list[str] = field(default_factory=list)  # tags of the heard pieces, in order
    pieces: list[Piece] = field(default_factory=list)
    first_piece_s: float | None = None  # from run() to the first piece handed to speak


def heard_prefix(text: str, fraction: float) -> str:
    """The part of `text` heard after `fraction` of its audio: whole words where there are spaces."""
    if fraction >= 1.0:
        return text
    cut = max(0, int(len(text) * fraction))
    prefix = text[:cut]
    if cut < len(text) and " " in text and not text[cut].isspace():
        prefix = prefix[: max(0, prefix.rfind(" "))]  # half a word is not heard (CJK: no spaces, any cut)
    return prefix.strip()


def join_pieces(texts: list[str]) -> str:
    """Join pieces with a space between words, none next to CJK text."""
    out = ""
    for text in filter(None, texts):
        if out and not (CJK_EDGE.match(out[-1]) or CJK_EDGE.match(text[0])):
            out += " "
        out += text
    return out


class Turn:
    """Run one reply: stream, cut, speak in order, and know what was heard (see the module docstring)."""

    def __init__(
        self,
        character: Character,
        stream: ChatStream,
        messages: list[dict],
        speak: Callable[[Piece], Awaitable[None]],
        *,
        on_event: Callable[[Event], None] | None = None,
        stop_playback: Callable[[], object] | None = None,
        max_ahead: int = 2,
        segmenter: Segmenter | None = None,
    ) -> None:
        self.character = character
        self.stream = stream
        self.messages = messages
        self.speak = speak
        self.on_event = on_event or (lambda event: None)
        self.stop_playback = stop_playback
        self.max_ahead = max(1, max_ahead)
        self.segmenter = segmenter or Segmenter()
        self.pieces: list[Piece] = []
        self.error: str | None = None
        self.interrupted = False
        self._emotion: str | None = None  # current tag; None = the default emotion
        self._produced = 0  # pieces cut so far
        self._started = 0.0
        self._first_piece_at: float | None = None
        self._task: asyncio.Task | None = None
        self._interrupt_requested = False

    # ------------------------------------------------------------------------------ running
    async def run(self) -> TurnResult:
        self._task = asyncio.current_task()
        self._started = time.perf_counter()
        queue: asyncio.Queue[Piece | None] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(queue))
        try:
            await self._hand_over(queue)
            await producer
        except asyncio.CancelledError:
            self.interrupted = True
            await self._stop(producer)
            if not self._interrupt_requested:
                raise  # cancelled from outside: the caller reads `result` in its own cleanup
            self._task.uncancel()
        except KoeError as exc:  # the voice failed: stop the reply, keep what was heard
            self._fail(str(exc))
            await self._stop(producer)
        finally:
            if not producer.done():
                producer.cancel()
        result = self.result
        self.on_event({"type": "end", "interrupted": result.interrupted, "heard": result.heard})
        return result

    def interrupt(self) -> None:
        """Barge-in: stop the reply now; `run()` returns what was heard, marked interrupted."""
        if self._task is not None and not self._task.done():
            self._interrupt_requested = True
            self._task.cancel()

    @property
    def result(self) -> TurnResult:
        emotions = []
        for piece in self.pieces:
            if piece.heard_text and piece.emotion and (not emotions or emotions[-1] != piece.emotion):
                emotions.append(piece.emotion)
        first = None if self._first_piece_at is None else self._first_piece_at - self._started
        return TurnResult(
            reply=join_pieces([p.text for p in self.pieces]),
            heard=join_pieces([p.heard_text for p in self.pieces]),
            interrupted=self.interrupted,
            error=self.error,
            emotions=emotions,
            pieces=list(self.pieces),
            first_piece_s=first,
        )

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
            log.warning("%s", message)
            self.on_event({"type": "error", "message": message})

    async def _stop(self, producer: asyncio.Task) -> None:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        if self.stop_playback is not None:
            stopped = self.stop_playback()
            if inspect.isawaitable(stopped):
                await stopped

    # ------------------------------------------------------------------------------ LLM side
    async def _produce(self, queue: asyncio.Queue) -> None:
        """Read the LLM stream into pieces; an LLM failure ends the reply after what was complete."""
        cleaner = StreamFilter()
        try:
            async with aclosing(self.stream(self.messages)) as chunks:
                async for chunk in chunks:
                    for text in self.segmenter.feed(cleaner.feed(chunk)):
                        self._queue_piece(text, queue)
            for text in self.segmenter.feed(cleaner.flush()) + self.segmenter.flush():
                self._queue_piece(text, queue)
        except KoeError as exc:  # LlmError: no reply, or it broke off (the unfinished sentence is dropped)
            self._fail(str(exc))
        finally:
            queue.put_nowait(None)

    def _queue_piece(self, raw: str, queue: asyncio.Queue) -> None:
        text, tags = take_emotion_tags(raw, set(self.character.tags))
        if tags:
            self._emotion = tags[-1]
        text = clean_piece(text)
        if text:
            emotion = self._emotion
            queue.put_nowait(Piece(self._produced, text, emotion, self.character.expression(emotion)))
            self._produced += 1

    # ------------------------------------------------------------------------------ voice side
    async def _hand_over(self, queue: asyncio.Queue) -> None:
        """Give pieces to `speak` in order, at most `max_ahead` unheard; then wait until all are heard."""
        shown_emotion = self.character.default_emotion
        while (piece := await queue.get()) is not None:
            unheard = [p for p in self.pieces if not p.played]
            while len(unheard) >= self.max_ahead:
                await unheard[0].wait_played()
                unheard = [p for p in self.pieces if not p.played]
            emotion = piece.emotion or self.character.default_emotion
            if emotion != shown_emotion:
                self.on_event(
                    {"type": "emotion", "tag": emotion, "expression": piece.expression, "piece": piece.index}
                )
                shown_emotion = emotion
            self.on_event(
                {"type": "piece", "index": piece.index, "text": piece.text, "emotion": piece.emotion}
            )
            self.pieces.append(piece)
            if self._first_piece_at is None:
                self._first_piece_at = time.perf_counter()
            await self.speak(piece)
        for piece in self.pieces:
            await piece.wait_played()
