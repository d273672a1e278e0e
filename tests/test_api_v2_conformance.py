"""Replay the official api_v2 transcript against a real `koe tts-serve` and compare the answers.

`../shared/fixtures/api_v2/transcript.json` (or `$KOE_API_V2_FIXTURES/transcript.json`) records what
the official, unchanged `api_v2.py` answered to a sequence of requests on a fresh server started
with `../pipeline/tts_v2.yaml`. We start `koe tts-serve --tts-config` on the same YAML, send the
same requests in the same order (several change server state) over a raw socket so HTTP chunks are
seen as sent, and compare per request: status, content type, chunked or Content-Length framing,
body kind, the JSON `message` (and the `detail` locations of 422s), the WAV header fields, and,
where recorded, whether the chunked body was terminated. Audio bytes and lengths are printed, not
compared (the model output is covered by the pipeline parity cases).

Deliberate differences (our server answers 400 JSON where the official one misbehaves) are rules on
the request and the official answer, listed in `DELIBERATE_DIFFERENCES` with their reasons; the
transcript marks the same requests with `our_server_may_differ`, and the two must agree.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import pytest

from api_v2_helpers import (
    RawResponse,
    StandInEngine,
    body_kind,
    raw_request,
    serve_in_thread,
    wav_header_fields,
)
from tts.server import create_app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("KOE_API_V2_FIXTURES", ROOT.parent / "shared" / "fixtures" / "api_v2"))
SERVER_START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 300

needs_engine = pytest.mark.skipif(
    importlib.util.find_spec("tts.pipeline") is None,
    reason="engine not available yet: tts.pipeline cannot be imported",
)


# ------------------------------------------------------------------------------------ deviations
# Each rule looks at a transcript entry (the request and the official answer) and returns the JSON
# `message` of our 400 when it applies, else None.
def _missing_language_on_get(entry: dict) -> str | None:
    if entry["method"] == "GET" and entry["path"] == "/tts":
        for name in ("text_lang", "prompt_lang"):
            if not entry["params"].get(name):
                return f"{name} is required"
    return None


def _top_k_below_one(entry: dict) -> str | None:
    try:
        top_k = int(entry["params"].get("top_k", 15))
    except (TypeError, ValueError):
        return None  # not an integer: the 422 path, compared as usual
    return "tts failed" if entry["path"] == "/tts" and top_k < 1 else None


def _stream_failed_before_audio(entry: dict) -> str | None:
    aborted = entry["chunked"] and entry.get("chunked_complete") is False
    return "tts failed" if aborted and entry["body_len"] == 0 else None


# rule -> reason. Checked in this order; the first rule that applies wins.
DELIBERATE_DIFFERENCES: dict[Callable[[dict], str | None], str] = {
    _missing_language_on_get: (
        "GET /tts without text_lang or prompt_lang: the official handler lower-cases None and crashes "
        "with 500 text/plain; ours answers 400 JSON naming the missing field"
    ),
    _top_k_below_one: (
        "top_k < 1: the official server does not validate it and answers 200 with one second of 16 kHz "
        "silence (streaming: that silence, then an aborted stream); ours rejects it with 400 JSON"
    ),
    _stream_failed_before_audio: (
        "a streaming request whose pipeline fails before any audio (e.g. a missing reference file): the "
        "official server has already sent 200 and aborts an empty stream; ours checks the request and "
        "makes the first piece before answering, so the client gets 400 JSON with the reason"
    ),
}
# Not a compared field, but different on purpose: after switching SoVITS weights the official server
# still reuses prompt tokens extracted by the previous model for the last reference (so its
# `after_errors_post_tts_wav` has the v2Pro length); ours recomputes them, so lengths may differ.


def deliberate_difference(entry: dict) -> tuple[str, str] | None:
    """(expected message, reason) when our server deliberately answers 400 JSON instead."""
    for rule, reason in DELIBERATE_DIFFERENCES.items():
        message = rule(entry)
        if message is not None:
            return message, reason
    return None


# ------------------------------------------------------------------------------------ comparison
def compare(entry: dict, ours: RawResponse) -> list[str]:
    """What differs between the official answer in `entry` and ours (empty when conformant)."""
    deviation = deliberate_difference(entry)
    if deviation is not None:
        message, _ = deviation
        got = (ours.status, ours.content_type, ours.chunked, body_kind(ours))
        if got != (400, "application/json", False, "json"):
            return [f"expected our deliberate 400 JSON, got {got}"]
        if ours.json().get("message") != message:
            return [f"deliberate 400: message {ours.json().get('message')!r}, expected {message!r}"]
        return []

    problems = []
    got = {"status": ours.status, "content_type": ours.content_type, "chunked": ours.chunked}
    got["body_kind"] = body_kind(ours)
    if "chunked_complete" in entry:
        got["chunked_complete"] = ours.chunked_complete
    for key, value in got.items():
        if entry[key] != value:
            problems.append(f"{key}: ours {value!r}, official {entry[key]!r}")
    has_length = "content-length" in ours.headers
    if has_length != (entry["content_length_header"] is not None):
        problems.append(
            f"Content-Length header: ours {has_length}, official {entry['content_length_header'] is not None}"
        )
    elif has_length and int(ours.headers["content-length"]) != len(ours.body):
        problems.append("Content-Length does not match the body")
    if problems:
        return problems

    if entry["body_kind"] == "json":
        problems += compare_json(entry["json"], ours.json())
    if "wav_header" in entry:
        problems += compare_wav_header(entry, ours)
    return problems


def compare_json(official, ours) -> list[str]:
    if not isinstance(official, dict) or not isinstance(ours, dict):
        return [] if official == ours else [f"JSON body: ours {ours!r}, official {official!r}"]
    if "message" in official and ours.get("message") != official["message"]:
        return [f"message: ours {ours.get('message')!r}, official {official['message']!r}"]
    if "detail" in official:
        where = [(e["type"], e["loc"]) for e in official["detail"]]
        if [(e.get("type"), e.get("loc")) for e in ours.get("detail", [])] != where:
            return [f"422 detail: ours {ours.get('detail')!r}, official {official['detail']!r}"]
    return []


def compare_wav_header(entry: dict, ours: RawResponse) -> list[str]:
    header = wav_header_fields(ours.body)
    expected = dict(entry["wav_header"])
    if entry["chunked"]:  # a stream's header has the sizes of an empty file
        if ours.chunk_sizes[:1] != [44]:
            return [f"the first chunk of a WAV stream must be the 44-byte header, got {ours.chunk_sizes[:1]}"]
    else:  # a complete file: sizes describe our own body
        expected["riff_size"], expected["data_size_field"] = len(ours.body) - 8, len(ours.body) - 44
    return [] if header == expected else [f"WAV header: ours {header}, official-style {expected}"]


# ------------------------------------------------------------------------------------ replay
def fill(value, placeholders: dict[str, str]):
    if isinstance(value, str):
        for key, path in placeholders.items():
            value = value.replace(key, path)
        return value
    if isinstance(value, list):
        return [fill(v, placeholders) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, placeholders) for k, v in value.items()}
    return value


def send(port: int, entry: dict, placeholders: dict[str, str]) -> RawResponse:
    params = fill(entry["params"], placeholders)
    if entry["method"] == "GET":
        target = entry["path"] + (f"?{urlencode(params)}" if params else "")
        return raw_request(port, "GET", target, timeout_s=REQUEST_TIMEOUT_S)
    return raw_request(port, "POST", entry["path"], json.dumps(params).encode(), timeout_s=REQUEST_TIMEOUT_S)


def load_transcript() -> tuple[dict, dict[str, str]]:
    """The transcript and its path placeholders. With `KOE_API_V2_FIXTURES` set a missing transcript
    fails; without it, an absent default folder (a user's clone) skips, like the parity tests."""
    path = FIXTURES / "transcript.json"
    if not path.is_file():
        if "KOE_API_V2_FIXTURES" in os.environ:
            pytest.fail(f"KOE_API_V2_FIXTURES={FIXTURES} has no transcript.json")
        pytest.skip(
            f"api_v2 fixtures not found at {FIXTURES}; they come from the shared/ folder beside the repo"
        )
    transcript = json.loads(path.read_text(encoding="utf-8"))
    placeholders = {key: str((FIXTURES / rel).resolve()) for key, rel in transcript["placeholders"].items()}
    return transcript, placeholders


def server_yaml(transcript: dict, placeholders: dict[str, str]) -> Path:
    """The tts_infer.yaml the official server ran on (named in `server`), in the pipeline folder."""
    match = re.search(r"([\w.-]+\.ya?ml)", transcript.get("server", ""))
    path = Path(placeholders["{PIPE}"]) / (match.group(1) if match else "tts_v2.yaml")
    assert path.is_file(), f"server config {path} not found"
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandInSpeakerModel:
    """Where the v2Pro speaker-verification network would run: a fixed 20480-d embedding.

    The official network (ERes2NetV2 w24s4ep4, 214 MB) is not shipped with the fixtures, and the
    transcript compares framing and status, not audio, so any embedding of the right size serves.
    """

    def __call__(self, audio16):
        import torch

        return torch.zeros(1, 20480)


@pytest.fixture(scope="module")
def replay_setup(tmp_path_factory):
    """`koe tts-serve`'s own app and pipeline, built as the command builds them, on 127.0.0.1.

    In-process rather than a subprocess only so that the unshipped speaker model can be stood in for
    (`test_tts_serve_command_answers` runs the real command).
    """
    from agent.config import load_config
    from tts.cli import resolve_models
    from tts.pipeline import TTSPipeline

    transcript, placeholders = load_transcript()
    workdir = tmp_path_factory.mktemp("tts_serve")
    config_path = workdir / "config.toml"  # a fresh reference cache, like a fresh official server
    config_path.write_text(f'[models]\ndir = "{workdir}"\n[tts]\ncache_dir = "{workdir / "cache"}"\n')
    config = load_config(config_path)
    args = parse_serve_args(["--tts-config", str(server_yaml(transcript, placeholders))])
    models = resolve_models(args, config)
    pipeline = TTSPipeline.from_paths(
        models.gpt, models.sovits, models.bert, models.hubert, device=models.device,
        cache_dir=config.tts.cache_dir, speaker_encoder=StandInSpeakerModel(),
    )  # fmt: skip
    log_path = workdir / "server.log"
    log_path.write_text("(in-process server: see the captured log output)\n")
    with serve_in_thread(create_app(pipeline, on_exit=lambda: None, on_restart=lambda: None)) as port:
        yield transcript, placeholders, port, log_path


def parse_serve_args(argv: list[str]):
    from agent.cli import build_parser

    return build_parser().parse_args(["tts-serve", *argv])


@needs_engine
def test_tts_serve_command_answers(tmp_path):
    """The real `koe tts-serve` process on the fixture YAML: one synthesis and one rejected request."""
    transcript, placeholders = load_transcript()
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\ndir = "{tmp_path}"\n')
    port = free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "agent.cli", "--config", str(config), "tts-serve", "--port", str(port)]
    command += ["--tts-config", str(server_yaml(transcript, placeholders))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(server, port, log_path)
        ref = Path(placeholders["{PIPE}"]) / "refs" / "ref_c_32k.wav"
        query = urlencode({
            "text": "A short test.", "text_lang": "en", "ref_audio_path": str(ref), "prompt_lang": "en",
            "prompt_text": "Every morning the baker opens his little shop before the sun comes up over the hills.",
            "top_k": 1, "seed": 1,
        })  # fmt: skip
        ok = raw_request(port, "GET", f"/tts?{query}", timeout_s=REQUEST_TIMEOUT_S)
        assert ok.status == 200 and ok.headers.get("content-type") == "audio/wav" and ok.body[:4] == b"RIFF"
        bad = raw_request(port, "GET", "/tts?text=hi&text_lang=en", timeout_s=REQUEST_TIMEOUT_S)
        assert bad.status == 400 and b"ref_audio_path is required" in bad.body  # the official order
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_listening(server: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"koe tts-serve exited with {server.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(
        f"koe tts-serve did not listen within {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}"
    )


def test_deliberate_differences_match_the_transcript_marks():
    """Our rules must pick exactly the requests the transcript marks `our_server_may_differ`."""
    transcript, _ = load_transcript()
    for entry in transcript["requests"]:
        ours = deliberate_difference(entry) is not None
        assert ours == ("our_server_may_differ" in entry), entry["name"]


def test_error_answers_with_a_stand_in_engine():
    """Every request the official server refused (and every deliberate difference) gets the official
    answer from our protocol layer already with synthetic audio: these never depend on model output."""
    transcript, placeholders = load_transcript()
    refused = [e for e in transcript["requests"] if e["status"] != 200 or deliberate_difference(e)]
    assert refused, "the transcript has no refused requests"
    failures = []
    with serve_in_thread(create_app(StandInEngine())) as port:
        for entry in refused:
            problems = compare(entry, send(port, entry, placeholders))
            failures += [f"{entry['name']}: {'; '.join(problems)}"] if problems else []
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@needs_engine
def test_replay_transcript(replay_setup):
    transcript, placeholders, port, log_path = replay_setup
    failures = []
    print(
        f"\n{'request':34} {'status':>6} {'ours':>5} {'official len':>12} {'our len':>8}  chunks official/ours"
    )
    for entry in transcript["requests"]:
        ours = send(port, entry, placeholders)
        problems = compare(entry, ours)
        chunks = f"{len(entry.get('chunk_sizes', []))}/{len(ours.chunk_sizes)}" if entry["chunked"] else ""
        mark = "ok" if not problems else "FAIL"
        print(
            f"{entry['name']:34} {entry['status']:>6} {ours.status:>5} {entry['body_len']:>12} {len(ours.body):>8}  {chunks} {mark}"
        )
        if problems:
            detail = ours.body[:300] if body_kind(ours) in ("json", "raw") and len(ours.body) < 300 else b""
            failures.append(f"{entry['name']}: {'; '.join(problems)} {detail!r}")
    assert not failures, "\n".join(failures) + f"\n--- server log tail ---\n{log_path.read_text()[-3000:]}"
