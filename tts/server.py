"""`koe tts-serve`: an HTTP server that speaks the GPT-SoVITS `api_v2` protocol.

Clients written for the official `api_v2.py` (SillyTavern, Open-LLM-VTuber, ...) work unchanged:
the same endpoints (`/tts` GET and POST, `/set_gpt_weights`, `/set_sovits_weights`,
`/set_refer_audio`, `/control`), field names, types and defaults, the same validation messages,
status codes, content types (`audio/wav|raw|ogg|aac`) and framing (spec 7.1, 7.2):

* streaming_mode 0: one body with a Content-Length (complete 44-byte-header WAV, raw PCM16,
  an Ogg Vorbis file from soundfile, or ADTS AAC from the ffmpeg binary);
* streaming_mode 1/true (one piece per sentence batch), 2 (token chunks, silence-aware) and 3 (fixed
  token chunks): HTTP chunked, one chunk per piece the engine yields; WAV streams start with a
  44-byte header chunk whose RIFF / data sizes are those of an empty file (36 / 0); Ogg and AAC
  pieces are encoded independently and concatenated.

Where the official server misbehaves, this one deliberately differs:

* Invalid input is rejected with HTTP 400 and a JSON reason before any audio is sent, in every
  streaming mode. The official server returns the streaming response before its pipeline runs, so a
  missing reference file, a reference outside 3-10 s, a language the pipeline rejects or empty text
  arrive after "200 OK" as an empty, aborted stream. Here the engine's `check()` runs and the first
  audio piece is synthesised before the status line goes out; any failure up to then is a 400
  `{"message": "tts failed", "Exception": "<reason>"}` (the official mode-0 shape). A failure after
  audio has started still ends the stream early, without the terminating chunk, so clients notice.
* `top_k` < 1 is a 400 (the official server answers 200 with one second of 16 kHz silence).
* GET `/tts` without `text_lang` or `prompt_lang` is a 400 naming the field (the official server
  crashes with a 500 "Internal Server Error").
* A failed synthesis in mode 0 is a 400 `tts failed` with the reason, never a 200 with silence.
* Switching weights invalidates cached prompt features (the engine's job: the official server keeps
  prompt tokens extracted by the previous model for the last reference).
* The `tts_infer.yaml` the server was started with is never rewritten when weights change.
* `/control?command=exit|restart` answers `{"message": ...}` before it acts (the official server
  kills itself mid-request); unknown commands answer `null` like the official one.

The engine is any object with the `tts.pipeline.TTSPipeline` contract: `version`, `sample_rate`,
`languages`, `set_gpt_weights`, `set_sovits_weights`, `prepare_reference`, `check(params)` and
`run(params)` yielding `(sample_rate, int16 array)` pieces. Model work runs in worker threads so
the event loop stays responsive, and one lock serialises synthesis and weight switching, like the
single pipeline of the official server.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

import anyio
import anyio.to_thread
import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agent.errors import KoeError

log = logging.getLogger(__name__)

MEDIA_TYPES = ("wav", "raw", "ogg", "aac")
SPLIT_METHODS = ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5")
WAV_HEADER_BYTES = 44

Piece = tuple[int, np.ndarray]  # (sample rate, int16 mono samples)


class Engine(Protocol):
    """What the server needs from the TTS engine (the `tts.pipeline.TTSPipeline` contract)."""

    version: str
    sample_rate: int
    languages: Any  # a container of accepted lower-case language codes

    def set_gpt_weights(self, path: str) -> None: ...
    def set_sovits_weights(self, path: str) -> None: ...
    def prepare_reference(self, path: str) -> None: ...
    def check(self, params: dict) -> None: ...
    def run(self, params: dict) -> Iterator[Piece]: ...


# ------------------------------------------------------------------------------------ request model
class TTSRequest(BaseModel):
    """The `/tts` fields with the official names, types and defaults (spec 7.1); extras are ignored."""

    model_config = ConfigDict(extra="ignore")

    text: str | None = None
    text_lang: str | None = None
    ref_audio_path: str | None = None
    aux_ref_audio_paths: list[str] | None = None
    prompt_text: str = ""
    prompt_lang: str | None = None
    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    text_split_method: str = "cut5"
    batch_size: int = 1
    batch_threshold: float = 0.75
    split_bucket: bool = True
    speed_factor: float = 1.0
    fragment_interval: float = 0.3
    seed: int = -1
    media_type: str = "wav"
    streaming_mode: bool | int = False
    parallel_infer: bool = True
    repetition_penalty: float = 1.35
    sample_steps: int = 32
    super_sampling: bool = False
    overlap_length: int = 2
    min_chunk_length: int = 16


def validation_message(req: TTSRequest, version: str, languages) -> str | None:
    """The official checks in the official order; the first failure's message, or None."""
    if not req.ref_audio_path:
        return "ref_audio_path is required"
    if not req.text:
        return "text is required"
    for name in ("text_lang", "prompt_lang"):
        value = getattr(req, name)
        if not value:
            return f"{name} is required"
        if value.lower() not in languages:
            return f"{name}: {value} is not supported in version {version}"
    if req.media_type not in MEDIA_TYPES:
        return f"media_type: {req.media_type} is not supported"
    if req.text_split_method not in SPLIT_METHODS:
        return f"text_split_method:{req.text_split_method} is not supported"
    if req.streaming_mode not in (0, 1, 2, 3):
        return "the value of streaming_mode must be 0, 1, 2, 3(int) or true/false(bool)"
    return None


