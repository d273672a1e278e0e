"""Korean frontend, identical to GPT-SoVITS (v2 only): g2pk2 pronunciation, then one phone per jamo.

Latin letters are first replaced by their Korean letter names (a -> 에이), g2pk2 applies the Korean
pronunciation rules and reads numbers, the result is decomposed into compatibility jamo with compound
vowels split (ㅘ -> ㅗㅏ), and every character becomes a phone: a space is `空`, punctuation is mapped
like Japanese, and anything outside the symbol table is `停`. There is no text normalisation.

g2pk2 (with python-mecab-ko and NLTK's cmudict corpus) is loaded on the first call, once.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading

from agent.errors import KoeError
from tts.text.english import CMUDICT, require_nltk_data
from tts.text.symbols import symbols

_LETTER_NAMES = {
    "a": "에이", "b": "비", "c": "시", "d": "디", "e": "이", "f": "에프", "g": "지", "h": "에이치",
    "i": "아이", "j": "제이", "k": "케이", "l": "엘", "m": "엠", "n": "엔", "o": "오", "p": "피",
    "q": "큐", "r": "아르", "s": "에스", "t": "티", "u": "유", "v": "브이", "w": "더블유", "x": "엑스",
    "y": "와이", "z": "제트",
}  # fmt: skip
_LATIN_LETTER = re.compile("[a-z]", re.IGNORECASE)
_COMPOUND_VOWELS = {
    "ㅘ": "ㅗㅏ", "ㅙ": "ㅗㅐ", "ㅚ": "ㅗㅣ", "ㅝ": "ㅜㅓ", "ㅞ": "ㅜㅔ", "ㅟ": "ㅜㅣ", "ㅢ": "ㅡㅣ",
    "ㅑ": "ㅣㅏ", "ㅒ": "ㅣㅐ", "ㅕ": "ㅣㅓ", "ㅖ": "ㅣㅔ", "ㅛ": "ㅣㅗ", "ㅠ": "ㅣㅜ",
}  # fmt: skip
_COMPOUND_VOWEL = re.compile("|".join(_COMPOUND_VOWELS))
# g2pk2 wrongly carries ㄹ across a space after 을/를 (를 랑 -> 를 ㄹ...): GPT-SoVITS reads it as ㄴ.
_LIAISON_ERROR = re.compile("(ㅇㅡㄹ|ㄹㅡㄹ) ㄹ")
_ENDS_IN_JAMO = re.compile("([\u3131-\u3163])$")
_CHAR_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",",
    " ": "空",
}  # fmt: skip
OUT_OF_TABLE = "停"


def normalize(text: str) -> str:
    """Korean has no text_normalize in GPT-SoVITS: the text is used as it is."""
    return text


def g2p(norm_text: str) -> tuple[list[str], None]:
    """One phone per jamo / mark of the pronounced text (no word2ph for Korean)."""
    from jamo import h2j, j2hcj

    text = _LATIN_LETTER.sub(lambda m: _LETTER_NAMES.get(m.group().casefold(), m.group()), norm_text)
    text = _g2pk()(text)
    text = _COMPOUND_VOWEL.sub(lambda m: _COMPOUND_VOWELS[m.group()], j2hcj(h2j(text)))
    text = _LIAISON_ERROR.sub(r"\1 ㄴ", text)
    text = _ENDS_IN_JAMO.sub(r"\1.", text)
    table = set(symbols("v2"))
    phones = [_CHAR_MAP.get(c, c) for c in text]
    return [p if p in table else OUT_OF_TABLE for p in phones], None


_lock = threading.Lock()
_converter = None


@contextlib.contextmanager
def _no_nltk_download():
    """g2pk2's import calls `nltk.download("cmudict")` unless `corpora/cmudict.zip` exists, even when
    the unzipped corpus is there: a network access in the middle of a conversation. The corpus was
    checked just before, so the call is turned into a no-op while g2pk2 is imported."""
    import nltk

    real = nltk.download
    nltk.download = lambda *args, **kwargs: True
    try:
        yield
    finally:
        nltk.download = real


def _g2pk():
    """g2pk2's converter, built on first use, once; a clear error if its data is missing."""
    global _converter
    with _lock:
        if _converter is None:
            require_nltk_data(CMUDICT, "g2pk2 reads English words with it")
            try:
                import jamo  # noqa: F401  (used by g2p)
                import mecab  # noqa: F401  (python-mecab-ko; present, so g2pk2 will not try to pip-install it)

                with _no_nltk_download():
                    from g2pk2 import G2p
            except ModuleNotFoundError as exc:
                raise KoeError(f"the Korean frontend needs {exc.name}: pip install 'koe[ko]'") from None
            with contextlib.redirect_stdout(io.StringIO()):  # g2pk2 prints "mecab installed"
                converter = G2p()
            if converter.mecab is None:
                raise KoeError("Korean needs python-mecab-ko and python-mecab-ko-dic: pip install 'koe[ko]'")
            _converter = converter
        return _converter
