"""Character files: the shipped example, validation messages, and `koe character new|list|show`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from agent import cli
from agent.character import find_character, list_characters, load_character
from agent.context import system_prompt
from agent.errors import KoeError
from asr_helpers import require_espeak, speak, tiny_en_dir, write_wav

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def koe(monkeypatch, tmp_path):
    """Run `koe ...` through the real CLI with a config whose folders are under tmp_path."""
    if "agent.character_cli" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("agent.character_cli",))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[character]\ncharacters_dir = "chars"\n[models]\ndir = "models"\n[asr]\nmodel = "{tiny_en_dir()}"\n'
        '[audio]\ninput_device = "no-such-microphone-xyz"\n'
    )

    def run(*args: str) -> int:
        return cli.main(["--config", str(config), *args])

    return run


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """
name = "Mika"
persona = "You are Mika."
[voice]
gpt_weights = "w/gpt.ckpt"
sovits_weights = "w/sovits.pth"
ref_audio = "clips/neutral.wav"
ref_text = "hello"
"""


def test_the_shipped_default_character_loads_and_points_at_the_v2_base_voice():
    character = find_character(ROOT / "characters", "default")
    assert character.id == "default" and character.language == "en" and character.greeting
    assert character.tags == ["neutral", "happy", "sad", "angry", "surprised"]
    assert character.expression("happy") == "smile" and character.expression(None) == "neutral"
    manifest = tomllib.loads((ROOT / "pretrained" / "manifest.toml").read_text())
    base_voice = {ROOT / "pretrained" / f["path"] for f in manifest["gsv-v2"]["files"]}
    assert {character.voice.gpt_weights, character.voice.sovits_weights} == base_voice
    assert character.reference("happy").audio == ROOT / "characters" / "voices" / "default" / "reference.wav"


def test_an_emotion_with_its_own_clip_changes_the_reference(tmp_path):
    path = write(
        tmp_path / "mika.toml",
        MINIMAL + '[emotions.neutral]\nexpression = "idle"\n'
        '[emotions.happy]\nexpression = "smile"\nref_audio = "clips/happy.wav"\nref_text = "yay"\n',
    )
    character = load_character(path)
    happy, neutral = character.reference("happy"), character.reference("neutral")
    assert (happy.audio, happy.text, happy.language) == (tmp_path / "clips" / "happy.wav", "yay", "en")
    assert (neutral.audio, neutral.text) == (tmp_path / "clips" / "neutral.wav", "hello")
    assert character.reference(None) == neutral  # no tag yet: the default emotion
    prompt = system_prompt(character, __import__("datetime").datetime(2026, 1, 2, 15, 4))
    assert "[neutral], [happy]" in prompt and "2026-01-02 15:04" in prompt and "You are Mika." in prompt


@pytest.mark.parametrize(
    "extra,message",
    [
        ("colour = 1\n", "unknown key colour"),
        ('[emotions."Happy!"]\nexpression = "x"\n', "emotion tags must be lower-case words"),
        ('[emotions.happy]\nexpression = "x"\n', "default_emotion 'neutral' is not in [emotions]"),
        ('[emotions.happy]\nref_audio = "a.wav"\n', "emotions.happy.expression is required"),
    ],
)
def test_mistakes_name_the_file_and_the_key(tmp_path, extra, message):
    text = MINIMAL.replace("[voice]", extra + "[voice]") if extra.startswith("colour") else MINIMAL + extra
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(KoeError, match="bad.toml") as caught:
        load_character(path)
    assert message in str(caught.value)


def test_missing_persona_bad_toml_and_unknown_characters(tmp_path):
    with pytest.raises(KoeError, match=r"x.toml: persona is required"):
        load_character(write(tmp_path / "x.toml", MINIMAL.replace('persona = "You are Mika."', "")))
    with pytest.raises(KoeError, match=r"y.toml: not valid TOML"):
        load_character(write(tmp_path / "y.toml", "name = "))
    with pytest.raises(KoeError, match=r"no character 'zed'.*characters in .*: x, y.*koe character new zed"):
        find_character(tmp_path, "zed")
    assert list_characters(tmp_path) == ["x", "y"]


def test_check_files_lists_every_missing_file(tmp_path):
    character = load_character(write(tmp_path / "mika.toml", MINIMAL))
    with pytest.raises(KoeError) as caught:
        character.check_files()
    for key in ("voice.gpt_weights", "voice.sovits_weights", "voice.ref_audio"):
        assert key in str(caught.value)
    for path in character.files().values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    character.check_files()


# ------------------------------------------------------------------------------ the CLI
def test_character_new_with_a_clip_and_text_writes_a_loadable_character(koe, tmp_path, capsys):
    clip = write_wav(tmp_path / "me.wav", np.zeros(16_000 * 4, dtype=np.float32))
    assert koe("character", "new", "bob", "--clip", str(clip), "--text", "Hi there.", "--language", "ja") == 0
    character = find_character(tmp_path / "chars", "bob")
    assert character.voice.ref_audio == tmp_path / "chars" / "voices" / "bob" / "reference.wav"
    assert character.voice.ref_audio.read_bytes() == clip.read_bytes()
    assert (character.voice.ref_text, character.language, character.name) == ("Hi there.", "ja", "bob")
    assert character.voice.gpt_weights.parent == tmp_path / "models" / "gsv-v2final-pretrained"
    assert "happy" in character.tags

    assert koe("character", "new", "bob", "--clip", str(clip), "--text", "x") == 2
    assert "already exists (pass --force" in capsys.readouterr().err
    assert koe("character", "new", "bob", "--clip", str(clip), "--text", "Again.", "--force") == 0
    assert find_character(tmp_path / "chars", "bob").voice.ref_text == "Again."

    assert koe("character", "list") == 0
    assert "bob" in capsys.readouterr().out
    assert koe("character", "show", "bob") == 0
    out = capsys.readouterr().out
    assert "voice.gpt_weights" in out and "missing" in out and "smile" in out


def test_character_new_transcribes_the_clip_when_no_text_is_given(koe, tmp_path, capsys):
    require_espeak()
    audio = speak("Please open the window before you leave the room.")
    clip = write_wav(tmp_path / "voice.wav", np.pad(audio, (8000, max(0, 16_000 * 4 - len(audio)))))
    assert koe("character", "new", "ann", "--clip", str(clip)) == 0
    text = find_character(tmp_path / "chars", "ann").voice.ref_text.lower()
    assert "open the window" in text
    assert "transcript of reference.wav" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--clip", "short.wav"], "the reference clip is 1.0 s long; it must be 3-10 s"),
        (["--clip", "missing.wav"], "audio file not found"),
        (["--record", "5"], "no input device matches 'no-such-microphone-xyz'"),
        (["--record", "30"], "--record 30: a reference clip must be 3-10 s"),
    ],
)
def test_character_new_errors_are_one_clear_line(koe, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_wav(tmp_path / "short.wav", np.zeros(16_000, dtype=np.float32))
    assert koe("character", "new", "cat", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "chars" / "cat.toml").exists()


def test_character_new_rejects_names_that_are_not_file_names(koe, capsys):
    assert koe("character", "new", "../evil", "--text", "x") == 2
    assert "use letters, digits" in capsys.readouterr().err
