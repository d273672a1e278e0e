"""The avatar feed's wire format and lip-sync math (agent/protocol.py, agent/lipsync.py), without a server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agent import lipsync
from agent import protocol as p


def test_audio_header_round_trip_and_layout():
    samples = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    frame = p.AudioFrame(p.KIND_SPEECH, segment=7, sequence=300, samples=samples, last=True)
    data = p.pack_audio(frame)
    assert len(data) == 12 + 2 * len(samples)
    # The layout docs/protocol.md promises: kind, flags, reserved, segment, sequence, PCM16 LE.
    assert data[:12] == bytes([1, 1, 0, 0, 7, 0, 0, 0, 44, 1, 0, 0])
    assert data[12:14] == b"\x00\x00" and data[16:18] == b"\xff\xff"
    back = p.unpack_audio(data)
    assert (back.kind, back.segment, back.sequence, back.last) == (1, 7, 300, True)
    np.testing.assert_array_equal(back.samples, samples)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x02\x00", "shorter than the 12-byte header"),
        (bytes([9]) + bytes(11), "unknown audio frame kind 9"),
        (bytes([2]) + bytes(11) + b"\x01", r"odd length \(1 bytes\)"),
    ],
)
def test_bad_audio_frames_say_what_is_wrong(data, message):
    with pytest.raises(p.ProtocolError, match=message) as caught:
        p.unpack_audio(data)
    assert caught.value.code == "bad_audio"


def test_base64_audio_round_trip_and_errors():
    samples = np.arange(-5, 5, dtype=np.int16)
    np.testing.assert_array_equal(p.decode_base64_pcm(p.encode_base64_pcm(samples)), samples)
    with pytest.raises(p.ProtocolError, match="not valid base64"):
        p.decode_base64_pcm("@@@")
    with pytest.raises(p.ProtocolError, match="odd length"):
        p.decode_base64_pcm("AA==")


def test_parse_valid_messages():
    hello = p.parse_client_message(
        json.dumps(
            {
                "type": "hello",
                "version": 1,
                "token": "t",
                "capabilities": ["binary_audio"],
                "audio_rate": 48000,
            }
        )
    )
    assert isinstance(hello, p.Hello) and hello.audio_rate == 48000 and hello.capabilities == ["binary_audio"]
    progress = p.parse_client_message('{"type": "playback_progress", "segment": 3, "played_ms": 420}')
    assert progress == p.PlaybackProgress(type="playback_progress", segment=3, played_ms=420)
    assert isinstance(p.parse_client_message('{"type": "interrupt"}'), p.Interrupt)


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ("{nope", "bad_json", "not valid JSON"),
        ("[1, 2]", "bad_message", "expected a JSON object with a 'type', got list"),
        ('{"type": "dance"}', "unknown_type", "unknown message type 'dance' (known: hello, text_input"),
        ('{"text": "hi"}', "unknown_type", "unknown message type None"),
        ('{"type": "text_input"}', "bad_field", "text_input: text: Field required"),
        ('{"type": "text_input", "text": 5}', "bad_field", "text_input: text: Input should be a valid string (got 5)"),
        ('{"type": "text_input", "text": ""}', "bad_field", "text: String should have at least 1 character"),
        ('{"type": "playback_progress", "segment": 1, "played_ms": "10"}', "bad_field", "played_ms: Input should be a valid integer"),
        ('{"type": "playback_progress", "segment": -1, "played_ms": 0}', "bad_field", "segment: Input should be greater than or equal to 0"),
        ('{"type": "ping", "extra": 1}', "bad_field", "extra: Extra inputs are not permitted"),
        ('{"type": "hello", "version": true}', "bad_field", "version: Input should be a valid integer"),
        ('{"type": "set_character", "character": "../etc"}', "bad_field", "character: String should match pattern"),
    ],
)  # fmt: skip
def test_bad_messages_get_a_code_and_an_actionable_message(text, code, message):
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_client_message(text)
    assert caught.value.code == code
    assert message in caught.value.message


def test_event_is_compact_json():
    assert json.loads(p.event("pong", t=1)) == {"type": "pong", "t": 1}
    assert p.event("transcript", text="こんにちは") == '{"type":"transcript","text":"こんにちは"}'


# ------------------------------------------------------------------------------------------ lipsync
RATE = 24000


def vowel_like(
    f1: float, f2: float, seconds: float = 0.2, f0: float = 120.0, level: float = 0.3
) -> np.ndarray:
    """A crude voiced vowel: harmonics of f0 shaped by two formant resonances at f1 and f2."""
    t = np.arange(int(RATE * seconds)) / RATE
    audio = np.zeros_like(t)
    for k in range(1, int(4000 / f0)):
        f = k * f0
        gain = np.exp(-(((f - f1) / 90) ** 2)) + 0.7 * np.exp(-(((f - f2) / 120) ** 2))
        audio += gain * np.sin(2 * np.pi * f * t)
    return (level * audio / np.abs(audio).max()).astype(np.float32)


def test_envelope_is_zero_for_silence_and_follows_the_level():
    silence = np.zeros(RATE // 10, dtype=np.int16)
    assert lipsync.envelope(silence, RATE).tolist() == [0.0] * 5
    loud = vowel_like(800, 1300, level=0.5)
    quiet = vowel_like(800, 1300, level=0.01)
    assert lipsync.envelope(loud, RATE).min() > 0.8
    assert 0.05 < lipsync.envelope(quiet, RATE).mean() < 0.4
    # 100 ms of audio is five 20 ms frames; a partial frame counts as one more.
    assert len(lipsync.envelope(np.zeros(RATE // 10 + 1, dtype=np.float32), RATE)) == 6


@pytest.mark.parametrize(
    ("vowel", "f1", "f2"),
    [("A", 800, 1250), ("I", 300, 2300), ("U", 350, 1250), ("E", 500, 1900), ("O", 500, 850)],
)
def test_vowel_estimate_picks_the_vowel_of_its_formants(vowel, f1, f2):
    weights = lipsync.vowel_weights(vowel_like(f1, f2), RATE)
    assert weights.shape == (10, 5)
    assert {lipsync.VOWELS[i] for i in weights.argmax(axis=1)} == {vowel}
    np.testing.assert_allclose(weights.sum(axis=1), lipsync.envelope(vowel_like(f1, f2), RATE), atol=1e-6)


def test_lipsync_event_fields():
    audio = (vowel_like(800, 1250, seconds=0.1) * 32767).astype(np.int16)
    fields = lipsync.lipsync(audio, RATE)
    assert fields["frame_ms"] == 20
    assert len(fields["volume"]) == len(fields["vowels"]) == 5
    assert all(len(v) == 5 for v in fields["vowels"])
    json.dumps(fields)  # plain JSON types only


# ------------------------------------------------------------------------------------ Unity sample
UNITY = Path(__file__).resolve().parent.parent / "clients" / "unity"


STUBS = UNITY / "Stubs~" / "ApiStubs.cs"  # UnityEngine, NativeWebSocket, Newtonsoft, UniVRM10 signatures
needs_mcs = pytest.mark.skipif(
    shutil.which("mcs") is None, reason="needs Mono's C# compiler (apt install mono-mcs)"
)


def compile_unity(tmp_path: Path, scripts: list[Path], *defines: str) -> subprocess.CompletedProcess:
    """Compile the scripts against the API stubs with Mono's mcs (warnings are errors)."""
    command = ["mcs", "-target:library", "-warnaserror+", f"-out:{tmp_path / 'koe.dll'}"]
    command += [f"-define:{name}" for name in defines] + [str(s) for s in scripts] + [str(STUBS)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@needs_mcs
@pytest.mark.parametrize("defines", [(), ("UNITY_WEBGL",)], ids=["desktop", "webgl"])
def test_unity_scripts_compile_against_the_library_apis(tmp_path, defines):
    scripts = sorted(UNITY.glob("*.cs"))
    assert [s.name for s in scripts] == [
        "KoeAudioPlayer.cs",
        "KoeClient.cs",
        "KoeMicrophone.cs",
        "KoeVrmFace.cs",
    ]
    result = compile_unity(tmp_path, scripts, *defines)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_mcs
def test_unity_compile_check_catches_a_wrong_library_call(tmp_path):
    broken = tmp_path / "KoeClient.cs"
    broken.write_text((UNITY / "KoeClient.cs").read_text().replace("socket.SendText(", "socket.SendTxt("))
    others = [s for s in sorted(UNITY.glob("*.cs")) if s.name != "KoeClient.cs"]
    result = compile_unity(tmp_path, [broken, *others])
    assert result.returncode != 0 and "does not contain a definition for `SendTxt'" in result.stderr


def test_unity_client_uses_the_protocol_constants():
    source = (UNITY / "KoeClient.cs").read_text()
    assert f"HeaderBytes = {p.HEADER.size};" in source
    assert f"KindSpeech = {p.KIND_SPEECH};" in source and f"KindMic = {p.KIND_MIC};" in source
    assert f"FlagLast = {p.FLAG_LAST};" in source
