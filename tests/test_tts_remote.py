"""The api_v2 remote backend against our own `tts-serve` app on loopback (stand-in engine)."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from agent.errors import KoeError
from api_v2_helpers import StandInEngine, serve_in_thread, write_reference, write_weights
from tts.remote import ApiV2Client, WavStreamReader, request_body
from tts.server import create_app, wav_header

TEXT = "Hello there. How are you today?"


@pytest.fixture(scope="module")
def served():
    engine = StandInEngine()
    with serve_in_thread(create_app(engine)) as port:
        yield engine, port


@pytest.fixture
def engine(served):
    served[0].reset()
    return served[0]


@pytest.fixture
def client(served, engine):
    with ApiV2Client(f"http://127.0.0.1:{served[1]}/", timeout_s=10) as client:
        yield client


@pytest.fixture
def params(tmp_path):
    """A `TTS.run` input dict as the agent builds it (token streaming for low latency)."""
    ref = write_reference(tmp_path / "ref.wav", 4.0)
    return {
        "text": TEXT,
        "text_lang": "en",
        "ref_audio_path": str(ref),
        "prompt_text": "",
        "prompt_lang": "en",
        "top_k": 5,
        "seed": 3,
        "return_fragment": False,
        "streaming_mode": True,
        "fixed_length_chunk": False,
    }


@pytest.mark.parametrize(
    "flags, mode",
    [
        ((False, False, False), 0),
        ((True, False, False), 1),
        ((False, True, False), 2),
        ((False, True, True), 3),
    ],
)
def test_run_flags_choose_the_streaming_mode(params, flags, mode):
    params.update(zip(("return_fragment", "streaming_mode", "fixed_length_chunk"), flags))
    body = request_body(params)
    assert (body["streaming_mode"], body["media_type"]) == (mode, "wav")
    assert "return_fragment" not in body and "fixed_length_chunk" not in body
    assert (body["top_k"], body["seed"], body["text"]) == (5, 3, TEXT)


@pytest.mark.parametrize("mode_flags", [(False, True, False), (False, True, True), (True, False, False)])
def test_streamed_pieces_carry_the_engine_audio(client, engine, params, mode_flags):
    params.update(zip(("return_fragment", "streaming_mode", "fixed_length_chunk"), mode_flags))
    pieces = list(client.run(params))
    assert {rate for rate, _ in pieces} == {32000}
    assert all(audio.dtype == np.int16 for _, audio in pieces)
    received = np.concatenate([audio for _, audio in pieces])
    np.testing.assert_array_equal(received, np.concatenate(engine.yielded))
    assert engine.runs[-1]["streaming_mode"] == mode_flags[1]
    assert engine.runs[-1]["return_fragment"] == mode_flags[0]


def test_first_piece_arrives_before_synthesis_ends(client, engine, params):
    engine.piece_delay_s = 0.2
    stream = client.run(params)
    rate, first = next(stream)
    assert rate == 32000 and len(first) > 0
    assert engine.active_runs == 1  # the server is still synthesising the rest
    stream.close()


def test_non_streaming_answer(client, engine, params):
    params["streaming_mode"] = False
    received = np.concatenate([audio for _, audio in client.run(params)])
    np.testing.assert_array_equal(received, engine.yielded[0])


def test_rejected_request_names_the_server_reason(client, params):
    params["ref_audio_path"] = "/nonexistent/ref.wav"
    with pytest.raises(
        KoeError, match=r"rejected the request: tts failed: reference audio not found: /nonexistent"
    ):
        list(client.run(params))
    params["text_lang"] = "de"
    with pytest.raises(KoeError, match="rejected the request: text_lang: de is not supported in version v2"):
        list(client.run(params))


def test_type_errors_name_the_field(client, params):
    params["top_k"] = "five"
    with pytest.raises(KoeError, match="rejected request fields: top_k: Input should be a valid integer"):
        list(client.run(params))


def test_stream_cut_off_by_the_server_is_an_error(client, engine, params):
    engine.fail_after_pieces = 2
    stream = client.run(params)
    with pytest.raises(KoeError, match="cut the audio stream off before its end"):
        list(stream)
    assert len(engine.yielded) == 2


def test_unreachable_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    with ApiV2Client(f"http://127.0.0.1:{port}", timeout_s=5) as client:
        with pytest.raises(
            KoeError, match=r"cannot connect to the api_v2 server at http://127\.0\.0\.1:\d+.*koe tts-serve"
        ):
            list(client.run({"text": "hi"}))


def test_slow_server_times_out(served, engine, params):
    engine.piece_delay_s = 1.0
    with ApiV2Client(f"http://127.0.0.1:{served[1]}", timeout_s=0.3) as client:
        with pytest.raises(KoeError, match=r"sent nothing for 0\.3 s \(timeout\)"):
            list(client.run(params))


def test_weights_and_reference_calls(client, engine, tmp_path, params):
    client.set_sovits_weights(str(write_weights(tmp_path / "v1.pth", "v1")))
    client.set_gpt_weights(str(write_weights(tmp_path / "v1.ckpt", "v1")))
    assert (engine.version, engine.events) == ("v1", ["switch", "switch"])
    with pytest.raises(KoeError, match="change gpt weight failed: weights file not found"):
        client.set_gpt_weights(str(tmp_path / "absent.ckpt"))
    client.prepare_reference(params["ref_audio_path"])
    assert params["ref_audio_path"] in engine.prompt_features
    with pytest.raises(KoeError, match="set refer audio failed"):
        client.prepare_reference(str(tmp_path / "absent.wav"))


def test_wav_reader_handles_any_split_and_extra_chunks():
    samples = np.arange(-500, 500, dtype=np.int16)
    fmt = wav_header(24000, 0)[12:36]
    # A header with a LIST chunk before data, as some encoders write.
    data = (
        b"RIFF\x00\x00\x00\x00WAVE"
        + fmt
        + b"LIST\x04\x00\x00\x00abcd"
        + b"data\x00\x00\x00\x00"
        + samples.tobytes()
    )
    for step in (1, 3, 7, 1000):
        reader, got = WavStreamReader(), []
        for start in range(0, len(data), step):
            piece = reader.feed(data[start : start + step])
            if piece is not None:
                got.append(piece)
        assert reader.sample_rate == 24000
        np.testing.assert_array_equal(np.concatenate(got), samples)


def test_wav_reader_rejects_error_silence_and_non_wav():
    with pytest.raises(
        KoeError, match="16 kHz audio, which GPT-SoVITS sends as silence when synthesis fails"
    ):
        WavStreamReader().feed(wav_header(16000, 0))
    with pytest.raises(KoeError, match="not a WAV file"):
        WavStreamReader().feed(b"OggS" + bytes(40))
    stereo = bytearray(wav_header(32000, 0))
    stereo[22] = 2
    with pytest.raises(KoeError, match="expected PCM16 mono"):
        WavStreamReader().feed(bytes(stereo))
