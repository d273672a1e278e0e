"""The streaming segmenter and the reply cleaner: tables of tricky Chinese, Japanese and English text.

Every case is fed three ways (all at once, one character at a time, in word-sized tokens as the fake
LLM server sends them): the pieces must not depend on how the stream was chunked.
"""

from __future__ import annotations

import pytest

from agent.reply_text import StreamFilter, clean_piece, take_emotion_tags
from agent.segmenter import Segmenter
from fake_llm_server import tokenize


def chunkings(text: str) -> list[list[str]]:
    return [[text], list(text), tokenize(text)]


def segment(chunks: list[str], **options) -> list[str]:
    segmenter = Segmenter(**options)
    pieces = []
    for chunk in chunks:
        pieces += segmenter.feed(chunk)
    return pieces + segmenter.flush()


SENTENCES = [
    # English: terminal punctuation needs a following space
    ("Hello there. How are you? I'm fine!", ["Hello there.", "How are you?", "I'm fine!"]),
    ("Pi is 3.14 today. Version 2.0.1 is out.", ["Pi is 3.14 today.", "Version 2.0.1 is out."]),
    ("It costs $1,000.50 now. Cheap.", ["It costs $1,000.50 now.", "Cheap."]),
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
    (
        "Bring fruit, e.g. apples, i.e. red ones. Thanks.",
        ["Bring fruit, e.g. apples, i.e. red ones.", "Thanks."],
    ),
    ("J. K. Rowling wrote it. Yes.", ["J. K. Rowling wrote it.", "Yes."]),
    ("Pens, paper, etc. are here. Take some.", ["Pens, paper, etc. are here.", "Take some."]),
    ("I bought pens etc. Then I left.", ["I bought pens etc.", "Then I left."]),
    ("We meet at 5 p.m. today. Fine.", ["We meet at 5 p.m. today.", "Fine."]),
    ("She lives in the U.S. It is far.", ["She lives in the U.S.", "It is far."]),
    ("Well... maybe. Hmm... Okay then.", ["Well... maybe.", "Hmm...", "Okay then."]),
    ("Wait… what? Really?!", ["Wait… what?", "Really?!"]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("See https://example.com/a.b?x=1&y=2. Then go.", ["See https://example.com/a.b?x=1&y=2.", "Then go."]),
    ("Visit www.koe.dev/docs/v1.2 for more. Bye.", ["Visit www.koe.dev/docs/v1.2 for more.", "Bye."]),
    ("Line one\nLine two", ["Line one", "Line two"]),
    ("Great![happy]Next one.", ["Great!", "[happy]Next one."]),
    ("no final punctuation", ["no final punctuation"]),
    # Chinese: full-width punctuation cuts at once, no space needed
    ("你好。今天天气很好！你呢？", ["你好。", "今天天气很好！", "你呢？"]),
    ("圆周率是3.14。对吧？", ["圆周率是3.14。", "对吧？"]),
    ("他说：“我来了。”然后走了。", ["他说：“我来了。”", "然后走了。"]),
    ("嗯……我想想。好吧！", ["嗯……我想想。", "好吧！"]),
    ("真的吗？！太好了。", ["真的吗？！", "太好了。"]),
    ("版本2.0发布了。", ["版本2.0发布了。"]),
    # Japanese
    ("こんにちは。元気ですか？", ["こんにちは。", "元気ですか？"]),
    ("「はい。」と彼は言った。そうです！", ["「はい。」", "と彼は言った。", "そうです！"]),
    ("ええと…そうですね。", ["ええと…そうですね。"]),
    # mixed scripts
    ("OK!我们走吧。Let's go.", ["OK!", "我们走吧。", "Let's go."]),
]


@pytest.mark.parametrize("text,expected", SENTENCES)
def test_sentences_are_cut_the_same_however_the_stream_is_chunked(text, expected):
    for chunks in chunkings(text):
        assert segment(chunks, first_min_length=None) == expected, chunks


def test_the_first_piece_is_cut_early_at_a_comma_once_long_enough():
    text = "Oh, that is a really interesting question, and I will answer it, slowly. Second, third."
    expected = [
        "Oh, that is a really interesting question,",  # "Oh," alone is shorter than first_min_length
        "and I will answer it, slowly.",  # later pieces only end at sentence ends
        "Second, third.",
    ]
    for chunks in chunkings(text):
        assert segment(chunks, first_min_length=20) == expected


def test_an_early_cut_never_splits_a_number_or_a_cjk_word():
    assert segment(["The total, 1,000,000 dollars, is due."], first_min_length=5) == [
        "The total,",
        "1,000,000 dollars, is due.",
    ]
    # a CJK character counts 3 units: 7 characters pass first_min_length=20, "我觉得，" does not
    assert segment(["我觉得，这个问题非常有意思，我们慢慢讨论。"], first_min_length=20) == [
        "我觉得，这个问题非常有意思，",
        "我们慢慢讨论。",
    ]


@pytest.mark.parametrize(
    "text,max_length,expected",
    [
        ("word " * 30, 40, [("word " * 10).strip()] * 3),  # a space is 0 units: 10 words = 40
        ("a" * 25, 10, ["a" * 10, "a" * 10, "a" * 5]),
        (
            "first part, second part, third part, fourth.",
            30,
            ["first part, second part,", "third part, fourth."],
        ),
        ("一二三四五，六七八九十。", 18, ["一二三四五，", "六七八九十。"]),
    ],
)
def test_long_pieces_are_cut_at_a_comma_then_a_space_then_anywhere(text, max_length, expected):
    for chunks in chunkings(text):
        assert segment(chunks, first_min_length=None, max_length=max_length) == expected


def test_bad_segmenter_options_are_rejected():
    with pytest.raises(ValueError, match="first_min_length"):
        Segmenter(first_min_length=50, max_length=10)


# ------------------------------------------------------------------------------ stream filter
def filtered(chunks: list[str]) -> str:
    f = StreamFilter()
    return "".join(f.feed(c) for c in chunks) + f.flush()


FILTER_CASES = [
    ("<think>The user says hi. I should greet.</think>Hello!", "Hello!"),
    ("<thinking>plan</thinking>Hi. <think>more</think>Bye.", "Hi. Bye."),
    ("Here:\n```python\nprint('x. y.')\n```\nDone.", "Here:\n\nDone."),
    ("Use ~~~\ncode\n~~~ it.", "Use  it."),
    ("# Title\n## Sub\nText.", "Title\nSub\nText."),
    ("- one.\n* two.\n+ three.\n1. four.\n2) five.\n> quoted.", "one.\ntwo.\nthree.\nfour.\nfive.\nquoted."),
    ("12 apples and -5 degrees.", "12 apples and -5 degrees."),
    ("A < B and a `tick` here.", "A < B and a `tick` here."),
    ("<think>never closed", ""),
    ("```unclosed code", ""),
]


@pytest.mark.parametrize("text,expected", FILTER_CASES)
def test_reasoning_code_and_line_markdown_are_removed_from_the_stream(text, expected):
    for chunks in chunkings(text):
        assert filtered(chunks) == expected, chunks


CLEAN_CASES = [
    ("**Nice** to meet _you_ 😀.", "Nice to meet you."),
    ("See [the docs](https://x.dev/a) now.", "See the docs now."),
    ("An image ![alt](pic.png) here.", "An image here."),
    ("Line<br>break and <b>bold</b>.", "Line break and bold."),
    ("| a | b |", "a b"),
    ("---", ""),
    ("👍🏽🇯🇵❤️", ""),
    ("snake_case stays, __bold__ goes.", "snake_case stays, bold goes."),
    ("你好😊！", "你好！"),
]


@pytest.mark.parametrize("text,expected", CLEAN_CASES)
def test_pieces_lose_inline_markdown_html_and_emoji(text, expected):
    assert clean_piece(text) == expected


def test_emotion_tags_are_taken_out_and_only_known_ones_kept():
    text, tags = take_emotion_tags("[Happy] Great! 【sad】 Oh. [whisper] psst [1]", {"happy", "sad"})
    assert tags == ["happy", "sad"]
    assert clean_piece(text) == "Great! Oh. psst [1]"
