"""asr.vad and asr.endpointer on espeak-ng speech with known boundaries, and on noise."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import VadConfig
from asr.endpointer import Endpointer, SpeechStarted, Utterance, longest_false_run
from asr.vad import SileroVad, SpeechDetector
from asr_helpers import SAMPLE_RATE, SPOKEN, make_corpus, require_espeak, speak

TOLERANCE_S = 0.100  # each boundary within 100 ms of the truth ...
REQUIRED_FRACTION = 0.95  # ... for at least this share of the utterances

# Ten utterances: the five sentences, then again in other voices and speeds.
TEN = SPOKEN + [
    (text, voice, speed) for (text, _, _), (_, voice, speed) in zip(SPOKEN, SPOKEN[2:] + SPOKEN[:2])
]


def run(endpointer: Endpointer, audio: np.ndarray, block: int = 320) -> list:
    events = []
    for offset in range(0, len(audio), block):
        events += endpointer.process(audio[offset : offset + block])
    return events + endpointer.flush()


def utterances(events: list) -> list[Utterance]:
    return [e for e in events if isinstance(e, Utterance)]


def white_noise(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * level).astype(
        np.float32
    )


def pink_noise(seconds: float, peak: float, seed: int = 0) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain."""
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return (noise / np.abs(noise).max() * peak).astype(np.float32)


@pytest.mark.parametrize("engine", ["both", "silero"])
def test_utterance_boundaries_match_the_truth(engine):
    require_espeak()
    corpus = make_corpus(TEN)
    events = run(Endpointer(VadConfig(engine=engine)), corpus.audio)
    found = utterances(events)
    assert len(found) == len(corpus.truth)
    good = sum(
        abs(u.start - start) <= TOLERANCE_S and abs(u.end - end) <= TOLERANCE_S
        for u, (start, end) in zip(found, corpus.truth)
    )
    assert good >= REQUIRED_FRACTION * len(corpus.truth), [(u.start, u.end) for u in found]
    # Events come in order: started, then its utterance, which ends after end_silence_ms of silence.
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStarted", "Utterance"] * len(corpus.truth)
    for started, utterance in zip(events[::2], events[1::2]):
        assert started.t == utterance.start
        assert utterance.final
        assert utterance.detected_at >= utterance.end + 0.5


def test_utterance_audio_holds_preroll_speech_and_tail():
    require_espeak()
    corpus = make_corpus(SPOKEN[:2])
    config = VadConfig(preroll_ms=300)
    found = utterances(run(Endpointer(config), corpus.audio))
    for u in found:
        assert u.start - u.audio_start == pytest.approx(0.3, abs=0.031)  # whole frames of pre-roll
        assert u.audio.dtype == np.float32
        assert len(u.audio) / SAMPLE_RATE == pytest.approx(u.end + 0.2 - u.audio_start, abs=1e-3)
        first = round(u.audio_start * SAMPLE_RATE)
        np.testing.assert_array_equal(u.audio, corpus.audio[first : first + len(u.audio)])


def test_events_do_not_depend_on_the_block_size():
    require_espeak()
    corpus = make_corpus(SPOKEN[:2])
    a = run(Endpointer(), corpus.audio, block=160)
    b = run(Endpointer(), corpus.audio, block=1234)
    assert [(type(e), getattr(e, "t", None), getattr(e, "end", None)) for e in a] == [
        (type(e), getattr(e, "t", None), getattr(e, "end", None)) for e in b
    ]


@pytest.mark.parametrize("engine", ["both", "silero"])
@pytest.mark.parametrize("noise", ["white", "pink"])
def test_noise_does_not_trigger_with_silero(engine, noise):
    audio = white_noise(8, 0.1) if noise == "white" else pink_noise(8, 0.3)
    assert run(Endpointer(VadConfig(engine=engine)), audio) == []


def test_webrtc_alone_fires_on_white_noise():
    """Why Silero is there: webrtcvad by itself takes steady noise for speech."""
    events = run(Endpointer(VadConfig(engine="webrtc")), white_noise(3, 0.1))
    assert any(isinstance(e, SpeechStarted) for e in events)


def test_silero_scores_speech_high_and_silence_low():
    require_espeak()
    silero = SileroVad()
    assert silero.feed(np.zeros(SAMPLE_RATE // 2, np.float32)) < 0.1
    speech = speak(*SPOKEN[0])
    scores = [silero.feed(speech[i : i + 512]) for i in range(0, len(speech) - 511, 512)]
    assert np.mean(np.array(scores) > 0.5) > 0.6


def test_short_sounds_are_dropped():
    require_espeak()
    blip = speak("Hi.", "en-us", 200)
    audio = np.concatenate([np.zeros(8000, np.float32), blip, np.zeros(16000, np.float32)])
    config = VadConfig(min_utterance_ms=1000)
    events = run(Endpointer(config), audio)
    assert [type(e) for e in events] == [SpeechStarted]  # heard (barge-in), but not an utterance
    assert len(utterances(run(Endpointer(VadConfig(min_utterance_ms=100)), audio))) == 1


def test_long_monologue_is_cut_at_a_pause_near_the_maximum():
    require_espeak()
    # Eight sentences back to back: espeak-ng's own pauses between them (0.3-0.47 s) are shorter than
    # end_silence_ms, so this is one turn of ~24 s.
    corpus = make_corpus(TEN[:8], gap_s=0.0)
    config = VadConfig(max_utterance_s=8.0)
    parts = utterances(run(Endpointer(config), corpus.audio))
    assert len(parts) >= 3
    assert [p.final for p in parts] == [False] * (len(parts) - 1) + [True]
    sentence_ends = [end for _, end in corpus.truth]
    for part, following in zip(parts, parts[1:]):
        cut = part.audio_start + len(part.audio) / SAMPLE_RATE
        assert part.end < cut <= part.start + config.max_utterance_s
        assert cut - part.start >= config.max_utterance_s * 2 / 3 - 0.03  # cut near the maximum ...
        assert min(abs(part.end - end) for end in sentence_ends) <= TOLERANCE_S  # ... at a pause
        assert following.start > part.end
        assert following.audio_start == pytest.approx(part.audio_start + len(part.audio) / SAMPLE_RATE)
    assert parts[0].start == pytest.approx(corpus.truth[0][0], abs=TOLERANCE_S)
    assert parts[-1].end == pytest.approx(corpus.truth[-1][1], abs=TOLERANCE_S)


def test_monologue_without_pauses_is_cut_at_the_maximum():
    # A steady vowel-like tone that the webrtc-only gate hears as one long stretch of speech.
    t = np.arange(int(6.5 * SAMPLE_RATE)) / SAMPLE_RATE
    tone = (0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), tone, np.zeros(SAMPLE_RATE, np.float32)])
    config = VadConfig(engine="webrtc", max_utterance_s=2.0, start_ms=60)
    parts = utterances(run(Endpointer(config), audio))
    assert len(parts) >= 3
    for part in parts[:-1]:
        assert not part.final
        assert part.end - part.start == pytest.approx(config.max_utterance_s, abs=0.1)


def test_longest_false_run():
    assert longest_false_run([True, False, False, True, False]) == (1, 3)
    assert longest_false_run([False, True, False, False, False]) == (2, 5)
    assert longest_false_run([True, True]) is None


def test_unknown_engine_is_rejected():
    with pytest.raises(ValueError, match="unknown VAD engine 'loud'"):
        SpeechDetector("loud")
