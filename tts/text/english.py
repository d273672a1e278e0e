"""English frontend, identical to GPT-SoVITS: `normalize` (its text_normalize) and `g2p` (ARPAbet).

G2P per token (NLTK TweetTokenizer, NLTK averaged-perceptron POS tags): punctuation stays itself,
single letters are read as letters, homographs are chosen by POS tag, everything else goes through
the dictionary chain: CMU dictionary (+ GPT-SoVITS additions), the name dictionary for Title-case
words, spelling for short unknown words, "'s" endings, compound splitting with wordsegment, and
finally the neural model of g2p_en (`en_oov`).

Dictionaries (MIT/CMU, package data in tts/text/data/english/) and NLTK's tagger are loaded on the
first call, once. The tagger is NLTK data: a missing one raises `KoeError` naming
`koe models download nltk-data`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from agent.errors import KoeError
from tts.text import en_normalize, en_oov
from tts.text.symbols import symbols

PUNCTUATION = "!?…,.-"
# The official punctuation map is applied through a regex of *escaped* keys, so the two bracketed
# keys only match those literal strings; in effect only 。！？ are mapped. Kept as upstream has it.
_PUNCTUATION_MAP = {"[;:：，；]": ",", '["’]': "'", "。": ".", "！": "!", "？": "?"}
_PUNCTUATION_MAP_RE = re.compile("|".join(map(re.escape, _PUNCTUATION_MAP)))
# A punctuation mark or a blank followed by more punctuation keeps only its first character.
_REPEATED_PUNCTUATION = re.compile(f"([{re.escape(PUNCTUATION)}\\s])([{re.escape(PUNCTUATION)}])+")

_WORDS_DELETED_FROM_DICTIONARY = ("ae", "ai", "ar", "ios", "hud", "os")  # wrong readings of acronyms
_HOMOGRAPH_FIXES = {
    "read": (["R", "IY1", "D"], ["R", "EH1", "D"], "VBP"),
    "complex": (
        ["K", "AH0", "M", "P", "L", "EH1", "K", "S"],
        ["K", "AA1", "M", "P", "L", "EH0", "K", "S"],
        "JJ",
    ),
}
_CMUDICT_FIRST_ENTRY_LINE = 57  # lines before it are the licence header and symbol words
_VOICELESS_ENDINGS = ("P", "T", "K", "F", "TH", "HH")  # + "'s" -> S
_SIBILANT_ENDINGS = ("S", "Z", "SH", "ZH", "CH", "JH")  # + "'s" -> AH0 Z
_DROPPED_PHONES = {" ", "<pad>", "UW", "</s>", "<s>"}
_POSSESSIVE = re.compile(r"^[a-z]+'s$")
_ASCII_LETTER = re.compile("[a-z]")
TAGGER, CMUDICT = "taggers/averaged_perceptron_tagger_eng/", "corpora/cmudict"  # NLTK data resources


def normalize(text: str) -> str:
    """GPT-SoVITS English text_normalize: map 。！？, expand numbers/symbols, collapse punctuation."""
    text = _PUNCTUATION_MAP_RE.sub(lambda m: _PUNCTUATION_MAP[m.group()], text)
    text = en_normalize.expand(text)
    return _REPEATED_PUNCTUATION.sub(r"\1", text)


def g2p(norm_text: str) -> tuple[list[str], None]:
    """ARPAbet phones of normalised English text (no word2ph for English)."""
    phones = _frontend().phones(norm_text)
    phones = ["UNK" if p == "<unk>" else p for p in phones if p not in _DROPPED_PHONES]
    table = set(symbols("v2"))
    kept = []
    for phone in phones:
        if phone in table:
            kept.append(phone)
        elif phone == "'":
            kept.append("-")
        # anything else (a stray character spelled out) is dropped, as upstream does
    return kept, None


# --------------------------------------------------------------------------- dictionaries


def _data_text(name: str) -> str:
    """A dictionary file shipped in tts/text/data/english/ (a broken install names the file)."""
    path = resources.files("tts.text").joinpath("data", "english", name)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KoeError(
            f"English dictionary file missing: {path}; reinstall koe (it is package data)"
        ) from None


def load_pronouncing_dictionary() -> dict[str, list[str]]:
    """word (lower case) -> first pronunciation: cmudict.rep, words cmudict-fast.rep adds, hot words.

    Alternates such as "WORD(1)" are kept as unreachable keys, like upstream.
    """
    dictionary: dict[str, list[str]] = {}
    for line in _data_text("cmudict.rep").splitlines()[_CMUDICT_FIRST_ENTRY_LINE - 1 :]:
        fields = line.strip().split("  ")
        dictionary[fields[0].lower()] = fields[1].split(" ")
    for line in _data_text("cmudict-fast.rep").splitlines():
        word, *phones = line.strip().split(" ")
        dictionary.setdefault(word.lower(), phones)
    for line in _data_text("engdict-hot.rep").splitlines():
        word, *phones = line.strip().split(" ")
        dictionary[word.lower()] = phones  # GPT-SoVITS' own words override the dictionary
    for word in _WORDS_DELETED_FROM_DICTIONARY:
        del dictionary[word]
    return dictionary


def load_name_dictionary() -> dict[str, list[str]]:
    """Given names (lower case) -> first pronunciation, used for Title-case words only."""
    return {name: prons[0] for name, prons in json.loads(_data_text("namedict.json")).items()}


# --------------------------------------------------------------------------------- G2P


@dataclass
class _Frontend:
    dictionary: dict[str, list[str]]
    names: dict[str, list[str]]
    homographs: dict[str, tuple[list[str], list[str], str]]
    tokenize: Callable[[str], list[str]]
    tag: Callable[[list[str]], list[tuple[str, str]]]
    segment: Callable[[str], list[str]]
    oov: en_oov.OovModel

    def phones(self, text: str) -> list[str]:
        """Phones of every token, with a " " placeholder between tokens."""
        result: list[str] = []
        for token, tag in self.tag(self.tokenize(text)):
            if result:
                result.append(" ")
            result.extend(self.token_phones(token, tag))
        return result

    def token_phones(self, token: str, tag: str) -> list[str]:
        word = token.lower()
        if _ASCII_LETTER.search(word) is None:
            return [word]  # punctuation is its own phone
        if len(word) == 1:
            return ["EY1"] if token == "A" else self._letter(word)
        if word in self.homographs:
            first, second, pos = self.homographs[word]
            if tag.startswith(pos) or (len(tag) < len(pos) and pos.startswith(tag)):
                return first
            return second
        return self.word_phones(token)

    def word_phones(self, token: str) -> list[str]:
        """The dictionary chain for one token that is not a single letter or a homograph."""
        word = token.lower()
        if len(word) > 1 and word in self.dictionary:
            return self.dictionary[word]
        if token.istitle() and word in self.names:
            return self.names[word]
        if len(word) <= 3:  # short unknown words are spelled out
            return [p for c in word for p in (["EY1"] if c == "a" else self._letter(c))]
        if _POSSESSIVE.match(word):
            phones = list(self.word_phones(word[:-2]))
            last = phones[-1] if phones else ""
            ending = (
                ["S"] if last in _VOICELESS_ENDINGS else ["AH0", "Z"] if last in _SIBILANT_ENDINGS else ["Z"]
            )
            return phones + ending
        pieces = self.segment(word)
        if len(pieces) == 1:
            return self.oov.predict(word)
        return [p for piece in pieces for p in self.word_phones(piece)]

    def _letter(self, letter: str) -> list[str]:
        """A letter's dictionary reading; a non-letter stands for itself (and is filtered later)."""
        if letter.isalpha() and letter in self.dictionary:
            return self.dictionary[letter]
        return [letter]


