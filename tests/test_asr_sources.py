"""asr.sources: file playback (real time and fast), pushed audio, device lookup errors; and the Listener
that wires a source to the endpointer and the transcriber."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import soxr

from agent.config import VadConfig
from agent.errors import KoeError
from asr.endpointer import SpeechStarted, Utterance
from asr.listener import Heard, Listener, PartialTranscript
from asr.sources import FileSource, PushSource, find_input_device
from asr.transcriber import Transcriber
from asr_helpers import SAMPLE_RATE, SPOKEN, make_corpus, random_whisper_dir, require_espeak, write_wav


async def collect(source) -> list[np.ndarray]:
    return [block async for block in source]


def test_file_source_plays_in_real_time_and_fast(tmp_path):
    tone = np.sin(np.arange(int(0.6 * 44_100)) / 44_100 * 2 * np.pi * 440).astype(np.float32) * 0.5
    path = write_wav(tmp_path / "tone.wav", np.stack([tone, tone], axis=1), 44_100)
    started = time.perf_counter()
    blocks = asyncio.run(collect(FileSource(path, block_ms=20)))
    real_time = time.perf_counter() - started
    assert real_time == pytest.approx(0.6, abs=0.15)
    assert all(len(b) == 320 for b in blocks[:-1])
    audio = np.concatenate(blocks)
    assert len(audio) == pytest.approx(0.6 * SAMPLE_RATE, abs=2)
    np.testing.assert_allclose(audio, soxr.resample(tone, 44_100, SAMPLE_RATE), atol=2e-3)

    started = time.perf_counter()
    fast = asyncio.run(collect(FileSource(path, block_ms=20, fast=True)))
    assert time.perf_counter() - started < 0.3
    np.testing.assert_array_equal(np.concatenate(fast), audio)


def test_file_source_rejects_a_missing_file(tmp_path):
    with pytest.raises(KoeError, match="audio file not found: .*nope.wav"):
        FileSource(tmp_path / "nope.wav")


def test_push_source_resamples_int16_and_ends_on_close():
    async def main():
        source = PushSource()
        one_second_48k = (np.sin(np.arange(48_000) / 48_000 * 2 * np.pi * 300) * 16_000).astype(np.int16)
        for chunk in np.array_split(one_second_48k, 10):
            source.push(chunk, sample_rate=48_000)
        source.push(np.zeros((160, 2), np.float32))  # stereo float at 16 kHz
        source.close()
        return await collect(source)

    audio = np.concatenate(asyncio.run(main()))
    assert audio.dtype == np.float32
    assert len(audio) == pytest.approx(SAMPLE_RATE + 160, abs=2)
    assert np.abs(audio).max() == pytest.approx(16_000 / 32_768, abs=0.02)


def test_unknown_input_device_lists_what_exists():
    pytest.importorskip("sounddevice", exc_type=OSError)
    with pytest.raises(KoeError, match=r"no input device matches 'no-such-mic-xyz' \(input devices: "):
        find_input_device("no-such-mic-xyz")
    with pytest.raises(KoeError, match="no input device with index 999"):
        find_input_device(999)
    assert find_input_device(None) is None


def test_listener_on_pushed_audio_emits_events_in_order():
    """Realtime path: transcription runs in the background while audio keeps arriving."""
    require_espeak()
    corpus = make_corpus(SPOKEN[:2], gap_s=1.0)
    transcriber = Transcriber(random_whisper_dir(), device="cpu", cpu_threads=1)

    async def main():
        source = PushSource()
        listener = Listener(source, transcriber, VadConfig(), partial_interval_ms=500)

        async def feed():
            for offset in range(0, len(corpus.audio), 1600):
                source.push(corpus.audio[offset : offset + 1600])
                await asyncio.sleep(0.002)
            source.close()

        feeder = asyncio.create_task(feed())
        events = [event async for event in listener.events()]
        await feeder
        return events

    events = asyncio.run(main())
    started = [e for e in events if isinstance(e, SpeechStarted)]
    ended = [e for e in events if isinstance(e, Utterance)]
    heard = [e for e in events if isinstance(e, Heard)]
    partials = [e for e in events if isinstance(e, PartialTranscript)]
    assert len(started) == len(ended) == len(heard) == 2
    assert [h.utterance for h in heard] == ended  # in order, one transcript per utterance
    for s, u, h in zip(started, ended, heard):
        assert events.index(s) < events.index(u) < events.index(h)
        assert h.latency_ms >= 1000 * (u.detected_at - u.end)
        assert h.transcript.duration == pytest.approx(len(u.audio) / SAMPLE_RATE)
    assert partials, "partial transcripts while speaking"
    for p in partials:
        assert any(u.start == p.start and u.start < p.t <= u.detected_at for u in ended)


def test_listener_reports_source_errors(tmp_path):
    class BrokenSource:
        realtime = True

        async def __aiter__(self):
            yield np.zeros(320, np.float32)
            raise KoeError("microphone 'x' stopped delivering audio")

    async def main():
        listener = Listener(BrokenSource(), transcriber=None)
        return [event async for event in listener.events()]

    with pytest.raises(KoeError, match="stopped delivering audio"):
        asyncio.run(main())


def test_transcription_starts_before_the_end_of_turn_is_decided(tmp_path):
    """Once the tail after the last word is complete the utterance is transcribed while the endpointer
    still waits for end_silence_ms: the text is ready sooner than endpoint wait + transcription time."""
    require_espeak()
    corpus = make_corpus(SPOKEN[:2], gap_s=1.0)
    path = write_wav(tmp_path / "two.wav", corpus.audio)
    transcriber = Transcriber(random_whisper_dir(), device="cpu", cpu_threads=1)

    async def main():
        listener = Listener(FileSource(path, fast=True), transcriber, VadConfig(end_silence_ms=500))
        return [event async for event in listener.events() if isinstance(event, Heard)]

    heard = asyncio.run(main())
    assert len(heard) == 2
    for h in heard:
        endpoint_wait = h.utterance.detected_at - h.utterance.end
        early_start = 0.2 + 0.030 + 0.020  # TAIL_MS after the last word, plus up to a frame and a block
        assert h.latency_ms / 1000 >= endpoint_wait  # never before the end of the turn is decided
        assert h.latency_ms / 1000 <= max(endpoint_wait, early_start + h.transcript.elapsed) + 1e-6
