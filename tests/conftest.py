"""Shared test setup: no model hub, deterministic single-threaded torch, paths to shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# Anything that reaches for a model hub must fail at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
os.environ.setdefault("NLTK_DATA", str(SHARED / "data" / "nltk_data"))
os.environ.setdefault("OPEN_JTALK_DICT_DIR", "/var/lib/mecab/dic/open-jtalk/naist-jdic")

import torch  # noqa: E402

torch.set_num_threads(1)
