"""From the LLM's raw text to what the character says and shows.

An LLM writes for a screen: reasoning in `<think>...</think>`, markdown, code blocks, emoji, and (as we
ask it to) emotion tags like `[happy]`. None of that may be spoken. Two stages:

- `StreamFilter` works on the token stream, because what it removes can span many tokens and
  sentences: reasoning blocks, fenced code blocks and the markers at the start of a line (headings,
  bullets, numbered lists, quotes). It holds back only text that might be the start of such a marker.
- `clean_piece` and `take_emotion_tags` work on one finished piece from the segmenter: inline markdown,
  links, HTML tags, emoji, and the emotion tags (which become events instead of words).
"""

from __future__ import annotations

import regex

# Blocks that are never spoken: opening marker -> closing marker.
BLOCKS = {"<think>": "</think>", "<thinking>": "</thinking>", "```": "```", "~~~": "~~~"}
BLOCK_START = regex.compile("|".join(regex.escape(opening) for opening in BLOCKS))
# Markdown at the start of a line: heading, bullet, numbered item, quote.
LINE_MARKER = regex.compile(r"[ \t]*(?:#{1,6}[ \t]+|[-*+•][ \t]+|\d{1,3}[.)][ \t]+|>[ \t]?)")

EMOTION_TAG = regex.compile(r"[\[【]\s*([A-Za-z][A-Za-z_-]{0,23})\s*[\]】]")
IMAGE = regex.compile(r"!\[[^\]]*\]\([^)]*\)")
LINK = regex.compile(r"\[([^\]]+)\]\([^)\s]+\)")
HTML_TAG = regex.compile(r"</?[A-Za-z][^<>]*>")
EMPHASIS = regex.compile(r"\*+|~~|`+|(?<!\w)_+|_+(?!\w)")
RULE_OR_TABLE = regex.compile(r"\|+|-{3,}|={3,}")
EMOJI = regex.compile(
    r"[\p{Extended_Pictographic}\p{Emoji_Modifier}\p{Regional_Indicator}\u200d\ufe0f\u20e3]"
)
SPACES = regex.compile(r"\s+")
SPACE_BEFORE_PUNCTUATION = regex.compile(r"\s+(?=[.,!?;:。，！？、；：])")
SPEAKABLE = regex.compile(r"[\p{L}\p{N}]")  # a piece without letters or digits is not worth speaking


class StreamFilter:
    """Removes reasoning, code blocks and line-start markdown from a token stream, chunk by chunk.

    `feed(chunk)` returns the text that is certainly speakable so far; `flush()` returns the rest at the
    end of the stream (an unclosed block is dropped: half a code block is still code).
    """

    def __init__(self) -> None:
        self._pending = ""  # text not decided yet
        self._closing: str | None = None  # inside a block: the marker that ends it
        self._at_line_start = True
        self._skip_spaces = False

    def feed(self, chunk: str) -> str:
        self._pending += chunk
        return self._drain(final=False)

    def flush(self) -> str:
        text = self._drain(final=True)
        self._pending, self._closing, self._at_line_start, self._skip_spaces = "", None, True, False
        return text

    def _drain(self, final: bool) -> str:
        out: list[str] = []
        while self._pending:
            if self._closing is not None:
                end = self._pending.find(self._closing)
                if end < 0:  # keep only what could be the start of the closing marker
                    keep = len(self._closing) - 1
                    self._pending = self._pending[-keep:] if keep and not final else ""
                    break
                self._pending = self._pending[end + len(self._closing) :]
                self._closing = None
                continue
            if self._at_line_start:
                marker = LINE_MARKER.match(self._pending, partial=True)
                if marker and marker.partial and not final:
                    break  # "1" might become "1. ": wait for the next character
                if marker and not marker.partial:
                    self._pending = self._pending[marker.end() :]
                    self._skip_spaces = True
                    continue
                self._at_line_start = False
            if self._skip_spaces:  # the spaces after a removed marker ("> " may arrive as ">", " ")
                self._pending = self._pending.lstrip(" \t")
                if not self._pending:
                    break
                self._skip_spaces = False
            newline = self._pending.find("\n")
            line = self._pending if newline < 0 else self._pending[: newline + 1]
            block = BLOCK_START.search(line, partial=newline < 0)  # only the last line can be cut short
            if block is not None and block.partial and (final or block.start() == len(line)):
                block = None  # the end of the stream, or an empty "partial match" at the end of the line
            if block is None:
                out.append(line)
                self._pending = self._pending[len(line) :]
                self._at_line_start = newline >= 0
            elif block.partial:  # "<thi" or "``" at the very end: say what comes before it, wait for more
                out.append(line[: block.start()])
                self._pending = self._pending[block.start() :]
                break
            else:
                out.append(line[: block.start()])
                self._pending = self._pending[block.end() :]
                self._closing = BLOCKS[block.group()]
        return "".join(out)


def take_emotion_tags(text: str, known: set[str]) -> tuple[str, list[str]]:
    """Remove every `[tag]` from `text`; return the text and the known tags in order (lower case).

    Unknown tags (`[whisper]` when the character has no such emotion) are removed too: they are stage
    directions, never words to say.
    """
    tags: list[str] = []

    def take(match: regex.Match) -> str:
        tag = match.group(1).lower()
        if tag in known:
            tags.append(tag)
        return " "

    return EMOTION_TAG.sub(take, text), tags


def clean_piece(text: str) -> str:
    """The words of one piece as they are spoken and shown: no inline markdown, HTML or emoji.

    Returns "" when nothing speakable is left (a piece that was only "**" or an emoji).
    """
    text = IMAGE.sub(" ", text)
    text = LINK.sub(r"\1", text)
    text = HTML_TAG.sub(" ", text)
    text = EMPHASIS.sub("", text)
    text = RULE_OR_TABLE.sub(" ", text)
    text = EMOJI.sub("", text)
    text = SPACE_BEFORE_PUNCTUATION.sub("", SPACES.sub(" ", text)).strip()
    return text if SPEAKABLE.search(text) else ""
