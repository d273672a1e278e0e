"""Phone symbol tables v1 (322 symbols) and v2 (732), loaded from the package data.

The id of a phone is its index in the table. v1 is a strict prefix of v2, so shared symbols have the
same id in both. Which table a voice uses depends on its model version: only "v1" selects v1.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

UNK = "UNK"


@cache
def load_table(name: str) -> dict:
    """One JSON file from tts/text/data/, parsed once."""
    return json.loads(resources.files("tts.text").joinpath("data", name).read_text(encoding="utf-8"))


def table_version(version: str) -> str:
    """'v1' for v1 models, 'v2' for every later version (v2, v3, v4, v2Pro, v2ProPlus)."""
    return "v1" if version == "v1" else "v2"


@cache
def symbols(version: str) -> tuple[str, ...]:
    """The ordered symbol list of a model version."""
    return tuple(load_table(f"symbols_{table_version(version)}.json"))


@cache
def symbol_ids(version: str) -> dict[str, int]:
    return {symbol: index for index, symbol in enumerate(symbols(version))}


def phones_to_ids(phones: list[str], version: str) -> list[int]:
    """Map phone strings to ids; every phone must be in the table (clean_text guarantees it)."""
    table = symbol_ids(version)
    return [table[phone] for phone in phones]
