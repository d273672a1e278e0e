"""The tiny test voice: the official-format fixture checkpoints with the tiny HuBERT and BERT.

GPT and SoVITS files come from ../shared/fixtures/parity (official file formats, seeded random weights),
HuBERT/BERT and the reference clip from ../shared/fixtures/pipeline. Tests that use it skip when the
shared folder is absent (a user's clone).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
PARITY = SHARED / "parity"
PIPELINE = SHARED / "pipeline"
REF_TEXT = "Every morning the baker opens his little shop before the sun comes up over the hills."


def require_fixtures() -> None:
    if not (PARITY / "t2s_v2.ckpt").is_file() or not (PIPELINE / "models").is_dir():
        pytest.skip(f"tiny test voice not found under {SHARED} (the shared/ folder beside the repo)")


def voice_spec():
    from tts.engine import VoiceSpec

    return VoiceSpec(
        gpt=PARITY / "t2s_v2.ckpt",
        sovits=PARITY / "sovits_v2.pth",
        ref_audio=PIPELINE / "refs" / "ref_c_32k.wav",
        ref_text=REF_TEXT,
        ref_lang="en",
    )


@lru_cache(maxsize=2)
def pipeline(sovits: str = "sovits_v2.pth"):
    """A loaded pipeline with the tiny voice (shared between tests: loading takes seconds)."""
    from tts.pipeline import TTSPipeline

    return TTSPipeline.from_paths(
        gpt_path=PARITY / "t2s_v2.ckpt",
        sovits_path=PARITY / sovits,
        bert_dir=PIPELINE / "models" / "chinese-bert-tiny",
        hubert_dir=PIPELINE / "models" / "chinese-hubert-tiny",
    )
