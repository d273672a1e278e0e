"""`koe chat --text` end to end: a real fake-LLM HTTP server, the tiny test voice, real history files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_llm_server import FakeLlmServer, Reply
from tts_voice import PARITY, PIPELINE, REF_TEXT, require_fixtures

ROOT = Path(__file__).resolve().parent.parent


def setup_home(tmp_path: Path, llm_url: str) -> Path:
    """A config, a character using the tiny voice, and a models folder with the tiny HuBERT."""
    models = tmp_path / "models"
    hubert = models / "chinese-hubert-base"
    hubert.mkdir(parents=True)
    for f in (PIPELINE / "models" / "chinese-hubert-tiny").iterdir():
        (hubert / f.name).write_bytes(f.read_bytes())
    (models / "manifest.toml").write_text(
        '[chinese-hubert-base]\ndescription = "tiny"\nsource = "hf"\nrepo = "x/y"\n'
        'files = [{ path = "chinese-hubert-base/config.json" }, { path = "chinese-hubert-base/model.safetensors" }]\n'
    )
    characters = tmp_path / "characters"
    characters.mkdir()
    (characters / "tester.toml").write_text(
        f"""
name = "Tess"
persona = "You are Tess, a test character."
greeting = ""
language = "en"
[voice]
gpt_weights = "{PARITY / "t2s_v2.ckpt"}"
sovits_weights = "{PARITY / "sovits_v2.pth"}"
ref_audio = "{PIPELINE / "refs" / "ref_c_32k.wav"}"
ref_text = "{REF_TEXT}"
[emotions.neutral]
expression = "neutral"
[emotions.happy]
expression = "smile"
"""
    )
    config = tmp_path / "koe.toml"
    config.write_text(
        f"[llm]\nbase_url = '{llm_url}'\nmodel = 'fake-model'\napi_key = 'sk-test'\n"
        f"[character]\nname = 'tester'\ncharacters_dir = '{characters}'\nhistory_dir = '{tmp_path / 'history'}'\n"
        f"[models]\ndir = '{models}'\n[tts]\nseed = 1\ntop_k = 1\n"
    )
    return config


def chat(config: Path, lines: list[str], *extra: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "chat", "--text", "--config", str(config), *extra],
        input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


def history_messages(tmp_path: Path) -> list[dict]:
    files = sorted((tmp_path / "history" / "tester").glob("*.jsonl"))
    assert files, "no conversation file written"
    records = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("role") in ("user", "assistant")]


def test_text_chat_muted_holds_a_conversation_and_saves_it(tmp_path):
    require_fixtures()
    with FakeLlmServer() as server:
        server.script(Reply("[happy] Hello there! Nice to meet you."), Reply("I am fine, thank you."))
        config = setup_home(tmp_path, server.url)
        result = chat(config, ["Hi Tess!", "How are you?"], "--mute")
        assert result.returncode == 0, result.stderr
        assert "Hello there!" in result.stdout and "I am fine, thank you." in result.stdout
        assert "[happy]" not in result.stdout and "(happy)" in result.stdout
        assert server.requests[0]["messages"][-1] == {"role": "user", "content": "Hi Tess!"}
    messages = history_messages(tmp_path)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["text"].startswith("Hello there!")

    # A second run resumes the conversation: the LLM sees the earlier turns.
    with FakeLlmServer() as server:
        server.script(Reply("Welcome back."))
        config.write_text(config.read_text().replace(config.read_text().split("'")[1], server.url, 1))
        result = chat(config, ["I'm back."], "--mute")
        assert result.returncode == 0, result.stderr
        sent = [m["content"] for m in server.requests[0]["messages"]]
        assert "Hi Tess!" in sent and "I'm back." in sent


def test_piped_chat_shows_the_state_the_reply_and_the_latencies(tmp_path):
    """Not a terminal: every state change, spoken piece and the per-turn latencies are plain lines."""
    require_fixtures()
    with FakeLlmServer() as server:
        server.script(Reply("Sure. [happy] Here is *one* idea. And a [hap", token_delay_s=0.01))
        config = setup_home(tmp_path, server.url)
        result = chat(config, ["Any [bold]ideas[/]?"], "--mute")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    expected = [
        "· listening", "you: Any [bold]ideas[/]?", "· thinking", "· speaking", "Tess: Sure.", "(happy)",
        "Tess: Here is one idea.", "Tess: And a", "latency after Enter: LLM first token", "· listening",
    ]  # fmt: skip
    at = 0
    for want in expected:  # in this order, each at the start of its own line
        at = next((i for i in range(at, len(lines)) if lines[i].startswith(want)), None)
        assert at is not None, f"{want!r} missing or out of order in:\n{result.stdout}"
    first_token_ms = float(lines[at - 1].split("LLM first token ")[1].split(" ms")[0])
    assert 0 < first_token_ms < 5000


def test_chat_view_is_plain_lines_when_piped_and_a_live_area_on_a_terminal():
    import io

    from rich.console import Console

    from agent.chat import HEARING, THINKING, ChatView

    piped = io.StringIO()
    view = ChatView(Console(file=piped, force_terminal=False, width=100), "Tess")
    view.state(HEARING)
    for partial in ("open the", "open the", "open the [window]"):  # a repeat is not shown again
        view.partial(partial)
    view.user("open the [window]")
    view.state(THINKING)
    view.reply_so_far("[happy] Sure, **opening** it")  # the stream is for the live area only
    view.piece("Sure, opening it.")
    assert piped.getvalue().splitlines() == [
        "· hearing you", "  … open the", "  … open the [window]", "you: open the [window]", "· thinking",
        "Tess: Sure, opening it.",
    ]  # fmt: skip

    screen = io.StringIO()
    view = ChatView(Console(file=screen, force_terminal=True, width=100, color_system=None), "Tess")
    view.state(HEARING)
    view.partial("open the")
    view.piece("Sure.")
    assert screen.getvalue() == ""  # nothing printed: the live area shows it
    live = io.StringIO()
    view.reply_so_far("[happy] Sure, **opening** it [ha")  # no tags, markdown or half a tag
    Console(file=live, width=100, color_system=None).print(view)
    assert live.getvalue().splitlines() == ["● hearing you", "you: open the", "Tess: Sure, opening it"]
    view.reply_done("Sure, opening it.", interrupted=False)  # printed above the live area
    assert screen.getvalue().strip() == "Tess: Sure, opening it."
    view.partial("")
    view.piece("Hi, I'm Tess.")  # a greeting: no LLM stream, the pieces are the reply
    live = io.StringIO()
    Console(file=live, width=100, color_system=None).print(view)
    assert live.getvalue().splitlines() == ["● hearing you", "Tess: Hi, I'm Tess."]


def test_text_chat_speaks_through_the_speakers(tmp_path):
    """With an audio server (CI starts PulseAudio virtual devices), replies are synthesized and played."""
    require_fixtures()
    if subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
        pytest.skip("no PulseAudio server: no speakers to play to")
    with FakeLlmServer() as server:
        server.script(Reply("Good evening. The lighthouse shines."))
        config = setup_home(tmp_path, server.url)
        result = chat(config, ["Hello."])
    assert result.returncode == 0, result.stderr
    assert "first audio" in result.stdout and "Good evening." in result.stdout
    assert "· speaking" in result.stdout and "voice-to-voice" in result.stdout
    messages = history_messages(tmp_path)
    assert messages[-1]["text"].startswith("Good evening.")


def test_llm_failure_ends_the_turn_and_the_next_turn_works(tmp_path):
    require_fixtures()
    with FakeLlmServer() as server:
        server.script(*[Reply(status=500)] * 2, Reply("Back again."))
        config = setup_home(tmp_path, server.url)
        config.write_text(
            config.read_text().replace("api_key = 'sk-test'", "api_key = 'sk-test'\nretries = 1")
        )
        result = chat(config, ["First?", "Second?"], "--mute")
    assert result.returncode == 0, result.stderr
    assert "500" in result.stdout and "Back again." in result.stdout
    assert "Traceback" not in result.stderr


def test_voice_chat_from_a_file_hears_the_user_and_answers(tmp_path):
    """The voice loop with the file source and the real tiny.en Whisper: words reach the LLM."""
    require_fixtures()
    from asr_helpers import require_espeak, speak, tiny_en_dir, write_wav

    require_espeak()
    import numpy as np

    clip = np.concatenate(
        [np.zeros(8000, np.float32), speak("Please open the window."), np.zeros(16000, np.float32)]
    )
    wav = write_wav(tmp_path / "user.wav", clip)
    with FakeLlmServer() as server:
        server.script(Reply("Of course, opening it now."))
        config = setup_home(tmp_path, server.url)
        asr = f"[asr]\nmodel = '{tiny_en_dir()}'\nlanguage = 'en'\npartial_interval_ms = 300\n"
        config.write_text(config.read_text() + asr)
        result = subprocess.run(
            [sys.executable, "-m", "agent.cli", "chat", "--mute", "--input", str(wav), "--config", str(config)],
            capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        heard = server.requests[0]["messages"][-1]["content"].lower()
    assert "open" in heard and "window" in heard
    assert "Of course, opening it now." in result.stdout and "transcript" in result.stdout
    states = iter(line for line in result.stdout.splitlines() if line.startswith("· "))
    for state in ("listening", "hearing you", "thinking", "speaking", "listening"):  # in this order
        assert f"· {state}" in states, f"state {state!r} missing or out of order in:\n{result.stdout}"


def _barge_verdicts(audio, min_ms=300):
    """Feed audio to a real endpointer; after its speech-start event, the barge-in verdict over time."""
    from agent.chat import sustained_speech
    from agent.config import VadConfig
    from asr.endpointer import Endpointer, SpeechStarted

    endpointer = Endpointer(VadConfig())
    started = None
    for i in range(0, len(audio), 320):
        for event in endpointer.process(audio[i : i + 320]):
            if isinstance(event, SpeechStarted) and started is None:
                started = event.t
        if started is not None:
            verdict = sustained_speech(endpointer, started, min_ms)
            if verdict is not None:
                return verdict
    return None


def test_barge_in_needs_sustained_speech():
    from asr_helpers import require_espeak, speak

    require_espeak()
    import numpy as np

    silence = np.zeros(16000, np.float32)
    sentence = speak("Wait a moment, I want to ask you something else.")
    short = speak("mm", "en-us", 300)[:2400]  # a 150 ms backchannel
    assert _barge_verdicts(np.concatenate([silence, sentence, silence])) is True
    assert _barge_verdicts(np.concatenate([silence, short, silence])) in (False, None)


def test_barge_in_silences_the_speakers_within_100_ms(tmp_path):
    """The real sounddevice player on the virtual speaker, recorded from the speaker's monitor: after
    `clear()` the tone stops within 100 ms, and the piece reports only the part that was played."""
    if subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
        pytest.skip("no PulseAudio server: no speakers to play to")
    import asyncio
    import time

    import numpy as np

    from agent.player import Player
    from agent.turn import Piece

    rate = 32000
    recording = tmp_path / "speaker.raw"
    recorder = subprocess.Popen(
        [
            "parecord",
            "-d",
            "vspk.monitor",
            "--raw",
            f"--rate={rate}",
            "--channels=1",
            "--format=s16le",
            str(recording),
        ]
    )
    time.sleep(1.5)  # PulseAudio streams take up to 1.5 s to start delivering

    async def scenario():
        player = Player(rate)
        piece = Piece(0, "A long sentence that the user interrupts halfway through.", None, None)
        tone = (np.sin(np.arange(rate * 4) * 2 * np.pi * 220 / rate) * 8000).astype(np.int16)
        player.play(piece, tone)
        deadline = time.perf_counter() + 10
        while player.played_samples < rate // 2 and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        player.clear()
        at_clear = player.played_samples
        await asyncio.sleep(0.5)
        after = player.played_samples
        player.close()
        return piece, at_clear, after

    try:
        piece, at_clear, after = asyncio.run(scenario())
        time.sleep(0.3)
    finally:
        recorder.terminate()
        recorder.wait()
    assert at_clear >= rate // 2, "the speaker stream never started"
    assert after == at_clear, "audio was handed to the speakers after the barge-in"
    assert not piece.played and 0 < len(piece.heard_text) < len(piece.text)

    heard = np.frombuffer(recording.read_bytes(), np.int16).astype(np.float32)
    frames = heard[: len(heard) // 320 * 320].reshape(-1, 320)  # 10 ms
    tone_s = np.count_nonzero(np.sqrt((frames**2).mean(axis=1)) > 1000) * 0.01
    extra_s = tone_s - at_clear / rate
    print(f"tone heard {tone_s:.2f} s, handed over before the barge-in {at_clear / rate:.2f} s")
    assert tone_s > 0.3, "the recording of the speaker holds no tone"
    assert extra_s < 0.1, f"the speakers went on for {extra_s * 1000:.0f} ms after the barge-in"


def test_chat_user_mistakes_are_one_line(tmp_path):
    require_fixtures()
    config = setup_home(tmp_path, "http://127.0.0.1:9/v1")
    result = chat(config, [], "--mute", "--character", "nobody")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nobody" in result.stderr and "koe: error:" in result.stderr
