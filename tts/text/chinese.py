"""Mandarin G2P: normalised text -> phones (initial + toned final per syllable) and word2ph.

v2 voices use erhua handling, v1 voices do not; both share normalisation, jieba_fast segmentation,
tone sandhi and the opencpop pinyin -> symbol table. Pinyin comes from pypinyin per jieba word, or,
when enabled and its model is present, from the g2pW polyphone model (tts/text/g2pw.py).
"""

from __future__ import annotations

import logging
import re
from functools import cache, lru_cache

from tts.text import tone_sandhi, zh_normalize
from tts.text.symbols import load_table

log = logging.getLogger(__name__)

PUNCTUATION = zh_normalize.PUNCTUATION
_AFTER_PUNCTUATION = re.compile(f"(?<=[{re.escape(PUNCTUATION)}])\\s*")


def normalize(text: str) -> str:
    return zh_normalize.normalize(text)


@cache
def _tables() -> dict:
    zh = load_table("frontend_tables.json")["zh"]
    return {
        "syllables": load_table("zh_opencpop_strict.json")["map"],
        "must_erhua": frozenset(zh["must_erhua"]),
        "not_erhua": frozenset(zh["not_erhua"]),
        "with_initial": zh["v_rep_map_with_initial"],
        "zero_initial": zh["pinyin_rep_map_zero_initial"],
        "zero_initial_first_letter": zh["single_rep_map_zero_initial_first_letter"],
    }


def segment(text: str) -> list[tuple[str, str]]:
    """jieba_fast words with POS tags (its dictionary loads on first use, about a second)."""
    return [(pair.word, pair.flag) for pair in tone_sandhi.jieba().posseg.lcut(text)]


def _pypinyin_syllables(word: str) -> tuple[list[str], list[str]]:
    """Initials and toned finals of a word, one per character (punctuation gives itself twice)."""
    return list(_cached_initials(word)), tone_sandhi.finals_tone3(word)


@lru_cache(maxsize=1 << 16)
def _cached_initials(word: str) -> tuple[str, ...]:
    from pypinyin import Style, lazy_pinyin

    return tuple(lazy_pinyin(word, neutral_tone_with_five=True, style=Style.INITIALS))


def merge_erhua(initials: list[str], finals: list[str], word: str, pos: str) -> list[str]:
    """儿 after a syllable takes that syllable's tone (一点儿 -> er3), except in listed words.

    儿 is never fused into the previous syllable: it stays its own EE + er syllable.
    """
    tables = _tables()
    finals = list(finals)
    if len(finals) == len(word) and word[-1] == "儿" and finals[-1] == "er1":
        finals[-1] = "er2"
    if word not in tables["must_erhua"] and (word in tables["not_erhua"] or pos in {"a", "j", "nr"}):
        return finals
    if len(finals) != len(word):
        return finals
    if (
        word[-1] == "儿"
        and finals[-1] in {"er2", "er5"}
        and word[-2:] not in tables["not_erhua"]
        and len(word) > 1
    ):
        finals[-1] = "er" + finals[-2][-1]
    return finals


def syllable_phones(initial: str, final: str) -> list[str]:
    """One pinyin syllable -> [initial symbol, final symbol + tone]; a punctuation mark -> [mark].

    pypinyin spells zero-initial syllables without y/w ('i', 'uai', 'v'); they are respelled
    (yi, wai, yu) before the opencpop table lookup, which gives AA/EE/OO for a/e/o syllables.
    """
    if initial == final:
        return [initial]
    tables = _tables()
    body, tone = final[:-1], final[-1]
    if initial:
        pinyin = initial + tables["with_initial"].get(body, body)
    elif body in tables["zero_initial"]:
        pinyin = tables["zero_initial"][body]
    elif body[:1] in tables["zero_initial_first_letter"]:
        pinyin = tables["zero_initial_first_letter"][body[0]] + body[1:]
    else:
        pinyin = body
    symbol_initial, symbol_final = tables["syllables"][pinyin]
    return [symbol_initial, symbol_final + tone]


def _is_syllable(initial: str, final: str) -> bool:
    """False for characters pypinyin cannot read (it returns them unchanged)."""
    if initial == final:
        return initial in PUNCTUATION
    body = final[:-1]
    if not final[-1:].isdigit():
        return False
    return True if initial else bool(body)


class ChineseG2P:
    """Phones and word2ph for Mandarin norm_text. erhua=True for v2 voices, False for v1.

    polyphones: an optional g2pW model (tts.text.g2pw.G2PW) that replaces pypinyin's choice of
    reading; None uses pypinyin, which is what the parity fixtures were made with.
    """

    def __init__(self, erhua: bool = True, polyphones=None) -> None:
        self.erhua = erhua
        self.polyphones = polyphones

    def __call__(self, norm_text: str) -> tuple[list[str], list[int]]:
        phones: list[str] = []
        word2ph: list[int] = []
        pieces = [piece for piece in _AFTER_PUNCTUATION.split(norm_text) if piece.strip()]
        for piece in pieces:
            piece = re.sub("[a-zA-Z]+", "", piece)
            for initial, final in self._piece_syllables(piece):
                if not _is_syllable(initial, final):
                    # A character without a reading (the official code fails here): it gets no phones.
                    log.warning("no pinyin for %r; it is skipped", initial)
                    word2ph.append(0)
                    continue
                syllable = syllable_phones(initial, final)
                phones += syllable
                word2ph.append(len(syllable))
        return phones, word2ph

    def _piece_syllables(self, piece: str) -> list[tuple[str, str]]:
        words = tone_sandhi.pre_merge(segment(piece))
        readings = self.polyphones.piece_pinyin(piece) if self.polyphones is not None else None
        syllables: list[tuple[str, str]] = []
        start = 0
        for word, pos in words:
            end = start + len(word)
            if pos == "eng":
                start = end
                continue
            if readings is None:
                initials, finals = _pypinyin_syllables(word)
            else:
                initials, finals = self.polyphones.word_syllables(word, readings[start:end])
            start = end
            finals = tone_sandhi.modify_tones(word, pos, finals)
            if self.erhua:
                finals = merge_erhua(initials, finals, word, pos)
            syllables += zip(initials, finals)
        return syllables
