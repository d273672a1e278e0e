"""Text frontend parity with the official GPT-SoVITS frontend (g2pW off, see the fixture README).

Reads the folder named by KOE_FRONTEND_FIXTURES (default ../shared/fixtures/frontend) and runs every
row of cases.jsonl (phone ids, norm_text, word2ph, segments) and split_cases.jsonl (sentence splits).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tts.text.frontend import TextFrontend
from tts.text.split import split_sentences

pytestmark = pytest.mark.parity

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = ROOT.parent / "shared" / "fixtures" / "frontend"


def _fixture_rows(name: str) -> list[dict]:
    configured = os.environ.get("KOE_FRONTEND_FIXTURES")
    folder = Path(configured) if configured else DEFAULT_FOLDER
    path = folder / name
    if not path.is_file():
        if configured:
            pytest.fail(f"KOE_FRONTEND_FIXTURES={configured} has no {name}")
        pytest.skip(
            f"frontend fixtures not found at {folder}: they come from the shared reference folder "
            "(shared/fixtures/frontend, generated with the official GPT-SoVITS code); "
            "set KOE_FRONTEND_FIXTURES to their folder"
        )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        pytest.fail(f"{path} has no rows")
    return rows


@pytest.fixture(scope="module")
def frontend() -> TextFrontend:
    return TextFrontend()


def _mismatches(row: dict, frontend: TextFrontend) -> list[str]:
    result = frontend.phones(row["text"], row["language"], row["version"])
    problems = []
    if result.phone_ids != row["phone_ids"]:
        problems.append(f"phone_ids\n  got  {result.phones}\n  want {row['phones']}")
    if result.norm_text != row["norm_text"]:
        problems.append(f"norm_text got {result.norm_text!r} want {row['norm_text']!r}")
    if result.word2ph != row["word2ph"]:
        problems.append(f"word2ph got {result.word2ph} want {row['word2ph']}")
    got_segments = [(seg.lang, seg.text) for seg in result.segments]
    want_segments = [(seg["lang"], seg["text"]) for seg in row["segments"]]
    if got_segments != want_segments:
        problems.append(f"segments got {got_segments} want {want_segments}")
    return problems


def test_frontend_cases(frontend: TextFrontend) -> None:
    rows = _fixture_rows("cases.jsonl")
    failures = []
    for index, row in enumerate(rows):
        problems = _mismatches(row, frontend)
        if problems:
            failures.append(
                f"row {index} {row['language']} {row['version']} {row['text']!r}: " + "; ".join(problems)
            )
    assert not failures, f"{len(failures)}/{len(rows)} rows differ:\n" + "\n".join(failures)


def test_split_cases() -> None:
    rows = _fixture_rows("split_cases.jsonl")
    failures = []
    for index, row in enumerate(rows):
        got = split_sentences(row["text"], row["language"], row["method"])
        if got != row["segments"]:
            failures.append(f"row {index} {row['method']} {row['text']!r}: got {got} want {row['segments']}")
    assert not failures, f"{len(failures)}/{len(rows)} rows differ:\n" + "\n".join(failures)