def pipeline_params(req: TTSRequest) -> dict:
    """The `TTS.run` input dict: request fields plus the flags that `streaming_mode` stands for."""
    mode = int(req.streaming_mode)
    params = req.model_dump(exclude={"media_type", "streaming_mode"})
    params["aux_ref_audio_paths"] = list(req.aux_ref_audio_paths or [])
    params["return_fragment"] = mode == 1
    params["streaming_mode"] = mode in (2, 3)
    params["fixed_length_chunk"] = mode == 3
    return params


def fastapi_style_422(exc: ValidationError, location: str) -> JSONResponse:
    """Type errors as FastAPI reports them: 422 `{"detail": [{type, loc, msg, input}, ...]}`."""
    detail = json.loads(exc.json(include_url=False))
    for error in detail:
        error["loc"] = [location, *error["loc"]]
    return JSONResponse({"detail": detail}, status_code=422)


# ------------------------------------------------------------------------------------ audio bodies
def wav_header(sample_rate: int, data_bytes: int) -> bytes:
    """A 44-byte RIFF/WAVE header for 16-bit mono PCM holding `data_bytes` of samples."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        data_bytes,
    )


def encode_ogg(sample_rate: int, audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="OGG", subtype="VORBIS")
    return buffer.getvalue()


def encode_aac(sample_rate: int, audio: np.ndarray) -> bytes:
    """ADTS AAC-LC from the ffmpeg binary, like the official server."""
    if shutil.which("ffmpeg") is None:
        raise KoeError("media_type aac needs the ffmpeg program on the server (e.g. `apt install ffmpeg`)")
    command = [
        "ffmpeg", "-hide_banner", "-loglevel", "error",
        "-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
        "-c:a", "aac", "-b:a", "192k", "-vn", "-f", "adts", "pipe:1",
    ]  # fmt: skip
    result = subprocess.run(command, input=audio.astype("<i2").tobytes(), capture_output=True, check=False)
    if result.returncode != 0:
        raise KoeError(f"ffmpeg could not encode AAC: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def encode_piece(media_type: str, sample_rate: int, audio: np.ndarray) -> bytes:
    """One piece as sent inside a stream (WAV pieces are raw PCM after the stream's header)."""
    if len(audio) == 0:
        return b""
    if media_type in ("wav", "raw"):
        return np.asarray(audio, dtype="<i2").tobytes()
    if media_type == "ogg":
        return encode_ogg(sample_rate, audio)
    return encode_aac(sample_rate, audio)


def encode_body(media_type: str, sample_rate: int, audio: np.ndarray) -> bytes:
    """A whole non-streaming body."""
    data = encode_piece(media_type, sample_rate, audio)
    return wav_header(sample_rate, len(data)) + data if media_type == "wav" else data


def tts_failed(exc: Exception) -> JSONResponse:
    """The official shape of a synthesis failure, with our reason."""
    if isinstance(exc, KoeError):
        log.warning("tts failed: %s", exc)
    else:
        log.error("tts failed", exc_info=exc)
    return JSONResponse({"message": "tts failed", "Exception": str(exc)}, status_code=400)


def collect(pieces: Iterator[Piece]) -> Piece:
    """All pieces of a non-streaming run as one (the official mode 0 yields exactly one)."""
    parts = list(pieces)
    if not parts:
        raise KoeError("the engine produced no audio for this text")
    return parts[0][0], np.concatenate([np.asarray(audio, dtype=np.int16) for _, audio in parts])


# ------------------------------------------------------------------------------------ synthesis
class Synthesis:
    """One `/tts` answer: checks, synthesises and sends it, holding the engine lock throughout.

    An ASGI app of its own (the endpoint returns it) so that the lock and the engine's generator
    live exactly as long as the answer, whether it ends normally, with an error or a hang-up.
    """

    def __init__(self, engine: Engine, lock: anyio.Lock, params: dict, media_type: str, mode: int):
        self.engine, self.lock, self.params = engine, lock, params
        self.media_type, self.mode = media_type, mode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.lock:
            self._pieces: Iterator[Piece] | None = None
            try:
                response = await self._respond()
                await response(scope, receive, send)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_close, self._pieces)

    async def _respond(self) -> Response:
        try:
            await anyio.to_thread.run_sync(self.engine.check, self.params)
            self._pieces = pieces = self.engine.run(self.params)  # a generator: nothing runs yet
            if self.mode == 0:
                rate, audio = await anyio.to_thread.run_sync(collect, pieces)
                body = await anyio.to_thread.run_sync(encode_body, self.media_type, rate, audio)
                return Response(body, media_type=f"audio/{self.media_type}")
            # The first piece is made before the status line goes out, so that everything that can
            # fail before audio exists becomes a 400 instead of an aborted 200.
            first = await anyio.to_thread.run_sync(self._next_encoded, pieces)
        except Exception as exc:  # noqa: BLE001 - every failure before audio is the client's 400
            return tts_failed(exc)
        return StreamingResponse(self._stream(first, pieces), media_type=f"audio/{self.media_type}")

    def _next_encoded(self, pieces: Iterator[Piece]) -> tuple[int, bytes] | None:
        piece = next(pieces, None)
        if piece is None:
            return None
        rate, audio = piece
        return rate, encode_piece(self.media_type, rate, audio)

    async def _stream(self, first: tuple[int, bytes] | None, pieces: Iterator[Piece]) -> AsyncIterator[bytes]:
        if self.media_type == "wav":
            rate = first[0] if first else self.engine.sample_rate
            yield wav_header(rate, 0)  # sizes of an empty file: clients read until the end
        encoded = first
        while encoded is not None:
            yield encoded[1]
            try:
                encoded = await anyio.to_thread.run_sync(self._next_encoded, pieces)
            except Exception as exc:
                # Raising after the 200 makes the server drop the connection without the final
                # chunk: the only way HTTP/1.1 lets a client tell a cut stream from a finished one.
                log.error("synthesis failed after the stream started, ending it early: %s", exc)
                raise


