"""`koe chat`: talk to the character in a terminal, by voice (default) or typing (`--text`).

The loop: the microphone listener (or stdin) gives the user's words; the conversation streams the LLM
reply and hands it over piece by piece; each piece is synthesized in the character's voice (the TTS of
piece k+1 runs while piece k plays) and played; playback reports what was heard, so a barge-in keeps
only the heard text in the history. Speaking while the character talks interrupts it.

`ChatView` is what the user sees: the state (listening / hearing you / thinking / speaking), the live
transcript, the reply as the LLM writes it, and per turn the latencies from the end of speech to the
transcript, the LLM's first token, the first audio synthesized and its first sample handed to the
speakers (voice-to-voice). Before anything loads, `agent.first_run` checks what the chat needs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from agent.config import KoeConfig
from agent.player import Player
from agent.reply_text import StreamFilter, clean_piece, take_emotion_tags
from agent.turn import join_pieces

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat",
        help="talk to the character (voice, or --text to type)",
        description="A spoken conversation with the configured character. Resumes the last conversation.",
    )
    p.add_argument("--text", action="store_true", help="type instead of speaking (no microphone needed)")
    p.add_argument("--mute", action="store_true", help="do not speak the replies (text only)")
    p.add_argument("--new", action="store_true", help="start a new conversation instead of resuming")
    p.add_argument("--character", metavar="NAME", help="character to talk to (default: [character] name)")
    p.add_argument(
        "--input", metavar="WAV", type=Path, help="play this file as the microphone (demos, tests)"
    )
    p.set_defaults(handler=run_chat)


@dataclass
class TurnTimes:
    """Latencies of one turn, seconds from the end of the user's speech (or the Enter key)."""

    transcript: float | None = None  # the words are known
    first_token: float | None = None  # the LLM's first text arrived
    first_audio: float | None = None  # the first piece's audio is synthesized
    voice_to_voice: float | None = None  # its first sample was handed to the speakers

    def line(self, typed: bool) -> str:
        """`latency after the end of your speech: transcript 310 ms · LLM first token 820 ms · ...`, or
        an empty string when nothing was measured."""
        parts = [f"{name} {value * 1000:.0f} ms" for name, value in (
            ("transcript", self.transcript), ("LLM first token", self.first_token),
            ("first audio", self.first_audio), ("voice-to-voice", self.voice_to_voice),
        ) if value is not None]  # fmt: skip
        if not parts:
            return ""
        return f"latency after {'Enter' if typed else 'the end of your speech'}: {' · '.join(parts)}"


LISTENING, HEARING, THINKING, SPEAKING = "listening", "hearing you", "thinking", "speaking"
STATE_STYLES = {LISTENING: "green", HEARING: "cyan", THINKING: "yellow", SPEAKING: "magenta"}
UNFINISHED_TAG = regex.compile(r"[\[【][^\]】]{0,25}$")  # "[hap" at the end: maybe an emotion tag


def reply_preview(text: str) -> str:
    """The reply as the LLM has written it so far, without emotion tags and markdown (display only)."""
    return clean_piece(take_emotion_tags(UNFINISHED_TAG.sub("", text), set())[0])


