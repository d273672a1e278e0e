"""Mandarin text normalisation: digits, dates, times, units, formulas and symbols spelled out in Han
characters, then punctuation reduced to the six marks the phone table knows (`! ? … , . -`).

The rules and their order follow the official GPT-SoVITS frontend (itself derived from PaddleSpeech's
zh_normalization), quirks included, because trained voices expect exactly its output. The result holds
only CJK characters U+4E00-U+9FA5 and the six marks.
"""

from __future__ import annotations

import re
from functools import cache

from tts.text import zh_numbers
from tts.text.symbols import load_table

PUNCTUATION = "!?…,.-"
_PUNCTUATION_RUN = re.compile(f"([{re.escape(PUNCTUATION)}])[{re.escape(PUNCTUATION)}]+")

# Characters deleted before any rule runs, and the clause ends after which the text is cut.
_DELETED_FIRST = re.compile(r"[—《》【】<>{}()（）#&@“”^_|\\]")
_CLAUSE_END = re.compile(r"([：、，；。？！,;?!][”’]?)")
_DELETED_LAST = re.compile(r"[-—《》【】<=>{}()（）#&@“”^_|\\]")

_FULL_WIDTH = {0xFF10 + i: ord("0") + i for i in range(10)}
_FULL_WIDTH |= {0xFF21 + i: ord("A") + i for i in range(26)}
_FULL_WIDTH |= {0xFF41 + i: ord("a") + i for i in range(26)}
_FULL_WIDTH |= {0x3000: ord(" ")}

# Read by name after all number rules ran.
_SYMBOL_NAMES = {
    "/": "每",
    **dict(zip("①②③④⑤⑥⑦⑧⑨⑩", "一二三四五六七八九十")),
    "α": "阿尔法",
    "β": "贝塔",
    "γ": "伽玛",
    "Γ": "伽玛",
    "δ": "德尔塔",
    "Δ": "德尔塔",
    "ε": "艾普西龙",
    "ζ": "捷塔",
    "η": "依塔",
    "θ": "西塔",
    "Θ": "西塔",
    "ι": "艾欧塔",
    "κ": "喀帕",
    "λ": "拉姆达",
    "Λ": "拉姆达",
    "μ": "缪",
    "ν": "拗",
    "ξ": "克西",
    "Ξ": "克西",
    "ο": "欧米克伦",
    "π": "派",
    "Π": "派",
    "ρ": "肉",
    "ς": "西格玛",
    "Σ": "西格玛",
    "σ": "西格玛",
    "τ": "套",
    "υ": "宇普西龙",
    "φ": "服艾",
    "Φ": "服艾",
    "χ": "器",
    "ψ": "普赛",
    "Ψ": "普赛",
    "ω": "欧米伽",
    "Ω": "欧米伽",
    "+": "加",
    "-": "减",
    "×": "乘",
    "÷": "除",
    "=": "等",
}

_NUM = r"-?\d+(?:\.\d+)?|\.\d+"  # a signed number or a bare decimal like .5
_UNIT = r"%|°C|℃|度|摄氏度|cm2|cm²|cm3|cm³|cm|db|ds|kg|km|m2|m²|m³|m3|ml|m|mm|s"
_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ"
_OPERAND = rf"-?\d+(?:\.\d+)?[{_SUPERSCRIPTS}]*|\.\d+[{_SUPERSCRIPTS}]*|[A-Za-z][{_SUPERSCRIPTS}]*"

