"""The frontend never crashes on odd input: empty, punctuation, emoji, markdown, control characters,
very long text, unknown modes."""

from __future__ import annotations

import pytest

from agent.errors import KoeError
from tts.text.frontend import TextFrontend, check_language
from tts.text.split import split_sentences


@pytest.fixture(scope="module")
def frontend() -> TextFrontend:
    return TextFrontend()


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("", "all_zh"),
        ("   ", "en"),
        ("。，！？", "zh"),
        ("!!! ...", "en"),
        ("😀🎉", "auto"),
        ("😀", "all_ja"),
        ("\x00\x07", "zh"),
    ],
)
def test_unspeakable_text_gives_no_phones_and_a_message(
    frontend: TextFrontend, text: str, language: str
) -> None:
    result = frontend.phones(text, language, "v2")
    assert result.phone_ids == []
    assert result.norm_text == ""
    assert "nothing to speak" in result.message


def test_unspeakable_text_splits_into_no_sentences() -> None:
    assert split_sentences("", "zh", "cut5") == []
    assert split_sentences("\n\n", "zh", "cut1") == []
    assert split_sentences("。。。！！", "zh", "cut0") == []
    assert split_sentences("😀😀", "en", "cut5") == []


def test_emoji_inside_text_is_dropped(frontend: TextFrontend) -> None:
    plain = frontend.phones("今天天气很好，我们去公园。", "all_zh", "v2")
    with_emoji = frontend.phones("今天天气很好😀，我们去公园🎉。", "all_zh", "v2")
    assert with_emoji.phone_ids == plain.phone_ids
    assert with_emoji.message is None


def test_markdown_is_read_as_its_words(frontend: TextFrontend) -> None:
    result = frontend.phones("**重要** 请看 `第一章` 的 [链接](http://a.b)", "all_zh", "v2")
    assert result.phone_ids
    assert "*" not in result.norm_text and "`" not in result.norm_text
    english = frontend.phones("# Title\n**bold** and _italic_ text", "en", "v2")
    assert "B OW1 L D".split() == english.phones[english.phones.index("B") :][:4]


def test_control_characters_are_removed(frontend: TextFrontend) -> None:
    clean = frontend.phones("你好，世界。", "all_zh", "v2")
    dirty = frontend.phones("你\x00好，\x07世\u200b界。", "all_zh", "v2")
    assert dirty.phone_ids == clean.phone_ids
    assert (
        frontend.phones("hello\x00 world\x1b", "en", "v2").phones
        == frontend.phones("hello world", "en", "v2").phones
    )


def test_twenty_thousand_character_paragraph(frontend: TextFrontend) -> None:
    paragraph = ("今天天气很好，我们去公园散步吧。" * 1250)[:20000]
    sentences = split_sentences(paragraph, "zh", "cut0")
    assert all(len(sentence) <= 510 for sentence in sentences)
    assert "".join(sentences).replace("。", "") == paragraph.replace("。", "")
    result = frontend.phones(sentences[0], "all_zh", "v2")
    assert len(result.word2ph) == len(result.norm_text)
    # The whole paragraph in one call also works (no length limit in the G2P itself).
    whole = frontend.phones(paragraph, "all_zh", "v2")
    assert sum(whole.word2ph) == len(whole.phone_ids) > 20000


def test_unknown_mode_names_the_supported_ones(frontend: TextFrontend) -> None:
    with pytest.raises(KoeError, match="unknown text language 'klingon'.*auto_yue.*all_ko"):
        frontend.phones("hello", "klingon", "v2")
    with pytest.raises(KoeError, match="for a v1 voice; supported: auto, en, zh, ja, all_zh, all_ja$"):
        check_language("ko", "v1")


def test_mode_is_case_insensitive(frontend: TextFrontend) -> None:
    assert (
        frontend.phones("Hello there.", "EN", "v2").phones
        == frontend.phones("Hello there.", "en", "v2").phones
    )


def test_unknown_split_method_names_the_methods() -> None:
    with pytest.raises(KoeError, match="cut0, cut1, cut2, cut3, cut4, cut5"):
        split_sentences("你好。", "zh", "cut9")
