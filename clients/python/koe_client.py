"""Talk to a koe character from Python: a small client for `koe serve` (docs/protocol.md, version 1).

    python clients/python/koe_client.py                          # type lines; subtitles print as spoken
    python clients/python/koe_client.py --say "Hi" --say "And you?" --wav reply.wav
    python clients/python/koe_client.py --speak question.wav     # a WAV file as the user's voice
    python clients/python/koe_client.py --play                   # play the voice (needs sounddevice)

It needs only `websockets` (plus `sounddevice` for --play) and no koe code, so it can be copied
anywhere. It asks for binary audio frames and sends no playback reports: the server paces each reply
as if it played in real time, and a barge-in keeps what that clock says was heard. Speech from
--speak is sent as push-to-talk (`speech_started`, 16 kHz PCM16 frames of 20 ms, `speech_stopped`).
The session id is printed on connect; `--session ID` resumes that conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

HEADER = struct.Struct("<BBHII")  # kind, flags, reserved, segment, sequence (little-endian)
KIND_SPEECH, KIND_MIC, FLAG_LAST = 1, 2, 1
MIC_RATE, MIC_FRAME = 16000, 320  # microphone audio: 16 kHz PCM16 mono, 20 ms per frame


class KoeClientError(Exception):
    """The server refused the connection or the request (the message says why)."""


@dataclass
class Reply:
    """One reply of the character, as it went out: subtitles, emotions, audio and what was heard."""

    response: int
    text: str | None  # what it answers (None: the greeting)
    subtitles: list[str] = field(default_factory=list)
    emotions: list[str] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray, repr=False)  # PCM16 mono at `KoeClient.rate`
    heard: str = ""
    interrupted: bool = False
    error: str | None = None


class KoeClient:
    """One connection to `koe serve`: send text or speech, read the replies frame by frame."""

    def __init__(self, ws: ClientConnection, ready: dict, on_event: Callable[[dict], None]) -> None:
        self.ws = ws
        self.ready = ready
        self.session: str = ready["session"]
        self.rate: int = ready["audio"]["rate"]
        self.on_event = on_event  # every JSON event, for display
        self.on_audio: Callable[[bytes], None] | None = None  # every speech chunk (PCM16), for playback
        self.last_reply: Reply | None = None
        self._replies: dict[int, Reply] = {}  # response id -> reply being received
        self._segments: dict[int, Reply] = {}  # segment id -> its reply
        self._mic_sequence = 0

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        session: str | None = None,
        character: str | None = None,
        audio_rate: int | None = None,
        on_event: Callable[[dict], None] = lambda event: None,
    ) -> KoeClient:
        """Connect and send `hello`; returns once the server answered `ready`."""
        try:
            ws = await connect(url)
        except InvalidStatus as exc:  # refused before the WebSocket opened (origin, token)
            body = exc.response.body.decode(errors="replace").strip()
            raise KoeClientError(f"{url}: HTTP {exc.response.status_code}: {body}") from None
        hello = {"type": "hello", "version": 1, "capabilities": ["binary_audio", "push_to_talk"]}
        optional = {"token": token, "session": session, "character": character, "audio_rate": audio_rate}
        await ws.send(json.dumps(hello | {k: v for k, v in optional.items() if v is not None}))
        last_error = "the server closed the connection before `ready`"
        try:
            while True:
                event = json.loads(await ws.recv())  # only JSON events come before `ready`
                on_event(event)
                if event["type"] == "error":
                    last_error = f"{event['code']}: {event['message']}"
                elif event["type"] == "ready":
                    return cls(ws, event, on_event)
        except ConnectionClosed:
            raise KoeClientError(f"{url}: {last_error}") from None

    async def close(self) -> None:
        await self.ws.close()

    # ------------------------------------------------------------------------------------- sending
    async def send_text(self, text: str) -> None:
        await self.ws.send(json.dumps({"type": "text_input", "text": text}))

    async def send_speech(self, pcm16: bytes) -> None:
        """Push-to-talk: 16 kHz PCM16 mono audio in 20 ms frames between speech_started/stopped."""
        await self.ws.send(json.dumps({"type": "speech_started"}))
        step = 2 * MIC_FRAME
        for start in range(0, len(pcm16) - len(pcm16) % 2, step):
            header = HEADER.pack(KIND_MIC, 0, 0, 0, self._mic_sequence)
            self._mic_sequence += 1
            await self.ws.send(header + pcm16[start : start + step])
            await asyncio.sleep(0.01)  # twice real time: under the server's limit of 120 frames/s
        await self.ws.send(json.dumps({"type": "speech_stopped"}))

    async def interrupt(self) -> None:
        await self.ws.send(json.dumps({"type": "interrupt"}))

    # ------------------------------------------------------------------------------------- receiving
    async def read(self) -> dict | None:
        """Handle one frame from the server: its JSON event, or None for an audio frame."""
        frame = await self.ws.recv()
        if isinstance(frame, bytes):
            self._on_audio(frame)
            return None
        event = json.loads(frame)
        self.on_event(event)
        kind = event["type"]
        if kind == "response_start":
            self._replies[event["response"]] = Reply(event["response"], event["text"])
        elif kind == "segment_start" and event["response"] in self._replies:
            reply = self._replies[event["response"]]
            reply.subtitles.append(event["text"])
            reply.emotions.append(event["emotion"])
            self._segments[event["segment"]] = reply
        elif kind == "response_end":
            reply = self._replies.pop(event["response"], None) or Reply(event["response"], None)
            reply.heard, reply.interrupted, reply.error = event["heard"], event["interrupted"], event["error"]
            self._segments = {s: r for s, r in self._segments.items() if r is not reply}
            self.last_reply = reply
        return event

    def _on_audio(self, frame: bytes) -> None:
        if len(frame) < HEADER.size:
            return
        kind, _, _, segment, _ = HEADER.unpack_from(frame)
        reply = self._segments.get(segment)
        if kind != KIND_SPEECH or reply is None:
            return
        pcm = frame[HEADER.size :]
        reply.audio += pcm
        if self.on_audio is not None:
            self.on_audio(pcm)

    async def next_reply(self) -> Reply:
        """Read until a reply ends (the greeting, an answer, or one cut by a barge-in)."""
        while True:
            event = await self.read()
            if event is not None and event["type"] == "response_end":
                return self.last_reply

    async def reply_to(self, text: str) -> Reply:
        """Read until the reply to `text` ends (earlier replies, like a greeting, are read past)."""
        while True:
            reply = await self.next_reply()
            if reply.text == text:
                return reply

    async def say(self, text: str) -> Reply:
        """Send `text` as the user's words and wait for the whole reply."""
        await self.send_text(text)
        return await self.reply_to(text)

    async def speak(self, pcm16: bytes) -> tuple[str, Reply]:
        """Send speech (16 kHz PCM16 mono); returns what the server heard and the reply to it."""
        await self.send_speech(pcm16)
        while True:
            event = await self.read()
            if event is None or event["type"] != "transcript" or not event["final"]:
                continue
            if not event["text"]:
                raise KoeClientError("the server heard no words in the audio")
            return event["text"], await self.reply_to(event["text"])