class ChatView:
    """What the terminal shows: the state, the live transcript, the reply as it streams, the latencies.

    On a terminal a rich `Live` area at the bottom shows the state, what the user is saying and the reply
    being written (redrawn at most 8 times a second); finished lines (what you said, the reply, the
    latencies) are printed above it. When stdout is not a terminal (pipes, logs, tests) every state
    change, partial transcript and spoken piece is one plain line instead.
    """

    def __init__(self, console: Console, name: str):
        self.console = console
        self.name = name
        self.live = console.is_terminal
        self.current = ""
        self._partial = ""
        self._reply = ""  # the reply as the LLM writes it
        self._spoken: list[str] = []  # the pieces handed to the voice (all there is of a greeting)
        self._display: Live | None = None

    def __rich__(self) -> Group:
        lines = []
        if self.current:
            lines.append(Text.assemble(("● ", STATE_STYLES[self.current]), (self.current, "bold")))
        if self._partial:
            lines.append(Text(f"you: {self._partial}", style="italic cyan"))
        if reply := self._reply or join_pieces(self._spoken):
            lines.append(Text.assemble((f"{self.name}: ", "bold magenta"), reply))
        return Group(*lines)

    def start(self) -> None:
        """Show the live area (terminal only); `stop()` hides it, e.g. while the user types."""
        if self.live and self._display is None:
            self._display = Live(self, console=self.console, refresh_per_second=8, transient=True)
            self._display.start()

    def stop(self) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None

    def state(self, name: str) -> None:
        if name != self.current:
            self.current = name
            if not self.live:
                self.console.print(f"· {name}", style=STATE_STYLES[name], highlight=False)

    def partial(self, text: str) -> None:
        """The words of the utterance in progress so far ("" clears them)."""
        text = text.strip()
        if text != self._partial:
            self._partial = text
            if text and not self.live:
                self.console.print(f"  … {escape(text)}", style="italic", highlight=False)

    def user(self, text: str, echoed: bool = False) -> None:
        """What the user said (or typed: on a terminal the typed line is on screen already)."""
        self._partial = ""
        if not (echoed and self.live):
            self.console.print(f"[bold cyan]you:[/] {escape(text)}", highlight=False)

    def reply_so_far(self, text: str) -> None:
        """The reply as it streams in (shown in the live area)."""
        self._reply = reply_preview(text)

    def piece(self, text: str) -> None:
        """A piece handed to the voice: its own line when piped (the live area shows the stream)."""
        self._spoken.append(text)
        if not self.live:
            self.console.print(f"[bold magenta]{escape(self.name)}:[/] {escape(text)}", highlight=False)

    def reply_done(self, heard: str, interrupted: bool) -> None:
        """The turn is over: on a terminal the reply becomes a line above the live area."""
        self._reply, self._spoken = "", []
        if self.live and heard:
            cut = " [dim](interrupted)[/]" if interrupted else ""
            self.console.print(f"[bold magenta]{escape(self.name)}:[/] {escape(heard)}{cut}", highlight=False)
        elif interrupted:
            self.note("(interrupted)")

    def note(self, text: str, style: str = "dim") -> None:
        self.console.print(escape(text), style=style, highlight=False)


