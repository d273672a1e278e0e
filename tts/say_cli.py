"""`koe say`: speak a text with a voice, to a WAV file or the speakers, and report the speed."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import numpy as np

from agent.config import KoeConfig
from agent.errors import KoeError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "say",
        help="speak a text with a voice (file or speakers)",
        description="Synthesize TEXT with a character's voice (--voice) or explicit weight files "
        "(--gpt/--sovits/--ref/--ref-text/--ref-lang), write it to --out or play it.",
    )
    p.add_argument("text", help="what to say")
    p.add_argument("--voice", metavar="NAME", help="character whose voice to use (default: [character] name)")
    p.add_argument("--gpt", type=Path, help="GPT weights (.ckpt)")
    p.add_argument("--sovits", type=Path, help="SoVITS weights (.pth)")
    p.add_argument("--ref", type=Path, help="reference clip, 3-10 s")
    p.add_argument("--ref-text", default=None, help="transcript of the reference clip ('' = reference-free)")
    p.add_argument(
        "--ref-lang", default=None, help="language of the reference transcript (en, zh, ja, ko, yue)"
    )
    p.add_argument("--lang", default=None, help="language mode of the text (default: the voice's language)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: [tts] seed)")
    p.add_argument("--out", type=Path, help="write a WAV file instead of playing")
    p.add_argument("--stream", action="store_true", help="play while synthesizing (token-chunk streaming)")
    p.set_defaults(handler=run_say)


def resolve_voice(args: argparse.Namespace, config: KoeConfig):
    """The voice from explicit files, else from the character named by --voice or the config."""
    from tts.engine import VoiceSpec

    if args.gpt or args.sovits or args.ref:
        missing = [
            flag
            for flag, value in (("--gpt", args.gpt), ("--sovits", args.sovits), ("--ref", args.ref))
            if not value
        ]
        if missing:
            raise KoeError(
                f"explicit voice files need --gpt, --sovits and --ref together (missing {', '.join(missing)})"
            )
        if args.ref_lang is None:
            raise KoeError("--ref-lang is required with --ref (the language of the reference transcript)")
        return VoiceSpec(args.gpt, args.sovits, args.ref, args.ref_text or "", args.ref_lang), args.ref_lang
    from agent.character import find_character

    character = find_character(config.character.characters_dir, args.voice or config.character.name)
    voice = character.voice
    ref_lang = voice.ref_language or character.language
    return VoiceSpec(
        voice.gpt_weights, voice.sovits_weights, voice.ref_audio, voice.ref_text, ref_lang
    ), character.language


def run_say(args: argparse.Namespace, config: KoeConfig) -> int:
    from tts.engine import TtsEngine

    voice, language = resolve_voice(args, config)
    settings = config.tts.model_copy(update={"seed": args.seed} if args.seed is not None else {})
    engine = TtsEngine.load(voice, config.models.dir, settings, device=_device(config))
    lang = args.lang or language
    engine.check(args.text, lang)
    if args.out:
        chunks = asyncio.run(_collect(engine, args.text, lang))
        audio = np.concatenate([c.audio for c in chunks])
        import soundfile as sf

        sf.write(args.out, audio, engine.sample_rate, subtype="PCM_16")
        print(f"wrote {args.out} ({len(audio) / engine.sample_rate:.2f} s)")
    else:
        asyncio.run(_play(engine, args.text, lang, args.stream, config))
    stats = engine.stats
    print(f"first audio {stats.first_audio_s:.3f} s, real-time factor {stats.rtf:.2f}")
    return 0


def _device(config: KoeConfig) -> str:
    import torch

    if config.tts.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.tts.device


async def _collect(engine, text: str, lang: str):
    return [chunk async for chunk in engine.synthesize(text, lang, stream="none")]


async def _play(engine, text: str, lang: str, stream: bool, config: KoeConfig) -> None:
    try:
        import sounddevice as sd

        out = sd.OutputStream(
            samplerate=engine.sample_rate, channels=1, dtype="int16", device=config.audio.output_device
        )
    except Exception as exc:  # no PortAudio or no output device: say what to do instead
        raise KoeError(f"cannot open an audio output ({exc}); use --out FILE.wav instead") from None
    with out:
        async for chunk in engine.synthesize(text, lang, stream="tokens" if stream else "none"):
            await asyncio.to_thread(out.write, chunk.audio.reshape(-1, 1))
