"""English, Japanese, Korean and Cantonese frontends against the official GPT-SoVITS frontend.

Every row of `cases.jsonl` lists the language segments the official clean_text saw; each en/ja/ko/yue
segment is checked here: our `normalize` must give its norm_text and our `g2p` its phone count (and
word2ph for Cantonese). Rows with a single segment in a single-language mode (`en`, `all_ja`,
`all_ko`, `all_yue`) carry that segment's phones, which are compared exactly. The full phone-id check
of every row is in the frontend harness. The folder comes from `KOE_FRONTEND_FIXTURES` (default
`../shared/fixtures/frontend`); with the variable set, a missing folder fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import KoeError
from tts.text import cantonese, english, japanese, korean
from tts.text.symbols import UNK, symbols

ROOT = Path(__file__).resolve().parent.parent
ENV = "KOE_FRONTEND_FIXTURES"
FOLDER = Path(os.environ.get(ENV, ROOT.parent / "shared" / "fixtures" / "frontend"))
MODULES = {"en": english, "ja": japanese, "ko": korean, "yue": cantonese}
SINGLE_LANGUAGE_MODES = {"en": "en", "all_ja": "ja", "all_ko": "ko", "all_yue": "yue"}


def _rows() -> list[dict]:
    path = FOLDER / "cases.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


ROWS = _rows()
SEGMENTS = [
    pytest.param(row, segment, id=f"row{i}-seg{j}-{segment['lang']}")
    for i, row in enumerate(ROWS)
    for j, segment in enumerate(row["segments"])
    if segment["lang"] in MODULES
]
SINGLE_LANGUAGE_ROWS = [
    pytest.param(row, id=f"row{i}-{row['language']}-{row['version']}")
    for i, row in enumerate(ROWS)
    if SINGLE_LANGUAGE_MODES.get(row["language"]) and len(row["segments"]) == 1
]


def test_fixture_folder_present():
    if ROWS and SEGMENTS:
        return
    if ENV in os.environ:
        pytest.fail(f"{ENV}={FOLDER} has no cases.jsonl with en/ja/ko/yue segments")
    pytest.skip(f"frontend fixtures not found at {FOLDER}; they come from the shared/ folder beside the repo")


def cleaned_phones(lang: str, phones: list[str], version: str) -> list[str]:
    """What clean_text makes of a module's phones: a leading "," for short English, UNK outside the table."""
    if lang == "en" and len(phones) < 4:
        phones = [","] + phones
    table = set(symbols(version))
    return [p if p in table else UNK for p in phones]


@pytest.mark.parity
@pytest.mark.parametrize(("row", "segment"), SEGMENTS)
def test_segment_matches_official(row: dict, segment: dict):
    module = MODULES[segment["lang"]]
    norm_text = module.normalize(segment["text"])
    assert norm_text == segment["norm_text"], f"normalize({segment['text']!r})"
    phones, word2ph = module.g2p(norm_text)
    got = cleaned_phones(segment["lang"], phones, row["version"])
    assert len(got) == segment["n_phones"], f"{segment['text']!r}: phones {' '.join(got)}"
    if segment["lang"] == "yue":
        assert word2ph == segment["word2ph"]
        assert sum(word2ph) == len(phones) and len(word2ph) == len(norm_text)
    else:
        assert word2ph is None


@pytest.mark.parity
@pytest.mark.parametrize("row", SINGLE_LANGUAGE_ROWS)
def test_single_language_row_phones(row: dict):
    (segment,) = row["segments"]
    lang = SINGLE_LANGUAGE_MODES[row["language"]]
    assert segment["lang"] == lang
    module = MODULES[lang]
    phones, _ = module.g2p(module.normalize(segment["text"]))
    assert cleaned_phones(lang, phones, row["version"]) == row["phones"]


# ----------------------------------------------------------------------- English rules (spec §6.1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1. item", "first, item"),
        ("Only -7", "Onlynegative seven"),  # the sign swallows the space (official quirk)
        ("Tom，it’s", "Tomits"),  # full-width comma and ’ are deleted, not mapped
        ("Hello . World", "Hello  World"),  # a space before punctuation deletes the punctuation
        ("9:05", "nine five a.m."),
        ("12:30 13:00", "twelve thirty p.m. one o'clock p.m."),
        ("1km 1.0km", "one kilometer one point zero kilometers"),
        ("$1.01 $0.5 £2.5", "one dollar and one cent fifty cents two pounds and fifty pence"),
        ("3/2 1/2 5/1 2/3", "three halves one half five two thirds"),
        ("2000 2005 1900 3000", "two thousand two thousand five nineteen hundred three thousand"),
        ("50%", "fifty percent"),
        ("iPhone U.S.", "i Phone U. S."),
        ("I.E. this, e.g. that", "that is this, for example that"),
        ("Hello - world", "Hello minus world"),
        ("Café?!", "Cafe?"),
    ],
)
def test_english_normalization_rules(text: str, expected: str):
    assert english.normalize(text) == expected


def test_english_dictionary_chain():
    phones = lambda text: english.g2p(english.normalize(text))[0]  # noqa: E731
    assert phones("A a") == ["EY1", "AH0"]  # capital A alone is the letter
    assert phones("AI") == ["EY1", "AY1"]  # "ai" is deleted from the dictionary, so it is spelled
    assert phones("conda") == ["K", "AA1", "N", "D", "AH0"]  # engdict-hot.rep
    assert phones("I read it") == ["AY1", "R", "IY1", "D", "IH1", "T"]  # homograph by POS tag
    assert phones("xkcd's")[-1] == "Z"  # possessive of an unknown word


