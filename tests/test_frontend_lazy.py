"""Heavy frontend parts load only for the languages a process actually uses, and only once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {
    "jieba_fast",
    "pypinyin",
    "split_lang",
    "pyopenjtalk",
    "g2p_en",
    "transformers",
    "g2pk2",
    "ToJyutping",
}

# One fresh process: English first, then Chinese; the heavy modules present after each step.
PROBE = """
import json, sys
from tts.text import TextFrontend
heavy = set(sys.argv[1:])
frontend = TextFrontend()
steps = {}
for name, text, mode in [("en", "Hello there, my friend.", "en"), ("zh", "今天天气很好，我们去公园散步吧。", "all_zh")]:
    frontend.phones(text, mode, "v2")
    steps[name] = sorted({module.split(".")[0] for module in sys.modules} & heavy)
print(json.dumps(steps))
"""


def test_each_language_loads_only_its_own_parts() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *sorted(HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    steps = {name: set(modules) for name, modules in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    assert not steps["en"] & {"jieba_fast", "pypinyin", "split_lang", "pyopenjtalk", "transformers", "g2pk2"}
    assert steps["zh"] - steps["en"] == {"jieba_fast", "pypinyin", "split_lang"}


def test_resources_are_cached_between_calls() -> None:
    from tts.text.cleaner import language_module
    from tts.text.lang_segment import _splitter

    assert language_module("english") is language_module("english")
    assert _splitter(None) is _splitter(None)


# Korean in a fresh process, with the unzipped NLTK corpus of the test data (no cmudict.zip).
NO_DOWNLOAD_PROBE = """
import nltk
calls = []
nltk.download = lambda *args, **kwargs: calls.append(args) or False
from tts.text import TextFrontend
phones = TextFrontend().phones("안녕하세요, 만나서 반갑습니다.", "all_ko", "v2").phones
print(len(phones), calls)
"""


def test_korean_never_tries_to_download_nltk_data() -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_DOWNLOAD_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    count, calls = out.stdout.split(maxsplit=1)
    assert int(count) > 10 and calls.strip() == "[]"
