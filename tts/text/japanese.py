"""Japanese frontend, identical to GPT-SoVITS: pyopenjtalk phones with ESPnet-style prosody marks.

`g2p` cuts the text at every character that is not Japanese script, a Latin letter or a digit; each
Japanese run goes through Open JTalk (full-context labels) and becomes phones with the marks
`[` (pitch rises), `]` (pitch falls after the accent nucleus) and `#` (accent-phrase boundary; not
in the symbol tables, so clean_text turns it into UNK); the cut characters follow as punctuation.

pyopenjtalk needs the NAIST-jdic 1.11 dictionary (`open_jtalk_dic_utf_8-1.11`): OPEN_JTALK_DICT_DIR,
else Debian's `open-jtalk-mecab-naist-jdic` folder. It is loaded on the first call, once. The
pyopenjtalk-plus fork is not equivalent (different accent phrasing), so do not substitute it.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from agent.errors import KoeError

DICT_ENV = "OPEN_JTALK_DICT_DIR"
APT_DICT_DIR = Path("/var/lib/mecab/dic/open-jtalk/naist-jdic")

PUNCTUATION = "!?…,.-"
_REPEATED_PUNCTUATION = re.compile(f"([{re.escape(PUNCTUATION)}])([{re.escape(PUNCTUATION)}])+")
# Characters handed to Open JTalk: Latin letters, digits (any script, as Python's \d), 々, kana (incl.
# ー and ・), CJK ideographs, full-width 1-9 and Latin letters, half-width katakana. Every other
# character cuts the text and is kept as a mark.
_JAPANESE_CLASS = (
    r"A-Za-z\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d"
)
_JAPANESE_CHAR = re.compile(f"[{_JAPANESE_CLASS}]")
_MARK = re.compile(f"[^{_JAPANESE_CLASS}]")
_SYMBOLS_READ_OUT = {"％": "パーセント"}
_MARK_MAP = {
    "：": ",",
    "；": ",",
    "，": ",",
    "。": ".",
    "！": "!",
    "？": "?",
    "\n": ".",
    "·": ",",
    "、": ",",
    "...": "…",
}

# Full-context label fields (HTS format). Absent fields ("xx") count as -50, as in ESPnet.
_PHONE = re.compile(r"-(.*?)\+")
_A1 = re.compile(r"/A:([0-9\-]+)\+")  # mora position relative to the accent nucleus
_A2 = re.compile(r"\+(\d+)\+")  # mora position in the accent phrase, from the front
_A3 = re.compile(r"\+(\d+)/")  # ... from the back
_E3 = re.compile(r"!(\d+)_")  # 1 = the utterance is a question
_F1 = re.compile(r"/F:(\d+)_")  # morae in the accent phrase
_MISSING = -50
_UNVOICED_VOWELS = {"A", "E", "I", "O", "U"}
_MORA_ENDS = {"a", "i", "u", "e", "o", "A", "E", "I", "O", "U", "N", "cl"}


def normalize(text: str) -> str:
    """GPT-SoVITS Japanese text_normalize: only collapses runs of ASCII punctuation to the first."""
    return _REPEATED_PUNCTUATION.sub(r"\1", text)


def g2p(norm_text: str) -> tuple[list[str], None]:
    """Phones with prosody marks of normalised Japanese text (no word2ph for Japanese)."""
    text = norm_text
    for symbol, reading in _SYMBOLS_READ_OUT.items():
        text = text.replace(symbol, reading)
    text = text.lower()
    pieces, marks = _MARK.split(text), _MARK.findall(text)
    phones: list[str] = []
    for i, piece in enumerate(pieces):
        if _JAPANESE_CHAR.match(piece):
            phones += prosody_phones(piece)[1:-1]  # drop the "^" and "$"/"?" ends
        if i < len(marks) and marks[i] != " ":
            phones.append(marks[i])
    return [_MARK_MAP.get(p, p) for p in phones], None


def _field(pattern: re.Pattern, label: str) -> int:
    match = pattern.search(label)
    return int(match.group(1)) if match else _MISSING


def prosody_phones(text: str) -> list[str]:
    """ESPnet's pyopenjtalk_g2p_prosody: phones plus ^ $ ? _ # [ ] marks from the full-context labels."""
    labels = _full_context_labels(text)
    phones: list[str] = []
    for n, label in enumerate(labels):
        phone = _PHONE.search(label).group(1)
        if phone in _UNVOICED_VOWELS:
            phone = phone.lower()
        if phone == "sil":
            if n == 0:
                phones.append("^")
            elif n == len(labels) - 1:
                question = _field(_E3, label)
                if question == 0:
                    phones.append("$")
                elif question == 1:
                    phones.append("?")
            continue
        if phone == "pau":
            phones.append("_")
            continue
        phones.append(phone)

        a1, a2, a3, f1 = (_field(p, label) for p in (_A1, _A2, _A3, _F1))
        next_a2 = _field(_A2, labels[n + 1]) if n + 1 < len(labels) else _MISSING
        if a3 == 1 and next_a2 == 1 and phone in _MORA_ENDS:
            phones.append("#")  # accent-phrase boundary
        elif a1 == 0 and next_a2 == a2 + 1 and a2 != f1:
            phones.append("]")  # pitch falls after the accent nucleus
        elif a2 == 1 and next_a2 == 2:
            phones.append("[")  # pitch rises after the first mora
    return phones


_lock = threading.Lock()
_pyopenjtalk = None


def dictionary_dir() -> Path:
    """The NAIST-jdic folder: $OPEN_JTALK_DICT_DIR, else the Debian package's folder."""
    configured = os.environ.get(DICT_ENV)
    candidate = Path(configured) if configured else APT_DICT_DIR
    if (candidate / "sys.dic").is_file():
        return candidate
    where = f"{DICT_ENV}={configured}" if configured else f"{DICT_ENV} is not set and {APT_DICT_DIR}"
    raise KoeError(
        f"Open JTalk dictionary (naist-jdic 1.11, sys.dic) not found: {where} has no sys.dic; fetch it "
        f"with `koe models download open-jtalk-dict` (or apt install open-jtalk-mecab-naist-jdic) and "
        f"point {DICT_ENV} at the folder"
    )


def _openjtalk():
    """pyopenjtalk, imported and pointed at the dictionary on first use (never lets it download)."""
    global _pyopenjtalk
    with _lock:
        if _pyopenjtalk is None:
            folder = dictionary_dir()
            try:
                import pyopenjtalk
            except ModuleNotFoundError:
                raise KoeError("the Japanese frontend needs pyopenjtalk: pip install 'koe[ja]'") from None

            pyopenjtalk.OPEN_JTALK_DICT_DIR = str(folder).encode("utf-8")
            _pyopenjtalk = pyopenjtalk
        return _pyopenjtalk


def _full_context_labels(text: str) -> list[str]:
    openjtalk = _openjtalk()
    return openjtalk.make_label(openjtalk.run_frontend(text))