# ------------------------------------------------------------------------------- bad input

BAD_INPUTS = [
    "",
    " ",
    "!!!",
    "...?!",
    "😀",
    "😀 ok 😀",
    "\x00\x07\x1b[31m\t\r\n",
    "\u200b\u200d",
    "—",
    "'",
    "-",
]


@pytest.mark.parametrize("lang", sorted(MODULES))
@pytest.mark.parametrize("text", BAD_INPUTS, ids=[ascii(t) for t in BAD_INPUTS])
def test_bad_input_does_not_crash(lang: str, text: str):
    module = MODULES[lang]
    norm_text = module.normalize(text)
    phones, word2ph = module.g2p(norm_text)
    assert all(isinstance(p, str) and p for p in phones)
    if lang == "yue":
        assert len(word2ph) == len(norm_text) and sum(word2ph) == len(phones)


def test_empty_and_symbol_only_input_gives_no_words():
    assert english.g2p(english.normalize(""))[0] == []
    assert english.g2p(english.normalize("😀"))[0] == []
    assert english.g2p(english.normalize("!!!"))[0] == ["!"]
    assert japanese.g2p(japanese.normalize(""))[0] == []
    assert korean.g2p("")[0] == []
    assert cantonese.g2p(cantonese.normalize("😀")) == ([], [])


@pytest.mark.parametrize(
    ("lang", "unit"),
    [
        ("en", "Hello there, my friend. "),
        ("ja", "今日はいい天気ですね。"),
        ("ko", "안녕하세요. "),
        ("yue", "你食咗飯未呀？"),
    ],
)
def test_long_text(lang: str, unit: str):
    module = MODULES[lang]
    phones, _ = module.g2p(module.normalize(unit * 150))
    single, _ = module.g2p(module.normalize(unit))
    assert len(phones) >= 100 * len(single)


def test_cantonese_character_without_reading_is_dropped():
    norm_text = cantonese.normalize("你艹好。")
    assert norm_text == "你好."
    with pytest.raises(KoeError, match="no Jyutping reading for '艹'"):
        cantonese.g2p("艹")


def test_english_huge_number_is_read_digit_by_digit():
    assert english.normalize("9" * 80) == " ".join(["nine"] * 80)


# ------------------------------------------------------------------ language modes (spec §3.1)


@pytest.mark.parametrize(
    ("mode", "text", "labels"),
    [
        ("zh", "我用iPhone拍照。", ["zh", "en", "zh"]),
        ("yue", "我哋用iPhone影相。", ["yue", "en", "yue"]),
        ("ja", "東京でiPhoneを買った。", ["ja", "en", "ja"]),
        ("ko", "오늘 iPhone 샀어요.", ["ko", "en", "ko"]),
        ("all_yue", "我哋用iPhone影相。", ["yue", "en", "yue"]),
        ("auto_yue", "今日天氣好好。", ["yue"]),
    ],
)
def test_mixed_modes_keep_english_and_label_the_rest_with_the_mode(mode: str, text: str, labels: list[str]):
    from tts.text.frontend import TextFrontend

    result = TextFrontend().phones(text, mode, "v2")
    assert [seg.lang for seg in result.segments] == labels
    assert all(seg.phones for seg in result.segments) and result.phone_ids


def test_mixed_mode_reads_other_scripts_as_the_mode_language():
    """Mode `ja` reads Chinese as Japanese; every non-English run gets the mode's label."""
    from tts.text.frontend import TextFrontend

    result = TextFrontend().phones("今天天气很好。", "ja", "v2")
    assert [seg.lang for seg in result.segments] == ["ja"] and result.word2ph is None


# ---------------------------------------------------------------------------- missing data


def test_missing_nltk_tagger_names_the_download(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(english, "_loaded", None)
    with pytest.raises(KoeError, match=r"averaged_perceptron_tagger_eng.*koe models download nltk-data"):
        english.g2p("hello")


def test_missing_nltk_cmudict_names_the_download_for_korean(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(korean, "_converter", None)
    with pytest.raises(KoeError, match=r"corpora/cmudict.*koe models download nltk-data"):
        korean.g2p("안녕")


def test_missing_open_jtalk_dictionary_names_the_download(monkeypatch, tmp_path):
    monkeypatch.setenv(japanese.DICT_ENV, str(tmp_path))
    monkeypatch.setattr(japanese, "_pyopenjtalk", None)
    with pytest.raises(KoeError, match=rf"{re.escape(str(tmp_path))}.*koe models download open-jtalk-dict"):
        japanese.g2p("こんにちは")


def test_missing_english_dictionary_file_is_named():
    with pytest.raises(KoeError, match=r"data/english/cmudict-missing\.rep.*reinstall koe"):
        english._data_text("cmudict-missing.rep")


def test_import_is_cheap():
    """Importing the modules loads none of the heavy libraries; they come with the first call."""
    heavy = ["nltk", "inflect", "wordsegment", "pyopenjtalk", "g2pk2", "mecab", "ToJyutping", "jieba"]
    code = (
        "import sys\n"
        "import tts.text.english, tts.text.japanese, tts.text.korean, tts.text.cantonese\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
