"""The first run of `koe chat`: what is missing is said and offered, through a real pseudo-terminal.

`koe chat` runs as a subprocess on a `pty` (so stdin and stdout are a TTY and it may ask); the test reads
what it shows and types the answers. The LLM is the fake OpenAI-compatible server on 127.0.0.1, found by
the same probe that looks for Ollama / llama.cpp / vLLM (its port given by $KOE_LLM_PROBE_PORTS).
The last test is the terminal chat's own: Ctrl-C while it waits for typing.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import subprocess
import sys
import termios
import time
import tomllib
from pathlib import Path

import pytest

from fake_llm_server import FakeLlmServer
from test_chat import chat, history_messages, setup_home
from tts_voice import PIPELINE, REF_TEXT, require_fixtures

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
CLOSED_PORT = "http://127.0.0.1:9/v1"  # the discard port: nothing answers


class Terminal:
    """A command in a real pseudo-terminal: wait for what it shows, type answers."""

    def __init__(self, args: list[str], env: dict):
        master, slave = os.openpty()
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # its terminal: Ctrl-C is SIGINT
        )  # fmt: skip
        os.close(slave)
        self.fd = master
        self.raw = b""
        self.seen = 0  # `expect` looks after the previous match

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def _read(self, timeout: float) -> bool:
        """Read what is there; False once the program closed the terminal."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the other side is closed
            return False
        self.raw += data
        return bool(data)

    def expect(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (found := self.screen.find(text, self.seen)) < 0:
            if not self._read(0.1) or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never shown; the terminal shows:\n{self.screen[-3000:]}")
        self.seen = found + len(text)

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")  # Enter

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def end_of_input(self) -> None:
        os.write(self.fd, b"\x04")  # Ctrl-D at the start of a line

    def finish(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self._read(0.1) and time.monotonic() < deadline:
            pass
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)


def koe_chat(config: Path, *extra: str, probe_port: int = 9, env: dict | None = None) -> Terminal:
    """`koe chat` on a 500-column terminal, without the user's LLM settings; local probe on `probe_port`."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "KOE_CONFIG")},
        "COLUMNS": "500", "LINES": "40", "TERM": "xterm-256color", "KOE_LLM_PROBE_PORTS": str(probe_port),
        **(env or {}),
    }  # fmt: skip
    return Terminal([sys.executable, "-m", "agent.cli", "chat", "--config", str(config), *extra], env)


def without_llm(config: Path) -> None:
    """A fresh install's [llm]: no base_url, no key (and a comment of the user's that must survive)."""
    text = re.sub(r"base_url = '[^']*'\n|api_key = '[^']*'\n", "", config.read_text())
    config.write_text("# my koe settings\n" + text.replace("[llm]\n", "[llm]\n# local model, see README\n"))


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_a_local_llm_server_is_found_and_saved_in_the_config(tmp_path):
    require_fixtures()
    with FakeLlmServer() as server:
        config = setup_home(tmp_path, CLOSED_PORT)
        without_llm(config)
        term = koe_chat(config, "--text", "--mute", probe_port=port_of(server.url))
        try:
            term.expect("no LLM to talk to")
            term.expect(f"1. an OpenAI-compatible server at {server.url} (fake-model)")
            term.expect("Use which server?")
            term.type("")  # the default: 1
            term.expect(f"Save base_url = '{server.url}' and model = 'fake-model' in {config}?")
            term.type("y")
            term.expect("wrote [llm]")
            term.expect("you:")  # the chat runs, on the live terminal view
            term.type("Hello")
            term.expect("Tess: You said: Hello.")
            term.expect("LLM first token")
            term.end_of_input()
            assert term.finish() == 0, term.screen
        finally:
            term.close()
        assert server.requests[-1]["messages"][-1] == {"role": "user", "content": "Hello"}
    text = config.read_text()
    assert text.startswith("# my koe settings\n") and "# local model, see README" in text
    saved = tomllib.loads(text)["llm"]
    assert saved["base_url"] == server.url and saved["model"] == "fake-model"


def test_without_a_terminal_a_missing_llm_is_one_line_naming_the_server_found(tmp_path):
    require_fixtures()
    with FakeLlmServer() as server:
        config = setup_home(tmp_path, CLOSED_PORT)
        without_llm(config)
        env = {"OPENAI_API_KEY": "", "KOE_LLM_PROBE_PORTS": str(port_of(server.url))}
        result = chat(config, ["Hello"], "--mute", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("koe: error:")]
    assert "no LLM to talk to" in line and "$OPENAI_API_KEY" in line and server.url in line
    assert "[y/n]" not in result.stdout + result.stderr and not server.requests


def test_a_missing_character_is_created_from_a_clip(tmp_path):
    require_fixtures()
    with FakeLlmServer() as server:
        config = setup_home(tmp_path, server.url)
        term = koe_chat(config, "--text", "--mute", "--character", "newbie")
        try:
            term.expect("no character 'newbie'")
            term.expect("Create the character 'newbie' now")
            term.type("y")
            term.expect("Language it speaks")
            term.type("")  # en
            term.expect("Path of the clip, or Enter to record 5 s from the microphone")
            term.type(str(PIPELINE / "refs" / "ref_c_32k.wav"))
            term.expect("What is said in the clip?")
            term.type(REF_TEXT)
            term.expect("newbie.toml")
            term.expect("Hi, I'm newbie.")  # its greeting: the chat has started
            term.end_of_input()
            assert term.finish() == 0, term.screen
        finally:
            term.close()
    characters = tmp_path / "characters"
    clip = characters / "voices" / "newbie" / "reference.wav"
    assert clip.read_bytes() == (PIPELINE / "refs" / "ref_c_32k.wav").read_bytes()
    written = tomllib.loads((characters / "newbie.toml").read_text())
    assert written["voice"]["ref_text"] == REF_TEXT and written["language"] == "en"
    assert (characters / "newbie.toml").parent.joinpath(written["voice"]["ref_audio"]).resolve() == clip


@pytest.mark.audio
@pytest.mark.slow  # the recording itself takes 5 s, the microphone stream 1-2 s to start
def test_a_missing_character_is_created_from_a_5_s_recording(tmp_path):
    """Enter instead of a path records 5 s from the microphone: the virtual mic, fed by `paplay`."""
    require_fixtures()
    if subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
        pytest.skip("no PulseAudio server: no microphone to record from")
    import numpy as np
    import soundfile

    with FakeLlmServer() as server:
        config = setup_home(tmp_path, server.url)
        term = koe_chat(config, "--text", "--mute", "--character", "newbie")
        speaker = None
        try:
            term.expect("Create the character 'newbie' now")
            term.type("y")
            term.expect("Language it speaks")
            term.type("")
            term.expect("Path of the clip, or Enter to record 5 s")
            term.type("")
            term.expect("recording 5 s from")
            speaker = subprocess.Popen(["paplay", "--device=vmic", str(PIPELINE / "refs" / "ref_c_32k.wav")])
            term.expect("What is said in the clip?", timeout=30)
            term.type(REF_TEXT)
            term.expect("Hi, I'm newbie.")
            term.end_of_input()
            assert term.finish() == 0, term.screen
        finally:
            term.close()
            if speaker is not None:
                speaker.wait(timeout=10)
    audio, rate = soundfile.read(tmp_path / "characters" / "voices" / "newbie" / "reference.wav")
    assert rate == 16000 and len(audio) == 5 * 16000
    assert np.abs(audio).max() > 0.05, "the recording is silent: the clip played into the mic is missing"


def test_a_clip_of_the_wrong_length_stops_with_the_reason(tmp_path):
    require_fixtures()
    import numpy as np
    import soundfile

    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(16000, np.float32), 16000)  # 1 s
    config = setup_home(tmp_path, CLOSED_PORT)
    term = koe_chat(config, "--text", "--mute", "--character", "newbie")
    try:
        term.expect("Create the character 'newbie' now")
        term.type("y")
        term.expect("Language it speaks")
        term.type("")
        term.expect("Path of the clip")
        term.type(str(short))
        term.expect("koe: error:")
        term.expect("1.0 s long; it must be 3-10 s")
        assert term.finish() == 2
    finally:
        term.close()
    assert "Traceback" not in term.screen
    assert not (tmp_path / "characters" / "newbie.toml").exists()


def test_missing_models_are_offered_and_no_exits_with_the_command(tmp_path):
    require_fixtures()
    config = setup_home(tmp_path, CLOSED_PORT)
    for f in (tmp_path / "models" / "chinese-hubert-base").iterdir():
        f.unlink()
    term = koe_chat(config, "--text")  # speaking: the voice needs HuBERT
    try:
        term.expect("model files missing in")
        term.expect("chinese-hubert-base (tiny)")
        term.expect("Download them now (koe models download chinese-hubert-base)?")
        term.type("n")
        term.expect("koe: error: model files missing")
        term.expect("fetch them with `koe models download chinese-hubert-base`")
        assert term.finish() == 2
    finally:
        term.close()
    assert "Traceback" not in term.screen


def test_missing_models_are_downloaded_with_the_model_manager_on_yes(tmp_path):
    """ "y" fetches them through `ModelManager.download` from a hub on 127.0.0.1 (HF_ENDPOINT)."""
    require_fixtures()
    from hub_server import LoopbackHub

    config = setup_home(tmp_path, CLOSED_PORT)
    hubert = tmp_path / "models" / "chinese-hubert-base"
    originals = {name: (hubert / name).read_bytes() for name in ("config.json", "model.safetensors")}
    for name in originals:  # the files setup_home's manifest lists
        (hubert / name).unlink()
    with LoopbackHub() as hub:
        for name, data in originals.items():
            hub.add("x/y", f"chinese-hubert-base/{name}", data)
        hf = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home")}
        term = koe_chat(config, "--text", env={**hf, "HF_HUB_DISABLE_XET": "1"})
        try:
            term.expect("Download them now (koe models download chinese-hubert-base)?")
            term.type("y")
            term.expect("chinese-hubert-base: ok")
        finally:
            term.close()
    assert {name: (hubert / name).read_bytes() for name in originals} == originals


def test_a_character_without_its_clip_gets_one_keeping_its_file(tmp_path):
    require_fixtures()
    config = setup_home(tmp_path, CLOSED_PORT)
    character = tmp_path / "characters" / "tester.toml"
    text = character.read_text()
    clip_line = next(line for line in text.splitlines() if line.startswith("ref_audio"))
    character.write_text(
        text.replace(clip_line, "# the clip I will record\nref_audio = 'voices/tester/x.wav'")
    )
    term = koe_chat(config, "--text")
    try:
        term.expect("the voice of Tess has no reference clip")
        term.expect("Give Tess a reference clip now?")
        term.type("y")
        term.expect("Path of the clip")
        term.type(str(PIPELINE / "refs" / "ref_c_32k.wav"))
        term.expect("What is said in the clip?")
        term.type("Every morning the baker opens his shop.")
        term.expect(f"wrote the clip into {character}")
        term.expect(f"the LLM at {CLOSED_PORT} does not answer")  # the next check
        term.expect("No local LLM server answers")
        term.expect("Base URL")
        term.type("")  # no address: stop
        term.expect(f"koe: error: the LLM at {CLOSED_PORT} does not answer")
        assert term.finish() == 2
    finally:
        term.close()
    written = character.read_text()
    assert (
        "# the clip I will record" in written
        and 'ref_text = "Every morning the baker opens his shop."' in written
    )
    voice = tomllib.loads(written)["voice"]
    assert voice["ref_audio"] == "voices/tester/reference.wav"
    assert (tmp_path / "characters" / voice["ref_audio"]).is_file()


def test_probe_finds_the_models_of_a_server_and_nothing_on_a_closed_port():
    from agent.first_run import probe

    with FakeLlmServer() as server:
        assert probe(server.url) == ["fake-model"]
    assert probe(CLOSED_PORT) is None


def test_bad_probe_ports_are_named(monkeypatch):
    from agent.errors import KoeError
    from agent.first_run import probe_ports

    monkeypatch.setenv("KOE_LLM_PROBE_PORTS", "11434,ollama")
    with pytest.raises(KoeError, match="KOE_LLM_PROBE_PORTS='11434,ollama': expected port numbers"):
        probe_ports()
    monkeypatch.setenv("KOE_LLM_PROBE_PORTS", "5000 6000")
    assert probe_ports() == [5000, 6000]


def test_update_toml_keeps_comments_and_adds_sections(tmp_path):
    from agent.first_run import update_toml

    path = tmp_path / "config.toml"
    path.write_text("# top\n[llm]\nmodel = 'old'  # the model\ntemperature = 0.5\n\n[tts]\nseed = 1\n")
    update_toml(path, "llm", {"model": "new", "base_url": "http://127.0.0.1:8080/v1"})
    update_toml(path, "character", {"name": "koe"})
    text = path.read_text()
    assert text.startswith("# top\n") and "# the model" in text and "seed = 1" in text
    data = tomllib.loads(text)
    assert data["llm"] == {"model": "new", "temperature": 0.5, "base_url": "http://127.0.0.1:8080/v1"}
    assert data["character"] == {"name": "koe"}
    fresh = tmp_path / "new.toml"
    update_toml(fresh, "llm", {"model": "m"})
    assert tomllib.loads(fresh.read_text()) == {"llm": {"model": "m"}}


def test_ctrl_c_at_the_prompt_leaves_at_once_and_the_conversation_is_saved(tmp_path):
    """The terminal chat itself: Ctrl-C while it waits for typing exits cleanly (no blocked read)."""
    require_fixtures()
    with FakeLlmServer() as server:
        config = setup_home(tmp_path, server.url)
        term = koe_chat(config, "--text", "--mute")
        try:
            term.expect("you:")
            term.type("Hi")
            term.expect("Tess: You said: Hi.")
            term.expect("you:")
            term.ctrl_c()
            term.expect("bye: the conversation is saved", timeout=10)
            assert term.finish(timeout=10) == 0
        finally:
            term.close()
    assert "Traceback" not in term.screen
    assert [(m["role"], m["text"]) for m in history_messages(tmp_path)] == [
        ("user", "Hi"), ("assistant", "You said: Hi."),
    ]  # fmt: skip


@pytest.mark.parametrize("language", ["en", "ja"])
def test_a_voice_needs_the_nltk_data_in_every_language_since_each_meets_english_words(
    tmp_path, monkeypatch, language
):
    import nltk

    from agent.character import Character
    from agent.config import KoeConfig
    from agent.first_run import needed_models

    voice = {"gpt_weights": "a.ckpt", "sovits_weights": "b.pth", "ref_audio": "c.wav"}
    character = Character(name="Mio", persona="A guide.", language=language, voice=voice)
    config = KoeConfig.model_validate({"models": {"dir": str(tmp_path)}})
    assert "nltk-data" not in needed_models(config, character, listens=False)  # the test NLTK data is found
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "no-nltk-data")])
    assert "nltk-data" in needed_models(config, character, listens=False)
