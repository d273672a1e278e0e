"""`koe serve`: the conversation of `koe chat` for a remote avatar, over one WebSocket (docs/protocol.md).

    client --hello--> server --ready-->
    client --text_input / microphone frames--> [VAD -> ASR] -> Turn (LLM -> pieces) -> synthesize
    server --segment_start, lipsync + audio frames, segment_end ... response_end--> client
    client --playback_progress / playback_finished--> what was heard (the history keeps only that)

The server talks to the engines through `Engines` (the LLM stream, `synthesize`, `transcribe`, a VAD
endpointer factory), so tests run it with the fake LLM server and a tone voice, and `koe serve` with the
real ones. Per connection: a token check, an origin allowlist, token-bucket rate limits and a bounded send
queue drained by its own task, so a slow client is warned, then dropped, and never delays another one.
A bad frame gets an `error` event; the connection and its session carry on. Sessions outlive their
connection for `Limits.session_ttl_s`: a `hello` with the session id resumes the conversation.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import mimetypes
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import soxr
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent import protocol as p
from agent.character import Character
from agent.config import LlmConfig, ServerConfig, is_loopback
from agent.conversation import Conversation
from agent.errors import KoeError
from agent.history import HistoryStore, Message
from agent.lipsync import lipsync
from agent.turn import Piece

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
WS_PATH = "/ws"
STATIC_SUFFIXES = (".html", ".js", ".css")
HARD_SIZE_FACTOR = 4  # frames over max_message_bytes get an error; over this many times it, a close (1009)

ChatStream = Callable[[list[dict]], AsyncIterator[str]]
Synthesize = Callable[[Character, str, str | None], AsyncIterator[tuple[int, np.ndarray]]]
Transcribe = Callable[[np.ndarray], Awaitable[str]]  # float32 16 kHz mono -> text


@dataclass
class Engines:
    """What a session talks to. `synthesize(character, text, emotion)` yields (sample_rate, int16) pieces."""

    stream_reply: ChatStream
    synthesize: Synthesize
    sample_rate: int  # the voice's own rate: the audio rate of clients that ask for none
    load_character: Callable[[str], Character]  # id -> Character; KoeError when unknown
    default_character: str = "default"
    transcribe: Transcribe | None = None  # None: microphone audio is refused
    make_endpointer: Callable[[], object] | None = None  # asr.endpointer.Endpointer-like: process(block)
    partial_interval_s: float = 0.0  # > 0: partial transcripts this often while the user speaks


@dataclass
class Limits:
    hello_timeout_s: float = 10.0
    messages_per_s: float = 120.0  # microphone frames alone are 50/s
    message_burst: int = 240
    bytes_per_s: float = 256_000.0  # microphone audio is 32 kB/s
    byte_burst: int = 1 << 20
    send_queue_frames: int = 400  # outgoing frames waiting for a client
    warn_fraction: float = 0.5  # queue fill at which the client gets a `slow_client` warning
    audio_frame_ms: int = 100  # longest audio frame sent
    session_ttl_s: float = 300.0  # a detached session waits this long for a reconnect
    max_sessions: int = 200
    playback_grace_s: float = 10.0  # a client with playback reports that stays silent this long is ignored
    max_utterance_s: float = 30.0  # push-to-talk audio beyond this is dropped
    close_timeout_s: float = 2.0
    # Kernel send buffer per client, kept small so the backlog of a slow client shows in its send queue.
    socket_send_buffer: int = 64 * 1024


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """`Origin` matches an entry exactly, or an entry without a port matches its scheme and host."""
    if "*" in allowed or origin in allowed:
        return True
    try:
        parts = urlsplit(origin)
        bare = f"{parts.scheme}://{parts.hostname}"
        return any(entry == bare for entry in allowed if urlsplit(entry).port is None)
    except ValueError:  # not a URL (a bad port, a broken IPv6 address)
        return False


class TokenBucket:
    """`take(n)` is True while the average stays under `rate` per second with bursts up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.level = burst
        self.updated = time.monotonic()

    def take(self, amount: float = 1.0) -> bool:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
        self.updated = now
        if self.level < amount:
            return False
        self.level -= amount
        return True


