"""Echo cancellation: the character's own voice coming back through the microphone must not barge in."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import VadConfig
from asr.endpointer import Endpointer, SpeechStarted
from asr_helpers import require_espeak, speak

BLOCK = 320  # 20 ms at 16 kHz, as the microphone delivers


def played_and_heard(delay_ms: int = 30, level: float = 0.5, seed: int = 0):
    """What koe plays (two sentences) and what the microphone hears: a delayed, quieter echo + room noise."""
    played = np.concatenate(
        [speak("Good evening, how was your day? I hope you had a lovely time."), np.zeros(8000, np.float32),
         speak("The lighthouse shines at night over the quiet harbor.", "en-gb-x-rp", 150)]
    )  # fmt: skip
    delay = delay_ms * 16
    echo = np.concatenate([np.zeros(delay, np.float32), played[:-delay]]) * level
    noise = np.random.default_rng(seed).standard_normal(len(played)).astype(np.float32) * 0.001
    return played, echo + noise


def barge_ins(mic_blocks) -> int:
    endpointer = Endpointer(VadConfig(engine="both"))
    return sum(isinstance(e, SpeechStarted) for block in mic_blocks for e in endpointer.process(block))


def test_echo_does_not_trigger_barge_in_with_cancellation_and_does_without():
    require_espeak()
    pytest.importorskip("livekit")
    from agent.echo import EchoCanceller

    played, mic = played_and_heard()
    assert barge_ins(mic[i : i + BLOCK] for i in range(0, len(mic), BLOCK)) >= 1, (
        "the raw echo should sound like speech"
    )

    canceller = EchoCanceller()
    cleaned = []
    for i in range(0, len(mic), BLOCK):
        canceller.far_end(played[i : i + BLOCK], 16000)  # played first, then heard
        cleaned.append(canceller.process(mic[i : i + BLOCK]))
    assert barge_ins(cleaned) == 0
    residual = np.sqrt(np.mean(np.concatenate(cleaned)[16000:] ** 2))
    assert residual < 0.1 * np.sqrt(np.mean(mic[16000:] ** 2)), f"echo residual RMS {residual:.4f}"


def test_user_speech_over_the_echo_still_barges_in():
    require_espeak()
    pytest.importorskip("livekit")
    from agent.echo import EchoCanceller

    played, mic = played_and_heard()
    user = speak("Wait, stop please, I have a question.", "en-us", 170)
    start = 3 * 16000
    mic = mic.copy()
    mic[start : start + len(user)] += user
    canceller = EchoCanceller()
    cleaned = []
    for i in range(0, len(mic), BLOCK):
        canceller.far_end(played[i : i + BLOCK], 16000)
        cleaned.append(canceller.process(mic[i : i + BLOCK]))
    assert barge_ins(cleaned) >= 1
