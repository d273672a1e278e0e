"""`koe voice label`: transcribe clips with faster-whisper into a `.list` the official tools accept.

Each clip becomes `path|speaker|LANG|text` with LANG one of `ZH JA EN KO YUE` (upper case, as the
official labellers write it); the language is Whisper's detection or fixed by the caller. Clips in a
language GPT-SoVITS cannot train, clips without recognised speech and clips whose path would break
the format are not written to the list but to `<list>.skipped.tsv` with the reason. Resumable: lines
are appended as they are made, and clips already in either file are not transcribed again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.errors import KoeError
from training.dataset import (
    LANGUAGE_CODES,
    SUPPORTED_LANGUAGES,
    ListEntry,
    append_entry,
    breaking_characters,
    clean_field,
    list_code,
    read_list,
)

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".webm"})


class TranscribeFn(Protocol):
    def transcribe(self, audio: str | os.PathLike): ...  # -> asr.transcriber.Transcript


@dataclass
class LabelSummary:
    labelled: list[ListEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (clip name, reason) of this run
    already_done: int = 0
    cleaned: list[str] = field(default_factory=list)  # clips whose transcript had characters replaced
    seconds_of_audio: float = 0.0
    seconds_transcribing: float = 0.0


def whisper_language(language: str | None) -> str | None:
    """A `--language` value (auto, a Whisper code or a `.list` code such as EN/JP) as a Whisper code."""
    if language is None or language.lower() == "auto":
        return None
    canonical = LANGUAGE_CODES.get(language) or LANGUAGE_CODES.get(language.lower())
    if canonical is None:
        raise KoeError(
            f"--language {language!r}: GPT-SoVITS trains only {', '.join(SUPPORTED_LANGUAGES)} (or use auto)"
        )
    return canonical


def skipped_path(list_path: Path) -> Path:
    return list_path.with_name(list_path.name + ".skipped.tsv")


def find_clips(folder: Path) -> list[Path]:
    """Audio files of a folder in sorted name order (the official labellers' order)."""
    if not folder.is_dir():
        raise KoeError(f"clip folder not found: {folder} (give the folder `koe voice slice` wrote)")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _done_names(list_path: Path) -> set[str]:
    done: set[str] = set()
    if list_path.is_file():
        entries, _bad = read_list(list_path)
        done.update(entry.name for _number, entry in entries)
    skipped = skipped_path(list_path)
    if skipped.is_file():
        done.update(
            line.split("\t", 1)[0] for line in skipped.read_text(encoding="utf-8").splitlines() if line
        )
    return done


def _record_skip(list_path: Path, summary: LabelSummary, name: str, reason: str) -> None:
    log.warning("%s not labelled: %s", name, reason)
    summary.skipped.append((name, reason))
    with skipped_path(list_path).open("a", encoding="utf-8") as f:
        f.write(f"{name}\t{clean_field(reason)}\n")


def label_clips(
    clips: list[Path],
    list_path: Path,
    transcriber: TranscribeFn,
    *,
    speaker: str,
    language: str | None = None,
    on_progress: Callable[[Path], None] | None = None,
) -> LabelSummary:
    """Transcribe the clips not yet in `list_path` and append their lines.

    `language`: a Whisper code from SUPPORTED_LANGUAGES to write for every clip, or None to write the
    detected one. The transcriber should be built with the same language so decoding is forced too.
    """
    speaker = clean_field(speaker)
    if not speaker:
        raise KoeError("--speaker must not be empty")
    list_path.parent.mkdir(parents=True, exist_ok=True)
    done = _done_names(list_path)
    summary = LabelSummary()
    for clip in clips:
        if clip.name in done:
            summary.already_done += 1
        else:
            _label_one(clip, list_path, transcriber, speaker, language, summary)
            done.add(clip.name)
        if on_progress:
            on_progress(clip)
    return summary


def _label_one(
    clip: Path,
    list_path: Path,
    transcriber: TranscribeFn,
    speaker: str,
    language: str | None,
    summary: LabelSummary,
) -> None:
    audio_path = str(clip.resolve())
    if breaking_characters(audio_path):
        reason = (
            f"its path contains {breaking_characters(audio_path)!r}, which breaks the .list format; rename it"
        )
        _record_skip(list_path, summary, clip.name, reason)
        return
    try:
        transcript = transcriber.transcribe(clip)
    except KoeError as exc:
        _record_skip(list_path, summary, clip.name, f"cannot transcribe: {exc}")
        return
    summary.seconds_of_audio += transcript.duration
    summary.seconds_transcribing += transcript.elapsed
    spoken = language or transcript.language
    if spoken not in SUPPORTED_LANGUAGES:
        _record_skip(
            list_path,
            summary,
            clip.name,
            f"detected language {spoken!r} cannot be trained (GPT-SoVITS: {', '.join(SUPPORTED_LANGUAGES)}); "
            "fix it with --language if the detection is wrong",
        )
        return
    text = clean_field(transcript.text)
    if breaking_characters(transcript.text):
        summary.cleaned.append(clip.name)
        log.info("%s: replaced %r in the transcript", clip.name, breaking_characters(transcript.text))
    if not text:
        _record_skip(list_path, summary, clip.name, "no speech recognised (empty transcript)")
        return
    entry = ListEntry(audio_path, speaker, list_code(spoken), text)
    append_entry(list_path, entry)
    summary.labelled.append(entry)
