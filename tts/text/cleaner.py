"""clean_text: one language segment -> normalised text, phones (in the version's table) and word2ph.

Each language lives in its own module exposing `normalize(text)` and `g2p(norm_text)`; a module is
imported on first use, so a Japanese-only session never loads jieba and vice versa. Mandarin is
handled by tts.text.chinese (v2 with erhua, v1 without).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache

from tts.text.chinese import ChineseG2P
from tts.text.chinese import normalize as normalize_chinese
from tts.text.symbols import UNK, symbol_ids, table_version

# Languages each table version can speak; the module that reads it.
LANGUAGE_MODULES = {
    "v1": {"zh": "chinese", "ja": "japanese", "en": "english"},
    "v2": {"zh": "chinese", "ja": "japanese", "en": "english", "ko": "korean", "yue": "cantonese"},
}
# Chinese text containing one of these marks turns every comma phone into that pause symbol.
_PAUSE_MARKS = (("￥", "SP2"), ("^", "SP3"))


@dataclass
class CleanedText:
    phones: list[str]
    word2ph: list[int] | None  # phones per character of norm_text (zh and yue only)
    norm_text: str


@cache
def language_module(name: str):
    """tts.text.<name>, imported once."""
    return importlib.import_module(f"tts.text.{name}")


@cache
def _chinese_g2p(erhua: bool) -> ChineseG2P:
    return ChineseG2P(erhua=erhua)


def clean_text(text: str, language: str, version: str, chinese: ChineseG2P | None = None) -> CleanedText:
    """Normalise and G2P one segment, as the official clean_text does.

    language: zh, ja, en, ko or yue (without the all_ prefix). A language the version cannot speak
    is read as English from a single space, which gives one "," phone (official behaviour).
    chinese: the Mandarin G2P to use (e.g. with g2pW); default: pypinyin, erhua for v2.
    """
    table = table_version(version)
    if language not in LANGUAGE_MODULES[table]:
        language, text = "en", " "
    if language == "zh":
        chinese = chinese or _chinese_g2p(erhua=table != "v1")
        for mark, pause in _PAUSE_MARKS:
            if mark in text:
                cleaned = _clean_chinese(text.replace(mark, ","), chinese)
                cleaned.phones = [pause if phone == "," else phone for phone in cleaned.phones]
                return _known_phones(cleaned, version)
        return _known_phones(_clean_chinese(text, chinese), version)

    module = language_module(LANGUAGE_MODULES[table][language])
    norm_text = module.normalize(text)
    phones, word2ph = module.g2p(norm_text)
    if language == "en" and len(phones) < 4:
        phones = [","] + phones
    if language != "yue":
        word2ph = None
    return _known_phones(CleanedText(list(phones), word2ph, norm_text), version)


def _clean_chinese(text: str, chinese: ChineseG2P) -> CleanedText:
    norm_text = normalize_chinese(text)
    phones, word2ph = chinese(norm_text)
    return CleanedText(phones, word2ph, norm_text)


def _known_phones(cleaned: CleanedText, version: str) -> CleanedText:
    table = symbol_ids(version)
    cleaned.phones = [phone if phone in table else UNK for phone in cleaned.phones]
    return cleaned
