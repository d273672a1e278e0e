"""Test helpers for the api_v2 server: a stand-in engine, a server thread and a raw HTTP/1.1 client.

The stand-in implements the `tts.pipeline.TTSPipeline` contract with synthetic audio (a tone per
sentence), so the server's protocol can be tested without models, like livekit's fake engines.
The raw client reads answers straight from the socket, so HTTP chunk boundaries and a stream that
ends without its terminating chunk are visible.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import uvicorn

from agent.errors import KoeError

V2_LANGUAGES = ("auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko")
V1_LANGUAGES = ("auto", "en", "zh", "ja", "all_zh", "all_ja")
STREAM_CHUNK_SAMPLES = 3200  # the stand-in's token-chunk size in streaming modes 2 and 3


def write_weights(path: Path, version: str) -> Path:
    """A stand-in weights file: JSON naming the model version it 'contains'."""
    path.write_text(json.dumps({"version": version}), encoding="utf-8")
    return path


def write_reference(path: Path, seconds: float, rate: int = 32000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), rate, subtype="PCM_16")
    return path


class StandInEngine:
    """The TTSPipeline contract with a tone instead of speech (length follows the text)."""

    def __init__(self, sample_rate: int = 32000):
        self.sample_rate = sample_rate
        self._guard = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Back to a freshly loaded v2 model with nothing recorded (lets tests share one server).

        Waits for a run that a previous test abandoned (the server notices a hang-up at its next piece).
        """
        deadline = time.monotonic() + 10
        while getattr(self, "active_runs", 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.version = "v2"
        self.languages = V2_LANGUAGES
        self.piece_delay_s = 0.0
        self.fail_after_pieces: int | None = None  # raise instead of yielding piece number N
        self.weights_generation = 0  # bumped by every successful switch
        self.prompt_features: dict[str, int] = {}  # reference -> generation its features came from
        self.runs: list[dict] = []  # params of every run, in order
        self.events: list[str] = []  # "run-start", "run-end", "switch" in the order they happened
        self.active_runs = 0
        self.max_active_runs = 0
        self.yielded: list[np.ndarray] = []  # every piece sent out, for comparison

    # -------------------------------------------------------------------------------- weights
    def _load_version(self, path: str) -> str:
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))["version"]
        except FileNotFoundError:
            raise KoeError(f"weights file not found: {path}") from None
        except (ValueError, KeyError):
            raise KoeError(f"not a weights file: {path}") from None

    def set_gpt_weights(self, path: str) -> None:
        self._load_version(path)
        self._switched()

    def set_sovits_weights(self, path: str) -> None:
        self.version = self._load_version(path)
        self.languages = V1_LANGUAGES if self.version == "v1" else V2_LANGUAGES
        self._switched()

    def _switched(self) -> None:
        self.weights_generation += 1
        self.prompt_features.clear()
        self.events.append("switch")

    # -------------------------------------------------------------------------------- reference
    def prepare_reference(self, path: str) -> None:
        if not Path(path).is_file():
            raise KoeError(f"reference audio not found: {path}")
        seconds = sf.info(path).duration
        if not 3.0 <= seconds <= 10.0:
            raise KoeError(f"reference audio {path} is {seconds:.1f} s long; it must be 3-10 s")
        self.prompt_features.setdefault(path, self.weights_generation)

    def check(self, params: dict) -> None:
        for path in [params["ref_audio_path"], *params["aux_ref_audio_paths"]]:
            if not Path(path).is_file():
                raise KoeError(f"reference audio not found: {path}")
        seconds = sf.info(params["ref_audio_path"]).duration
        if not 3.0 <= seconds <= 10.0:
            raise KoeError(f"reference audio is {seconds:.1f} s long; it must be 3-10 s")
        for name in ("text_lang", "prompt_lang"):
            if params[name] not in self.languages:
                raise KoeError(f"{name} {params[name]!r} is not supported by the {self.version} model")
        if not re.sub(r"[\s.,!?;:]", "", params["text"]):
            raise KoeError("the text has nothing to speak after preprocessing")
        if params["top_k"] < 1:
            raise KoeError(f"top_k must be at least 1, got {params['top_k']}")

    # -------------------------------------------------------------------------------- synthesis
    def run(self, params: dict) -> Iterator[tuple[int, np.ndarray]]:
        with self._guard:
            self.active_runs += 1
            self.max_active_runs = max(self.max_active_runs, self.active_runs)
        self.events.append("run-start")
        self.runs.append(dict(params))
        try:
            self.prepare_reference(params["ref_audio_path"])
            for count, piece in enumerate(self._pieces(params)):
                if self.fail_after_pieces is not None and count >= self.fail_after_pieces:
                    raise RuntimeError("stand-in synthesis failure")
                time.sleep(self.piece_delay_s)
                self.yielded.append(piece)
                yield self.sample_rate, piece
        finally:
            self.events.append("run-end")
            with self._guard:
                self.active_runs -= 1

    def _pieces(self, params: dict) -> Iterator[np.ndarray]:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", params["text"].strip()) if s]
        pause = np.zeros(int(self.sample_rate * params["fragment_interval"]), dtype=np.int16)
        tones = [self._tone(s, params["speed_factor"]) for s in sentences]
        if params["streaming_mode"]:
            for tone in tones:
                step = STREAM_CHUNK_SAMPLES
                for start in range(0, len(tone), step):
                    yield tone[start : start + step]
                    if not params["fixed_length_chunk"]:
                        step = (
                            STREAM_CHUNK_SAMPLES * 2 if step == STREAM_CHUNK_SAMPLES else STREAM_CHUNK_SAMPLES
                        )
                yield pause
        elif params["return_fragment"]:
            for tone in tones:
                yield np.concatenate([tone, pause])
        else:
            yield np.concatenate([part for tone in tones for part in (tone, pause)])

    def _tone(self, sentence: str, speed: float) -> np.ndarray:
        n = int(len(sentence) * 0.02 * self.sample_rate / speed)
        t = np.arange(n) / self.sample_rate
        return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


