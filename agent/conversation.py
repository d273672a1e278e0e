"""A conversation with one character: context in, turns run, history written, older turns summarised.

`Conversation.respond(user_text, speak)` builds the messages (system prompt, history window, the input),
runs a `Turn`, and appends the user's message and what they heard of the reply to the conversation
file, also when the turn fails or is interrupted (then the reply is the heard part, marked interrupted).
With `summarize=True`, turns that fall out of the history window are folded into a running summary by
one extra LLM call after the turn (in the background; the next turn does not wait for it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

from agent.character import Character
from agent.config import LlmConfig
from agent.context import build_messages, history_window
from agent.errors import KoeError
from agent.history import ConversationLog, Message
from agent.turn import ChatStream, Event, Piece, Turn, TurnResult

log = logging.getLogger(__name__)

SUMMARY_MIN_MESSAGES = 4  # summarise once at least this many messages fell out of the window
SUMMARY_PROMPT = (
    "You keep the memory of a spoken conversation. Update the summary with the new part of the "
    "conversation: who the user is, facts, preferences, plans and promises, in at most 120 words. "
    "Write only the summary."
)


class Conversation:
    def __init__(
        self,
        character: Character,
        stream: ChatStream,
        log_: ConversationLog,
        *,
        history_turns: int = 20,
        history_tokens: int = 3000,
        summarize: bool = False,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.character = character
        self.stream = stream
        self.log = log_
        self.history_turns = history_turns
        self.history_tokens = history_tokens
        self.summarize = summarize
        self.clock = clock
        self.current: Turn | None = None
        self._summary_task: asyncio.Task | None = None

    @classmethod
    def from_config(
        cls, config: LlmConfig, character: Character, stream: ChatStream, log_: ConversationLog, **options
    ) -> Conversation:
        return cls(
            character,
            stream,
            log_,
            history_turns=config.history_turns,
            history_tokens=config.history_tokens,
            **options,
        )

    def messages_for(self, user_text: str) -> list[dict]:
        return build_messages(
            self.character,
            self.log.messages,
            user_text,
            now=self.clock(),
            max_turns=self.history_turns,
            max_tokens=self.history_tokens,
            summary=self.log.summary,
        )

    async def respond(
        self,
        user_text: str,
        speak: Callable[[Piece], Awaitable[None]],
        *,
        on_event: Callable[[Event], None] | None = None,
        stop_playback: Callable[[], object] | None = None,
        max_ahead: int = 2,
    ) -> TurnResult:
        """Answer one user utterance; the turn is in the history when this returns (or is cancelled)."""
        turn = Turn(
            self.character,
            self.stream,
            self.messages_for(user_text),
            speak,
            on_event=on_event,
            stop_playback=stop_playback,
            max_ahead=max_ahead,
        )
        self.current = turn
        try:
            return await turn.run()
        finally:
            self.current = None
            self._record(Message("user", user_text), turn.result)
            if self.summarize and (self._summary_task is None or self._summary_task.done()):
                self._summary_task = asyncio.create_task(self.update_summary())

    async def greet(
        self, speak: Callable[[Piece], Awaitable[None]], *, on_event: Callable[[Event], None] | None = None
    ) -> TurnResult | None:
        """Say the character's greeting when the conversation is new (nothing to resume)."""
        if self.log.messages or not self.character.greeting:
            return None
        turn = Turn(self.character, _say(self.character.greeting), [], speak, on_event=on_event)
        self.current = turn
        try:
            return await turn.run()
        finally:
            self.current = None
            self._record(None, turn.result)

    def interrupt(self) -> None:
        """Barge-in: stop the reply being spoken, if any."""
        if self.current is not None:
            self.current.interrupt()

    def _record(self, user: Message | None, result: TurnResult) -> None:
        reply = Message(
            "assistant",
            result.heard,
            interrupted=result.interrupted,
            emotions=result.emotions,
            error=result.error,
        )
        self.log.add(*([user] if user else []), reply)

    async def update_summary(self) -> None:
        """Fold the messages that fell out of the history window into the summary (one LLM call)."""
        messages = self.log.messages
        window = history_window(messages, self.history_turns, self.history_tokens)
        start = next((i for i, m in enumerate(messages) if window and m is window[0]), len(messages))
        dropped = messages[self.log.summary_covers : start]
        if len(dropped) < SUMMARY_MIN_MESSAGES:
            return
        transcript = "\n".join(f"{m.role}: {m.text}" for m in dropped if m.text)
        request = [
            {"role": "system", "content": SUMMARY_PROMPT},
            {
                "role": "user",
                "content": f"Summary so far: {self.log.summary or '(none)'}\n\nNew part:\n{transcript}",
            },
        ]
        try:
            summary = "".join([text async for text in self.stream(request)]).strip()
        except KoeError as exc:
            log.warning("could not update the conversation summary: %s", exc)
            return
        if summary:
            self.log.set_summary(summary, start)

    async def aclose(self) -> None:
        """Wait for a summary still being written, so it reaches the file."""
        if self._summary_task is not None:
            await asyncio.gather(self._summary_task, return_exceptions=True)


def _say(text: str) -> ChatStream:
    """A chat stream that 'writes' fixed text (the greeting goes through the same piece pipeline)."""

    async def stream(messages: list[dict]) -> AsyncIterator[str]:
        yield text

    return stream
