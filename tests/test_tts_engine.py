"""The speaking engine on the tiny test voice: streaming levels, cancellation, caching, bad input."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from agent.config import TtsConfig
from agent.errors import KoeError
from tts_voice import PIPELINE, pipeline, require_fixtures, voice_spec

TEXT = "Good evening, friends. The old lighthouse shines at night! Can you see it from the hill?"


@pytest.fixture(scope="module")
def engine():
    require_fixtures()
    from tts.engine import TtsEngine

    return TtsEngine(pipeline(), voice_spec(), TtsConfig(top_k=1, seed=7, pause_s=0.2))


def collect(engine, text=TEXT, **kwargs):
    async def run():
        return [chunk async for chunk in engine.synthesize(text, "en", **kwargs)]

    return asyncio.run(run())


def test_whole_text_sentence_and_token_streaming_agree(engine):
    whole = collect(engine, stream="none")
    sentences = collect(engine, stream="sentence")
    tokens = collect(engine, stream="tokens")
    assert len(whole) == 1 and {c.sample_rate for c in whole + sentences + tokens} == {32000}
    assert len(sentences) == 4  # cut5 cuts after the comma too: four pieces, one chunk each
    assert len(tokens) > len(sentences)  # token chunks inside sentences, plus the pauses
    joined = np.concatenate([c.audio for c in sentences])
    # Greedy decoding gives the same tokens whichever way it streams: the same length of audio.
    assert len(joined) == len(whole[0].audio)
    assert abs(sum(len(c.audio) for c in tokens) - len(whole[0].audio)) <= 3 * 1280
    for chunks in (whole, sentences, tokens):
        audio = np.concatenate([c.audio for c in chunks]).astype(np.float32)
        assert np.abs(audio).max() > 300, "no audible signal"
    assert engine.stats.first_audio_s is not None and engine.stats.first_audio_s <= engine.stats.total_s


@pytest.mark.parametrize("stream", ["sentence", "tokens"])
def test_streamed_chunks_joined_match_the_whole_text_within_the_join_tolerance(engine, stream):
    """The join tolerance of tts/engine.py: same seed, same tokens, so the joined chunks have the one-shot
    length and its loudness envelope (correlation >= 0.99); samples differ by each decode's noise draw."""
    whole = collect(engine, stream="none")[0].audio.astype(np.float64)
    joined = np.concatenate([c.audio for c in collect(engine, stream=stream)]).astype(np.float64)
    assert len(joined) == len(whole)
    envelope = lambda x: np.sqrt(np.convolve(x**2, np.ones(640) / 640, mode="valid"))[::320]  # noqa: E731
    correlation = np.corrcoef(envelope(whole), envelope(joined))[0, 1]
    assert correlation >= 0.99, f"loudness envelopes differ too much (correlation {correlation:.4f})"


def test_leaving_the_stream_cancels_within_a_decoder_step(engine):
    steps_after_cancel = []
    cancelled = threading.Event()
    original = engine.pipeline._check_stop

    def counting_check(record=None):
        if cancelled.is_set():
            steps_after_cancel.append(1)
        original(record)

    engine.pipeline._check_stop = counting_check

    async def first_chunk_then_leave():
        gen = engine.synthesize(TEXT * 3, "en", stream="tokens")
        chunk = await gen.__anext__()
        cancelled.set()
        await gen.aclose()
        return chunk

    try:
        chunk = asyncio.run(first_chunk_then_leave())
    finally:
        engine.pipeline._check_stop = original
    assert len(chunk.audio) > 0
    assert len(steps_after_cancel) <= 1, f"{len(steps_after_cancel)} decoder steps ran after cancelling"
    assert engine._busy.acquire(timeout=5), "the worker thread did not finish"
    engine._busy.release()


def counting(model, calls: list):
    """`model` (HuBERT) that records the length of every waveform it is given."""

    def run(wav):
        calls.append(len(wav))
        return model(wav)

    return run


def test_reference_features_are_cached_by_content(engine, tmp_path):
    calls = []
    hubert = engine.pipeline.references.hubert
    copy = tmp_path / "same_clip.wav"
    copy.write_bytes(voice_spec().ref_audio.read_bytes())
    engine.pipeline.references.hubert = counting(hubert, calls)
    try:
        collect(engine, "Hello there, friend.", stream="none")
        collect(engine, "And hello again.", stream="none")
        from dataclasses import replace

        collect(engine, "A copy of the clip.", stream="none", voice=replace(voice_spec(), ref_audio=copy))
    finally:
        engine.pipeline.references.hubert = hubert
    assert calls == [], "prompt features were recomputed for a clip already seen (same content)"


