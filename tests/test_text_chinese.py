"""Mandarin normalisation, sandhi and symbol rules from the frontend spec (beyond the fixture rows)."""

from __future__ import annotations

import pytest

from tts.text import zh_numbers
from tts.text.cleaner import clean_text
from tts.text.symbols import phones_to_ids, symbol_ids, symbols
from tts.text.zh_normalize import normalize


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("5mm", "五米米"),  # 'm' is replaced before 'mm'
        ("100-200元", "幺零零减二百元"),  # arithmetic runs before ranges
        ("8:30-9:15", "八点半至九点半"),  # second time says 半 when the first minute is 30
        ("12:00开会", "十二点开会"),
        ("00:05:09", "零点零五分零九秒"),
        ("版本1.2.3发布", "版本一点二点三发布"),
        ("88号", "八十八号"),
        ("500克", "五零零克"),
        ("100086", "幺零零零八六"),
        ("价格2.0元", "价格二点零元"),
        ("3/4的人", "四分之三的人"),
        ("温度是10摄氏度", "温度是十摄氏度"),
        ("5~10个", "五到十个"),
        ("我有2+个", "我有两多个"),
        ("2024-03-15", "二零二四年三月十五日"),
        ("20℃~30℃", "二十度至三十度"),
        ("α粒子", "阿尔法粒子"),
        ("３个ＡＢ", "三个"),
        ("好！！？？", "好!"),
        ("嗯呣", "恩母"),
    ],
)
def test_normalize(text: str, spoken: str) -> None:
    assert normalize(text) == spoken


def test_cardinals() -> None:
    assert zh_numbers.cardinal("10050") == "一万零五十"
    assert zh_numbers.cardinal("110") == "一百一十"
    assert zh_numbers.cardinal("15") == "十五"
    assert zh_numbers.number(".5") == "零点五"


@pytest.mark.parametrize(
    ("text", "version", "phones"),
    [
        ("一点儿", "v2", "y i4 d ian3 EE er3"),
        ("胡同儿", "v2", "h u2 t ong5 EE er5"),
        ("胡同儿", "v1", "h u2 t ong5 EE er2"),  # v1 has no erhua step
        ("看不懂", "v2", "k an4 b u5 d ong3"),
        ("不怕", "v2", "b u2 p a4"),
        ("一天", "v2", "y i4 t ian1"),
        ("一段", "v2", "y i2 d uan4"),
        ("纸老虎", "v2", "zh ir3 l ao2 h u3"),
        ("你好￥我是", "v2", "n i2 h ao3 SP2 w o3 sh ir4"),
        ("你好，我是^小明。", "v2", "n i2 h ao3 SP3 w o3 sh ir4 SP3 x iao3 m ing2 ."),
    ],
)
def test_g2p(text: str, version: str, phones: str) -> None:
    cleaned = clean_text(text, "zh", version)
    assert cleaned.phones == phones.split()
    assert len(cleaned.word2ph) == len(cleaned.norm_text)
    assert sum(cleaned.word2ph) == len(cleaned.phones)


def test_symbol_tables_come_from_data() -> None:
    assert len(symbols("v1")) == 322 and len(symbols("v2")) == 732
    assert symbols("v2")[:322] == symbols("v1")
    assert symbols("v2Pro") == symbols("v2")
    ids = symbol_ids("v2")
    expected = {
        "!": 0,
        ",": 1,
        ".": 3,
        "SP2": 78,
        "SP3": 79,
        "UNK": 86,
        "_": 95,
        "…": 321,
        "[": 322,
        "停": 351,
    }
    assert {symbol: ids[symbol] for symbol in expected} == expected
    assert phones_to_ids(["UNK", "Ya"], "v2") == [86, 353]


def test_unsupported_language_reads_as_a_comma() -> None:
    cleaned = clean_text("안녕하세요", "ko", "v1")
    assert cleaned.phones == [","]
