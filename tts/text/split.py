"""Cutting a request text into sentences before G2P (official TextPreprocessor + cut0..cut5).

`split_sentences` runs the whole preprocessing: collapse repeated ASCII punctuation, the "。" prefix
for a short first clause, the cut method, blank removal, merging of pieces under 5 characters, final
punctuation and the 510-character limit. Internal newlines are hard boundaries for every method.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from agent.errors import KoeError

# Marks after which a clause ends.
SPLIT_MARKS = frozenset("，。？！,.?!~:：—…")
# "Punctuation only" for the cut methods: such pieces are dropped.
PUNCTUATION = frozenset("!?…,.- ")
_CUT5_MARKS = frozenset(",.;?!、，。？！：…")
_REPEATED_PUNCTUATION = re.compile(r"([!?…,.\-])[!?…,.\-]+")
_SPLIT_MARK_CLASS = "[" + "".join(re.escape(mark) for mark in sorted(SPLIT_MARKS)) + "]"
MIN_SENTENCE_CHARS = 5
MAX_SENTENCE_CHARS = 510


def collapse_repeated_punctuation(text: str) -> str:
    """'Wait!!!' -> 'Wait!' (ASCII marks and …; full-width runs like '！！！' stay)."""
    return _REPEATED_PUNCTUATION.sub(r"\1", text)


def _without_punctuation_only(pieces: list[str], marks: frozenset = PUNCTUATION) -> str:
    return "\n".join(piece for piece in pieces if not set(piece) <= marks)


def clauses(text: str) -> list[str]:
    """Cut after every split mark ('……' counts as '。', '——' as '，'); ensures a final mark."""
    text = text.replace("……", "。").replace("——", "，")
    if not text:
        return []
    if text[-1] not in SPLIT_MARKS:
        text += "。"
    pieces, start = [], 0
    for i, ch in enumerate(text):
        if ch in SPLIT_MARKS:
            pieces.append(text[start : i + 1])
            start = i + 1
    return pieces


def cut0(text: str) -> str:
    """No cut."""
    return "\n" if set(text) <= PUNCTUATION else text


def cut1(text: str) -> str:
    """Groups of four clauses; the last group takes the remaining 5-8. Up to 4 clauses: unchanged."""
    text = text.strip("\n")
    parts = clauses(text)
    bounds = list(range(0, len(parts), 4))
    if len(bounds) <= 1:
        return _without_punctuation_only([text])
    bounds[-1] = len(parts)
    return _without_punctuation_only(["".join(parts[a:b]) for a, b in zip(bounds, bounds[1:])])


def cut2(text: str, max_chars: int = 50) -> str:
    """Clauses packed until a group exceeds 50 characters; a short last group joins the previous one."""
    text = text.strip("\n")
    parts = clauses(text)
    if len(parts) < 2:
        return text
    groups, current = [], ""
    for part in parts:
        current += part
        if len(current) > max_chars:
            groups.append(current)
            current = ""
    if current:
        groups.append(current)
    if len(groups) > 1 and len(groups[-1]) < max_chars:
        groups[-2:] = [groups[-2] + groups[-1]]
    return _without_punctuation_only(groups)


def cut3(text: str) -> str:
    """Split on '。' (removed)."""
    return _without_punctuation_only(text.strip("\n").strip("。").split("。"))


def cut4(text: str) -> str:
    """Split on '.' (removed) unless a digit is next to it (3.14, v2.x stay whole)."""
    return _without_punctuation_only(re.split(r"(?<!\d)\.(?!\d)", text.strip("\n").strip(".")))


def cut5(text: str) -> str:
    """Cut after every punctuation mark (kept on the left), except '.' between two digits."""
    text = text.strip("\n")
    pieces, current = [], ""
    for i, ch in enumerate(text):
        current += ch
        decimal_point = (
            ch == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
        )
        if ch in _CUT5_MARKS and not decimal_point:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return _without_punctuation_only(pieces, _CUT5_MARKS)


CUT_METHODS: dict[str, Callable[[str], str]] = {
    "cut0": cut0,
    "cut1": cut1,
    "cut2": cut2,
    "cut3": cut3,
    "cut4": cut4,
    "cut5": cut5,
}


def _first_clause(text: str) -> str:
    return re.split(_SPLIT_MARK_CLASS, text)[0].strip()


def merge_short(pieces: list[str], min_chars: int = MIN_SENTENCE_CHARS) -> list[str]:
    """Accumulate pieces until at least min_chars; a short tail joins the last merged piece."""
    if len(pieces) < 2:
        return pieces
    merged, current = [], ""
    for piece in pieces:
        current += piece
        if len(current) >= min_chars:
            merged.append(current)
            current = ""
    if current:
        if merged:
            merged[-1] += current
        else:
            merged.append(current)
    return merged


def split_long(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Chunks of at most max_chars cut at split marks (a single longer run stays whole)."""
    chunks, current = [], ""
    for part in re.split(f"({_SPLIT_MARK_CLASS})", text):
        if len(current + part) > max_chars:
            if current:
                chunks.append(current)
            current = part
        else:
            current += part
    if current:
        chunks.append(current)
    return chunks


def split_sentences(text: str, language: str, method: str = "cut5", collapse: bool = True) -> list[str]:
    """Sentences for the per-sentence frontend. Empty or unspeakable text gives an empty list.

    collapse=False is the official streaming/fragment path, which skips the punctuation collapse.
    (After G2P the non-streaming path also drops sentences whose norm_text is empty.)
    """
    if method not in CUT_METHODS:
        raise KoeError(f"unknown text split method {method!r}; use one of {', '.join(CUT_METHODS)}")
    end_mark = "." if language == "en" else "。"
    text = (collapse_repeated_punctuation(text) if collapse else text).strip("\n")
    if not text:
        return []
    if text[0] not in SPLIT_MARKS and len(_first_clause(text)) < 4:
        text = end_mark + text
    text = CUT_METHODS[method](text)
    while "\n\n" in text:
        text = text.replace("\n\n", "\n")
    pieces = merge_short([piece for piece in text.split("\n") if piece not in ("", " ")])
    sentences = []
    for piece in pieces:
        if not piece.strip() or not re.sub(r"\W+", "", piece):
            continue
        if piece[-1] not in SPLIT_MARKS:
            piece += end_mark
        sentences += split_long(piece) if len(piece) > MAX_SENTENCE_CHARS else [piece]
    return sentences


def prompt_text(text: str, language: str) -> str:
    """The reference transcript as the frontend gets it: newlines stripped, a final mark ensured."""
    text = text.strip("\n")
    if text and text[-1] not in SPLIT_MARKS:
        text += "." if language == "en" else "。"
    return text