def test_prompt_tokens_are_cached_on_disk_across_processors(engine, tmp_path):
    """A fresh processor (a restarted koe) with the same cache folder reads the tokens, runs no HuBERT."""
    from tts.reference import ReferenceProcessor

    calls = []
    hubert = counting(engine.pipeline.references.hubert, calls)
    clip = voice_spec().ref_audio
    first = ReferenceProcessor(engine.pipeline.sovits, hubert, model_id="voice-a", cache_dir=tmp_path)
    tokens = first.prompt_semantic(clip)
    assert len(calls) == 1 and len(list(tmp_path.glob("*.npy"))) == 1
    second = ReferenceProcessor(engine.pipeline.sovits, hubert, model_id="voice-a", cache_dir=tmp_path)
    assert torch.equal(second.prompt_semantic(clip), tokens) and len(calls) == 1
    other_model = ReferenceProcessor(engine.pipeline.sovits, hubert, model_id="voice-b", cache_dir=tmp_path)
    other_model.prompt_semantic(clip)
    assert len(calls) == 2, "tokens of another SoVITS model were reused"


def test_speaker_embedding_is_computed_once_per_clip():
    """v2Pro: every batch needs the clip's speaker embedding; the speaker network runs once per clip."""
    require_fixtures()
    from tts.reference import ReferenceProcessor
    from tts.weights.sovits import load_sovits
    from tts_voice import PARITY

    calls = []

    def speaker_encoder(audio16):
        calls.append(audio16.shape[-1])
        return torch.randn(1, 20480)

    refs = ReferenceProcessor(
        load_sovits(PARITY / "sovits_v2pro.pth"), hubert=None, speaker_encoder=speaker_encoder
    )
    clip = refs.style(voice_spec().ref_audio)
    first = refs.speaker_embeddings([clip])
    assert torch.equal(refs.speaker_embeddings([refs.style(voice_spec().ref_audio)])[0], first[0])
    assert calls == [clip.audio16.shape[-1]]


def test_reference_free_synthesis_decodes_without_a_prompt(engine):
    """An empty reference transcript (v1/v2): no prompt phones or tokens go into the T2S."""
    from tts.models.sampling import SamplingParams
    from tts.models.t2s_decode import generate
    from tts.pipeline import PipelineTrace

    params = {
        "text": "Good evening, friends.", "text_lang": "en", "ref_audio_path": str(voice_spec().ref_audio),
        "prompt_text": "", "prompt_lang": "en", "top_k": 1, "seed": 3, "text_split_method": "cut0",
    }  # fmt: skip
    trace = PipelineTrace()
    pieces = list(engine.pipeline.run(params, trace=trace))
    assert trace.prompt_phones == [] and len(trace.segments) == 1
    segment = trace.segments[0]
    alone = generate(
        engine.pipeline.t2s,
        torch.tensor([segment["phones"]]),
        segment["bert"][None],
        None,
        SamplingParams(top_k=1),
    )
    assert torch.equal(segment["semantic"], alone.semantic_tokens)
    assert len(pieces) == 1 and len(pieces[0][1]) >= 1280 * len(alone.semantic_tokens)


def write_clip(path, seconds, rate=32000):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), rate, subtype="PCM_16")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.wav", "reference audio not found"),
        (lambda tmp: write_clip(tmp / "short.wav", 1.5), r"1\.50 s long; it must be between 3 and 10 s"),
        (lambda tmp: write_clip(tmp / "long.wav", 12.0), r"12\.00 s long; it must be between 3 and 10 s"),
        (
            lambda tmp: (tmp / "noise.wav").write_bytes(b"not audio at all") and tmp / "noise.wav",
            "cannot read",
        ),
        (lambda tmp: write_clip(tmp / "low.wav", 4.0, rate=4000), "sampled at 4000 Hz; at least 8000 Hz"),
        (lambda tmp: write_clip(tmp / "odd.wav", 4.0, rate=44101), "unusual sample rate of 44101 Hz"),
    ],
)
def test_bad_reference_clips(engine, tmp_path, make, message):
    from dataclasses import replace

    voice = replace(voice_spec(), ref_audio=make(tmp_path))
    with pytest.raises(KoeError, match=message):
        engine.check("Hello there.", "en", voice)
    with pytest.raises(KoeError, match=message):
        collect(engine, "Hello there.", voice=voice)


def test_missing_auxiliary_clip_is_rejected_up_front(engine, tmp_path):
    from dataclasses import replace

    voice = replace(voice_spec(), aux_refs=(tmp_path / "aux.wav",))
    with pytest.raises(KoeError, match="reference audio not found: .*aux.wav"):
        engine.check("Hello there.", "en", voice)


