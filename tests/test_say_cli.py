"""`koe say` end to end with the tiny test voice, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from agent.errors import KoeError
from tts_voice import PARITY, PIPELINE, REF_TEXT, require_fixtures

ROOT = Path(__file__).resolve().parent.parent


def koe(*args: str, cwd: Path = ROOT):
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def models_dir(tmp_path: Path) -> Path:
    """A models folder holding the tiny HuBERT under the name the engine looks for."""
    models = tmp_path / "models"
    (models / "chinese-hubert-base").mkdir(parents=True)
    for f in (PIPELINE / "models" / "chinese-hubert-tiny").iterdir():
        (models / "chinese-hubert-base" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "koe.toml").write_text(f"[models]\ndir = '{models}'\n[tts]\nseed = 3\n")
    (models / "manifest.toml").write_text(
        '[chinese-hubert-base]\ndescription = "tiny"\nsource = "hf"\nrepo = "x/y"\n'
        'files = [{ path = "chinese-hubert-base/config.json" }, { path = "chinese-hubert-base/model.safetensors" }]\n'
    )
    return models


def test_say_writes_a_wav_and_reports_speed(tmp_path):
    require_fixtures()
    models_dir(tmp_path)
    out = tmp_path / "hello.wav"
    result = koe(
        "say", "Hello there, my friend.", "--config", str(tmp_path / "koe.toml"),
        "--gpt", str(PARITY / "t2s_v2.ckpt"), "--sovits", str(PARITY / "sovits_v2.pth"),
        "--ref", str(PIPELINE / "refs" / "ref_c_32k.wav"), "--ref-text", REF_TEXT, "--ref-lang", "en",
        "--lang", "en", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(out)
    assert rate == 32000 and len(audio) > 16000
    assert "first audio" in result.stdout and "real-time factor" in result.stdout


def test_say_errors_are_one_line(tmp_path):
    require_fixtures()
    models_dir(tmp_path)
    config = str(tmp_path / "koe.toml")
    partial = koe("say", "Hi.", "--config", config, "--gpt", str(PARITY / "t2s_v2.ckpt"))
    assert (
        partial.returncode == 2
        and "need --gpt, --sovits and --ref together (missing --sovits, --ref)" in partial.stderr
    )
    missing = koe(
        "say", "Hi.", "--config", config, "--gpt", str(tmp_path / "nope.ckpt"), "--sovits", str(PARITY / "sovits_v2.pth"),
        "--ref", str(PIPELINE / "refs" / "ref_c_32k.wav"), "--ref-lang", "en",
    )  # fmt: skip
    assert missing.returncode == 2 and "GPT weights not found" in missing.stderr
    assert "Traceback" not in partial.stderr + missing.stderr


def test_voice_flag_takes_the_characters_files_and_language(tmp_path):
    """`--voice NAME` reads characters/NAME.toml: its weights, clip, transcript and languages."""
    from agent.cli import build_parser
    from agent.config import load_config
    from tts.say_cli import resolve_voice

    characters = tmp_path / "characters"
    characters.mkdir()
    (characters / "mei.toml").write_text(
        'name = "Mei"\npersona = "A calm guide."\nlanguage = "zh"\n[voice]\n'
        f'gpt_weights = "{PARITY / "t2s_v2.ckpt"}"\nsovits_weights = "{PARITY / "sovits_v2.pth"}"\n'
        'ref_audio = "clips/mei.wav"\nref_text = "Every morning the baker opens his shop."\nref_language = "en"\n'
    )
    config_path = tmp_path / "koe.toml"
    config_path.write_text(f"[character]\ncharacters_dir = '{characters}'\nname = 'nobody'\n")
    args = build_parser().parse_args(["say", "你好。", "--voice", "mei"])
    voice, language = resolve_voice(args, load_config(config_path))
    assert (voice.gpt, voice.sovits) == (PARITY / "t2s_v2.ckpt", PARITY / "sovits_v2.pth")
    assert voice.ref_audio == characters / "clips" / "mei.wav"
    assert (voice.ref_text, voice.ref_lang, language) == (
        "Every morning the baker opens his shop.",
        "en",
        "zh",
    )
    args = build_parser().parse_args(["say", "Hi.", "--voice", "nobody-here"])
    with pytest.raises(KoeError, match="no character 'nobody-here'"):
        resolve_voice(args, load_config(config_path))
