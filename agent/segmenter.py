"""Cut a streaming reply into speakable pieces (sentences) for Chinese, Japanese and English.

The TTS speaks one piece at a time, so a piece must be a whole thought (never "3." of "3.14"), and the
first piece should come as early as possible: the listener waits for it. Rules:

- A piece ends after terminal punctuation: `。！？` (and their half-width forms) at once; `.!?` only
  when followed by a space or a CJK character, so `3.14`, `example.com/a.b` and `?q=1` never cut.
  Closing quotes and brackets after the punctuation stay with the piece. A line break always ends one.
- `.` after a title (`Mr.`, `Dr.`, `e.g.`) or an initial (`J. K.`) does not end a sentence; after
  `etc.`, `a.m.` or `U.S.` only when the next word is capitalised. An ellipsis (`...`, `…`) ends a
  sentence only before a capitalised word; nothing cuts inside a URL.
- The first piece of a reply may end at a comma once it is `first_min_length` long.
- A piece longer than `max_length` is cut at its last comma, else its last space, else anywhere.

Lengths are in "spoken units": a CJK character counts 3, a space 0, anything else 1 (one CJK syllable takes about
as long to say as three Latin letters).
"""

from __future__ import annotations

import regex

TERMINAL_CJK = "。！？｡．"
TERMINAL_LATIN = ".!?"
SOFT_CJK = "，、；："
SOFT_LATIN = ",;:"
CLOSERS = "\"'”’」』）)]】》*_"
ELLIPSIS = "…"

TITLES = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "e.g", "i.e", "cf", "fig", "approx"}
FINAL_CAPABLE = {
    "etc",
    "inc",
    "ltd",
    "co",
    "a.m",
    "p.m",
}  # may end a sentence; then the next word is capitalised

CJK = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}ー]")
URL = regex.compile(r"(?:https?://|www\.)[^\s<>\"'，。！？]*[^\s<>\"'.,!?;:，。！？)）]")
WORD_BEFORE_DOT = regex.compile(r"(?:[A-Za-z]\.)*[A-Za-z]+$")


class Segmenter:
    """Feed the reply as it streams in; take finished pieces from `feed` and the remainder from `flush`."""

    def __init__(self, first_min_length: int | None = 20, max_length: int = 200) -> None:
        """`first_min_length`: None = the first piece, too, ends only at a sentence end."""
        if max_length < 1 or (first_min_length is not None and not 1 <= first_min_length <= max_length):
            raise ValueError(
                f"need 1 <= first_min_length <= max_length (got {first_min_length}, {max_length})"
            )
        self.first_min_length = first_min_length
        self.max_length = max_length
        self._buffer = ""
        self._pieces_out = 0
        self._scan_at = (0, 0)  # (index, spoken length before it) where the next scan starts

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        return self._take(final=False)

    def flush(self) -> list[str]:
        """The end of the reply: whatever is left is the last piece."""
        pieces = self._take(final=True)
        rest = self._buffer.strip()
        self._buffer, self._scan_at = "", (0, 0)
        return pieces + ([rest] if rest else [])

    def _take(self, final: bool) -> list[str]:
        pieces = []
        while (cut := self._find_cut(final)) is not None:
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if piece:
                pieces.append(piece)
                self._pieces_out += 1
        return pieces

    def _find_cut(self, final: bool) -> int | None:
        """Where the first piece in the buffer ends (an index into it), or None if not known yet.

        The scan resumes where the last one stopped (`_scan_at`, with the length so far): a position is
        judged again only if it had to wait for the characters after it.
        """
        text = self._buffer
        urls = [m.span() for m in URL.finditer(text)]
        early = self._pieces_out == 0 and self.first_min_length is not None
        i, length = self._scan_at
        while i < len(text):
            char = text[i]
            length_before = length
            length += 3 if CJK.match(char) else int(char != " ")
            if length > self.max_length:
                return self._cut_at(fallback_cut(text[:i]))
            if any(start <= i < end for start, end in urls):
                cut = None
            elif char == "\n":
                return self._cut_at(i + 1)
            elif char in TERMINAL_CJK or char in TERMINAL_LATIN or char == ELLIPSIS:
                cut = sentence_end(text, i, final)
                if cut is None:  # judge a run like "..." or "?!" once, as a whole
                    run_end = _run_end(text, i)
                    length += run_end - i - 1
                    i = run_end
                    continue
            elif early and (char in SOFT_CJK or char in SOFT_LATIN) and length >= self.first_min_length:
                cut = soft_end(text, i, final)
            else:
                cut = None
            if cut == WAIT:
                self._scan_at = (i, length_before)
                return None
            if cut is not None:
                return self._cut_at(cut)
            i += 1
        self._scan_at = (i, length)
        return None

    def _cut_at(self, cut: int) -> int:
        self._scan_at = (0, 0)  # the next scan starts on the rest of the buffer
        return cut