@dataclass
class Outgoing:
    payload: str | bytes
    response: int | None = None  # the reply it belongs to: audio of a cut reply is dropped unsent
    audio: bool = False


class Connection:
    """One client socket: limits on what it sends, a bounded queue of what it is sent."""

    def __init__(self, ws: ServerConnection, limits: Limits) -> None:
        self.ws = ws
        self.limits = limits
        self.binary = True
        self.playback_reports = False
        self.push_to_talk = False
        self.audio_rate = 0
        self.messages = TokenBucket(limits.messages_per_s, limits.message_burst)
        self.bytes = TokenBucket(limits.bytes_per_s, limits.byte_burst)
        self.queue: deque[Outgoing] = deque()
        self._wakeup = asyncio.Event()
        self._warned = False
        self._last_rate_error = 0.0
        self.dropped = False

    def send(self, item: Outgoing) -> None:
        """Queue a frame without waiting; a client whose queue overflows is disconnected."""
        if self.dropped:
            return
        if len(self.queue) >= self.limits.send_queue_frames:
            self.drop("slow client: the send queue overflowed")
            return
        if not self._warned and len(self.queue) >= self.limits.send_queue_frames * self.limits.warn_fraction:
            self._warned = True
            queued = len(self.queue)
            log.warning("client %s reads too slowly: %d frames waiting", self.ws.remote_address, queued)
            message = (
                f"the client reads too slowly ({queued} frames waiting); it is dropped when the queue is full"
            )
            self.queue.appendleft(Outgoing(p.event("error", code="slow_client", message=message)))  # next out
        self.queue.append(item)
        self._wakeup.set()

    def send_event(self, kind: str, **fields) -> None:
        self.send(Outgoing(p.event(kind, **fields)))

    def error(self, code: str, message: str) -> None:
        self.send_event("error", code=code, message=message)

    def rate_limited(self) -> None:
        now = time.monotonic()
        if now - self._last_rate_error >= 1.0:  # one notice a second, not one per dropped frame
            self._last_rate_error = now
            self.error("rate_limited", "too many messages or bytes per second: frames are being dropped")

    def drop_audio(self, response: int) -> None:
        self.queue = deque(item for item in self.queue if not (item.audio and item.response == response))

    def drop(self, reason: str) -> None:
        if not self.dropped:
            self.dropped = True
            self.queue.clear()
            log.warning("dropping client %s: %s", self.ws.remote_address, reason)
            asyncio.get_running_loop().create_task(self._close(reason[:120]))

    async def _close(self, reason: str) -> None:
        """Close with 1008; a client too stuck to answer the closing handshake is cut off."""
        try:
            async with asyncio.timeout(self.limits.close_timeout_s):
                await self.ws.close(1008, reason)
        except TimeoutError:
            self.ws.transport.abort()

    async def run_sender(self) -> None:
        with suppress(ConnectionClosed):
            while True:
                while not self.queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                await self.ws.send(self.queue.popleft().payload)
                if (
                    self._warned
                    and len(self.queue) < self.limits.send_queue_frames * self.limits.warn_fraction / 2
                ):
                    self._warned = False


@dataclass
class SegmentPlayback:
    """One spoken piece on its way to the client and back: sent audio, reported playback."""

    segment: int
    piece: Piece
    sent_ms: float = 0.0
    complete: bool = False
    played_ms: float = 0.0
    started_at: float | None = None  # loop time its playback would start in real time (first frame sent)
    timer: asyncio.TimerHandle | None = None

    def report(self, played_ms: float, finished: bool = False) -> None:
        """Playback position of the client; it counts once the whole piece is sent (its length known)."""
        self.played_ms = max(self.played_ms, played_ms)
        if finished or (self.complete and self.played_ms >= self.sent_ms - 1):
            self.piece.heard(1.0)
        elif self.complete and self.sent_ms > 0 and not self.piece.played:
            self.piece.heard(self.played_ms / self.sent_ms)


