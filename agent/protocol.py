"""The avatar feed's wire format (docs/protocol.md): JSON events, binary audio frames, their validation.

Text frames are JSON objects with a `type`; `parse_client_message` turns one into a typed model or
raises `ProtocolError` with a code and a message that says what was wrong. Binary frames are audio:
a 12-byte little-endian header followed by PCM16 little-endian mono samples.

    offset 0  u8   kind      1 = speech from the server (TTS), 2 = microphone audio from the client
    offset 1  u8   flags     bit 0: last frame of the segment
    offset 2  u16  reserved  0
    offset 4  u32  segment   the segment id (`segment_start.segment`); 0 for microphone audio
    offset 8  u32  sequence  frame number within the segment (microphone: within the connection)
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1
MIC_SAMPLE_RATE = 16000  # microphone audio from clients is always 16 kHz PCM16 mono
AUDIO_RATES = (16000, 22050, 24000, 32000, 44100, 48000)  # rates a client may ask for

KIND_SPEECH = 1
KIND_MIC = 2
FLAG_LAST = 1
HEADER = struct.Struct("<BBHII")

# Capabilities a client announces in `hello`.
CAP_BINARY = "binary_audio"  # can receive binary audio frames (else base64 `audio` events)
CAP_PLAYBACK = "playback_reports"  # sends playback_progress/finished (else the server assumes real time)
CAP_PUSH_TO_TALK = "push_to_talk"  # marks speech with speech_started/stopped (else the server's VAD)


class ProtocolError(Exception):
    """A frame the server cannot use; `code` goes into the `error` event (docs/protocol.md, Errors)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------- client -> server
class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Hello(_Message):
    type: Literal["hello"]
    version: int = Field(ge=1)
    token: str | None = Field(None, max_length=512)
    capabilities: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=32)
    audio_rate: int | None = None  # preferred rate of the speech audio; None = the voice's own rate
    session: str | None = Field(None, max_length=128)  # resume this session
    character: str | None = Field(None, max_length=64)


class TextInput(_Message):
    type: Literal["text_input"]
    text: str = Field(min_length=1, max_length=4000)


class AudioInput(_Message):
    """Microphone audio as base64 PCM16 (the fallback for clients that cannot send binary frames)."""

    type: Literal["audio"]
    data: str = Field(max_length=1 << 20)


class SpeechStarted(_Message):
    type: Literal["speech_started"]


class SpeechStopped(_Message):
    type: Literal["speech_stopped"]


class PlaybackProgress(_Message):
    type: Literal["playback_progress"]
    segment: int = Field(ge=0)
    played_ms: int = Field(ge=0)


class PlaybackFinished(_Message):
    type: Literal["playback_finished"]
    segment: int = Field(ge=0)
    played_ms: int | None = Field(None, ge=0)


class Interrupt(_Message):
    type: Literal["interrupt"]
    segment: int | None = Field(None, ge=0)  # optional last playback position, reported atomically
    played_ms: int | None = Field(None, ge=0)


class SetCharacter(_Message):
    type: Literal["set_character"]
    character: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class Ping(_Message):
    type: Literal["ping"]
    t: float | int | str | None = None  # echoed in `pong`


ClientMessage = Annotated[
    Hello
    | TextInput
    | AudioInput
    | SpeechStarted
    | SpeechStopped
    | PlaybackProgress
    | PlaybackFinished
    | Interrupt
    | SetCharacter
    | Ping,
    Field(discriminator="type"),
]
CLIENT_TYPES = (
    "hello text_input audio speech_started speech_stopped playback_progress playback_finished "
    "interrupt set_character ping"
).split()
_client_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


def parse_client_message(text: str) -> ClientMessage:
    """One JSON text frame from a client as a typed message; `ProtocolError` says what is wrong."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", f"expected a JSON object with a 'type', got {type(data).__name__}")
    kind = data.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind!r} (known: {', '.join(CLIENT_TYPES)})"
        )
    try:
        return _client_adapter.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError("bad_field", f"{kind}: {describe_errors(exc)}") from None


def describe_errors(exc: ValidationError) -> str:
    """`field: problem` for each problem, e.g. `played_ms: Input should be a valid integer (got 'x')`."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"][1:] if p != "type") or "(message)"
        got = repr(error.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        parts.append(f"{where}: {error['msg']} (got {got})")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------- audio frames
@dataclass(frozen=True)
class AudioFrame:
    kind: int
    segment: int
    sequence: int
    samples: np.ndarray  # int16 mono
    last: bool = False


def pack_audio(frame: AudioFrame) -> bytes:
    flags = FLAG_LAST if frame.last else 0
    header = HEADER.pack(frame.kind, flags, 0, frame.segment, frame.sequence)
    return header + frame.samples.astype("<i2", copy=False).tobytes()


def unpack_audio(data: bytes) -> AudioFrame:
    """A binary frame as an `AudioFrame`; `ProtocolError("bad_audio", ...)` if it is not one."""
    if len(data) < HEADER.size:
        raise ProtocolError(
            "bad_audio", f"binary frame of {len(data)} bytes is shorter than the {HEADER.size}-byte header"
        )
    kind, flags, _, segment, sequence = HEADER.unpack_from(data)
    if kind not in (KIND_SPEECH, KIND_MIC):
        raise ProtocolError("bad_audio", f"unknown audio frame kind {kind} (1 = speech, 2 = microphone)")
    payload = memoryview(data)[HEADER.size :]
    if len(payload) % 2:
        raise ProtocolError("bad_audio", f"PCM16 payload has an odd length ({len(payload)} bytes)")
    samples = np.frombuffer(payload, dtype="<i2").astype(np.int16)
    return AudioFrame(kind, segment, sequence, samples, last=bool(flags & FLAG_LAST))


def decode_base64_pcm(data: str) -> np.ndarray:
    """The samples of a base64 `audio` message (PCM16 little-endian mono)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("bad_audio", f"audio.data is not valid base64: {exc}") from None
    if len(raw) % 2:
        raise ProtocolError("bad_audio", f"PCM16 payload has an odd length ({len(raw)} bytes)")
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def encode_base64_pcm(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2", copy=False).tobytes()).decode("ascii")


def event(kind: str, **fields) -> str:
    """A server event as a JSON text frame."""
    return json.dumps({"type": kind, **fields}, ensure_ascii=False, separators=(",", ":"))
