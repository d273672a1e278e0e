"""Reading numbers aloud in Mandarin: cardinals (一千零五), digit strings (幺三八) and decimals (三点一四)."""

from __future__ import annotations

DIGITS = dict(zip("0123456789", "零一二三四五六七八九"))
# Powers of ten that have their own character; a number is split at the largest one below its length.
UNITS = {1: "十", 2: "百", 3: "千", 4: "万", 8: "亿"}


def _cardinal_parts(value: str) -> list[str]:
    """Characters of a cardinal; inner zero runs become one 零 (value may carry leading zeros)."""
    stripped = value.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        # A leading zero that was stripped means a gap before this digit: 一千零五.
        return [DIGITS["0"], DIGITS[stripped]] if len(stripped) < len(value) else [DIGITS[stripped]]
    power = max(p for p in UNITS if p < len(stripped))
    return _cardinal_parts(value[:-power]) + [UNITS[power]] + _cardinal_parts(value[-power:])


def cardinal(value: str) -> str:
    """'1005' -> 一千零五, '15' -> 十五 (一十 is shortened), '0' or '000' -> 零, '' -> ''."""
    if not value:
        return ""
    value = value.lstrip("0")
    if not value:
        return DIGITS["0"]
    parts = _cardinal_parts(value)
    if len(parts) >= 2 and parts[0] == DIGITS["1"] and parts[1] == UNITS[1]:
        parts = parts[1:]
    return "".join(parts)


def digits(value: str, alt_one: bool = False) -> str:
    """Digit by digit: '2024' -> 二零二四; alt_one reads 1 as 幺 (phone numbers). Other characters stay."""
    text = "".join(DIGITS.get(ch, ch) for ch in value)
    return text.replace("一", "幺") if alt_one else text


def number(value: str) -> str:
    """Integer or decimal: '25.8' -> 二十五点八, '.5' -> 零点五, '2.0' -> 二点零, '3.50' -> 三点五零.

    Trailing zeros of the decimals are dropped, except that a decimal part ending in 0 keeps one.
    """
    integer, _, decimal = value.partition(".")
    text = cardinal(integer)
    decimal = decimal.rstrip("0") + "0" if decimal.endswith("0") else decimal
    if decimal:
        text = (text or DIGITS["0"]) + "点" + digits(decimal)
    return text
