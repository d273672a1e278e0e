"""Cantonese frontend, identical to GPT-SoVITS (v2 only): Jyutping from ToJyutping, split into
Y-prefixed initial and final+tone phones, two per character (word2ph), one per punctuation mark.

Normalisation reuses the Mandarin normaliser (so traditional characters become simplified and
numbers are read Mandarin-style, as upstream does), then maps Cantonese punctuation (quotes and
brackets to "'", which the final filter deletes) and keeps only Han characters and `! ? … , . -`.
Example: 佢個鋤頭太短啦。 -> 佢个锄头太短啦. -> Yk Yeoi5 Yg Yo3 ... Yl Yaa1 .
"""

from __future__ import annotations

import logging
import re
import threading

from agent.errors import KoeError
from tts.text import zh_normalize

log = logging.getLogger(__name__)

PUNCTUATION = "!?…,.-"
_PUNCTUATION_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",",
    "...": "…", "$": ".", "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'",
    "(": "'", ")": "'", "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "—": "-",
    "～": "-", "~": "-", "「": "'", "」": "'",
}  # fmt: skip
_PUNCTUATION_MAP_RE = re.compile("|".join(map(re.escape, _PUNCTUATION_MAP)))
_NOT_KEPT = re.compile(f"[^\u4e00-\u9fa5{re.escape(PUNCTUATION)}]+")
_PUNCTUATION_SET = set(PUNCTUATION)
_ONLY_PUNCTUATION = re.compile(f"^[{re.escape(PUNCTUATION)}]+$")
_HAN = re.compile("[\u4e00-\u9fa5]+")
_JYUTPING = re.compile(r"^([a-z]+[1-6]+[ ]?)+$")
# Jyutping onsets in match order (first prefix wins). Vowel-initial syllables use a vowel group as
# their "initial" (aa, ai, o, ...), so every syllable gets exactly two phones.
INITIALS = (
    "aa aai aak aap aat aau ai au ap at ak a p b e ts t dz d kw k gw g f h l m ng n s y w c z j "
    "ong on ou oi ok o uk ung sp spl spn sil"
).split()


def normalize(text: str) -> str:
    """GPT-SoVITS Cantonese text_normalize: Mandarin normaliser per clause, then Cantonese punctuation.

    Unlike upstream, which fails later in g2p, Han characters without any Jyutping reading (bare
    radicals such as 艹) are dropped here with a warning, so one odd character cannot stop a sentence.
    """
    clauses = zh_normalize.split_clauses(text)
    norm_text = "".join(_map_punctuation(zh_normalize.normalize_clause(c)) for c in clauses)
    return _drop_unreadable(norm_text)


def _drop_unreadable(text: str) -> str:
    unreadable = {
        char
        for word, jyutping in _to_jyutping()(text)
        if jyutping is None and _HAN.fullmatch(word)
        for char in word
    }
    if not unreadable:
        return text
    log.warning("Cantonese: no Jyutping reading for %s; dropped", ", ".join(sorted(unreadable)))
    return "".join(c for c in text if c not in unreadable)


def _map_punctuation(text: str) -> str:
    text = _PUNCTUATION_MAP_RE.sub(lambda m: _PUNCTUATION_MAP[m.group()], text)
    return _NOT_KEPT.sub("", text)


def g2p(norm_text: str) -> tuple[list[str], list[int]]:
    """Phones and word2ph (phones per character of norm_text) of normalised Cantonese text."""
    phones: list[str] = []
    word2ph: list[int] = []
    for unit in _jyutping_units(norm_text):
        if unit in _PUNCTUATION_SET:
            phones.append(unit)
            word2ph.append(1)
            continue
        syllable_phones = _syllable_phones(unit)
        if syllable_phones:
            phones += syllable_phones
            word2ph.append(2)
    return phones, word2ph


def _syllable_phones(syllable: str) -> list[str]:
    """'keoi5' -> ['Yk', 'Yeoi5']; 'aa3' -> ['Yaa', 'Ya3'] (an empty final repeats the initial's last
    letter). A syllable no initial matches gives no phones, as upstream."""
    tone = syllable[-1] if syllable[-1].isdigit() else ""
    letters = syllable[:-1] if tone else syllable
    for initial in INITIALS:
        if letters.startswith(initial):
            # ("nga..." has its own upstream rule, cut after two letters, which the "ng" entry gives.)
            final = letters[len(initial) :] or initial[-1]
            return [f"Y{initial}", f"Y{final}{tone}"]
    return []


def _jyutping_units(text: str) -> list[str]:
    """One Jyutping string per character, punctuation runs split into single marks."""
    units = []
    for word, jyutping in _to_jyutping()(text):
        if _ONLY_PUNCTUATION.match(word):
            units += list(word)
        elif jyutping is None or not _JYUTPING.search(jyutping):
            raise KoeError(
                f"Cantonese: no Jyutping reading for {word!r} ({', '.join(f'U+{ord(c):04X}' for c in word)}) "
                f"in {text!r}; write the sentence without it or use another language"
            )
        else:
            units.append(jyutping)
    return units


_lock = threading.Lock()
_converter = None


def _to_jyutping():
    """ToJyutping.get_jyutping_list, imported on first use."""
    global _converter
    with _lock:
        if _converter is None:
            try:
                import ToJyutping
            except ModuleNotFoundError:
                raise KoeError("Cantonese needs ToJyutping: pip install 'koe[yue]'") from None
            _converter = ToJyutping.get_jyutping_list
        return _converter