class Chat:
    """One terminal conversation: listener or keyboard in, conversation, TTS and player out."""

    def __init__(self, config: KoeConfig, args: argparse.Namespace, console: Console):
        from agent.character import find_character
        from agent.character_cli import history_store
        from agent.conversation import Conversation
        from agent.llm import LlmClient

        self.config, self.args, self.console = config, args, console
        character_id = args.character or config.character.name
        self.character = find_character(config.character.characters_dir, character_id)
        self.llm = LlmClient(config.llm)
        log_ = history_store(config, character_id).resume(new=args.new)
        self.conversation = Conversation.from_config(config.llm, self.character, self.stream, log_)
        self.view = ChatView(console, self.character.name)
        self.engine = None if args.mute else self._load_engine()
        self.player = (
            None if self.engine is None else Player(self.engine.sample_rate, config.audio.output_device)
        )
        self.endpointer = None  # the listener's, in voice mode: is the user speaking right now?
        self.times = TurnTimes()
        self.turn_start = 0.0

    def _load_engine(self):
        from tts.engine import TtsEngine, VoiceSpec

        voice = self.character.voice
        spec = VoiceSpec(
            voice.gpt_weights, voice.sovits_weights, voice.ref_audio, voice.ref_text,
            voice.ref_language or self.character.language,
        )  # fmt: skip
        self.view.note(f"loading the voice of {self.character.name}...")
        started = time.perf_counter()
        engine = TtsEngine.load(
            spec, self.config.models.dir, self.config.tts, clips=self.character.emotion_clips()
        )
        self.view.note(f"voice ready in {time.perf_counter() - started:.1f} s")
        return engine

    # ---------------------------------------------------------------------------- the reply
    async def stream(self, messages: list[dict]):
        """The LLM's reply stream, timed (first token) and shown in the live view as it arrives."""
        shown, written = StreamFilter(), ""
        async with aclosing(self.llm.stream(messages)) as chunks:
            async for chunk in chunks:
                if self.times.first_token is None:
                    self.times.first_token = time.perf_counter() - self.turn_start
                written += shown.feed(chunk)
                self.view.reply_so_far(written)
                yield chunk

    async def speak(self, piece) -> None:
        """Synthesize one piece into the player's queue (or show it only, when muted)."""
        if self.engine is None:
            self.view.state(SPEAKING)
            self.view.piece(piece.text)
            piece.heard(1.0)
            return
        from tts.engine import VoiceSpec

        reference = self.character.reference(piece.emotion)
        voice = VoiceSpec(
            self.engine.voice.gpt,
            self.engine.voice.sovits,
            reference.audio,
            reference.text,
            reference.language,
        )
        chunks = [
            c async for c in self.engine.synthesize(piece.text, self.character.language, "sentence", voice)
        ]
        if self.times.first_audio is None:
            self.times.first_audio = time.perf_counter() - self.turn_start
        self.view.piece(piece.text)
        self.player.play(
            piece, np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, np.int16)
        )

    async def _watch_speakers(self) -> None:
        """The turn's first sample reached the speakers: voice-to-voice latency, state 'speaking'."""
        while self.player.first_sample_at is None:
            await asyncio.sleep(0.01)
        self.times.voice_to_voice = self.player.first_sample_at - self.turn_start
        self.view.state(SPEAKING)

    def on_event(self, event: dict) -> None:
        if event.get("type") == "error":
            self.view.note(str(event.get("message")), style="red")
        elif event.get("type") == "emotion":
            self.view.note(f"({event.get('tag')})")

    def interrupt(self) -> None:
        self.conversation.interrupt()
        if self.player is not None:
            self.player.clear()
        if self.engine is not None:
            self.engine.cancel()

    async def respond(self, text: str, typed: bool = False) -> None:
        self.view.state(THINKING)
        stop = self.player.clear if self.player else None
        await self._reply(
            self.conversation.respond(text, self.speak, on_event=self.on_event, stop_playback=stop)
        )
        if latencies := self.times.line(typed):
            self.view.note(latencies)
        self.view.state(self._idle_state())

    async def _reply(self, turn) -> None:
        """Await one reply turn (a `TurnResult`, or None: nothing said) with the speakers watched."""
        watch = None
        if self.player is not None:
            self.player.mark_turn()
            watch = asyncio.create_task(self._watch_speakers())
        try:
            result = await turn
        finally:
            if watch is not None:
                watch.cancel()
        self.view.reply_done(result.heard if result else "", bool(result and result.interrupted))

    def _idle_state(self) -> str:
        return HEARING if self.endpointer is not None and self.endpointer.speaking else LISTENING

    async def _barge_in_if_sustained(self, endpointer, event, reply: asyncio.Task) -> None:
        """Interrupt the reply once the user's speech lasted `[audio] barge_in_min_ms`."""
        while not reply.done():
            verdict = sustained_speech(endpointer, event.t, self.config.audio.barge_in_min_ms)
            if verdict is not None:
                if verdict:
                    self.interrupt()
                    self.view.state(HEARING)
                return
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------------------- loops
    async def run(self) -> None:
        self.view.start()
        try:
            self.turn_start = time.perf_counter()
            await self._reply(self.conversation.greet(self.speak, on_event=self.on_event))
            if self.args.text:
                await self._typing_loop()
            else:
                await self._voice_loop()
        finally:
            self.view.stop()
            await self.conversation.aclose()
            await self.llm.close()
            if self.player:
                self.player.close()

    async def _typing_loop(self) -> None:
        self.view.note("type a message, Enter to send; Ctrl-D or Ctrl-C to leave")
        typed = TypedLines(sys.stdin.fileno())
        while True:
            self.view.state(LISTENING)
            self.view.stop()  # on a terminal the live area would draw over what is typed
            if self.view.live:
                self.console.print("[bold cyan]you:[/] ", end="")
            line = await typed.next()
            if line is None:  # Ctrl-D
                if self.view.live:
                    self.console.print()
                return
            self.view.start()
            text = line.strip()
            if text:
                self.view.user(text, echoed=True)
                self.times = TurnTimes()
                self.turn_start = time.perf_counter()
                await self.respond(text, typed=True)

    async def _voice_loop(self) -> None:
        from asr.endpointer import SpeechStarted, Utterance
        from asr.listener import Heard, Listener, PartialTranscript
        from asr.sources import FileSource, MicrophoneSource
        from asr.transcriber import Transcriber

        asr = self.config.asr
        transcriber = Transcriber(
            asr.model, models_dir=self.config.models.dir, device=asr.device, compute_type=asr.compute_type,
            language=asr.language, beam_size=asr.beam_size, initial_prompt=asr.initial_prompt,
            hotwords=asr.hotwords, cpu_threads=asr.cpu_threads,
        )  # fmt: skip
        audio = self.config.audio
        if self.args.input is not None:
            source = FileSource(self.args.input, audio.block_ms)
            source.name = str(self.args.input)
        else:
            source = MicrophoneSource(audio.input_device, audio.block_ms)
        if self.player is not None and audio.echo_cancellation and not audio.headphones:
            from agent.echo import EchoCancelledSource, EchoCanceller

            self.player.echo = EchoCanceller()
            source = EchoCancelledSource(source, self.player.echo)
        listener = Listener(source, transcriber, self.config.vad, asr.partial_interval_ms)
        self.endpointer = listener.endpointer
        self.view.note(f"listening on {source.name}; speak, Ctrl-C to leave")
        self.view.state(LISTENING)
        reply: asyncio.Task | None = None
        ended_at = -1.0  # stream time the last utterance ended: later partials of it are stale
        async for event in listener.events():
            replying = reply is not None and not reply.done()
            if isinstance(event, SpeechStarted):
                if replying and audio.barge_in:
                    asyncio.create_task(self._barge_in_if_sustained(listener.endpointer, event, reply))
                elif not replying:
                    self.view.state(HEARING)
            elif isinstance(event, PartialTranscript) and event.t > ended_at:
                self.view.partial(event.text)
            elif isinstance(event, Utterance):
                ended_at = event.detected_at
                if not replying:
                    self.view.state(THINKING)
            elif isinstance(event, Heard):
                if not event.text.strip():
                    self.view.partial("")
                    if not replying:
                        self.view.state(self._idle_state())
                    continue
                if replying:
                    await reply
                self.times = TurnTimes(transcript=event.latency_ms / 1000 if event.latency_ms else None)
                self.turn_start = time.perf_counter() - (self.times.transcript or 0.0)
                self.view.user(event.text)
                reply = asyncio.create_task(self.respond(event.text))
        if reply is not None:  # the input ended (a file source): let the last reply finish
            await reply