# ------------------------------------------------------------------------------------- command line
class Speaker:
    """Plays PCM16 chunks as they arrive; `clear` drops what is buffered (barge-in)."""

    def __init__(self, rate: int) -> None:
        import sounddevice

        self.buffer = bytearray()
        self.lock = threading.Lock()
        self.stream = sounddevice.RawOutputStream(rate, channels=1, dtype="int16", callback=self._fill)
        self.stream.start()

    def add(self, pcm: bytes) -> None:
        with self.lock:
            self.buffer += pcm

    def clear(self) -> None:
        with self.lock:
            self.buffer.clear()

    def _fill(self, out, frames, timing, status) -> None:
        with self.lock:
            chunk = self.buffer[: len(out)]
            del self.buffer[: len(out)]
        out[: len(chunk)] = chunk
        out[len(chunk) :] = bytes(len(out) - len(chunk))

    def close(self, drain_s: float = 5.0) -> None:
        """Stop after what is buffered has played (at most `drain_s` seconds more)."""
        for _ in range(int(drain_s / 0.01)):
            with self.lock:
                if not self.buffer:
                    break
            time.sleep(0.01)
        self.stream.stop()
        self.stream.close()


def show(event: dict) -> None:
    """Print what a person following the conversation wants to see."""
    kind = event["type"]
    if kind == "ready":
        name = event["character"]["name"]
        print(f"connected to {name} (session {event['session']}{', resumed' if event['resumed'] else ''})")
        for message in event["history"]:
            print(f"  {message['role']}: {message['text']}")
    elif kind == "segment_start":
        print(f"[{event['emotion']}] {event['text']}", flush=True)
    elif kind == "transcript" and event["final"]:
        print(f"(heard) {event['text']}")
    elif kind == "response_end" and event["interrupted"]:
        print(f"(interrupted; heard: {event['heard']!r})")
    elif kind == "error":
        print(f"error {event['code']}: {event['message']}", file=sys.stderr)


