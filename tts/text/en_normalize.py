"""English text expansion as GPT-SoVITS does it: numbers, money, times, units and fractions to words.

Each rule is one regular expression and one small function; `expand` applies them in the official
order, which matters (commas inside numbers go before money, money before decimals, decimals before
plain integers). Numbers become words through inflect, as upstream. The quirks of the official rules
are kept on purpose, because voices were trained on their output: `N. ` always becomes an ordinal,
" - " between words is read "minus", and a negative sign swallows the space in front of it.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

# Unit suffixes in the official match order: "m" before "min", "km" before "km/h" (so "km/h" itself
# only matches where "km" cannot end at a word boundary).
_UNITS = {
    "m": ("meter", "meters"),
    "km": ("kilometer", "kilometers"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "ft": ("feet", "feet"),
    "L": ("liter", "liters"),
    "tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"),
    "h": ("hour", "hours"),
    "min": ("minute", "minutes"),
    "s": ("second", "seconds"),
    "°C": ("degree celsius", "degrees celsius"),
    "°F": ("degree fahrenheit", "degrees fahrenheit"),
}
_OPERATORS = {"+": " plus ", "-": " minus ", "×": " times ", "÷": " divided by ", "=": " Equals "}
_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ"
# An arithmetic operand: a (signed) number, a bare decimal fraction, or a single letter.
_OPERAND = rf"(?:-?\d+(?:\.\d+)?[{_SUPERSCRIPTS}]*|\.\d+[{_SUPERSCRIPTS}]*|[A-Za-z][{_SUPERSCRIPTS}]*)"

_LIST_NUMBER = re.compile(r"\b([0-9]+)\. ")
_ARITHMETIC = re.compile(rf"({_OPERAND})\s+([+\-×÷=])\s+({_OPERAND})")
_NEGATIVE = re.compile(r"(?:^|\s+)-(\d+)")
_GROUPED_NUMBER = re.compile(r"[0-9][0-9,]+[0-9]")
_TIME = re.compile(r"\b([01]?[0-9]|2[0-3]):([0-5][0-9])\b")
_MEASUREMENT = re.compile(r"\b([0-9]+(\.[0-9]+)?(" + "|".join(map(re.escape, _UNITS)) + r"))\b")
_POUNDS_BEFORE = re.compile(r"£([0-9.,]*[0-9]+)")
_POUNDS_AFTER = re.compile(r"([0-9.,]*[0-9]+)£")
_DOLLARS_BEFORE = re.compile(r"\$([0-9.,]*[0-9]+)")
_DOLLARS_AFTER = re.compile(r"([(0-9.,]*[0-9]+)\$")  # the "(" is in the official class too
_DECIMAL = re.compile(r"[0-9]+\.\s*[0-9]+")
_FRACTION = re.compile(r"([0-9]+)/([0-9]+)")
_ORDINAL = re.compile(r"[0-9]+(?:st|nd|rd|th)")
_INTEGER = re.compile(r"[0-9]+")
_NOT_KEPT = re.compile(r"[^ A-Za-z'.,?!\-]")
_INNER_CAPITAL = re.compile(r"(?<!^)(?<!\s)([A-Z])")


@cache
def _inflect():
    """The inflect engine, imported on first use (it is slow to import)."""
    import inflect

    return inflect.engine()


def _words(number: int | str, **options) -> str:
    """inflect's reading of a number; digit by digit where inflect gives up (absurdly long numbers)."""
    try:
        return _inflect().number_to_words(number, **options)
    except Exception:  # inflect raises its own NumOutOfRangeError and friends
        return " ".join(_inflect().number_to_words(digit) for digit in str(number) if digit.isdigit())


def _digits_value(text: str) -> int:
    """The integer value of the digits in a money part ("1,5" and "(5" do not crash the reader)."""
    digits = re.sub(r"[^0-9]", "", text)
    return int(digits) if digits else 0


def _list_number(m: re.Match) -> str:
    return _inflect().ordinal(m.group(1)) + ", "


def _arithmetic(m: re.Match) -> str:
    return m.group(1) + _OPERATORS[m.group(2)] + m.group(3)


