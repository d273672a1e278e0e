"""The sample Python client (clients/python/koe_client.py) holding a conversation through the real `koe serve`
command: text and speech in, subtitles and the voice out (to a WAV, to the speakers), resume by session id,
barge-in, and the errors it prints when refused.
`koe serve` runs with the tone voice, the fake LLM server and the real tiny.en Whisper."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from fake_llm_server import MODEL, FakeLlmServer, Reply

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python" / "koe_client.py"
TOKEN = "a-long-test-token"
TONE_S_PER_CHAR = 0.06  # agent.server.tone_voice


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def koe_serve(tmp_path_factory):
    """`koe serve --voice tone` on a free port, with a token, the fake LLM and tiny.en; yields (url, llm).
    One server for the module (it loads Whisper); each test scripts the replies it consumes."""
    from asr_helpers import tiny_en_dir

    tmp_path = tmp_path_factory.mktemp("koe-serve")
    port = free_port()
    config = tmp_path / "config.toml"
    with FakeLlmServer() as llm:
        config.write_text(
            f'[llm]\nbase_url = "{llm.url}"\nmodel = "{MODEL}"\n'
            f'[character]\ncharacters_dir = "{ROOT / "characters"}"\nhistory_dir = "{tmp_path / "history"}"\n'
            f'[asr]\nmodel = "{tiny_en_dir()}"\ndevice = "cpu"\ncpu_threads = 1\n'
            f'[vad]\nengine = "webrtc"\n[server]\nport = {port}\n'
        )
        env = {**os.environ, "KOE_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
        serve = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "serve", "--voice", "tone", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        try:
            lines = []
            for line in serve.stdout:  # the line that says it listens
                lines.append(line)
                if "avatars connect to" in line:
                    break
            assert serve.poll() is None, "".join(lines)
            yield f"ws://127.0.0.1:{port}/ws", llm
        finally:
            serve.terminate()
            serve.wait(10)


def koe_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLIENT), *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_python_client_holds_a_conversation_through_koe_serve(tmp_path, koe_serve):
    from asr_helpers import require_espeak, speak, write_wav

    require_espeak()
    url, llm = koe_serve
    question = write_wav(tmp_path / "question.wav", speak("Please open the window before you leave."))
    llm.script(Reply("[happy] Hello Ann! Nice to meet you."), Reply("Sure, I will open it."))
    out = tmp_path / "voice.wav"
    first = koe_client(
        "--url", url, "--token", TOKEN, "--say", "I am Ann.", "--speak", str(question), "--wav", str(out)
    )
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    session = re.fullmatch(r"connected to Koe \(session (\S+)\)", lines[0]).group(1)
    # Subtitles with their emotion, in order; what the ASR heard of the spoken question.
    assert "[happy] Hello Ann!" in lines and "[happy] Nice to meet you." in lines
    assert "[neutral] Sure, I will open it." in lines
    heard = next(line for line in lines if line.startswith("(heard) "))
    assert {"open", "window"} <= set(re.findall(r"[a-z]+", heard.lower()))
    assert llm.requests[1]["messages"][-1]["content"] == heard.removeprefix("(heard) ")
    # The WAV holds the voice of both replies: the tone voice speaks 60 ms per character.
    with wave.open(str(out)) as wav:
        rate, seconds = wav.getframerate(), wav.getnframes() / wav.getframerate()
    spoken = "Hello Ann!" + "Nice to meet you." + "Sure, I will open it."
    assert rate == 32000 and abs(seconds - TONE_S_PER_CHAR * len(spoken)) < 0.01
    assert f"wrote {seconds:.1f} s of the voice to {out}" in lines

    # A second run resumes the conversation: the history comes back and goes to the LLM.
    again = koe_client("--url", url, "--token", TOKEN, "--session", session, "--say", "Who am I?")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"connected to Koe (session {session}, resumed)" in again.stdout
    assert "  user: I am Ann.\n  assistant: Hello Ann! Nice to meet you.\n" in again.stdout
    assert "[neutral] You said: Who am I?." in again.stdout
    assert {"role": "user", "content": "I am Ann."} in llm.requests[2]["messages"]


def test_python_client_says_why_it_was_refused(tmp_path, koe_serve):
    url, _ = koe_serve
    no_token = koe_client("--url", url, "--say", "hi")
    assert no_token.returncode == 2
    assert "unauthorized: missing or wrong token" in no_token.stderr
    wrong = koe_client("--url", url + "?token=nope", "--say", "hi")
    assert wrong.returncode == 2 and "HTTP 401: wrong token" in wrong.stderr
    bad_wav = tmp_path / "stereo.wav"
    with wave.open(str(bad_wav), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        wav.writeframes(bytes(400))
    refused = koe_client("--url", url, "--token", TOKEN, "--speak", str(bad_wav))
    assert refused.returncode == 2
    assert "44100 Hz, 2 channel(s), 16-bit; --speak needs 16000 Hz mono 16-bit" in refused.stderr


def test_python_client_class_reports_barge_in(tmp_path, koe_serve):
    """The KoeClient class itself: an interrupt cuts the reply, and the server keeps what was heard."""
    sys.path.insert(0, str(CLIENT.parent))
    from koe_client import KoeClient

    url, llm = koe_serve
    long = "This reply goes on for quite a while, so there is time to talk over it."
    llm.script(Reply(long))

    async def scenario():
        client = await KoeClient.connect(url, token=TOKEN)
        await client.send_text("talk")
        while (await client.read() or {}).get("type") != "segment_end":
            pass
        await asyncio.sleep(0.5)
        await client.interrupt()
        reply = await client.reply_to("talk")
        await client.close()
        return reply

    reply = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert reply.interrupted and reply.subtitles[0] == "This reply goes on for quite a while,"
    assert reply.heard and long.startswith(reply.heard) and len(reply.heard) < len(long)


def test_python_client_plays_the_voice_on_the_speakers(tmp_path, request):
    """--play on the virtual speaker (tests/tools/start_virtual_audio.sh), recorded from its monitor."""
    if subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
        pytest.skip("no PulseAudio server: no speakers to play to")
    url, _ = request.getfixturevalue("koe_serve")
    rate, recording = 16000, tmp_path / "speaker.raw"
    command = ["parecord", "-d", "vspk.monitor", "--raw", f"--rate={rate}", "--channels=1", "--format=s16le"]
    recorder = subprocess.Popen([*command, str(recording)])
    try:
        time.sleep(1.5)  # PulseAudio streams take up to 1.5 s to start delivering
        played = koe_client("--url", url, "--token", TOKEN, "--play", "--say", "Play this.")
        time.sleep(0.3)
    finally:
        recorder.terminate()
        recorder.wait()
    assert played.returncode == 0, played.stdout + played.stderr
    audio = np.frombuffer(recording.read_bytes(), dtype=np.int16).astype(np.float32) / 32768
    frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)  # 20 ms
    loud_s = np.count_nonzero(np.sqrt((frames**2).mean(axis=1)) > 0.02) * 0.02
    expected = TONE_S_PER_CHAR * len("You said: Play this.")
    # All of it played, none twice; an underrun on a loaded machine splits the hum and adds edge frames.
    assert expected - 0.06 <= loud_s <= expected + 0.25, loud_s
