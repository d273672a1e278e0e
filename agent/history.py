"""Conversation history: one JSONL file per conversation, per character, appended and flushed every turn.

Layout: `<history_dir>/<character id>/<conversation id>.jsonl`, the id being the start time
(`20261201-153000`), so the newest conversation sorts last. One JSON record per line:

    {"type": "start", "character": "default", "time": "..."}
    {"type": "message", "role": "user", "text": "...", "time": "..."}
    {"type": "message", "role": "assistant", "text": "...", "time": "...", "interrupted": true,
     "emotions": ["happy"], "error": null}
    {"type": "summary", "text": "...", "covers": 12}      # summary of the first 12 messages

Every turn is written and fsync'ed when it ends, so a crash loses at most the turn in progress; a torn
last line (the crash hit mid-write) is skipped with a warning when the file is read again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from agent.errors import KoeError

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("md", "txt", "json", "jsonl")


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class Message:
    role: Literal["user", "assistant"]
    text: str
    time: str = field(default_factory=now_iso)
    interrupted: bool = False  # the user cut the reply off: `text` is what they heard
    emotions: list[str] = field(default_factory=list)
    error: str | None = None  # why the reply failed or stopped early


class ConversationLog:
    """One conversation file: its messages in memory, every change appended to disk at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.id = self.path.stem
        self.character = self.path.parent.name
        self.started: str | None = None
        self.messages: list[Message] = []
        self.summary = ""
        self.summary_covers = 0  # the summary replaces messages[:summary_covers] in the context
        if self.path.exists():
            self._read()

    @classmethod
    def create(cls, folder: Path, character: str) -> ConversationLog:
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path, n = folder / f"{stamp}.jsonl", 1
        while path.exists():  # two conversations in one second
            n += 1
            path = folder / f"{stamp}-{n}.jsonl"
        log_ = cls(path)
        log_.started = now_iso()
        log_._append({"type": "start", "character": character, "time": log_.started})
        return log_

    def add(self, *messages: Message) -> None:
        """Append messages (usually one turn: the user's and the reply) and flush them to disk."""
        self.messages.extend(messages)
        self._append(*({"type": "message", **asdict(m)} for m in messages))

    def set_summary(self, text: str, covers: int) -> None:
        self.summary, self.summary_covers = text, covers
        self._append({"type": "summary", "text": text, "covers": covers})

    def _append(self, *records: dict) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as f:
            if f.tell() > 0 and not _ends_with_newline(self.path):
                f.write("\n")  # after a torn last line, start a fresh one
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def _read(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise KoeError(f"cannot read conversation {self.path}: {exc}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                kind = record.get("type")
                if kind == "start":
                    self.started = record.get("time")
                elif kind == "message":
                    del record["type"]
                    self.messages.append(Message(**record))
                elif kind == "summary":
                    self.summary, self.summary_covers = record["text"], int(record["covers"])
            except (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError) as exc:
                log.warning("%s:%d: skipping a damaged record (%s)", self.path, number, exc)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class HistoryStore:
    """The conversations of one character."""

    def __init__(self, history_dir: Path, character_id: str) -> None:
        self.folder = Path(history_dir) / character_id
        self.character_id = character_id

    def ids(self) -> list[str]:
        """Conversation ids, oldest first."""
        return sorted(p.stem for p in self.folder.glob("*.jsonl")) if self.folder.is_dir() else []

    def conversations(self) -> list[ConversationLog]:
        return [ConversationLog(self.folder / f"{i}.jsonl") for i in self.ids()]

    def open(self, conversation_id: str = "last") -> ConversationLog:
        """A conversation by id, or "last"; unknown ids name the ones that exist."""
        ids = self.ids()
        if conversation_id == "last" and ids:
            conversation_id = ids[-1]
        if conversation_id not in ids:
            known = ", ".join(ids[-10:]) or "none yet"
            raise KoeError(
                f"no conversation {conversation_id!r} for character {self.character_id!r} in {self.folder} "
                f"(conversations: {known}); see `koe history list`"
            )
        return ConversationLog(self.folder / f"{conversation_id}.jsonl")

    def new(self) -> ConversationLog:
        return ConversationLog.create(self.folder, self.character_id)

    def resume(self, new: bool = False) -> ConversationLog:
        """The last conversation (what `koe chat` continues), or a fresh one with `new` or when none exists."""
        return self.new() if new or not self.ids() else self.open("last")


def export(conversation: ConversationLog, fmt: str) -> str:
    """The conversation as Markdown, plain text, a JSON document or the raw JSONL."""
    if fmt not in EXPORT_FORMATS:
        raise KoeError(f"unknown export format {fmt!r} (formats: {', '.join(EXPORT_FORMATS)})")
    if fmt == "jsonl":
        return conversation.path.read_text(encoding="utf-8")
    if fmt == "json":
        data = {
            "id": conversation.id,
            "character": conversation.character,
            "started": conversation.started,
            "summary": conversation.summary or None,
            "messages": [asdict(m) for m in conversation.messages],
        }
        return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    lines = []
    if fmt == "md":
        lines += [f"# {conversation.character}: {conversation.id}", ""]
    for m in conversation.messages:
        who = "You" if m.role == "user" else conversation.character
        note = " (interrupted)" if m.interrupted else ""
        note += f" (error: {m.error})" if m.error else ""
        lines.append(f"**{who}**{note}: {m.text}" if fmt == "md" else f"[{m.time}] {who}{note}: {m.text}")
        if fmt == "md":
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