_lock = threading.Lock()
_loaded: _Frontend | None = None


def _frontend() -> _Frontend:
    """The tokenizer, tagger and dictionaries, loaded on first use, once (thread-safe)."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load_frontend()
        return _loaded


def require_nltk_data(resource: str, needed_for: str) -> None:
    """A `KoeError` naming the resource and the fetch command if NLTK cannot find it."""
    import nltk

    try:
        nltk.data.find(resource)
    except LookupError:
        raise KoeError(
            f"NLTK data {resource!r} ({needed_for}) not found in NLTK_DATA or the default NLTK folders; "
            "fetch it with `koe models download nltk-data`"
        ) from None


def nltk_data_found() -> bool:
    """Whether NLTK finds the data `koe models download nltk-data` provides (raises ModuleNotFoundError
    without nltk itself)."""
    try:
        require_nltk_data(TAGGER, "the English POS tagger")
        require_nltk_data(CMUDICT, "English words in Korean text")
    except KoeError:
        return False
    return True


def _load_frontend() -> _Frontend:
    try:
        import wordsegment
        from nltk.tag import PerceptronTagger
        from nltk.tokenize import TweetTokenizer
    except ModuleNotFoundError as exc:
        raise KoeError(f"the English frontend needs {exc.name}: pip install 'koe[en]'") from None

    require_nltk_data(TAGGER, "the English POS tagger")
    tagger = PerceptronTagger(lang="eng")
    wordsegment.load()
    homographs = en_oov.load_homographs()
    homographs.update(_HOMOGRAPH_FIXES)
    return _Frontend(
        dictionary=load_pronouncing_dictionary(),
        names=load_name_dictionary(),
        homographs=homographs,
        tokenize=TweetTokenizer().tokenize,
        tag=tagger.tag,
        segment=wordsegment.segment,
        oov=en_oov.oov_model(),
    )
