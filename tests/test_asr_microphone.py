"""The real microphone path: `koe listen` on a sounddevice stream that captures what `paplay` feeds into a
PulseAudio virtual device (tests/tools/start_virtual_audio.sh). Skips only where no server can run."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from asr_helpers import SPOKEN, make_corpus, require_espeak, tiny_en_dir, word_error_rate, write_wav
from test_asr_transcriber import MAX_WORD_ERROR_RATE

pytestmark = pytest.mark.audio

KOE = Path(sys.executable).parent / "koe"
START_SCRIPT = Path(__file__).resolve().parent / "tools" / "start_virtual_audio.sh"
STREAM_WARMUP_S = 1.5  # PulseAudio streams take this long to start delivering


def start_private_server(runtime_dir: Path) -> dict[str, str]:
    for tool in ("pulseaudio", "pactl", "paplay"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt install pulseaudio pulseaudio-utils)")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}
    result = subprocess.run(["bash", str(START_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.skip(f"no PulseAudio server can run here: {result.stderr.strip()[-300:]}")
    return env


def server_with_virtual_mic() -> bool:
    """A server already running in this environment (CI starts one) that has the `vmic` device."""
    if shutil.which("pactl") is None:
        return False
    sinks = subprocess.run(["pactl", "list", "short", "sinks"], capture_output=True, text=True, timeout=10)
    return sinks.returncode == 0 and "vmic" in sinks.stdout.split()


@pytest.fixture(scope="module")
def virtual_audio(tmp_path_factory):
    if server_with_virtual_mic():
        yield dict(os.environ)
        return
    env = start_private_server(tmp_path_factory.mktemp("pulse"))
    yield env
    subprocess.run(["pulseaudio", "--kill"], env=env, timeout=10)


class Koe:
    """`koe listen` in the background, its output lines collected by threads."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(KOE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.process.stdout, self.stdout.put), daemon=True).start()
        threading.Thread(
            target=self._pump, args=(self.process.stderr, self.stderr.append), daemon=True
        ).start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line)

    def wait_for_stderr(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stderr):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"koe did not print {text!r}: {''.join(self.stderr)}")
            time.sleep(0.05)

    def json_events(self, count: int, kind: str, timeout: float) -> list[dict]:
        events, deadline = [], time.monotonic() + timeout
        while sum(e["event"] == kind for e in events) < count and time.monotonic() < deadline:
            try:
                events.append(json.loads(self.stdout.get(timeout=0.2)))
            except queue.Empty:
                continue
        return events

    def stop(self) -> int:
        """Ctrl-C, and its exit status. A koe that does not stop fails the test and is killed, so it
        cannot hold the virtual microphone through the tests after it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            tail = "".join(self.stderr)[-2000:]
            raise AssertionError(
                f"koe did not stop within 20 s of Ctrl-C; its stderr ends:\n{tail}"
            ) from None


def test_listen_hears_words_from_the_virtual_microphone(virtual_audio, tmp_path):
    require_espeak()
    corpus = make_corpus(SPOKEN[:2], gap_s=1.0, lead_s=1.0)  # room for a slow stream start
    wav = write_wav(tmp_path / "speech.wav", corpus.audio)
    env = {**virtual_audio, "PULSE_SOURCE": "vmic.monitor"}
    koe = Koe(["listen", "--model", str(tiny_en_dir()), "--json"], env)
    try:
        koe.wait_for_stderr("listening on", timeout=60)
        time.sleep(STREAM_WARMUP_S)
        subprocess.run(["paplay", "--device=vmic", str(wav)], env=env, check=True, timeout=60)
        events = koe.json_events(len(corpus.texts), "utterance", timeout=30)
    finally:
        status = koe.stop()
    heard = [e for e in events if e["event"] == "utterance"]
    assert len(heard) == len(corpus.texts), "".join(koe.stderr)
    assert sum(e["event"] == "speech_started" for e in events) == len(heard)
    wer = word_error_rate(corpus.texts, [e["text"] for e in heard])
    assert wer < MAX_WORD_ERROR_RATE, [e["text"] for e in heard]
    for event in heard:
        assert event["end"] > event["start"] and event["latency_ms"] > 0
    # The gap between the two sentences survives the trip through the audio server.
    truth_gap = corpus.truth[1][0] - corpus.truth[0][1]
    assert heard[1]["start"] - heard[0]["end"] == pytest.approx(truth_gap, abs=0.2)
    assert status == 130  # Ctrl-C: a clean stop
    assert "Traceback" not in "".join(koe.stderr)


def test_a_vanishing_microphone_ends_listen_with_a_clear_message(tmp_path):
    env = start_private_server(tmp_path / "pulse")
    koe = Koe(["listen", "--model", str(tiny_en_dir()), "--json"], env)
    try:
        koe.wait_for_stderr("listening on", timeout=60)
        time.sleep(STREAM_WARMUP_S)
        subprocess.run(["pulseaudio", "--kill"], env=env, timeout=10)  # the audio server goes away
        status = koe.process.wait(timeout=20)
    finally:
        status = koe.stop()
    stderr = "".join(koe.stderr)
    assert status == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("koe: error:")]
    assert len(errors) == 1 and "stopped delivering audio" in errors[0]
    assert "Traceback" not in stderr
