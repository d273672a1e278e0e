"""Configuration: the documented file, and clear errors for every kind of user mistake."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import KoeConfig, load_config, masked_dict
from agent.errors import KoeError

ROOT = Path(__file__).resolve().parent.parent


def test_config_toml_documents_every_setting():
    text = (ROOT / "config.toml").read_text()
    sections = re.findall(r"^\[(\w+)\]", text, flags=re.M)
    assert sections == [name for name in KoeConfig.model_fields if name != "source"]
    for section, field in KoeConfig.model_fields.items():
        if section == "source":
            continue
        block = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
        for key in field.annotation.model_fields:
            assert re.search(rf"^#? ?{key} = ", block, flags=re.M), f"[{section}] {key} is not documented"


def test_config_toml_equals_defaults():
    """The shipped file documents the defaults: loading it changes nothing."""
    parsed = KoeConfig.model_validate(tomllib.loads((ROOT / "config.toml").read_text()))
    assert parsed == KoeConfig()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "koe.toml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_section_and_known_keys(tmp_path):
    path = write(tmp_path, "[asr]\nbeam = 3\n")
    with pytest.raises(KoeError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "[asr] beam" in message and "beam_size" in message


def test_unknown_section(tmp_path):
    path = write(tmp_path, "[asrr]\nmodel = 'small'\n")
    with pytest.raises(KoeError, match=r"unknown section \[asrr\] \(known sections: .*asr"):
        load_config(path)


def test_wrong_type_names_key_and_expectation(tmp_path):
    path = write(tmp_path, "[asr]\nbeam_size = 'five'\n[server]\nport = 70000\n")
    with pytest.raises(KoeError) as err:
        load_config(path)
    message = str(err.value)
    assert "[asr] beam_size" in message and "integer" in message and "'five'" in message
    assert "[server] port" in message and "65535" in message


def test_bad_literal_lists_choices(tmp_path):
    path = write(tmp_path, "[tts]\nbackend = 'remote'\n")
    with pytest.raises(KoeError, match=r"\[tts\] backend: .*'local' or 'api_v2'"):
        load_config(path)


def test_bad_speed_settings_name_the_key(tmp_path):
    with pytest.raises(KoeError, match=r"\[tts\] precision: .*'fp32', 'int8', 'int4'"):
        load_config(write(tmp_path, "[tts]\nprecision = 'int3'\n"))
    with pytest.raises(KoeError, match=r"\[tts\] stream_first_chunk_tokens: .*4"):
        load_config(write(tmp_path, "[tts]\nstream_first_chunk_tokens = 1\n"))
    with pytest.raises(KoeError, match=r"\[tts\] stream_overlap_tokens: .*1"):
        load_config(write(tmp_path, "[tts]\nstream_overlap_tokens = 0\n"))
    with pytest.raises(KoeError, match=r"\[tts\] keep_hubert: .*bool"):
        load_config(write(tmp_path, "[tts]\nkeep_hubert = 'sometimes'\n"))


def test_the_old_shared_save_interval_key_points_to_the_two_new_ones(tmp_path):
    with pytest.raises(KoeError, match=r"save_every_epochs.*gpt_save_every_epochs.*sovits_save_every_epochs"):
        load_config(write(tmp_path, "[training]\nsave_every_epochs = 4\n"))
    with pytest.raises(KoeError, match=r"\[training\] gpt_save_every_epochs: .*1"):
        load_config(write(tmp_path, "[training]\ngpt_save_every_epochs = 0\n"))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(KoeError, match="not valid TOML"):
        load_config(write(tmp_path, "[asr\nmodel = 1"))
    with pytest.raises(KoeError, match="config file not found: .*nope.toml"):
        load_config(tmp_path / "nope.toml")


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = write(tmp_path, "[models]\ndir = 'weights'\n")
    config = load_config(path)
    assert config.models.dir == tmp_path / "weights"
    assert config.tts.cache_dir == tmp_path / "weights" / "cache"


def test_secrets_are_masked(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-very-secret-123")
    path = write(tmp_path, "[llm]\napi_key_env = 'MY_KEY'\n[server]\ntoken = 'tok-secret-456'\n")
    config = load_config(path)
    assert config.llm.resolved_api_key() == "sk-very-secret-123"
    shown = str(masked_dict(config))
    assert "sk-very-secret" not in shown and "tok-secret" not in shown and "***" in shown
    assert "tok-secret" not in repr(config) and "tok-secret" not in str(config.server)


def test_cli_config_show_masks_and_errors_have_no_traceback(tmp_path, capsys):
    path = write(tmp_path, "[llm]\napi_key = 'sk-in-file-789'\n")
    assert main(["config", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sk-in-file" not in out and 'api_key = "***"' in out
    bad = write(tmp_path, "[vad]\nend_silence_ms = 'long'\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--config", str(bad), "config", "show"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{bad}: [vad] end_silence_ms" in result.stderr


def test_config_show_output_is_loadable_toml(tmp_path, capsys):
    assert main(["config", "show", "--config", str(ROOT / "config.toml")]) == 0
    out = capsys.readouterr().out
    path = write(tmp_path, out.replace('api_key = "***"', "").replace('token = "***"', ""))
    reloaded = load_config(path)
    assert reloaded.tts.top_k == 15 and reloaded.vad.end_silence_ms == 500
