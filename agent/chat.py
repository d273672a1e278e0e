"""`koe chat`: talk to the character in a terminal, by voice (default) or typing (`--text`).

The loop: the microphone listener (or stdin) gives the user's words; the conversation streams the LLM
reply and hands it over piece by piece; each piece is synthesized in the character's voice (the TTS of
piece k+1 runs while piece k plays) and played; playback reports what was heard, so a barge-in keeps
only the heard text in the history. Speaking while the character talks interrupts it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from agent.config import KoeConfig
from agent.errors import KoeError

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
    p.add_argument("--input", metavar="WAV", type=Path, help="play this file as the microphone (demos, tests)")
    p.set_defaults(handler=run_chat)


@dataclass
class TurnTimes:
    """Latencies of one turn, seconds from the end of the user's speech (or the Enter key)."""

    transcript: float | None = None
    first_token: float | None = None
    first_audio: float | None = None


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

    @property
    def busy(self) -> bool:
        """Whether audio is pending or playing."""
        return bool(self._pending)

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
        self.conversation = Conversation.from_config(config.llm, self.character, self.llm.stream, log_)
        self.engine = None if args.mute else self._load_engine()
        self.player = (
            None if self.engine is None else Player(self.engine.sample_rate, config.audio.output_device)
        )
        self.times = TurnTimes()
        self.turn_start = 0.0

    def _load_engine(self):
        from tts.engine import TtsEngine, VoiceSpec

        voice = self.character.voice
        spec = VoiceSpec(
            voice.gpt_weights, voice.sovits_weights, voice.ref_audio, voice.ref_text,
            voice.ref_language or self.character.language,
        )  # fmt: skip
        self.console.print(f"[dim]loading the voice of {self.character.name}...[/]")
        started = time.perf_counter()
        engine = TtsEngine.load(spec, self.config.models.dir, self.config.tts)
        self.console.print(f"[dim]voice ready in {time.perf_counter() - started:.1f} s[/]")
        return engine

    # ---------------------------------------------------------------------------- speaking
    async def speak(self, piece) -> None:
        """Synthesize one piece into the player's queue (or show it only, when muted)."""
        self.console.print(f"[bold magenta]{self.character.name}:[/] {piece.text}")
        if self.engine is None:
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
        self.player.play(piece, np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, np.int16))

    def on_event(self, event: dict) -> None:
        if event.get("type") == "error":
            self.console.print(f"[red]{event.get('message')}[/]")
        elif event.get("type") == "emotion":
            self.console.print(f"[dim]({event.get('tag')})[/]")

    def interrupt(self) -> None:
        self.conversation.interrupt()
        if self.player is not None:
            self.player.clear()
        if self.engine is not None:
            self.engine.cancel()

    async def respond(self, text: str) -> None:
        self.console.print("[dim]thinking...[/]")
        result = await self.conversation.respond(
            text, self.speak, on_event=self.on_event, stop_playback=self.player.clear if self.player else None
        )
        self.times.first_token = result.first_piece_s
        parts = [f"{name} {value * 1000:.0f} ms" for name, value in (
            ("transcript", self.times.transcript), ("LLM first piece", self.times.first_token),
            ("first audio", self.times.first_audio),
        ) if value is not None]  # fmt: skip
        if parts:
            self.console.print(f"[dim]{' · '.join(parts)}{' (interrupted)' if result.interrupted else ''}[/]")

    async def _barge_in_if_sustained(self, endpointer, event, reply: asyncio.Task) -> None:
        """Interrupt the reply once the user's speech lasted `[audio] barge_in_min_ms`."""
        while not reply.done():
            verdict = sustained_speech(endpointer, event.t, self.config.audio.barge_in_min_ms)
            if verdict is not None:
                if verdict:
                    self.console.print("[dim](interrupted)[/]")
                    self.interrupt()
                return
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------------------- loops
    async def run(self) -> None:
        try:
            self.turn_start = time.perf_counter()
            await self.conversation.greet(self.speak, on_event=self.on_event)
            if self.args.text:
                await self._typing_loop()
            else:
                await self._voice_loop()
        finally:
            await self.conversation.aclose()
            await self.llm.close()
            if self.player:
                self.player.close()

    async def _typing_loop(self) -> None:
        self.console.print("[dim]type a message, Enter to send; Ctrl-D or Ctrl-C to leave[/]")
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            text = line.strip()
            if text:
                self.times = TurnTimes()
                self.turn_start = time.perf_counter()
                await self.respond(text)

    async def _voice_loop(self) -> None:
        from asr.endpointer import SpeechStarted
        from asr.listener import Heard, Listener
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
        self.console.print(f"[dim]listening on {source.name}; speak, Ctrl-C to leave[/]")
        reply: asyncio.Task | None = None
        async for event in listener.events():
            if isinstance(event, SpeechStarted) and reply is not None and not reply.done() and audio.barge_in:
                asyncio.create_task(self._barge_in_if_sustained(listener.endpointer, event, reply))
            elif isinstance(event, Heard) and event.text.strip():
                if reply is not None and not reply.done():
                    await reply
                self.times = TurnTimes(transcript=event.latency_ms / 1000 if event.latency_ms else None)
                self.turn_start = time.perf_counter() - (self.times.transcript or 0.0)
                self.console.print(f"[bold cyan]you:[/] {event.text}")
                reply = asyncio.create_task(self.respond(event.text))
        if reply is not None:  # the input ended (a file source): let the last reply finish
            await reply


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
    console = Console()
    chat = Chat(config, args, console)
    try:
        asyncio.run(chat.run())
    except KeyboardInterrupt:
        console.print("\n[dim]bye: the conversation is saved[/]")
    return 0