class Session:
    """One conversation: character, history and the running reply; attached to at most one connection."""

    def __init__(self, server: AvatarServer, session_id: str, character: Character) -> None:
        self.server = server
        self.id = session_id
        self.conversation = server.new_conversation(character, self._stream_with_deltas)
        self.conn: Connection | None = None
        self.expires_at: float | None = None
        self.turn_task: asyncio.Task | None = None
        self._turn_started = False
        self._responses = 0
        self._segments = 0
        self.playback: dict[int, SegmentPlayback] = {}
        self._clock = 0.0  # loop time the audio sent so far ends playing (no playback reports)
        self._endpointer = None
        self._ptt: list[np.ndarray] | None = None  # push-to-talk audio while the user holds the button
        self._asr_lock = asyncio.Lock()
        self._next_partial = 0.0  # stream time of the next partial transcript
        self._background: set[asyncio.Task] = set()

    # ------------------------------------------------------------------------------ output
    def send_event(self, kind: str, *, with_audio: bool = False, **fields) -> None:
        """An event to the attached client (if any); `with_audio` ones of a cut reply are dropped unsent."""
        if self.conn is not None:
            self.conn.send(Outgoing(p.event(kind, **fields), fields.get("response"), with_audio))

    def send_audio(self, segment: int, sequence: int, samples: np.ndarray, response: int, last: bool) -> None:
        conn = self.conn
        if conn is None:
            return
        if conn.binary:
            payload: str | bytes = p.pack_audio(p.AudioFrame(p.KIND_SPEECH, segment, sequence, samples, last))
        else:
            payload = p.event(
                "audio", segment=segment, seq=sequence, last=last, data=p.encode_base64_pcm(samples)
            )
        conn.send(Outgoing(payload, response, audio=True))

    def ready(self, resumed: bool) -> None:
        conn = self.conn
        character = self.character
        self.send_event(
            "ready",
            version=p.PROTOCOL_VERSION,
            session=self.id,
            resumed=resumed,
            audio={"format": "pcm16le", "channels": 1, "rate": conn.audio_rate, "binary": conn.binary},
            mic={"format": "pcm16le", "channels": 1, "rate": p.MIC_SAMPLE_RATE, "frame_ms": 20},
            character={
                "id": character.id,
                "name": character.name,
                "default_emotion": character.default_emotion,
                "expressions": {tag: e.expression for tag, e in character.emotions.items()},
            },
            history=[{"role": m.role, "text": m.text} for m in self.history[-20:]],
        )
        self.send_event("state", state="speaking" if self.busy else "idle")

    @property
    def busy(self) -> bool:
        return self.turn_task is not None and not self.turn_task.done()

    # ------------------------------------------------------------------------------ input
    async def handle(self, message: p._Message) -> None:
        match message:
            case p.TextInput(text=text):
                await self.start_turn(text)
            case p.AudioInput(data=data):
                self.on_mic(p.decode_base64_pcm(data))
            case p.SpeechStarted():
                self._ptt = []
                await self.barge_in()
                self.send_event("state", state="listening")
            case p.SpeechStopped():
                self._end_push_to_talk()
            case p.PlaybackProgress(segment=segment, played_ms=played):
                self._playback(segment).report(played)
            case p.PlaybackFinished(segment=segment, played_ms=played):
                entry = self._playback(segment)
                entry.report(entry.sent_ms if played is None else played, finished=True)
            case p.Interrupt(segment=segment, played_ms=played):
                if segment is not None and played is not None:
                    self._playback(segment).report(played)
                await self.barge_in()
            case p.SetCharacter(character=character_id):
                await self.set_character(character_id)
            case p.Ping(t=t):
                self.send_event("pong", t=t, server_time=time.time())
            case p.Hello():
                raise p.ProtocolError("already_started", "hello was already accepted on this connection")

    def _playback(self, segment: int) -> SegmentPlayback:
        entry = self.playback.get(segment)
        if entry is None:
            raise p.ProtocolError(
                "unknown_segment", f"segment {segment} is not playing (current: {sorted(self.playback)})"
            )
        return entry

    def on_mic(self, samples: np.ndarray) -> None:
        """16 kHz PCM16 from the client: into the push-to-talk buffer, or through the server's VAD."""
        if self.server.engines.transcribe is None:
            raise p.ProtocolError("no_asr", "this server has no speech recognition: send text_input instead")
        audio = samples.astype(np.float32) / 32768.0
        if self._ptt is not None:
            if sum(len(a) for a in self._ptt) < self.server.limits.max_utterance_s * p.MIC_SAMPLE_RATE:
                self._ptt.append(audio)
            return
        if self.conn is not None and self.conn.push_to_talk:
            return  # push-to-talk client outside a held button: not speech
        if self._endpointer is None:
            if self.server.engines.make_endpointer is None:
                raise p.ProtocolError(
                    "no_vad", "this server has no VAD: mark speech with speech_started/stopped"
                )
            self._endpointer = self.server.engines.make_endpointer()
        for event in self._endpointer.process(audio):
            if hasattr(event, "audio"):  # an utterance
                self._spawn(self._hear(event.audio))
            else:  # speech started: the user talks over the reply
                self._spawn(self.barge_in())
                self.send_event("state", state="listening")
                self._next_partial = self._endpointer.time + self.server.engines.partial_interval_s
        self._maybe_partial()

    def _maybe_partial(self) -> None:
        """While the user speaks, transcribe what they said so far every `partial_interval_s` (stream time)."""
        interval = self.server.engines.partial_interval_s
        endpointer = self._endpointer
        if interval <= 0 or self._asr_lock.locked() or endpointer.time < self._next_partial:
            return
        audio = endpointer.current_audio()
        if audio is None:
            return
        self._next_partial = endpointer.time + interval
        self._spawn(self._partial(audio))

    async def _partial(self, audio: np.ndarray) -> None:
        async with self._asr_lock:
            text = (await self.server.engines.transcribe(audio)).strip()
        if text:
            self.send_event("transcript", text=text, final=False)

    def _end_push_to_talk(self) -> None:
        chunks, self._ptt = self._ptt, None
        if chunks:
            self._spawn(self._hear(np.concatenate(chunks)))

    async def _hear(self, audio: np.ndarray) -> None:
        async with self._asr_lock:  # utterances are transcribed and answered in order
            self.send_event("state", state="thinking")
            text = (await self.server.engines.transcribe(audio)).strip()
        self.send_event("transcript", text=text, final=True)
        if text:
            await self.start_turn(text)
        else:
            self.send_event("state", state="idle")

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("session %s: %s", self.id, error, exc_info=error)
            self.send_event("error", code="internal", message=f"{type(error).__name__}: {error}")

    async def set_character(self, character_id: str) -> None:
        try:
            character = self.server.engines.load_character(character_id)
        except KoeError as exc:
            raise p.ProtocolError("unknown_character", str(exc)) from None
        await self.barge_in()
        self.conversation = self.server.new_conversation(character, self._stream_with_deltas)
        self.ready(resumed=False)
        self.greet()

    # ------------------------------------------------------------------------------ replies
    @property
    def character(self) -> Character:
        return self.conversation.character

    @property
    def history(self) -> list[Message]:
        return self.conversation.log.messages

    def greet(self) -> None:
        """A new conversation starts with the character's greeting (when it has one)."""
        if self.server.greet and not self.history and self.character.greeting:
            self.turn_task = asyncio.get_running_loop().create_task(self._run_turn(None))

    async def start_turn(self, text: str) -> None:
        await self.barge_in()
        self.turn_task = asyncio.get_running_loop().create_task(self._run_turn(text))

    async def barge_in(self) -> None:
        """Stop the reply in progress (if any) and wait until its heard part is in the history."""
        task = self.turn_task
        if task is None or task.done():
            return
        if self.conn is None or not self.conn.playback_reports:
            self.assume_heard_until_now()
        if self._turn_started:
            self.conversation.interrupt()
        else:
            task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    async def _run_turn(self, text: str | None) -> None:
        """One reply (to `text`, or the greeting when None), framed by response_start/response_end."""
        self._responses += 1
        response = self._responses
        self.send_event("response_start", response=response, text=text)
        self.send_event("state", state="thinking")
        options = {
            "on_event": lambda e: self._on_turn_event(e, response),
        }
        speak = lambda piece: self._speak(piece, response)  # noqa: E731
        self._clock = 0.0
        result = None
        try:
            self._turn_started = True
            if text is None:
                result = await self.conversation.greet(speak, **options)
            else:
                options["stop_playback"] = lambda: self._clear_audio(response)
                result = await self.conversation.respond(text, speak, **options)
        except Exception as exc:  # a bug, not a user mistake: keep the session, tell the client
            log.exception("session %s: reply %d failed", self.id, response)
            self.send_event(
                "error", code="internal", message=f"the reply failed: {type(exc).__name__}: {exc}"
            )
            result = None
        finally:
            self._turn_started = False
            if text is None and result is not None and result.interrupted:
                self._clear_audio(response)  # greet() has no stop_playback hook
            for entry in self.playback.values():
                if entry.timer is not None:
                    entry.timer.cancel()
            self.playback.clear()
        fields = {"interrupted": False, "heard": "", "reply": "", "error": "internal"}
        if result is not None:
            fields = {
                "interrupted": result.interrupted,
                "heard": result.heard,
                "reply": result.reply,
                "error": result.error,
            }
        self.send_event("state", state="idle")
        self.send_event("response_end", response=response, **fields)

    def _stream_with_deltas(self, messages: list[dict]) -> AsyncIterator[str]:
        """The LLM stream, each chunk also sent to the client as `text_delta`."""
        return _tee(
            self.server.engines.stream_reply(messages),
            lambda chunk: self.send_event("text_delta", response=self._responses, text=chunk),
        )

    def _on_turn_event(self, event: dict, response: int) -> None:
        if event["type"] == "error":
            self.send_event("error", code="reply_failed", message=event["message"], response=response)

    def _clear_audio(self, response: int) -> None:
        if self.conn is not None:
            self.conn.drop_audio(response)
        self.send_event("clear_audio", response=response)

    async def _speak(self, piece: Piece, response: int) -> None:
        """Synthesise one piece and queue it: segment_start, lipsync + audio frames, segment_end."""
        self._segments += 1
        segment = self._segments
        entry = SegmentPlayback(segment, piece)
        self.playback[segment] = entry
        emotion = piece.emotion or self.character.default_emotion
        self.send_event(
            "segment_start", response=response, segment=segment, index=piece.index, text=piece.text,
            emotion=emotion, expression=self.character.expression(emotion),
        )  # fmt: skip
        if piece.index == 0:
            self.send_event("state", state="speaking")
        sequence = 0
        resampler: soxr.ResampleStream | None = None
        source_rate = 0
        out_rate = self.conn.audio_rate if self.conn else self.server.engines.sample_rate
        frame_len = out_rate * self.server.limits.audio_frame_ms // 1000
        async with aclosing(
            self.server.engines.synthesize(self.character, piece.text, piece.emotion)
        ) as chunks:
            async for rate, audio in chunks:
                if rate != out_rate:
                    if resampler is None or rate != source_rate:
                        resampler, source_rate = soxr.ResampleStream(rate, out_rate, 1, dtype="int16"), rate
                    audio = resampler.resample_chunk(audio.astype(np.int16))
                for start in range(0, len(audio), frame_len):
                    sequence = self._send_frame(
                        entry, response, sequence, audio[start : start + frame_len], out_rate
                    )
        tail = (
            resampler.resample_chunk(np.zeros(0, np.int16), last=True) if resampler else np.zeros(0, np.int16)
        )
        self._send_frame(entry, response, sequence, tail, out_rate, last=True)
        entry.complete = True
        entry.report(entry.played_ms)  # a report that came before the end
        self.send_event("segment_end", response=response, segment=segment, duration_ms=round(entry.sent_ms))
        self._watch_playback(entry)

    def _send_frame(
        self,
        entry: SegmentPlayback,
        response: int,
        sequence: int,
        samples: np.ndarray,
        rate: int,
        last: bool = False,
    ) -> int:
        if entry.started_at is None:  # with real-time playback, it would start playing now
            entry.started_at = max(asyncio.get_running_loop().time(), self._clock)
        if len(samples):
            fields = lipsync(samples, rate)
            self.send_event(
                "lipsync", with_audio=True, response=response, segment=entry.segment, seq=sequence,
                offset_ms=round(entry.sent_ms), **fields,
            )  # fmt: skip
        self.send_audio(entry.segment, sequence, samples, response, last)
        entry.sent_ms += 1000 * len(samples) / rate
        return sequence + 1

    def _watch_playback(self, entry: SegmentPlayback) -> None:
        """Without playback reports, assume real-time playback; with them, stop waiting after a grace time."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._clock = entry.started_at + entry.sent_ms / 1000
        reports = self.conn is not None and self.conn.playback_reports
        delay = self._clock - now + (self.server.limits.playback_grace_s if reports else 0.0)
        entry.timer = loop.call_later(delay, entry.piece.heard, 1.0)

    def assume_heard_until_now(self) -> None:
        """Without playback reports, a barge-in counts what the real-time clock says was played."""
        now = asyncio.get_running_loop().time()
        for entry in self.playback.values():
            if entry.started_at is not None and not entry.piece.played:
                entry.report(max(0.0, now - entry.started_at) * 1000)


class AvatarServer:
    """The WebSocket server: static demo page, handshake checks, sessions."""

    def __init__(
        self,
        config: ServerConfig,
        engines: Engines,
        history_dir: Path,
        *,
        llm_config: LlmConfig | None = None,
        limits: Limits | None = None,
        greet: bool = False,
        port: int | None = None,  # None: [server] port; 0: any free port (tests)
        web_dir: Path = WEB_DIR,
    ) -> None:
        self.config = config
        self.engines = engines
        self.history_dir = Path(history_dir)
        self.llm_config = llm_config or LlmConfig()
        self.limits = limits or Limits()
        self.greet = greet
        self.token = config.resolved_token()
        if not is_loopback(config.host) and not self.token:
            raise KoeError(
                f"[server] host = {config.host!r} is reachable from other machines: set a token "
                "([server] token or $KOE_TOKEN) or bind 127.0.0.1"
            )
        self.sessions: dict[str, Session] = {}
        self.static = {f"/{f.name}": f for f in Path(web_dir).glob("*") if f.suffix in STATIC_SUFFIXES}
        self._server = None
        self.port = config.port if port is None else port

    def new_conversation(self, character: Character, stream: ChatStream) -> Conversation:
        """A fresh conversation file for a new session, as `koe chat --new` starts one."""
        log_ = HistoryStore(self.history_dir, character.id or "default").new()
        return Conversation.from_config(self.llm_config, character, stream, log_)

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self) -> AvatarServer:
        self._server = await serve(
            self._handle,
            self.config.host,
            self.port,
            process_request=self._process_request,
            max_size=HARD_SIZE_FACTOR * self.config.max_message_bytes,
            max_queue=16,
            close_timeout=self.limits.close_timeout_s,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "koe serve: demo page at %s, WebSocket at ws://%s:%d%s",
            self.http_url,
            self.config.host,
            self.port,
            WS_PATH,
        )
        return self

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}{WS_PATH}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for session in list(self.sessions.values()):
            await session.barge_in()

    async def __aenter__(self) -> AvatarServer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------------------------ HTTP side
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._static_file(url.path)
        if url.path != WS_PATH:
            return connection.respond(404, f"the WebSocket is at {WS_PATH}\n")
        origin = request.headers.get("Origin")
        own = {
            f"http://{self.config.host}:{self.port}",
            f"http://localhost:{self.port}",
            f"http://127.0.0.1:{self.port}",
        }
        if (
            origin is not None
            and origin not in own
            and not origin_allowed(origin, self.config.allowed_origins)
        ):
            return connection.respond(
                403, f"origin {origin} is not allowed: add it to [server] allowed_origins\n"
            )
        token = parse_qs(url.query).get("token", [None])[0] or _bearer(request.headers)
        if token is not None and not self._token_ok(token):
            return connection.respond(401, "wrong token\n")
        return None

    def _static_file(self, path: str) -> Response:
        file = self.static.get("/index.html" if path == "/" else path)
        if file is None:
            body, status, kind = b"not found\n", 404, "text/plain"
        else:
            body, status, kind = (
                file.read_bytes(),
                200,
                mimetypes.guess_type(file.name)[0] or "application/octet-stream",
            )
        headers = Headers(
            [("Content-Type", f"{kind}; charset=utf-8" if kind.startswith("text") or "javascript" in kind else kind),
             ("Content-Length", str(len(body))), ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
        )  # fmt: skip
        return Response(status, "OK" if status == 200 else "Not Found", headers, body)

    def _token_ok(self, token: str | None) -> bool:
        if self.token is None:
            return True
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    # ------------------------------------------------------------------------------ WebSocket side
    async def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(ws, self.limits)
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.socket_send_buffer)
        sender = asyncio.get_running_loop().create_task(conn.run_sender())
        session: Session | None = None
        try:
            session = await self._handshake(conn)
            if session is not None:
                await self._read_loop(conn, session)
        except ConnectionClosed:
            pass
        finally:
            if session is not None and session.conn is conn:
                await self._detach(session)
            with suppress(ConnectionClosed, asyncio.TimeoutError):
                async with asyncio.timeout(1.0):
                    while (
                        conn.queue and not conn.dropped and not sender.done()
                    ):  # let final events (an auth error) go out
                        await asyncio.sleep(0.01)
            sender.cancel()

    async def _handshake(self, conn: Connection) -> Session | None:
        """Wait for `hello`: other frames get an error; a bad token or version ends the connection."""
        try:
            async with asyncio.timeout(self.limits.hello_timeout_s):
                while True:
                    hello = self._parse(conn, await conn.ws.recv())
                    if isinstance(hello, p.Hello):
                        break
                    if hello is not None:
                        conn.error("hello_first", "send hello first (see docs/protocol.md)")
        except TimeoutError:
            conn.error("hello_timeout", f"no hello within {self.limits.hello_timeout_s:g} s")
            await asyncio.sleep(0.05)
            await conn.ws.close(1008, "no hello")
            return None
        token = hello.token or parse_qs(urlsplit(conn.ws.request.path).query).get("token", [None])[0]
        token = token or _bearer(conn.ws.request.headers)
        if not self._token_ok(token):
            conn.error(
                "unauthorized", "missing or wrong token (hello.token, ?token= or Authorization: Bearer)"
            )
            await asyncio.sleep(0.05)
            await conn.ws.close(1008, "unauthorized")
            return None
        if hello.version != p.PROTOCOL_VERSION:
            conn.error(
                "unsupported_version",
                f"protocol version {hello.version} is not supported (this server: {p.PROTOCOL_VERSION})",
            )
            await asyncio.sleep(0.05)
            await conn.ws.close(1002, "unsupported protocol version")
            return None
        if hello.audio_rate is not None and hello.audio_rate not in p.AUDIO_RATES:
            conn.error(
                "bad_field",
                f"hello.audio_rate {hello.audio_rate} is not one of {p.AUDIO_RATES}; using the voice's rate",
            )
        conn.audio_rate = hello.audio_rate if hello.audio_rate in p.AUDIO_RATES else self.engines.sample_rate
        conn.binary = p.CAP_BINARY in hello.capabilities
        conn.playback_reports = p.CAP_PLAYBACK in hello.capabilities
        conn.push_to_talk = p.CAP_PUSH_TO_TALK in hello.capabilities
        return await self._attach(conn, hello)

    async def _attach(self, conn: Connection, hello: p.Hello) -> Session:
        self._expire_sessions()
        session = self.sessions.get(hello.session) if hello.session else None
        if hello.session and session is None:
            conn.error(
                "unknown_session", f"session {hello.session!r} is unknown or expired: starting a new one"
            )
        resumed = session is not None
        if session is None:
            try:
                character = self.engines.load_character(hello.character or self.engines.default_character)
            except KoeError as exc:
                conn.error("unknown_character", str(exc))
                character = self.engines.load_character(self.engines.default_character)
            if len(self.sessions) >= self.limits.max_sessions:
                oldest = min(self.sessions.values(), key=lambda s: s.expires_at or math.inf)
                await self._forget(oldest)
            session = Session(self, secrets.token_hex(16), character)  # hex: safe on a command line
            self.sessions[session.id] = session
        elif session.conn is not None:  # the same session from a new connection: the newest wins
            old = session.conn
            old.error("session_taken", "this session was resumed from another connection")
            await self._detach(session)
            old.drop("session resumed elsewhere")
        session.conn, session.expires_at = conn, None
        session.ready(resumed)
        if not resumed:
            session.greet()
        return session

    async def _detach(self, session: Session) -> None:
        session.conn = None
        session.expires_at = time.monotonic() + self.limits.session_ttl_s
        await session.barge_in()

    async def _forget(self, session: Session) -> None:
        await session.barge_in()
        self.sessions.pop(session.id, None)

    def _expire_sessions(self) -> None:
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if session.conn is None and session.expires_at is not None and session.expires_at < now:
                self.sessions.pop(session.id, None)

    def _parse(self, conn: Connection, frame: str | bytes) -> p._Message | p.AudioFrame | None:
        """A frame as a message or audio frame; None (after an `error` event) when it is unusable."""
        if len(frame) > self.config.max_message_bytes:
            conn.error(
                "too_large",
                f"a frame of {len(frame)} bytes is over the limit of {self.config.max_message_bytes}",
            )
            return None
        if not conn.messages.take() or not conn.bytes.take(len(frame)):
            conn.rate_limited()
            return None
        try:
            if isinstance(frame, bytes):
                audio = p.unpack_audio(frame)
                if audio.kind != p.KIND_MIC:
                    raise p.ProtocolError("bad_audio", "clients send microphone frames (kind 2) only")
                return audio
            return p.parse_client_message(frame)
        except p.ProtocolError as exc:
            conn.error(exc.code, exc.message)
            return None

    async def _read_loop(self, conn: Connection, session: Session) -> None:
        async for frame in conn.ws:
            if session.conn is not conn:  # resumed from another connection
                break
            await asyncio.sleep(0)  # let the sender run between frames of a burst
            message = self._parse(conn, frame)
            if message is None:
                continue
            try:
                if isinstance(message, p.AudioFrame):
                    session.on_mic(message.samples)
                else:
                    await session.handle(message)
            except p.ProtocolError as exc:
                conn.error(exc.code, exc.message)
            except Exception as exc:  # a bug must not end the connection or the session
                log.exception("session %s: handling %s failed", session.id, type(message).__name__)
                conn.error("internal", f"{type(exc).__name__}: {exc}")


async def _tee(chunks: AsyncIterator[str], on_chunk: Callable[[str], None]) -> AsyncIterator[str]:
    async with aclosing(chunks):
        async for chunk in chunks:
            on_chunk(chunk)
            yield chunk


def _bearer(headers: Headers) -> str | None:
    value = headers.get("Authorization", "")
    return value[7:].strip() if value.lower().startswith("bearer ") else None


async def tone_voice(
    character: Character, text: str, emotion: str | None
) -> AsyncIterator[tuple[int, np.ndarray]]:
    """A stand-in voice: a soft 220 Hz hum, 60 ms per character, in 200 ms chunks (wiring checks, tests)."""
    rate = TONE_RATE
    total = int(rate * 0.06 * max(1, len(text)))
    t = np.arange(total) / rate
    hum = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))  # 4 Hz "syllables"
    audio = (hum * 32767).astype(np.int16)
    step = rate // 5
    for start in range(0, total, step):
        await asyncio.sleep(0)
        yield rate, audio[start : start + step]


TONE_RATE = 32000
