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
    """Plays pieces in order on the speakers from a worker thread and reports what was heard."""

    def __init__(self, rate: int, device=None):
        import sounddevice as sd

        try:
            self.stream = sd.OutputStream(samplerate=rate, channels=1, dtype="int16", device=device)
            self.stream.start()
        except Exception as exc:  # no PortAudio device: tell the user how to go on
            raise KoeError(f"cannot open the speakers ({exc}); use --mute to chat without audio") from None
        self.rate = rate
        self.echo = None  # an EchoCanceller that gets every block played (voice mode on speakers)
        self.queue: asyncio.Queue = asyncio.Queue()
        self._cleared = threading.Event()
        self.first_audio_at: float | None = None

    def clear(self) -> None:
        """Barge-in: drop everything queued and stop the current piece."""
        self._cleared.set()
        while not self.queue.empty():
            self.queue.get_nowait()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            piece, audio, last = await self.queue.get()
            self._cleared.clear()
            done = await asyncio.to_thread(self._play, audio)
            if self.first_audio_at is None:
                self.first_audio_at = time.perf_counter()
            piece.total_played = getattr(piece, "total_played", 0) + done
            fraction = 1.0 if last and done == len(audio) else piece.total_played / max(piece.total_len, 1)
            loop.call_soon(piece.heard, min(fraction, 1.0 if last else 0.99))

    def _play(self, audio: np.ndarray) -> int:
        block = self.rate // 50  # 20 ms, so a barge-in stops within a block
        for start in range(0, len(audio), block):
            if self._cleared.is_set():
                return start
            samples = audio[start : start + block]
            if self.echo is not None:
                self.echo.far_end(samples, self.rate)
            self.stream.write(samples.reshape(-1, 1))
        return len(audio)

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


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
        piece.total_len = sum(len(c.audio) for c in chunks)
        for i, chunk in enumerate(chunks):
            await self.player.queue.put((piece, chunk.audio, i == len(chunks) - 1))

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
        player_task = asyncio.create_task(self.player.run()) if self.player else None
        try:
            self.turn_start = time.perf_counter()
            await self.conversation.greet(self.speak, on_event=self.on_event)
            if self.args.text:
                await self._typing_loop()
            else:
                await self._voice_loop()
        finally:
            if player_task:
                player_task.cancel()
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