RE_DATE = re.compile(
    r"(?P<year>\d{4}|\d{2})年"
    r"(?:(?P<month>0?[1-9]|1[0-2])月)?"
    r"(?:(?P<day>0?[1-9]|[12][0-9]|30|31)(?P<suffix>[日号]))?"
)
RE_DATE_NUMERIC = re.compile(r"(\d{4})([- /.])(0[1-9]|1[012])\2(0[1-9]|[12][0-9]|3[01])")
_CLOCK = r"([0-1]?[0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?"
RE_TIME_RANGE = re.compile(_CLOCK + r"[~-]" + _CLOCK)
RE_TIME = re.compile(_CLOCK)
RE_UNIT_RANGE = re.compile(rf"(?:{_NUM})(?:{_UNIT})~(?:{_NUM})(?:{_UNIT})")
RE_TEMPERATURE = re.compile(r"(-?)(\d+(?:\.\d+)?)(°C|℃|度|摄氏度)")
RE_ARITHMETIC = re.compile(rf"({_OPERAND})([+\-×÷=])({_OPERAND})")
RE_POWER = re.compile(f"[{_SUPERSCRIPTS}]+")
RE_FRACTION = re.compile(r"(-?)(\d+)/(\d+)")
RE_PERCENT = re.compile(r"(-?)(\d+(?:\.\d+)?)%")
RE_MOBILE = re.compile(r"(?<!\d)((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})(?!\d)")
RE_LANDLINE = re.compile(r"(?<!\d)((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})(?!\d)")
RE_SERVICE_NUMBER = re.compile(r"(400)(-)?\d{3}(-)?\d{4}")
RE_RANGE = re.compile(r"(?<![\d+\-×÷=])(-?\d+(?:\.\d+)?)[-~](-?\d+(?:\.\d+)?)(?![\d+\-×÷=])")
RE_NEGATIVE = re.compile(r"-(\d+)")
RE_VERSION = re.compile(r"\d+(?:\.\d+){2,}")
RE_DECIMAL = re.compile(r"(-?)(\d+\.\d+)|\.(\d+)")
RE_LONG_DIGITS = re.compile(r"\d{3,}")
RE_NUMBER = re.compile(r"(-?)(\d+(?:\.\d+)?)|\.(\d+)")


@cache
def _traditional_to_simplified() -> dict[int, str]:
    return {ord(t): s for t, s in load_table("zh_t2s.json")["map"].items()}


@cache
def _quantifier_regex() -> re.Pattern:
    quantifiers = load_table("frontend_tables.json")["zh"]["normalizer_com_quantifiers_regex"]
    return re.compile(r"(\d+)([多余几+])?(?P<quantifier>" + quantifiers + ")")


def _date(m: re.Match) -> str:
    text = zh_numbers.digits(m["year"]) + "年"
    if m["month"]:
        text += zh_numbers.cardinal(m["month"]) + "月"
    if m["day"]:
        text += zh_numbers.cardinal(m["day"]) + m["suffix"]
    return text


def _date_numeric(m: re.Match) -> str:
    year, _, month, day = m.groups()
    return f"{zh_numbers.digits(year)}年{zh_numbers.cardinal(month)}月{zh_numbers.cardinal(day)}日"


def _clock_part(value: str) -> str:
    """Minutes and seconds: a leading zero is read (05 -> 零五)."""
    text = zh_numbers.number(value.lstrip("0"))
    return zh_numbers.DIGITS["0"] + text if value.startswith("0") else text


def _clock(hour: str, minute: str, second: str | None, half: bool) -> str:
    text = zh_numbers.number(hour) + "点"
    if minute.lstrip("0"):
        text += "半" if half else _clock_part(minute) + "分"
    if second and second.lstrip("0"):
        text += _clock_part(second) + "秒"
    return text


def _time(m: re.Match) -> str:
    hour, minute, second = m.groups()
    return _clock(hour, minute, second, half=int(minute) == 30)


def _time_range(m: re.Match) -> str:
    hour, minute, second, hour2, minute2, second2 = m.groups()
    # Official quirk: the second time also says 半 when the *first* minute is 30.
    half = int(minute) == 30
    return _clock(hour, minute, second, half) + "至" + _clock(hour2, minute2, second2, half)


def _temperature(m: re.Match) -> str:
    sign, value, unit = m.groups()
    return ("零下" if sign else "") + zh_numbers.number(value) + ("摄氏度" if unit == "摄氏度" else "度")


def _units(text: str) -> str:
    """Unit abbreviations replaced anywhere, in table order (so 'mm' becomes 米米: 'm' goes first)."""
    for abbreviation, name in load_table("frontend_tables.json")["zh"]["normalizer_measure_dict_in_order"]:
        text = text.replace(abbreviation, name)
    return text


def _arithmetic(m: re.Match) -> str:
    operators = load_table("frontend_tables.json")["zh"]["normalizer_asmd_map"]
    return m[1] + operators[m[2]] + m[3]


def _power(m: re.Match) -> str:
    powers = load_table("frontend_tables.json")["zh"]["normalizer_power_map"]
    return "的" + "".join(powers[ch] for ch in m[0]) + "次方"


def _fraction(m: re.Match) -> str:
    sign, numerator, denominator = m.groups()
    return ("负" if sign else "") + zh_numbers.number(denominator) + "分之" + zh_numbers.number(numerator)


def _percent(m: re.Match) -> str:
    sign, value = m.groups()
    return ("负" if sign else "") + "百分之" + zh_numbers.number(value)