def _time(m: re.Match) -> str:
    hours, minutes = int(m.group(1)), int(m.group(2))
    period = "a.m." if hours < 12 else "p.m."
    if hours > 12:
        hours -= 12
    if minutes == 0:
        return f"{_words(hours)} o'clock {period}"
    return f"{_words(hours)} {_words(minutes)} {period}"


def _measurement(m: re.Match) -> str:
    amount, decimals, unit = m.group(1), m.group(2), m.group(3)
    singular = decimals is None and int(amount.replace(unit, "").replace(".", "")) == 1
    return amount.replace(unit, " " + _UNITS[unit][0 if singular else 1])


def _money(amount: str, unit: tuple[str, str], subunit: tuple[str, str]) -> str:
    """ "12.5" -> "12 dollars and 50 cents" (the numbers are read out by a later rule)."""
    parts = amount.split(".")
    if len(parts) > 2:
        return f"{amount} {unit[1]}"
    whole = _digits_value(parts[0])
    cents = _digits_value(parts[1].ljust(2, "0")) if len(parts) > 1 and parts[1] else 0

    def counted(n: int, names: tuple[str, str]) -> str:
        return f"{n} {names[0] if n == 1 else names[1]}"

    if whole and cents:
        return f"{counted(whole, unit)} and {counted(cents, subunit)}"
    if whole:
        return counted(whole, unit)
    if cents:
        return counted(cents, subunit)
    return f"zero {unit[1]}"


def _pounds(m: re.Match) -> str:
    return _money(m.group(1), ("pound", "pounds"), ("penny", "pence"))


def _dollars(m: re.Match) -> str:
    return _money(m.group(1), ("dollar", "dollars"), ("cent", "cents"))


def _decimal(m: re.Match) -> str:
    whole, fraction = m.group(0).split(".")
    return whole + " point " + " ".join(fraction)


def _fraction(m: re.Match) -> str:
    numerator, denominator = int(m.group(1)), int(m.group(2))
    numerator_words = _words(numerator)
    if denominator == 1:
        return numerator_words
    if denominator == 2:
        return f"{numerator_words} {'half' if numerator == 1 else 'halves'}"
    denominator_words = _inflect().ordinal(_words(denominator))
    return f"{numerator_words} {denominator_words}{'s' if numerator > 1 else ''}"


def _ordinal(m: re.Match) -> str:
    return _words(m.group(0))


def _integer(m: re.Match) -> str:
    """Integers; 1001-2999 are read like years ("nineteen sixty-nine", "two thousand five")."""
    n = int(m.group(0))
    if 1000 < n < 3000:
        if n == 2000:
            return "two thousand"
        if 2000 < n < 2010:
            return "two thousand " + _words(n % 100)
        if n % 100 == 0:
            return _words(n // 100) + " hundred"
        return _words(n, andword="", zero="oh", group=2).replace(", ", " ")
    return _words(n, andword="")


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def expand(text: str) -> str:
    """The official English `normalize`: spell out numbers and symbols, keep only plain letters."""
    text = _LIST_NUMBER.sub(_list_number, text)
    while _ARITHMETIC.search(text):
        text = _ARITHMETIC.sub(_arithmetic, text)
    text = _NEGATIVE.sub(lambda m: "negative " + m.group(1), text)
    text = _GROUPED_NUMBER.sub(lambda m: m.group(0).replace(",", ""), text)
    text = _TIME.sub(_time, text)
    text = _MEASUREMENT.sub(_measurement, text)
    text = _POUNDS_BEFORE.sub(_pounds, text)
    text = _POUNDS_AFTER.sub(_pounds, text)
    text = _DOLLARS_BEFORE.sub(_dollars, text)
    text = _DOLLARS_AFTER.sub(_dollars, text)
    text = _DECIMAL.sub(_decimal, text)
    text = _FRACTION.sub(_fraction, text)
    text = _ORDINAL.sub(_ordinal, text)
    text = _INTEGER.sub(_integer, text)
    text = _strip_accents(text)
    text = text.replace("%", " percent")
    text = _NOT_KEPT.sub("", text)
    text = re.sub(r"(?i)i\.e\.", "that is", text)
    text = re.sub(r"(?i)e\.g\.", "for example", text)
    return _INNER_CAPITAL.sub(r" \1", text)
