"""`koe character new|list|show` and `koe history list|export`.

    koe character new NAME [--clip FILE | --record SECONDS] [--text TEXT] [--language L] [--force]
    koe character list
    koe character show NAME
    koe history list [--character NAME]
    koe history export [ID|last] [--character NAME] [--format md|txt|json|jsonl] [-o FILE]

`character new` writes `<characters_dir>/NAME.toml` with the pretrained v2 base voice and the standard
emotion map. The reference clip (3-10 s) is copied to `<characters_dir>/voices/NAME/`; without --text
its transcript comes from the ASR model ([asr] model); --record takes it from the microphone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
from pathlib import Path
from typing import get_args

import numpy as np
from rich.console import Console
from rich.table import Table

from agent.character import Language, character_path, find_character, list_characters, write_character
from agent.config import KoeConfig
from agent.errors import KoeError
from agent.history import EXPORT_FORMATS, HistoryStore, export

BASE_VOICE = (
    "gsv-v2final-pretrained/s1bert25hz-5kh-longer-epoch=12-step=369668.ckpt",
    "gsv-v2final-pretrained/s2G2333k.pth",
)
CHARACTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def register(subparsers: argparse._SubParsersAction) -> None:
    character = subparsers.add_parser("character", help="create, list and inspect characters")
    sub = character.add_subparsers(dest="character_command", metavar="ACTION", required=True)

    new = sub.add_parser("new", help="scaffold a character file (with a reference clip)")
    new.add_argument("id", metavar="NAME", help="character id: the file name <characters_dir>/NAME.toml")
    source = new.add_mutually_exclusive_group()
    source.add_argument("--clip", metavar="FILE", help="reference clip, 3-10 s of the voice (copied)")
    source.add_argument("--record", type=float, metavar="SECONDS", help="record the clip from the microphone")
    new.add_argument("--text", help="what is said in the clip (default: transcribe it with the ASR model)")
    new.add_argument(
        "--language", default="en", choices=get_args(Language), help="reply language (default en)"
    )
    new.add_argument("--display-name", metavar="NAME", help="the name the character goes by (default: NAME)")
    new.add_argument("--persona", help="system prompt (default: a friendly companion)")
    new.add_argument("--force", action="store_true", help="overwrite an existing character")
    new.set_defaults(handler=run_character_new)

    listing = sub.add_parser("list", help="the characters in [character] characters_dir")
    listing.set_defaults(handler=run_character_list)

    show = sub.add_parser("show", help="a character's settings and whether its files exist")
    show.add_argument("id", metavar="NAME", nargs="?", help="character id (default: [character] name)")
    show.set_defaults(handler=run_character_show)

    history = subparsers.add_parser("history", help="list and export saved conversations")
    hsub = history.add_subparsers(dest="history_command", metavar="ACTION", required=True)
    hlist = hsub.add_parser("list", help="a character's conversations, oldest first")
    hlist.add_argument("--character", metavar="NAME", help="character id (default: [character] name)")
    hlist.set_defaults(handler=run_history_list)
    hexport = hsub.add_parser("export", help="write one conversation as Markdown, text or JSON")
    hexport.add_argument(
        "conversation", nargs="?", default="last", metavar="ID", help="id or 'last' (default)"
    )
    hexport.add_argument("--character", metavar="NAME", help="character id (default: [character] name)")
    hexport.add_argument("--format", default="md", choices=EXPORT_FORMATS, help="default md")
    hexport.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    hexport.set_defaults(handler=run_history_export)


def history_dir(config: KoeConfig) -> Path:
    """Where conversations are saved: [character] history_dir."""
    return config.character.history_dir


def history_store(config: KoeConfig, character_id: str | None = None) -> HistoryStore:
    return HistoryStore(history_dir(config), character_id or config.character.name)


# ------------------------------------------------------------------------------ character new
def run_character_new(args: argparse.Namespace, config: KoeConfig) -> int:
    if not CHARACTER_ID.match(args.id):
        raise KoeError(
            f"character name {args.id!r}: use letters, digits, '-' and '_' (it becomes the file name)"
        )
    folder = config.character.characters_dir
    path = character_path(folder, args.id)
    if path.exists() and not args.force:
        raise KoeError(f"{path} already exists (pass --force to overwrite it)")
    clip_dir = folder / "voices" / args.id
    if args.record is not None:
        clip = record_clip(config, args.record, clip_dir / "reference.wav")
    elif args.clip:
        clip = copy_clip(Path(args.clip), clip_dir)
    else:
        clip = None
    text = args.text
    if text is None and clip is not None:
        text = transcribe_clip(config, clip, args.language)
        print(f"transcript of {clip.name}: {text}")
    models = config.models.dir
    character = write_character(
        path,
        name=args.display_name or args.id,
        language=args.language,
        ref_audio=os.path.relpath(clip or clip_dir / "reference.wav", folder),
        ref_text=text or "",
        persona=args.persona,
        gpt_weights=os.path.relpath(models / BASE_VOICE[0], folder),
        sovits_weights=os.path.relpath(models / BASE_VOICE[1], folder),
    )
    print(f"wrote {path}")
    if clip is None:
        print(f"next: put a 3-10 s clip at {character.voice.ref_audio} and its transcript in ref_text")
    return 0


def clip_limits() -> tuple[float, float]:
    """The reference length the TTS accepts, in seconds (the engine's own rule)."""
    from tts.reference import MAX_SECONDS, MIN_SECONDS

    return MIN_SECONDS, MAX_SECONDS


def check_clip(audio: np.ndarray, path: Path) -> None:
    seconds = len(audio) / 16_000
    low, high = clip_limits()
    if not low <= seconds <= high:
        raise KoeError(f"{path}: the reference clip is {seconds:.1f} s long; it must be {low:g}-{high:g} s")


def copy_clip(source: Path, clip_dir: Path) -> Path:
    from asr.audio import load_audio

    check_clip(load_audio(source), source)  # unreadable or too long/short: stop before writing anything
    clip_dir.mkdir(parents=True, exist_ok=True)
    target = clip_dir / f"reference{source.suffix.lower()}"
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return target


def record_clip(config: KoeConfig, seconds: float, target: Path) -> Path:
    """Record `seconds` from [audio] input_device as a 16 kHz WAV (a clear error when there is no mic)."""
    import soundfile

    from asr.sources import MicrophoneSource

    low, high = clip_limits()
    if not low <= seconds <= high:
        raise KoeError(f"--record {seconds:g}: a reference clip must be {low:g}-{high:g} s")
    source = MicrophoneSource(config.audio.input_device, config.audio.block_ms)
    print(f"recording {seconds:g} s from {source.name}: speak now", file=sys.stderr)

    async def capture() -> np.ndarray:
        blocks, total = [], 0
        async for block in source:
            blocks.append(block)
            total += len(block)
            if total >= seconds * 16_000:
                break
        return np.concatenate(blocks)[: int(seconds * 16_000)]

    audio = asyncio.run(capture())
    if float(np.abs(audio).max(initial=0.0)) < 1e-3:
        raise KoeError(f"the recording from {source.name} is silent; check the microphone and its volume")
    target.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(target, audio, 16_000, subtype="PCM_16")
    return target


def transcribe_clip(config: KoeConfig, clip: Path, language: str) -> str:
    from asr.transcriber import Transcriber

    asr = config.asr.model_copy(update={"language": language if language != "auto" else config.asr.language})
    text = Transcriber.from_config(asr, config.models.dir).transcribe(clip).text.strip()
    if not text:
        raise KoeError(f"{clip}: no speech recognised in the clip; pass its transcript with --text")
    return text


# ------------------------------------------------------------------------------ list / show
def run_character_list(args: argparse.Namespace, config: KoeConfig) -> int:
    folder = config.character.characters_dir
    ids = list_characters(folder)
    if not ids:
        print(f"no characters in {folder}; create one with `koe character new NAME`")
        return 0
    table = Table(title=f"characters in {folder}")
    for column in ("id", "name", "language", "emotions", "files"):
        table.add_column(column)
    for character_id in ids:
        try:
            c = find_character(folder, character_id)
        except KoeError as exc:
            table.add_row(character_id, "-", "-", "-", f"[red]invalid: {exc}[/red]")
            continue
        missing = sum(not p.is_file() for p in c.files().values())
        files = "ok" if not missing else f"{missing} missing"
        marker = " (current)" if character_id == config.character.name else ""
        table.add_row(character_id + marker, c.name, c.language, ", ".join(c.tags) or "-", files)
    Console().print(table)
    return 0


def run_character_show(args: argparse.Namespace, config: KoeConfig) -> int:
    c = find_character(config.character.characters_dir, args.id or config.character.name)
    console = Console()
    console.print(f"[bold]{c.name}[/bold] ({c.id}, {c.source})")
    console.print(f"language: {c.language}   default emotion: {c.default_emotion}")
    console.print(f"greeting: {c.greeting or '-'}")
    console.print(f"persona: {c.persona.strip()}")
    table = Table(title="files")
    table.add_column("key")
    table.add_column("path", overflow="fold")
    table.add_column("present")
    for key, path in c.files().items():
        table.add_row(key, str(path), "yes" if path.is_file() else "[red]missing[/red]")
    console.print(table)
    emotions = Table(title="emotions")
    for column in ("tag", "expression", "reference clip"):
        emotions.add_column(column, overflow="fold")
    for tag in c.tags:
        emotions.add_row(tag, c.expression(tag) or "-", str(c.reference(tag).audio))
    console.print(emotions)
    return 0


# ------------------------------------------------------------------------------ history
def run_history_list(args: argparse.Namespace, config: KoeConfig) -> int:
    store = history_store(config, args.character)
    conversations = store.conversations()
    if not conversations:
        print(f"no conversations with {store.character_id!r} yet ({store.folder})")
        return 0
    table = Table(title=f"conversations with {store.character_id} ({store.folder})")
    for column in ("id", "started", "messages", "last message"):
        table.add_column(column, overflow="fold")
    for conversation in conversations:
        last = conversation.messages[-1].text if conversation.messages else ""
        preview = last if len(last) <= 60 else last[:57] + "..."
        table.add_row(conversation.id, conversation.started or "-", str(len(conversation.messages)), preview)
    Console().print(table)
    return 0


def run_history_export(args: argparse.Namespace, config: KoeConfig) -> int:
    conversation = history_store(config, args.character).open(args.conversation)
    text = export(conversation, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