def _mobile(m: re.Match) -> str:
    return "，".join(zh_numbers.digits(part, alt_one=True) for part in m[0].strip("+").split())


def _landline(m: re.Match) -> str:
    return "，".join(zh_numbers.digits(part, alt_one=True) for part in m[0].split("-"))


def _signed_number(m: re.Match) -> str:
    sign, value, bare_decimal = m.groups()
    if bare_decimal:
        return zh_numbers.number("." + bare_decimal)
    return ("负" if sign else "") + zh_numbers.number(value)


def _range(m: re.Match) -> str:
    return RE_NUMBER.sub(_signed_number, m[1]) + "到" + RE_NUMBER.sub(_signed_number, m[2])


def _version(m: re.Match) -> str:
    return "".join("点" if ch == "." else zh_numbers.number(ch) for ch in m[0])


def _quantified(m: re.Match) -> str:
    value = zh_numbers.number(m[1])
    approx = "多" if m[2] == "+" else (m[2] or "")
    return ("两" if value == "二" else value) + approx + m["quantifier"]


def _spell_symbols(text: str) -> str:
    for symbol, name in _SYMBOL_NAMES.items():
        text = text.replace(symbol, name)
    return _DELETED_LAST.sub("", text)


def normalize_clause(text: str) -> str:
    """Spell out one clause; the rule order matters (e.g. arithmetic before phone numbers)."""
    text = text.translate(_traditional_to_simplified()).translate(_FULL_WIDTH)
    text = RE_DATE.sub(_date, text)
    text = RE_DATE_NUMERIC.sub(_date_numeric, text)
    text = RE_TIME_RANGE.sub(_time_range, text)
    text = RE_TIME.sub(_time, text)
    text = RE_UNIT_RANGE.sub(lambda m: m[0].replace("~", "至"), text)
    text = RE_TEMPERATURE.sub(_temperature, text)
    text = _units(text)
    while RE_ARITHMETIC.search(text):
        text = RE_ARITHMETIC.sub(_arithmetic, text)
    text = RE_POWER.sub(_power, text)
    text = RE_FRACTION.sub(_fraction, text)
    text = RE_PERCENT.sub(_percent, text)
    text = RE_MOBILE.sub(_mobile, text)
    text = RE_LANDLINE.sub(_landline, text)
    text = RE_SERVICE_NUMBER.sub(_landline, text)
    text = RE_RANGE.sub(_range, text)
    text = RE_NEGATIVE.sub(lambda m: "负" + zh_numbers.number(m[1]), text)
    text = RE_VERSION.sub(_version, text)
    text = RE_DECIMAL.sub(_signed_number, text)
    text = _quantifier_regex().sub(_quantified, text)
    text = RE_LONG_DIGITS.sub(lambda m: zh_numbers.digits(m[0], alt_one=True), text)
    text = RE_NUMBER.sub(_signed_number, text)
    return _spell_symbols(text)


def split_clauses(text: str) -> list[str]:
    """Drop spaces and bracket-like characters, then cut after each clause-ending mark."""
    text = _DELETED_FIRST.sub("", text.replace(" ", ""))
    text = _CLAUSE_END.sub("\\1\n", text).strip()
    return [clause.strip() for clause in re.split(r"\n+", text)]


@cache
def _punctuation_pattern() -> tuple[re.Pattern, dict[str, str]]:
    rep_map = load_table("frontend_tables.json")["zh"]["rep_map"]
    return re.compile("|".join(re.escape(key) for key in rep_map)), rep_map


def map_punctuation(text: str) -> str:
    """嗯/呣 respelled (their pinyin is not in the table), marks mapped, everything else non-Han dropped."""
    text = text.replace("嗯", "恩").replace("呣", "母")
    pattern, rep_map = _punctuation_pattern()
    text = pattern.sub(lambda m: rep_map[m[0]], text)
    return re.sub(f"[^\u4e00-\u9fa5{re.escape(PUNCTUATION)}]+", "", text)


def collapse_punctuation(text: str) -> str:
    """A run of marks keeps its first one: '?!' -> '?'."""
    return _PUNCTUATION_RUN.sub(r"\1", text)


def normalize(text: str) -> str:
    """Full Mandarin normalisation, as used for both v1 and v2 voices."""
    clauses = [map_punctuation(normalize_clause(clause)) for clause in split_clauses(text)]
    return collapse_punctuation("".join(clauses))
