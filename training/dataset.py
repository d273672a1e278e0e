"""The `.list` file every GPT-SoVITS dataset step reads: one clip per line, `path|speaker|LANG|text`.

Format facts (shared/spec/gpt-sovits-training.md, section 4.1): UTF-8, lines split on `\\n`, exactly
four `|`-separated fields; the trainers key everything by the audio file's basename; the language must
be one of the exact codes below or dataset preparation skips the line with only a warning.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from agent.errors import KoeError

# Every spelling dataset preparation accepts, and the language it means. Anything else ("AUTO", "Zh",
# "DE", ...) is dropped from training.
LANGUAGE_CODES: dict[str, str] = {
    "ZH": "zh", "zh": "zh",
    "JA": "ja", "ja": "ja", "JP": "ja", "jp": "ja",
    "EN": "en", "en": "en", "En": "en",
    "KO": "ko", "ko": "ko", "Ko": "ko",
    "YUE": "yue", "yue": "yue", "Yue": "yue",
}  # fmt: skip
SUPPORTED_LANGUAGES = ("zh", "ja", "en", "ko", "yue")  # canonical names, as Whisper spells them too
FIELD_SEPARATOR = "|"


def list_code(language: str) -> str:
    """The code we write for a language: upper case, as the official labellers write it (`EN`, `YUE`)."""
    canonical = LANGUAGE_CODES.get(language, language.lower())
    if canonical not in SUPPORTED_LANGUAGES:
        raise KoeError(
            f"language {language!r} cannot be trained by GPT-SoVITS (supported: {', '.join(SUPPORTED_LANGUAGES)})"
        )
    return canonical.upper()


def canonical_language(code: str) -> str | None:
    """`zh`/`ja`/`en`/`ko`/`yue` for an accepted code, None for one the trainers would drop."""
    return LANGUAGE_CODES.get(code)


# Characters that would split a field or a line, in the official reader or in an editor: the separator,
# line breaks of every kind, tabs and other control characters.
_BREAKING = re.compile(r"[|\t\r\n\v\f\x00-\x1f\x7f\x85\u2028\u2029]")
_SPACES = re.compile(r"\s+")


def clean_field(text: str) -> str:
    """Text safe for one `.list` field: breaking characters become spaces, whitespace is collapsed."""
    text = unicodedata.normalize("NFC", text)
    return _SPACES.sub(" ", _BREAKING.sub(" ", text)).strip()


def breaking_characters(text: str) -> list[str]:
    """The characters of `text` that `clean_field` would replace (for warnings), without repeats."""
    return sorted(set(_BREAKING.findall(text)))


@dataclass(frozen=True)
class ListEntry:
    """One `.list` line."""

    audio_path: str
    speaker: str
    language: str  # the code as written, e.g. "EN"
    text: str

    @property
    def name(self) -> str:
        """The key every training step uses: the basename of the audio path (quotes and spaces stripped)."""
        return os.path.basename(self.audio_path.strip().strip("'\"").strip())

    def to_line(self) -> str:
        fields = (self.audio_path, self.speaker, self.language, self.text)
        for label, value in zip(("audio path", "speaker", "language", "text"), fields):
            if _BREAKING.search(value):
                raise KoeError(
                    f".list {label} {value!r} contains {breaking_characters(value)!r}, which breaks the "
                    "path|speaker|LANG|text format (rename the file or clean the field)"
                )
        return FIELD_SEPARATOR.join(fields)


@dataclass(frozen=True)
class BadLine:
    """A line that does not parse, with its 1-based number and why."""

    line_number: int
    content: str
    reason: str


def parse_list(content: str) -> tuple[list[tuple[int, ListEntry]], list[BadLine]]:
    """Split `.list` text as the official reader does; return (line number, entry) pairs and bad lines."""
    entries: list[tuple[int, ListEntry]] = []
    bad: list[BadLine] = []
    for number, line in enumerate(content.strip("\n").split("\n"), start=1):
        if not line.strip():
            if content.strip("\n"):
                bad.append(BadLine(number, line, "blank line (the official reader fails on it)"))
            continue
        fields = line.split(FIELD_SEPARATOR)
        if len(fields) != 4:
            reason = f"{len(fields)} fields separated by '|', expected 4 (path|speaker|LANG|text)" + (
                "; a '|' inside the text splits it" if len(fields) > 4 else ""
            )
            bad.append(BadLine(number, line, reason))
            continue
        entries.append((number, ListEntry(*fields)))
    return entries, bad


def read_list(path: str | os.PathLike) -> tuple[list[tuple[int, ListEntry]], list[BadLine]]:
    """Read a `.list` file; a `KoeError` says when the file is missing or not UTF-8 text."""
    path = Path(path)
    if not path.is_file():
        raise KoeError(f".list file not found: {path}")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise KoeError(f"{path}: not UTF-8 text ({exc}); save the .list as UTF-8") from None
    except OSError as exc:
        raise KoeError(f"{path}: cannot read: {exc}") from None
    return parse_list(content)


def append_entry(path: str | os.PathLike, entry: ListEntry) -> None:
    """Add one line to a `.list` (creating it), flushed at once so an interrupted run keeps its work."""
    line = entry.to_line()
    path = Path(path)
    needs_newline = False
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    with path.open("a", encoding="utf-8", newline="\n") as f:
        f.write(("\n" if needs_newline else "") + line + "\n")
        f.flush()
        os.fsync(f.fileno())


def resolve_audio(entry: ListEntry, list_path: Path, audio_dir: Path | None = None) -> Path:
    """Where the trainers read an entry's audio: `<audio_dir>/<basename>` when the WebUI's "training
    audio folder" is set, else the path as written (relative paths tried against the working directory,
    then the `.list`'s folder)."""
    if audio_dir is not None:
        return audio_dir / entry.name
    written = Path(entry.audio_path.strip().strip("'\"").strip())
    if written.is_absolute() or written.exists():
        return written
    return list_path.parent / written