def _close(pieces: Iterator[Piece] | None) -> None:
    close = getattr(pieces, "close", None)
    if close is not None:
        close()


# ------------------------------------------------------------------------------------ endpoints
def create_app(
    engine: Engine,
    *,
    on_exit: Callable[[], None] | None = None,
    on_restart: Callable[[], None] | None = None,
) -> Starlette:
    """The api_v2 application around one engine; `on_exit` / `on_restart` serve `/control`."""
    lock = anyio.Lock()
    on_exit = on_exit or _terminate_self
    on_restart = on_restart or _reexec_self

    async def tts(request: Request) -> Response:
        if request.method == "GET":
            raw: Any = dict(request.query_params)
            raw.pop("aux_ref_audio_paths", None)  # not expressible as a query list (as officially)
            location = "query"
        else:
            location = "body"
            try:
                raw = json.loads(await request.body())
            except ValueError as exc:
                detail = [
                    {"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error", "input": {}}
                ]
                log.debug("invalid JSON body: %s", exc)
                return JSONResponse({"detail": detail}, status_code=422)
        try:
            req = TTSRequest.model_validate(raw)
        except ValidationError as exc:
            return fastapi_style_422(exc, location)
        if request.method == "GET":  # GET lower-cases the codes; POST passes them on as sent
            req.text_lang = req.text_lang.lower() if req.text_lang else req.text_lang
            req.prompt_lang = req.prompt_lang.lower() if req.prompt_lang else req.prompt_lang
        message = validation_message(req, engine.version, engine.languages)
        if message is not None:
            return JSONResponse({"message": message}, status_code=400)
        return Synthesis(engine, lock, pipeline_params(req), req.media_type, int(req.streaming_mode))

    def weights_endpoint(switch: Callable[[Engine, str], None], kind: str):
        async def endpoint(request: Request) -> Response:
            path = request.query_params.get("weights_path")
            if not path:
                return JSONResponse({"message": f"{kind} weight path is required"}, status_code=400)
            try:
                async with lock:
                    await anyio.to_thread.run_sync(switch, engine, path)
            except Exception as exc:  # noqa: BLE001 - the old models stay loaded; tell the client why
                log.warning("change %s weight failed: %s", kind, exc)
                return JSONResponse(
                    {"message": f"change {kind} weight failed", "Exception": str(exc)}, status_code=400
                )
            log.info("%s weights now %s (version %s)", kind, path, engine.version)
            return JSONResponse({"message": "success"})

        return endpoint

    async def set_refer_audio(request: Request) -> Response:
        path = request.query_params.get("refer_audio_path")
        try:
            if not path:
                raise KoeError("refer_audio_path is required")
            async with lock:
                await anyio.to_thread.run_sync(engine.prepare_reference, path)
        except Exception as exc:  # noqa: BLE001
            log.warning("set refer audio failed: %s", exc)
            return JSONResponse({"message": "set refer audio failed", "Exception": str(exc)}, status_code=400)
        return JSONResponse({"message": "success"})

    async def control(request: Request) -> Response:
        command = request.query_params.get("command")
        if not command:
            return JSONResponse({"message": "command is required"}, status_code=400)
        actions = {"exit": ("exiting", on_exit), "restart": ("restarting", on_restart)}
        if command not in actions:
            return JSONResponse(None)
        message, action = actions[command]
        log.info("/control: %s", message)
        return JSONResponse({"message": message}, background=BackgroundTask(action))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    routes = [
        Route("/tts", tts, methods=["GET", "POST"]),
        Route("/set_gpt_weights", weights_endpoint(lambda e, p: e.set_gpt_weights(p), "gpt")),
        Route("/set_sovits_weights", weights_endpoint(lambda e, p: e.set_sovits_weights(p), "sovits")),
        Route("/set_refer_audio", set_refer_audio),
        Route("/control", control),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down gracefully


def _reexec_self() -> None:
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
