"""The `koe` command line: help for every command, doctor, and one-line errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def all_command_paths(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from all_command_paths(sub, (*prefix, name))


def test_every_command_has_help(capsys):
    paths = list(all_command_paths(build_parser()))
    assert ("doctor",) in paths and ("models", "download") in paths and ("config", "show") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0, path
        assert "usage: koe" in capsys.readouterr().out


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "agent.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "doctor" in result.stdout


class ModelsHandler(BaseHTTPRequestHandler):
    authorizations: list[str] = []

    def do_GET(self):
        self.authorizations.append(self.headers.get("Authorization", ""))
        body = json.dumps({"object": "list", "data": [{"id": "tiny-chat", "object": "model"}]}).encode()
        self.send_response(200 if self.path.endswith("/models") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_doctor_reports_versions_models_and_llm(tmp_path):
    """Also: with -v (debug logs) the API key reaches the endpoint but never the terminal."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ModelsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = tmp_path / "koe.toml"
        config.write_text(
            f"[llm]\nbase_url = 'http://127.0.0.1:{server.server_port}/v1'\nmodel = 'tiny-chat'\n"
            f"[models]\ndir = '{tmp_path / 'models'}'\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "agent.cli", "doctor", "-v", "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "sk-doctor-secret-42"},
        )
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert ModelsHandler.authorizations == ["Bearer sk-doctor-secret-42"]
    assert "doctor-secret" not in result.stdout + result.stderr
    assert "doctor finished in" in result.stderr  # -v: the stage and its time
    out = result.stdout
    assert "torch" in out and "cpu" in out.lower()
    assert "audio" in out
    assert "model gsv-v2" in out and "koe models download gsv-v2" in out
    assert "NLTK data" in out and "Open JTalk dictionary" in out  # frontend data outside pip
    assert "answers" in out and "model served" in out


def test_doctor_reports_unreachable_llm(tmp_path):
    config = tmp_path / "koe.toml"
    config.write_text("[llm]\nbase_url = 'http://127.0.0.1:9/v1'\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and "no answer" in result.stdout


def test_unknown_command_and_bad_flag_exit_nonzero():
    result = subprocess.run([sys.executable, "-m", "agent.cli", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_closed_stdout_pipe_gives_no_traceback():
    """`koe config show | head -1`: the reader leaving early is not an error worth a traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "config", "show"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    process.stdout.close()  # before koe has written anything: its first write gets EPIPE
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def command_parsers(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from command_parsers(sub, (*prefix, name))


def test_every_command_accepts_config_and_verbose(tmp_path, capsys):
    """`--config PATH` and `-v` on every (sub-)command; a bad file given there is reported, not ignored."""
    commands = dict(command_parsers(build_parser()))
    assert ("models", "verify") in commands and ("doctor",) in commands
    for path, sub in commands.items():
        flags = {flag for action in sub._actions for flag in action.option_strings}
        assert {"--config", "-v", "--verbose"} <= flags, path
    bad = tmp_path / "bad.toml"
    bad.write_text("[asr]\nbeam = 3\n")
    assert main(["models", "list", "--config", str(bad), "-v"]) == 2
    assert f"{bad}: unknown key [asr] beam" in capsys.readouterr().err