# ------------------------------------------------------------------------------------ server thread
@contextmanager
def serve_in_thread(app) -> Iterator[int]:
    """Run `app` on uvicorn on a free 127.0.0.1 port in a background thread; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# ------------------------------------------------------------------------------------ raw client
@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # de-chunked
    chunked: bool
    chunk_sizes: list[int] = field(default_factory=list)
    chunked_complete: bool | None = None  # chunked answers: did the zero-length chunk arrive?

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def json(self):
        return json.loads(self.body)


def raw_request(
    port: int, method: str, target: str, body: bytes | None = None, timeout_s: float = 120.0
) -> RawResponse:
    """Send one HTTP/1.1 request with `Connection: close` and read the answer until the server closes."""
    head = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        data = bytearray()
        while chunk := conn.recv(65536):
            data += chunk
    return parse_response(bytes(data))


def parse_response(data: bytes) -> RawResponse:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() != "chunked":
        length = headers.get("content-length")
        return RawResponse(status, headers, rest[: int(length)] if length else rest, chunked=False)
    body, sizes, complete = bytearray(), [], False
    while True:
        size_line, sep, after = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            complete = True
            break
        if len(after) < size + 2:  # the connection ended inside this chunk
            body += after[:size]
            break
        body += after[:size]
        sizes.append(size)
        rest = after[size + 2 :]
    return RawResponse(
        status, headers, bytes(body), chunked=True, chunk_sizes=sizes, chunked_complete=complete
    )


def body_kind(response: RawResponse) -> str:
    """What the body is, by the transcript's rules."""
    body = response.body
    if (response.content_type or "").startswith("application/json"):
        return "json"
    if not body:
        return "empty"
    if body[:4] == b"RIFF":
        return "wav"
    if body[:4] == b"OggS":
        return "ogg"
    if len(body) >= 2 and body[0] == 0xFF and body[1] & 0xF6 == 0xF0:
        return "aac_adts"
    return "raw"


def wav_header_fields(body: bytes) -> dict:
    """The header fields of a 44-byte-header WAV (the transcript's `wav_header`)."""
    return {
        "riff_size": int.from_bytes(body[4:8], "little"),
        "fmt_tag": int.from_bytes(body[20:22], "little"),
        "channels": int.from_bytes(body[22:24], "little"),
        "sample_rate": int.from_bytes(body[24:28], "little"),
        "bits": int.from_bytes(body[34:36], "little"),
        "data_size_field": int.from_bytes(body[40:44], "little"),
    }
