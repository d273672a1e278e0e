"""`koe serve`: the avatar feed (WebSocket + browser demo page) for Unity or a browser.

koe serve                      # ws://127.0.0.1:8765/ws, demo page at http://127.0.0.1:8765/
koe serve --voice tone         # a hum instead of the voice: check the avatar wiring without models
koe serve --host 0.0.0.0       # other machines: needs [server] token or $KOE_TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.character import Character
from agent.config import KoeConfig

if TYPE_CHECKING:
    from tts.engine import TtsEngine, VoiceSpec

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the conversation to a Unity avatar or a browser over a WebSocket",
        description="Serve the conversation of `koe chat` over one WebSocket (docs/protocol.md), "
        "with a browser demo page at the same address.",
    )
    parser.add_argument("--host", help="address to bind (default: [server] host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: [server] port, 8765)")
    parser.add_argument("--character", metavar="NAME", help="default character (default: [character] name)")
    parser.add_argument(
        "--voice",
        choices=("local", "tone"),
        default="local",
        help="local: the character's GPT-SoVITS voice; tone: a hum (no models needed)",
    )
    parser.add_argument("--no-asr", action="store_true", help="text input only (no speech recognition model)")
    parser.add_argument("--no-greeting", action="store_true", help="do not greet new sessions")
    parser.set_defaults(handler=run_serve)


def build_engines(args: argparse.Namespace, config: KoeConfig):
    """The LLM client, voice, VAD and ASR that sessions use."""
    from agent.character import find_character
    from agent.llm import LlmClient
    from agent.server import TONE_RATE, Engines, tone_voice

    def load_character(character_id: str):
        return find_character(config.character.characters_dir, character_id)

    default_character = args.character or config.character.name
    character = load_character(default_character)  # fail now, not at the first connection
    synthesize, sample_rate = tone_voice, TONE_RATE
    if args.voice == "local":
        from tts.engine import TtsEngine

        device = _device(config.tts.device)
        voices = CharacterVoices(
            lambda spec, clips: TtsEngine.load(spec, config.models.dir, config.tts, device, clips)
        )
        synthesize, sample_rate = voices.synthesize, voices.engine(character).sample_rate
    engines = Engines(
        stream_reply=LlmClient(config.llm).stream,
        synthesize=synthesize,
        sample_rate=sample_rate,
        load_character=load_character,
        default_character=default_character,
    )
    if not args.no_asr:
        from asr.endpointer import Endpointer
        from asr.transcriber import Transcriber

        transcriber = Transcriber.from_config(config.asr, config.models.dir)

        async def transcribe(audio) -> str:
            return (await transcriber.transcribe_async(audio)).text

        engines.transcribe = transcribe
        engines.make_endpointer = lambda: Endpointer(config.vad)
        engines.partial_interval_s = config.asr.partial_interval_ms / 1000
    return engines


class CharacterVoices:
    """The characters' GPT-SoVITS voices: one engine per weights pair, loaded on first use.

    `synthesize(character, text, emotion)` speaks with the emotion's reference clip (`Character.reference`),
    as `Engines.synthesize` expects: (sample_rate, int16) chunks as the engine streams them.
    """

    def __init__(self, load: Callable[[VoiceSpec, tuple[Path, ...]], TtsEngine]) -> None:
        """`load(voice, clips)` loads an engine for the voice and prepares the other clips it speaks with."""
        self.load = load
        self.engines: dict[tuple[Path, Path], TtsEngine] = {}
        self._lock = threading.Lock()

    @staticmethod
    def voice(character: Character, emotion: str | None = None) -> VoiceSpec:
        from tts.engine import VoiceSpec

        ref = character.reference(emotion)
        gpt, sovits = character.voice.gpt_weights, character.voice.sovits_weights
        return VoiceSpec(
            gpt=gpt, sovits=sovits, ref_audio=ref.audio, ref_text=ref.text, ref_lang=ref.language
        )

    def engine(self, character: Character) -> TtsEngine:
        key = (character.voice.gpt_weights, character.voice.sovits_weights)
        with self._lock:  # two sessions asking for a new voice at once load it once
            if key not in self.engines:
                log.info("loading the voice of %s (%s)", character.name, key[0].name)
                self.engines[key] = self.load(self.voice(character), character.emotion_clips())
            return self.engines[key]

    async def synthesize(
        self, character: Character, text: str, emotion: str | None
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        engine = await asyncio.to_thread(self.engine, character)  # loads in a thread the first time
        async for chunk in engine.synthesize(text, character.language, voice=self.voice(character, emotion)):
            yield chunk.sample_rate, chunk.audio


def _device(device: str) -> str:
    """`auto`/`cuda` fall back to the CPU when CUDA is unavailable."""
    if device == "cpu":
        return "cpu"
    import torch

    return ("cuda" if device == "auto" else device) if torch.cuda.is_available() else "cpu"


def run_serve(args: argparse.Namespace, config: KoeConfig) -> int:
    from agent.character_cli import history_dir
    from agent.server import AvatarServer

    server_config = config.server.model_copy()
    if args.host:
        server_config.host = args.host
    if args.port:
        server_config.port = args.port
    engines = build_engines(args, config)
    if not getattr(args, "verbose", False):
        logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    server = AvatarServer(
        server_config,
        engines,
        history_dir(config),
        llm_config=config.llm,
        greet=not args.no_greeting,
    )

    async def main() -> None:
        async with server:
            print(
                f"koe serve: open {server.http_url} in a browser; avatars connect to {server.ws_url}",
                flush=True,
            )
            await asyncio.Event().wait()

    asyncio.run(main())
    return 0