class TypedLines:
    """The lines typed on stdin, read by a daemon thread with `os.read`: Ctrl-C never waits for a read
    that blocks (a thread of the event loop's executor would keep `asyncio.run` from returning)."""

    def __init__(self, fd: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=self._read, args=(fd,), daemon=True, name="koe-stdin").start()

    async def next(self) -> str | None:
        """The next line, or None at the end of the input."""
        return await self._lines.get()

    def _read(self, fd: int) -> None:
        pending = b""
        try:
            while data := os.read(fd, 65536):
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    self._put(line.decode(errors="replace"))
        except OSError:  # stdin closed under us: the end of the input
            pass
        if pending.strip():
            self._put(pending.decode(errors="replace"))
        self._put(None)

    def _put(self, line: str | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._lines.put_nowait, line)
        except RuntimeError:  # the loop is closed: the chat is over
            pass


def sustained_speech(endpointer, started_at: float, min_ms: int) -> bool | None:
    """Whether the user's speech since `started_at` is a real interruption: True once speech has lasted
    (nearly) `min_ms` and goes on, False when it stopped short (a cough, "mm"), None while undecided."""
    window = min_ms / 1000
    if not endpointer.speaking:
        return False
    if endpointer.time - started_at < window:
        return None
    spoken = endpointer.last_speech_end - started_at
    still_talking = endpointer.time - endpointer.last_speech_end < 0.15
    return spoken >= 0.8 * window and still_talking


def run_chat(args: argparse.Namespace, config: KoeConfig) -> int:
    from agent.first_run import prepare

    console = Console()
    prepare(config, args, console)  # what is missing: offered on a terminal, else a one-line error
    chat = Chat(config, args, console)
    try:
        asyncio.run(chat.run())
    except KeyboardInterrupt:
        console.print("\n[dim]bye: the conversation is saved[/]")
    return 0
