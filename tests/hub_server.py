"""A small HTTP server on 127.0.0.1 that serves files in the Hugging Face hub's URL layout.

`GET/HEAD /{owner}/{repo}/resolve/{revision}/{path}` with the headers huggingface_hub reads
(X-Repo-Commit, ETag, Content-Length), plain URL paths (`static`, for archive downloads), Range
requests (206) on both, and an injectable fault: cut a transfer after N bytes once. Point
HF_ENDPOINT at `hub.url`.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROUTE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")


class LoopbackHub:
    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.static: dict[str, bytes] = {}  # plain URL path -> bytes (archives for source = "url")
        self.cut_after: dict[str, int] = {}  # repo file path or static URL path -> bytes sent before the cut
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo: str, path: str, data: bytes) -> str:
        self.files[(repo, path)] = data
        return hashlib.sha256(data).hexdigest()

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                match = ROUTE.match(self.path.split("?")[0])
                range_header = self.headers.get("Range")
                hub.requests.append((self.command, self.path, range_header))
                if self.path in hub.static:
                    self._send(hub.static[self.path], self.path, range_header, body)
                    return
                if not match or (match["repo"], match["path"]) not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._send(hub.files[(match["repo"], match["path"])], match["path"], range_header, body)

            def _send(self, data: bytes, key: str, range_header: str | None, body: bool):
                start = 0
                if range_header:
                    start = int(re.match(r"bytes=(\d+)-", range_header).group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)  # harmless on plain URLs
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not body:
                    return
                cut = hub.cut_after.pop(key, None) if not range_header else None
                if cut is not None:
                    self.wfile.write(data[start : start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(data[start:])

        return Handler
