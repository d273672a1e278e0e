"""Resident memory: HuBERT is released once a voice's clips are prepared, and loads again for a new clip."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from agent.config import TtsConfig
from tts_voice import PIPELINE, require_fixtures, voice_spec

OTHER_CLIP = PIPELINE / "refs" / "ref_d_22k_stereo.wav"


def fresh_pipeline():
    from tts.pipeline import TTSPipeline

    return TTSPipeline.from_paths(
        gpt_path=voice_spec().gpt,
        sovits_path=voice_spec().sovits,
        bert_dir=PIPELINE / "models" / "chinese-bert-tiny",
        hubert_dir=PIPELINE / "models" / "chinese-hubert-tiny",
    )


def speak(engine, voice=None) -> np.ndarray:
    async def run():
        return [c.audio async for c in engine.synthesize("Good evening, friends.", "en", "none", voice=voice)]

    return np.concatenate(asyncio.run(run()))


def test_prepared_voice_speaks_without_hubert_and_the_same_as_with_it():
    require_fixtures()
    from tts.engine import TtsEngine

    settings = TtsConfig(top_k=1, seed=7)
    kept = TtsEngine(fresh_pipeline(), voice_spec(), settings.model_copy(update={"keep_hubert": True}))
    kept.prepare()
    assert kept.pipeline.hubert.loaded

    released = TtsEngine(fresh_pipeline(), voice_spec(), settings)
    released.prepare((OTHER_CLIP,))
    assert not released.pipeline.hubert.loaded  # the clips' tokens are cached: HuBERT is not needed
    audio = speak(released)
    assert not released.pipeline.hubert.loaded
    np.testing.assert_array_equal(audio, speak(kept))  # seeded: releasing changes nothing
    speak(released, replace(voice_spec(), ref_audio=OTHER_CLIP))  # prepared up front too
    assert not released.pipeline.hubert.loaded


def test_a_new_clip_after_the_release_loads_hubert_again():
    require_fixtures()
    from tts.engine import TtsEngine

    engine = TtsEngine(fresh_pipeline(), voice_spec(), TtsConfig(top_k=1, seed=7))
    engine.prepare()
    assert not engine.pipeline.hubert.loaded
    assert len(speak(engine, replace(voice_spec(), ref_audio=OTHER_CLIP))) > 0
    assert engine.pipeline.hubert.loaded
