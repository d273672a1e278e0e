"""The `api_v2` TTS backend: synthesis on an existing GPT-SoVITS api_v2 server (or `koe tts-serve`).

`ApiV2Client.run(params)` takes the same `TTS.run` input dict as the in-process engine and yields
the same `(sample_rate, int16 array)` pieces, read from a streaming POST `/tts` as they arrive.
`return_fragment` / `streaming_mode` / `fixed_length_chunk` pick the server's streaming_mode 1 / 2
/ 3; the agent asks for 2 (token chunks) for the lowest latency.

The audio is requested as WAV rather than raw PCM: the 44-byte header costs nothing and carries the
sample rate, which raw PCM would leave to a guess from the model version (32 kHz for v1/v2/Pro,
24 kHz for v3, 48 kHz for v4). The header's size fields are ignored (a stream's header says 0); the
body is read to its end.

Every failure becomes a `KoeError` that says what happened: an unreachable server, a 400/422 with
the server's reason, a stream that ends without its terminating chunk (the official server's only
sign that synthesis failed after it had answered 200), or 16 kHz audio (the official server's
error silence: no model outputs 16 kHz).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2 as httpx
import numpy as np

from agent.errors import KoeError

Piece = tuple[int, np.ndarray]

# The `TTS.run` inputs that are api_v2 request fields under the same name.
REQUEST_FIELDS = (
    "text", "text_lang", "ref_audio_path", "aux_ref_audio_paths", "prompt_text", "prompt_lang",
    "top_k", "top_p", "temperature", "text_split_method", "batch_size", "batch_threshold",
    "split_bucket", "speed_factor", "fragment_interval", "seed", "parallel_infer",
    "repetition_penalty", "sample_steps", "super_sampling", "overlap_length", "min_chunk_length",
)  # fmt: skip
ERROR_SILENCE_RATE = 16000


def request_body(params: dict) -> dict:
    """The POST `/tts` JSON for a `TTS.run` input dict."""
    body = {name: params[name] for name in REQUEST_FIELDS if name in params}
    if params.get("streaming_mode"):
        body["streaming_mode"] = 3 if params.get("fixed_length_chunk") else 2
    else:
        body["streaming_mode"] = 1 if params.get("return_fragment") else 0
    body["media_type"] = "wav"
    return body


class WavStreamReader:
    """Turns the bytes of a (streamed) PCM16 mono WAV into `(rate, int16 array)` pieces."""

    def __init__(self) -> None:
        self.sample_rate: int | None = None
        self._pending = b""  # header bytes not parsed yet, or an odd trailing byte

    def feed(self, data: bytes) -> np.ndarray | None:
        self._pending += data
        if self.sample_rate is None and not self._parse_header():
            return None
        usable = len(self._pending) - len(self._pending) % 2
        if usable == 0:
            return None
        samples = np.frombuffer(self._pending[:usable], dtype="<i2").astype(np.int16)
        self._pending = self._pending[usable:]
        return samples

    def _parse_header(self) -> bool:
        """Walk the RIFF chunks up to `data`; False while more bytes are needed."""
        data = self._pending
        if len(data) < 12:
            return False
        if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
            raise KoeError(f"the api_v2 server sent audio/wav that is not a WAV file (starts {data[:12]!r})")
        offset, fmt = 12, None
        while len(data) >= offset + 8:
            chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
            if chunk_id == b"data":
                break
            if len(data) < offset + 8 + size:
                return False
            if chunk_id == b"fmt ":
                fmt = struct.unpack("<HHIIHH", data[offset + 8 : offset + 24])
            offset += 8 + size + size % 2
        else:
            return False
        if fmt is None:
            raise KoeError("the api_v2 server sent a WAV without a fmt chunk")
        tag, channels, rate, _, _, bits = fmt
        if (tag, channels, bits) != (1, 1, 16):
            raise KoeError(
                f"the api_v2 server sent WAV format {tag}, {channels} ch, {bits} bit; expected PCM16 mono"
            )
        if rate == ERROR_SILENCE_RATE:
            raise KoeError(
                "the api_v2 server sent 16 kHz audio, which GPT-SoVITS sends as silence when synthesis "
                "fails (e.g. top_k < 1); see the server's log"
            )
        self.sample_rate = rate
        self._pending = data[offset + 8 :]
        return True


class ApiV2Client:
    """A GPT-SoVITS api_v2 server as koe's TTS engine (config `tts.backend = "api_v2"`)."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0):
        """`timeout_s` bounds connecting and every wait for the next bytes of an answer."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self._stop = False
        # The output rate of the served model is only known from the first answer's WAV header;
        # until then assume 32 kHz (v1, v2, v2Pro, v2ProPlus).
        self.sample_rate = 32000

    def stop(self) -> None:
        """Stop reading the answer being streamed (cancellation); the connection is closed."""
        self._stop = True

    def check(self, params: dict) -> None:
        """Nothing to check locally: the server validates and answers 400 with its reason."""

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ApiV2Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -------------------------------------------------------------------------------- synthesis
    def run(self, params: dict) -> Iterator[Piece]:
        """Synthesise on the server; pieces are yielded as the server sends them."""
        reader = WavStreamReader()
        self._stop = False
        with self._errors_mapped():
            with self._client.stream("POST", "/tts", json=request_body(params)) as response:
                if response.status_code != 200:
                    response.read()
                    raise KoeError(self._describe_failure(response))
                content_type = response.headers.get("content-type", "")
                if content_type != "audio/wav":
                    raise KoeError(
                        f"the api_v2 server at {self.base_url} answered {content_type!r}, not audio/wav"
                    )
                for data in response.iter_bytes():
                    if self._stop:
                        return
                    samples = reader.feed(data)
                    if samples is not None:
                        self.sample_rate = reader.sample_rate
                        yield reader.sample_rate, samples
        if reader.sample_rate is None:
            raise KoeError(f"the api_v2 server at {self.base_url} ended the answer before the WAV header")

    # -------------------------------------------------------------------------------- state
    def set_gpt_weights(self, path: str) -> None:
        self._get("/set_gpt_weights", weights_path=path)

    def set_sovits_weights(self, path: str) -> None:
        self._get("/set_sovits_weights", weights_path=path)

    def prepare_reference(self, path: str) -> None:
        """Make the server cache the reference's prompt features (`/set_refer_audio`)."""
        self._get("/set_refer_audio", refer_audio_path=path)

    def _get(self, path: str, **query: str) -> None:
        with self._errors_mapped():
            response = self._client.get(path, params=query)
        if response.status_code != 200:
            raise KoeError(self._describe_failure(response))

    # -------------------------------------------------------------------------------- errors
    def _describe_failure(self, response: httpx.Response) -> str:
        where = f"the api_v2 server at {self.base_url}"
        try:
            payload = response.json()
        except ValueError:
            text = response.text.strip()[:200]
            return f"{where} answered HTTP {response.status_code} to {response.request.url.path}: {text}"
        if isinstance(payload, dict) and "message" in payload:
            reason = payload["message"] + (f": {payload['Exception']}" if payload.get("Exception") else "")
            return f"{where} rejected the request: {reason}"
        if isinstance(payload, dict) and isinstance(payload.get("detail"), list):
            fields = "; ".join(
                f"{'.'.join(str(p) for p in err.get('loc', [])[1:])}: {err.get('msg')}"
                for err in payload["detail"]
            )
            return f"{where} rejected request fields: {fields}"
        return f"{where} answered HTTP {response.status_code}: {payload}"

    @contextmanager
    def _errors_mapped(self) -> Iterator[None]:
        """Transport errors as KoeErrors that say what to check."""
        where = f"the api_v2 server at {self.base_url}"
        try:
            yield
        except httpx.ConnectError as exc:
            raise KoeError(
                f"cannot connect to {where} ({exc}); start it (e.g. `koe tts-serve`) or fix [tts] api_v2_url"
            ) from None
        except httpx.TimeoutException:
            raise KoeError(f"{where} sent nothing for {self.timeout_s:g} s (timeout)") from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise KoeError(
                f"{where} cut the audio stream off before its end ({exc}): synthesis failed on the "
                "server; its log has the reason"
            ) from None
        except httpx.HTTPError as exc:
            raise KoeError(f"request to {where} failed: {exc}") from None