def test_real_engine_server_rejects_bad_input_before_any_audio(engine, tmp_path):
    """tts-serve on the real pipeline: each bad input is a 400 JSON reason in every streaming mode."""
    import json

    from api_v2_helpers import raw_request, serve_in_thread
    from tts.server import create_app

    good = {
        "text": "Hello there.", "text_lang": "en", "ref_audio_path": str(voice_spec().ref_audio),
        "prompt_text": voice_spec().ref_text, "prompt_lang": "en",
    }  # fmt: skip
    bad = [
        ({"ref_audio_path": str(write_clip(tmp_path / "short.wav", 1.5))}, "it must be between 3 and 10 s"),
        ({"ref_audio_path": str(tmp_path / "missing.wav")}, "reference audio not found"),
        ({"aux_ref_audio_paths": [str(tmp_path / "aux.wav")]}, "reference audio not found"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"text": "... !"}, "nothing to speak"),
        ({"text_lang": "EN"}, "text_lang: EN is not supported"),  # POST passes codes on as sent
    ]
    app = create_app(engine.pipeline, on_exit=lambda: None, on_restart=lambda: None)
    with serve_in_thread(app) as port:
        for mode in (0, 1, 2, 3):
            for change, reason in bad:
                body = json.dumps({**good, **change, "streaming_mode": mode}).encode()
                answer = raw_request(port, "POST", "/tts", body)
                assert (answer.status, answer.content_type, answer.chunked) == (
                    400,
                    "application/json",
                    False,
                )
                assert answer.json()["message"] == "tts failed" and reason in answer.json()["Exception"], (
                    mode,
                    change,
                    answer.json(),
                )


def test_bad_text_and_language(engine):
    with pytest.raises(KoeError, match="text is required"):
        engine.check("   ", "en")
    with pytest.raises(KoeError, match="text_lang: de is not supported"):
        engine.check("Hallo Welt.", "de")
    with pytest.raises(KoeError, match="nothing to speak"):
        engine.check("... !!! ???", "en")


def test_reference_at_another_rate_and_stereo(engine):
    """The 22.05 kHz stereo fixture clip goes through both resampling paths."""
    from dataclasses import replace

    voice = replace(
        voice_spec(),
        ref_audio=PIPELINE / "refs" / "ref_d_22k_stereo.wav",
        ref_text="Our second voice speaks a little faster and higher, so that another sampling rate is tested.",
    )
    chunks = collect(engine, "A short test.", stream="none", voice=voice)
    assert chunks[0].sample_rate == 32000 and len(chunks[0].audio) > 0


def test_api_v2_backend_speaks_through_our_own_server(engine, tmp_path):
    """`[tts] backend = "api_v2"`: the same engine API, synthesized by a server on loopback."""
    from dataclasses import replace

    from api_v2_helpers import serve_in_thread
    from tts.engine import TtsEngine
    from tts.server import create_app

    app = create_app(engine.pipeline, on_exit=lambda: None, on_restart=lambda: None)
    with serve_in_thread(app) as port:
        settings = TtsConfig(backend="api_v2", api_v2_url=f"http://127.0.0.1:{port}", top_k=1, seed=7)
        remote = TtsEngine.load(voice_spec(), tmp_path, settings)
        chunks = collect(remote, "Good evening, friends.", stream="tokens")
        assert len(chunks) > 1 and {c.sample_rate for c in chunks} == {32000}
        assert sum(len(c.audio) for c in chunks) > 16000
        with pytest.raises(KoeError, match="reference audio not found"):
            collect(remote, "Hello.", voice=replace(voice_spec(), ref_audio=tmp_path / "missing.wav"))


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8", "int4"])
def test_reduced_precision_t2s_speaks(precision):
    """`[tts] precision`: the T2S in bf16/fp16/int8/int4 (SoVITS stays fp32) still yields audible speech."""
    require_fixtures()
    from tts.engine import TtsEngine
    from tts.pipeline import TTSPipeline
    from tts_voice import PARITY

    pipe = TTSPipeline.from_paths(
        PARITY / "t2s_v2.ckpt", PARITY / "sovits_v2.pth", PIPELINE / "models" / "chinese-bert-tiny",
        PIPELINE / "models" / "chinese-hubert-tiny", precision=precision,
    )  # fmt: skip
    engine = TtsEngine(pipe, voice_spec(), TtsConfig(top_k=1, seed=7))
    audio = np.concatenate([c.audio for c in collect(engine, "Good evening, friends.", stream="none")])
    assert len(audio) > 16000 and np.abs(audio.astype(np.float32)).max() > 300
    with pytest.raises(KoeError, match="unknown T2S precision 'int3'"):
        TTSPipeline.from_paths(
            PARITY / "t2s_v2.ckpt", PARITY / "sovits_v2.pth", None, PIPELINE, precision="int3"
        )
    if precision in ("int8", "int4"):  # refused before anything loads: no GPU needed to check it
        from tts.pipeline import load_t2s

        with pytest.raises(KoeError, match=f"{precision} runs on the CPU; use fp16 on a GPU"):
            load_t2s(PARITY / "t2s_v2.ckpt", "cuda", precision)
