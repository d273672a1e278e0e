"""`koe tts-serve` protocol behaviour, against a stand-in engine with synthetic audio.

Covers every validation error (official messages and order, plus our deliberate 400s), the framing
of each media type and streaming mode, a responsive event loop during synthesis, one synthesis at a
time, weight switching, hang-ups and `/control`. The real engine is exercised by
test_api_v2_conformance.py.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import soundfile as sf

from agent.cli import build_parser
from agent.config import KoeConfig
from agent.errors import KoeError
from api_v2_helpers import (
    RawResponse,
    StandInEngine,
    body_kind,
    raw_request,
    serve_in_thread,
    wav_header_fields,
    write_reference,
    write_weights,
)
from tts.cli import read_tts_infer_yaml, resolve_models, run_tts_serve
from tts.server import create_app

OFFICIAL_RUN_KEYS = {
    "text", "text_lang", "ref_audio_path", "aux_ref_audio_paths", "prompt_text", "prompt_lang", "top_k",
    "top_p", "temperature", "text_split_method", "batch_size", "batch_threshold", "split_bucket",
    "speed_factor", "fragment_interval", "seed", "parallel_infer", "repetition_penalty", "sample_steps",
    "super_sampling", "return_fragment", "streaming_mode", "overlap_length", "min_chunk_length",
    "fixed_length_chunk",
}  # fmt: skip
TEXT = "Hello there. How are you today?"


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    return {
        "ok": str(write_reference(folder / "ok.wav", 4.0)),
        "short": str(write_reference(folder / "short.wav", 2.0)),
    }


@pytest.fixture(scope="module")
def served():
    """One server for the module: (engine, port, /control calls); tests reset the engine."""
    engine, control_calls = StandInEngine(), []
    app = create_app(
        engine,
        on_exit=lambda: control_calls.append("exit"),
        on_restart=lambda: control_calls.append("restart"),
    )
    with serve_in_thread(app) as port:
        yield engine, port, control_calls


@pytest.fixture
def engine(served):
    served[0].reset()
    served[2].clear()
    return served[0]


@pytest.fixture
def port(served, engine):
    return served[1]


@pytest.fixture
def control_calls(served, engine):
    return served[2]


@pytest.fixture
def request_fields(refs):
    return {"text": TEXT, "text_lang": "en", "ref_audio_path": refs["ok"], "prompt_lang": "en"}


def post(port: int, fields: dict, **kwargs) -> RawResponse:
    return raw_request(port, "POST", "/tts", json.dumps(fields).encode(), **kwargs)


def get(port: int, path: str, fields: dict | None = None) -> RawResponse:
    return raw_request(port, "GET", f"{path}?{urlencode(fields)}" if fields else path)


def pcm(pieces) -> bytes:
    return b"".join(np.asarray(p, dtype="<i2").tobytes() for p in pieces)


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "change, message",
    [
        ({"ref_audio_path": None, "text": None}, "ref_audio_path is required"),  # checked first
        ({"text": None}, "text is required"),
        ({"text": ""}, "text is required"),
        ({"text_lang": None}, "text_lang is required"),
        ({"text_lang": "de"}, "text_lang: de is not supported in version v2"),
        ({"prompt_lang": None}, "prompt_lang is required"),
        ({"prompt_lang": "it"}, "prompt_lang: it is not supported in version v2"),
        ({"media_type": "flac"}, "media_type: flac is not supported"),
        ({"text_split_method": "cut7"}, "text_split_method:cut7 is not supported"),
        ({"streaming_mode": 4}, "the value of streaming_mode must be 0, 1, 2, 3(int) or true/false(bool)"),
        ({"streaming_mode": -1}, "the value of streaming_mode must be 0, 1, 2, 3(int) or true/false(bool)"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_invalid_requests_get_the_official_400(port, engine, request_fields, change, message, method):
    fields = {k: v for k, v in {**request_fields, **change}.items() if v is not None}
    answer = get(port, "/tts", fields) if method == "GET" else post(port, fields)
    assert (answer.status, answer.content_type, answer.json()) == (
        400,
        "application/json",
        {"message": message},
    )
    assert engine.runs == []


def test_type_errors_are_fastapi_style_422(port, request_fields):
    for method, where in (("GET", "query"), ("POST", "body")):
        fields = {**request_fields, "top_k": "five"}
        answer = get(port, "/tts", fields) if method == "GET" else post(port, fields)
        assert answer.status == 422
        [error] = answer.json()["detail"]
        assert (error["type"], error["loc"], error["input"]) == ("int_parsing", [where, "top_k"], "five")
    broken = raw_request(port, "POST", "/tts", b"{not json")
    assert broken.status == 422 and broken.json()["detail"][0]["type"] == "json_invalid"


def test_get_accepts_official_query_forms(port, engine, request_fields):
    """GET lower-cases language codes; booleans are true/false/1/0; streaming_mode=1 means mode 1."""
    answer = get(
        port, "/tts", {**request_fields, "text_lang": "EN", "split_bucket": "0", "streaming_mode": "1"}
    )
    assert answer.status == 200 and answer.chunked
    run = engine.runs[-1]
    assert (run["text_lang"], run["split_bucket"], run["return_fragment"]) == ("en", False, True)


@pytest.mark.parametrize("mode", [0, True, 1, 2, 3])
@pytest.mark.parametrize(
    "change, reason",
    [
        ({"ref_audio_path": "/nonexistent/ref.wav"}, "reference audio not found: /nonexistent/ref.wav"),
        ({"ref_audio_path": "SHORT"}, "it must be 3-10 s"),
        (
            {"aux_ref_audio_paths": ["/nonexistent/aux.wav"]},
            "reference audio not found: /nonexistent/aux.wav",
        ),
        ({"top_k": 0}, "top_k must be at least 1, got 0"),
        ({"top_k": -3}, "top_k must be at least 1, got -3"),
        ({"text": "... !"}, "nothing to speak"),
        ({"text_lang": "EN"}, "text_lang 'EN' is not supported"),  # POST passes codes on as sent
    ],
)
def test_failures_before_audio_are_400_in_every_mode(
    port, engine, refs, request_fields, mode, change, reason
):
    """Deliberate difference: the official server answers 200 and aborts the stream (or sends silence)."""
    change = {k: refs["short"] if v == "SHORT" else v for k, v in change.items()}
    answer = post(port, {**request_fields, **change, "streaming_mode": mode})
    assert (answer.status, answer.content_type, answer.chunked) == (400, "application/json", False)
    assert answer.json()["message"] == "tts failed"
    assert reason in answer.json()["Exception"]
    assert engine.yielded == []


def test_synthesis_failure_in_mode_0_is_400(port, engine, request_fields):
    engine.fail_after_pieces = 0
    answer = post(port, request_fields)
    assert answer.status == 400
    assert answer.json() == {"message": "tts failed", "Exception": "stand-in synthesis failure"}


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_failure_before_the_first_piece_is_400_when_streaming(port, engine, request_fields, mode):
    engine.fail_after_pieces = 0
    answer = post(port, {**request_fields, "streaming_mode": mode})
    assert (answer.status, answer.json()["Exception"]) == (400, "stand-in synthesis failure")


def test_failure_after_audio_started_cuts_the_stream(port, engine, request_fields):
    engine.fail_after_pieces = 2
    answer = post(port, {**request_fields, "streaming_mode": 2})
    assert (answer.status, answer.chunked, answer.chunked_complete) == (200, True, False)
    assert answer.chunk_sizes == [44] + [2 * len(p) for p in engine.yielded]
    assert len(engine.yielded) == 2


# ------------------------------------------------------------------------------------ bodies
def test_non_streaming_wav_is_a_complete_file(port, engine, request_fields):
    answer = post(port, request_fields)  # media_type defaults to wav
    assert (answer.status, answer.content_type, answer.chunked) == (200, "audio/wav", False)
    assert int(answer.headers["content-length"]) == len(answer.body)
    [piece] = engine.yielded
    header = wav_header_fields(answer.body)
    assert header == {
        "riff_size": len(answer.body) - 8,
        "fmt_tag": 1,
        "channels": 1,
        "sample_rate": 32000,
        "bits": 16,
        "data_size_field": len(answer.body) - 44,
    }
    assert answer.body[44:] == pcm([piece])


def test_non_streaming_raw_ogg_aac(port, engine, request_fields):
    raw = post(port, {**request_fields, "media_type": "raw"})
    assert (raw.content_type, body_kind(raw), raw.body) == ("audio/raw", "raw", pcm(engine.yielded[-1:]))
    ogg = post(port, {**request_fields, "media_type": "ogg"})
    assert (ogg.status, ogg.content_type, body_kind(ogg), ogg.chunked) == (200, "audio/ogg", "ogg", False)
    decoded, rate = sf.read(io.BytesIO(ogg.body), dtype="int16")
    assert (rate, len(decoded)) == (32000, len(engine.yielded[-1]))
    aac = post(port, {**request_fields, "media_type": "aac"})
    assert (aac.status, aac.content_type, body_kind(aac), aac.chunked) == (
        200,
        "audio/aac",
        "aac_adts",
        False,
    )
    assert int(aac.headers["content-length"]) == len(aac.body) > 0


@pytest.mark.parametrize("mode", [True, 1, 2, 3])
@pytest.mark.parametrize("media_type", ["wav", "raw"])
def test_streaming_pcm_framing(port, engine, request_fields, mode, media_type):
    answer = post(port, {**request_fields, "streaming_mode": mode, "media_type": media_type})
    assert (answer.status, answer.content_type) == (200, f"audio/{media_type}")
    assert (answer.chunked, answer.chunked_complete, "content-length" in answer.headers) == (
        True,
        True,
        False,
    )
    piece_chunks = [2 * len(p) for p in engine.yielded if len(p)]
    assert len(piece_chunks) >= 2  # several pieces: the text has two sentences
    if media_type == "wav":
        assert answer.chunk_sizes == [44, *piece_chunks]
        assert wav_header_fields(answer.body) == {
            "riff_size": 36,
            "fmt_tag": 1,
            "channels": 1,
            "sample_rate": 32000,
            "bits": 16,
            "data_size_field": 0,
        }
        assert answer.body[44:] == pcm(engine.yielded)
    else:
        assert answer.chunk_sizes == piece_chunks
        assert answer.body == pcm(engine.yielded)


def test_streaming_ogg_and_aac_encode_each_piece_on_its_own(port, engine, request_fields):
    ogg = post(port, {**request_fields, "streaming_mode": 1, "media_type": "ogg"})
    assert (ogg.status, ogg.chunked_complete, len(ogg.chunk_sizes)) == (200, True, len(engine.yielded))
    offset = 0
    for size, piece in zip(ogg.chunk_sizes, engine.yielded):
        decoded, _ = sf.read(io.BytesIO(ogg.body[offset : offset + size]), dtype="int16")
        assert len(decoded) == len(piece)
        offset += size
    engine.yielded.clear()
    aac = post(port, {**request_fields, "text": "Hello there.", "streaming_mode": 3, "media_type": "aac"})
    assert (aac.status, aac.content_type, aac.chunked_complete) == (200, "audio/aac", True)
    offset = 0
    for size in aac.chunk_sizes:
        assert aac.body[offset] == 0xFF and aac.body[offset + 1] & 0xF6 == 0xF0  # each starts an ADTS run
        offset += size


@pytest.mark.parametrize(
    "mode, flags",
    [
        (False, (False, False, False)),
        (0, (False, False, False)),
        (True, (True, False, False)),
        (1, (True, False, False)),
        (2, (False, True, False)),
        (3, (False, True, True)),
    ],
)
def test_engine_gets_the_official_run_inputs(port, engine, request_fields, mode, flags):
    post(port, {**request_fields, "streaming_mode": mode, "seed": 7, "unknown_field": 1})
    run = engine.runs[-1]
    assert set(run) == OFFICIAL_RUN_KEYS
    assert (run["return_fragment"], run["streaming_mode"], run["fixed_length_chunk"]) == flags
    assert (run["seed"], run["top_k"], run["text_split_method"], run["aux_ref_audio_paths"]) == (
        7,
        15,
        "cut5",
        [],
    )
    assert (run["batch_threshold"], run["repetition_penalty"], run["min_chunk_length"]) == (0.75, 1.35, 16)


# ------------------------------------------------------------------------------------ concurrency
def _in_background(fn, *args) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
    thread.start()
    return thread, result


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_event_loop_stays_responsive_during_synthesis(port, engine, request_fields):
    engine.piece_delay_s = 0.4
    thread, result = _in_background(
        post, port, {**request_fields, "text": "Hello there.", "streaming_mode": 3}
    )
    _wait_for(lambda: engine.active_runs == 1)
    started = time.monotonic()
    answer = get(port, "/control")
    took = time.monotonic() - started
    assert answer.status == 400 and took < 1.0
    assert engine.active_runs == 1  # still synthesising when the answer came
    thread.join(30)
    assert result[0].chunked_complete


def test_one_synthesis_at_a_time(port, engine, request_fields):
    engine.piece_delay_s = 0.05
    threads = [_in_background(post, port, {**request_fields, "streaming_mode": 2}) for _ in range(3)]
    for thread, _ in threads:
        thread.join(30)
    assert [result[0].status for _, result in threads] == [200, 200, 200]
    assert engine.max_active_runs == 1


def test_hang_up_stops_synthesis_and_frees_the_engine(port, engine, request_fields):
    engine.piece_delay_s = 0.2
    long_text = " ".join(["Hello there, how are you today?"] * 6)  # about 20 pieces, 4 s at this pace
    body = json.dumps({**request_fields, "text": long_text, "streaming_mode": 2}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        head = f"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        conn.sendall(head.encode() + body)
        assert conn.recv(100).startswith(b"HTTP/1.1 200")
    _wait_for(lambda: "run-end" in engine.events)
    assert len(engine.yielded) < 5  # it stopped early
    engine.piece_delay_s = 0.0
    assert post(port, request_fields).status == 200


# ------------------------------------------------------------------------------------ weights, reference
def test_weight_switching(port, engine, request_fields, tmp_path):
    v1 = write_weights(tmp_path / "v1.pth", "v1")
    assert get(port, "/set_sovits_weights", {"weights_path": v1}).json() == {"message": "success"}
    assert engine.version == "v1"
    answer = post(port, {**request_fields, "text_lang": "yue"})
    assert answer.json() == {"message": "text_lang: yue is not supported in version v1"}
    assert (
        get(port, "/set_gpt_weights", {"weights_path": write_weights(tmp_path / "g.ckpt", "v1")}).status
        == 200
    )
    assert engine.events == ["switch", "switch"]

    missing = get(port, "/set_sovits_weights", {"weights_path": tmp_path / "absent.pth"})
    assert (missing.status, missing.json()["message"]) == (400, "change sovits weight failed")
    assert str(tmp_path / "absent.pth") in missing.json()["Exception"]
    assert engine.version == "v1"  # the old models stay
    missing = get(port, "/set_gpt_weights", {"weights_path": tmp_path / "absent.ckpt"})
    assert (missing.status, missing.json()["message"]) == (400, "change gpt weight failed")
    assert post(port, request_fields).status == 200

    for path, kind in (("/set_gpt_weights", "gpt"), ("/set_sovits_weights", "sovits")):
        answer = get(port, path)
        assert (answer.status, answer.json()) == (400, {"message": f"{kind} weight path is required"})


def test_weight_switch_waits_for_the_running_synthesis(port, engine, request_fields, tmp_path):
    engine.piece_delay_s = 0.1
    weights = write_weights(tmp_path / "v2.pth", "v2")
    thread, _ = _in_background(post, port, {**request_fields, "streaming_mode": 3})
    _wait_for(lambda: engine.active_runs == 1)
    assert get(port, "/set_sovits_weights", {"weights_path": weights}).status == 200
    thread.join(30)
    assert engine.events == ["run-start", "run-end", "switch"]


def test_set_refer_audio(port, engine, refs):
    answer = get(port, "/set_refer_audio", {"refer_audio_path": refs["ok"]})
    assert (answer.status, answer.json()) == (200, {"message": "success"})
    assert refs["ok"] in engine.prompt_features
    for query, reason in (({"refer_audio_path": "/nonexistent.wav"}, "not found"), (None, "is required")):
        answer = get(port, "/set_refer_audio", query)
        assert (answer.status, answer.json()["message"]) == (400, "set refer audio failed")
        assert reason in answer.json()["Exception"]


# ------------------------------------------------------------------------------------ control, misc
def test_control(port, control_calls):
    answer = get(port, "/control")
    assert (answer.status, answer.json()) == (400, {"message": "command is required"})
    assert (get(port, "/control", {"command": "dance"}).body, control_calls) == (b"null", [])
    assert get(port, "/control", {"command": "restart"}).json() == {"message": "restarting"}
    assert get(port, "/control", {"command": "exit"}).json() == {"message": "exiting"}
    _wait_for(lambda: len(control_calls) == 2)
    assert control_calls == ["restart", "exit"]


def test_unknown_paths_and_methods_answer_json_like_fastapi(port):
    assert (get(port, "/nowhere").status, get(port, "/nowhere").json()) == (404, {"detail": "Not Found"})
    answer = raw_request(port, "POST", "/control", b"{}")
    assert (answer.status, answer.json()) == (405, {"detail": "Method Not Allowed"})


# ------------------------------------------------------------------------------------ command line
PIPELINE_FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "pipeline"


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["tts-serve", *argv])


def test_tts_serve_options():
    args = serve_args()
    assert (args.host, args.port, args.tts_config, args.handler) == (None, None, None, run_tts_serve)
    assert KoeConfig().server.tts_serve_host == "127.0.0.1" and KoeConfig().server.tts_serve_port == 9880


def test_tts_infer_yaml_paths_resolve_against_its_folder():
    yaml_path = PIPELINE_FIXTURES / "tts_v2.yaml"
    custom = read_tts_infer_yaml(yaml_path)
    assert custom["version"] == "v2" and custom["device"] == "cpu"
    for key in ("t2s_weights_path", "vits_weights_path", "bert_base_path", "cnhuhbert_base_path"):
        assert custom[key].is_absolute() and custom[key].exists(), key
    models = resolve_models(serve_args("--tts-config", str(yaml_path)), KoeConfig())
    assert (models.gpt, models.sovits, models.device) == (
        custom["t2s_weights_path"],
        custom["vits_weights_path"],
        "cpu",
    )


def test_flags_override_the_yaml(tmp_path):
    gpt = write_weights(tmp_path / "mine.ckpt", "v2")
    args = serve_args("--tts-config", str(PIPELINE_FIXTURES / "tts_v2.yaml"), "--gpt", str(gpt))
    assert resolve_models(args, KoeConfig()).gpt == gpt
    args = serve_args(
        "--tts-config", str(PIPELINE_FIXTURES / "tts_v2.yaml"), "--sovits", str(tmp_path / "no.pth")
    )
    with pytest.raises(
        KoeError, match=r"sovits model not found: .*no\.pth \(check --sovits or --tts-config\)"
    ):
        resolve_models(args, KoeConfig())


def test_bad_tts_infer_yaml(tmp_path):
    path = tmp_path / "tts_infer.yaml"
    path.write_text("v2:\n  device: cpu\n", encoding="utf-8")
    with pytest.raises(KoeError, match=r"tts_infer\.yaml: no `custom:` section"):
        read_tts_infer_yaml(path)
    path.write_text("custom: [unclosed\n", encoding="utf-8")
    with pytest.raises(KoeError, match="cannot read it as YAML"):
        read_tts_infer_yaml(path)
    path.write_text("custom:\n  version: v3\n", encoding="utf-8")
    with pytest.raises(KoeError, match="no pretrained weights known for version 'v3'"):
        resolve_models(serve_args("--tts-config", str(path)), KoeConfig())