def read_wav_16k(path: str) -> bytes:
    """The PCM16 samples of a 16 kHz mono 16-bit WAV file."""
    with wave.open(path, "rb") as wav:
        shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        if shape != (MIC_RATE, 1, 2):
            raise KoeClientError(
                f"{path}: {shape[0]} Hz, {shape[1]} channel(s), {8 * shape[2]}-bit; --speak needs "
                f"{MIC_RATE} Hz mono 16-bit (e.g. `sox in.wav -r 16000 -c 1 -b 16 out.wav`)"
            )
        return wav.readframes(wav.getnframes())


async def chat(args: argparse.Namespace) -> None:
    speaker: Speaker | None = None

    def on_event(event: dict) -> None:
        show(event)
        if event["type"] == "clear_audio" and speaker is not None:
            speaker.clear()

    speeches = [read_wav_16k(path) for path in args.speak]  # a wrong file fails before connecting
    client = await KoeClient.connect(
        args.url, token=args.token, session=args.session, character=args.character, on_event=on_event
    )
    if args.play:
        speaker = Speaker(client.rate)
        client.on_audio = speaker.add
    audio = bytearray()
    try:
        if args.say or args.speak:
            for text in args.say:
                audio += (await client.say(text)).audio
            for pcm in speeches:
                audio += (await client.speak(pcm))[1].audio
        else:
            audio += await type_lines(client)
    finally:
        await client.close()
        if speaker is not None:
            speaker.close()
    if args.wav:
        with wave.open(args.wav, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(client.rate)
            out.writeframes(bytes(audio))
        print(f"wrote {len(audio) / 2 / client.rate:.1f} s of the voice to {args.wav}")


async def type_lines(client: KoeClient) -> bytearray:
    """Interactive: every line typed goes to the character; replies print while it speaks."""
    audio = bytearray()

    async def receive() -> None:
        while True:
            audio.extend((await client.next_reply()).audio)

    receiver = asyncio.create_task(receive())
    print("type a line and press Enter (Ctrl-D to quit)")
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            if line.strip():
                await client.send_text(line.strip())
    finally:
        receiver.cancel()
    return audio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8765/ws", help="the WebSocket of `koe serve`")
    parser.add_argument("--token", help="[server] token of a server that binds another address")
    parser.add_argument("--session", metavar="ID", help="resume this session")
    parser.add_argument("--character", metavar="NAME", help="talk to this character")
    parser.add_argument(
        "--say",
        action="append",
        default=[],
        metavar="TEXT",
        help="say this and wait for the reply (repeatable; before any --speak)",
    )
    parser.add_argument("--speak", action="append", default=[], metavar="WAV", help="say this 16 kHz WAV")
    parser.add_argument("--wav", metavar="PATH", help="write the voice of all replies to this WAV file")
    parser.add_argument("--play", action="store_true", help="play the voice (needs sounddevice)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(chat(args))
    except (KoeClientError, OSError) as exc:
        print(f"koe_client: error: {exc}", file=sys.stderr)
        return 2
    except ConnectionClosed as exc:
        print(f"koe_client: error: the server closed the connection: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