WAIT = -1  # the next characters decide; they have not arrived yet


def _run_end(text: str, i: int) -> int:
    """Index after the run of terminal punctuation and closers starting at `i`."""
    j = i
    while j < len(text) and (text[j] in TERMINAL_CJK + TERMINAL_LATIN + ELLIPSIS + CLOSERS):
        j += 1
    return j


def _next_word(text: str, j: int) -> tuple[str, bool]:
    """The text after position `j` without leading spaces, and whether any space came first."""
    rest = text[j:]
    stripped = rest.lstrip(" \t")
    return stripped, len(stripped) < len(rest)


def sentence_end(text: str, i: int, final: bool) -> int | None:
    """The cut after the terminal punctuation at `text[i]`, None if it does not end a sentence, or WAIT."""
    j = _run_end(text, i)
    run = text[i:j]
    if j == len(text):
        return j if final else WAIT  # what follows decides (a closer, a digit, a space)
    if any(c in TERMINAL_CJK for c in run) and not (text[i] == "．" and text[i - 1 : i].isdigit()):
        return j
    after, spaced = _next_word(text, j)
    if spaced and not after:
        return j if final else WAIT  # "word. " - the next word decides
    ellipsis = "…" in run or run.rstrip(CLOSERS).endswith("..")
    if ellipsis:  # a pause, not an end, unless a new sentence starts: "Well... I see." / "嗯……我想想。"
        return j if spaced and after[0].isupper() else None
    if text[j] in "\n[【" or CJK.match(text[j]):
        return j  # a new line, CJK text, or an emotion tag starting the next sentence
    if not spaced:
        return None  # 3.14, example.com, ?q=1, "Hi!!" followed directly by a letter
    capital_next = after[0].isupper()
    if run.rstrip(CLOSERS) == ".":
        word = WORD_BEFORE_DOT.search(text[:i])
        word = word.group().lower() if word else ""
        if word in TITLES or (len(word) == 1 and text[i - 1].isupper()):
            return None  # Mr. Smith, e.g. this, J. K. Rowling
        if (word in FINAL_CAPABLE or "." in word) and not capital_next:
            return None  # etc. and so on, 5 p.m. today
    return j


def soft_end(text: str, i: int, final: bool) -> int | None:
    """The early cut after the comma-like mark at `text[i]` (first piece only), None, or WAIT."""
    j = i + 1
    while j < len(text) and text[j] in CLOSERS:
        j += 1
    if text[i] in SOFT_CJK:
        return j
    if j == len(text):
        return j if final else WAIT
    return j if text[j] in " \t\n" or CJK.match(text[j]) else None  # 1,000 and a,b never cut


def fallback_cut(text: str) -> int:
    """Where to cut a piece that grew too long: after its last comma, else its last space, else its end."""
    for marks in (SOFT_CJK + SOFT_LATIN, " "):
        cut = max(text.rfind(mark) for mark in marks)
        if cut > 0:
            return cut + 1
    return len(text)
