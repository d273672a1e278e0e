"""Sentence cutting rules (cut0..cut5 and the preprocessing around them)."""

from __future__ import annotations

from tts.text.split import cut1, cut2, cut4, cut5, merge_short, prompt_text, split_long, split_sentences


def test_cut1_groups_four_clauses_and_gives_the_rest_to_the_last_group() -> None:
    nine = "".join(f"第{i}句，" for i in range(9))
    assert [len(piece.split("，")) - 1 for piece in cut1(nine).split("\n")] == [4, 5]
    twelve = "".join(f"第{i}句，" for i in range(12))
    assert [len(piece.split("，")) - 1 for piece in cut1(twelve).split("\n")] == [4, 8]


def test_cut1_returns_short_text_unchanged() -> None:
    assert cut1("一，二，三——四") == "一，二，三——四"  # 4 clauses: original, no replacement


def test_cut2_packs_clauses_past_fifty_characters() -> None:
    clause = "这是一个二十个字左右的分句用来测试切分，"  # 20 characters
    pieces = cut2(clause * 6).split("\n")
    assert [len(piece) for piece in pieces] == [60, 60]


def test_cut4_keeps_decimal_and_version_dots() -> None:
    assert (
        cut4("Step 3. Next we use v2.x and 2.5 units. Done")
        == "Step 3. Next we use v2.x and 2.5 units\n Done"
    )


def test_cut5_cuts_after_marks_but_not_inside_numbers() -> None:
    assert cut5("价格是3.5元，好吗？好") == "价格是3.5元，\n好吗？\n好"


def test_merge_short_appends_a_short_tail_to_the_last_piece() -> None:
    assert merge_short(["ab", "cde", "fghij", "k"]) == ["abcde", "fghijk"]
    assert merge_short(["ab"]) == ["ab"]


def test_split_long_cuts_at_marks_within_the_limit() -> None:
    text = "一二三四，" * 300  # 1500 characters
    chunks = split_long(text)
    assert all(len(chunk) <= 510 for chunk in chunks)
    assert "".join(chunks) == text


def test_short_first_clause_gets_a_leading_mark() -> None:
    assert split_sentences("好的，我们走吧", "zh", "cut0") == ["。好的，我们走吧。"]
    assert split_sentences("Hi, how are you", "en", "cut0") == [".Hi, how are you."]
    assert split_sentences("你好吗我很好，谢谢", "zh", "cut0") == ["你好吗我很好，谢谢。"]


def test_newlines_are_hard_boundaries_for_every_method() -> None:
    text = "今天天气很好我们出去\n明天下雨我们在家休息"
    for method in ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5"):
        assert split_sentences(text, "zh", method) == ["今天天气很好我们出去。", "明天下雨我们在家休息。"]


def test_repeated_ascii_punctuation_is_collapsed_first() -> None:
    assert split_sentences("Really?!?! Yes... sure", "en", "cut0") == ["Really? Yes. sure."]


def test_pieces_without_word_characters_are_dropped() -> None:
    assert split_sentences("今天天气很好。\n。。。。。", "zh", "cut0") == ["今天天气很好。"]


def test_a_short_punctuation_line_joins_the_next_piece() -> None:
    assert split_sentences("今天天气很好。\n……\n明天也好吧", "zh", "cut0") == [
        "今天天气很好。",
        "…明天也好吧。",
    ]


def test_streaming_path_keeps_repeated_punctuation() -> None:
    assert split_sentences("Wait!!! What", "en", "cut0", collapse=False) == ["Wait!!! What."]


def test_prompt_text_gets_a_final_mark() -> None:
    assert prompt_text("\n你好世界\n", "zh") == "你好世界。"
    assert prompt_text("Hello there", "en") == "Hello there."
    assert prompt_text("已经有了！", "zh") == "已经有了！"
