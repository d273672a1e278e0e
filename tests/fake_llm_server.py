"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions streaming protocol.

Each test scripts the replies (`server.script(Reply(...), ...)`); every POST /v1/chat/completions takes
the next one (when the script is empty it answers "You said: <last user message>"). Faults: an HTTP
error status (with Retry-After), a slow first token, a slow stream, and a connection cut after N chunks
(chunked transfer encoding, so the client sees a broken body, not a short one). GET /v1/models lists
the model. The server records every request body and how many streams the client abandoned.

    with FakeLlmServer() as server:
        server.script(Reply(status=500), Reply("Hello there."))
        config = LlmConfig(base_url=server.url, model="fake-model")
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "fake-model"
TOKEN = re.compile(
    r"[\u3040-\u30ff\u3400-\u9fff\uff00-\uffef]|\s*[^\s\u3040-\u30ff\u3400-\u9fff\uff00-\uffef]+|\s+"
)


def tokenize(text: str) -> list[str]:
    """Word-sized chunks with their leading space (like BPE tokens); one chunk per CJK character."""
    return TOKEN.findall(text)


@dataclass
class Reply:
    """One scripted answer: the text (a string is cut into word tokens) and the faults to inject."""

    text: str | list[str] = "Hello."
    status: int = 200  # != 200: an error response with an OpenAI-style error body
    retry_after_ms: int = 5  # sent with error responses, so the client's backoff stays short in tests
    reasoning: list[str] = field(default_factory=list)  # `reasoning_content` deltas before the text
    first_token_delay_s: float = 0.0  # after the headers, before the first chunk
    token_delay_s: float = 0.0  # between chunks
    cut_after: int | None = None  # drop the connection after this many text chunks
    finish_reason: str = "stop"

    def tokens(self) -> list[str]:
        return tokenize(self.text) if isinstance(self.text, str) else list(self.text)


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # many concurrent clients in the WebSocket tests
    daemon_threads = True


class FakeLlmServer:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[dict] = []  # JSON bodies of chat requests, in order
        self.authorization: list[str | None] = []  # their Authorization headers
        self.abandoned = 0  # streams the client closed before the end
        self.completed = 0  # streams sent to the end
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def __enter__(self) -> FakeLlmServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def _next_reply(self, body: dict) -> Reply:
        with self._lock:
            self.requests.append(body)
            if self.replies:
                return self.replies.pop(0)
        users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
        return Reply(f"You said: {users[-1] if users else ''}.")

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # each SSE event leaves at once, like a real streaming server

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                if self.path.rstrip("/") != "/v1/models":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                models = [{"id": MODEL, "object": "model", "created": 0, "owned_by": "koe-tests"}]
                self._json(200, {"object": "list", "data": models})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                server.authorization.append(self.headers.get("Authorization"))
                reply = server._next_reply(body)
                if reply.status != 200:
                    error = {"message": f"scripted failure {reply.status}", "type": "server_error"}
                    return self._json(
                        reply.status, {"error": error}, {"retry-after-ms": str(reply.retry_after_ms)}
                    )
                try:
                    self._stream(reply, body.get("model", MODEL))
                except (BrokenPipeError, ConnectionResetError):
                    with server._lock:
                        server.abandoned += 1
                    self.close_connection = True

            def _json(self, status: int, data: dict, headers: dict | None = None):
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, reply: Reply, model: str):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                server._sleep(reply.first_token_delay_s)
                self._event(model, {"role": "assistant", "content": ""})
                for part in reply.reasoning:
                    self._event(model, {"reasoning_content": part})
                    server._sleep(reply.token_delay_s)
                for n, token in enumerate(reply.tokens()):
                    if reply.cut_after is not None and n >= reply.cut_after:
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    self._event(model, {"content": token})
                    server._sleep(reply.token_delay_s)
                self._event(model, {}, reply.finish_reason)
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")
                with server._lock:
                    server.completed += 1

            def _event(self, model: str, delta: dict, finish_reason: str | None = None):
                data = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                }
                self._chunk(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())

            def _chunk(self, data: bytes):
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler
