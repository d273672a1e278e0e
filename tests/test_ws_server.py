"""`koe serve` end to end: a real AvatarServer, real websockets clients, the fake OpenAI-compatible LLM
server and a tone voice (a real VAD and the real tiny.en Whisper for speech input)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent import protocol as p
from agent.character import find_character
from agent.config import LlmConfig, ServerConfig, TtsConfig, VadConfig
from agent.context import INTERRUPTED
from agent.errors import KoeError
from agent.llm import LlmClient
from agent.server import TONE_RATE, AvatarServer, Engines, Limits, tone_voice
from agent.turn import heard_prefix
from fake_llm_server import MODEL, FakeLlmServer, Reply

ROOT = Path(__file__).resolve().parent.parent
CHARACTERS = ROOT / "characters"
CAPS = [p.CAP_BINARY, p.CAP_PLAYBACK]
TIMEOUT = 20


def engines_for(llm: FakeLlmServer, synthesize=tone_voice, **extra) -> Engines:
    client = LlmClient(LlmConfig(base_url=llm.url, model=MODEL))
    return Engines(
        stream_reply=client.stream,
        synthesize=synthesize,
        sample_rate=TONE_RATE,
        load_character=lambda name: find_character(CHARACTERS, name),
        **extra,
    )


def make_server(
    tmp_path: Path, llm: FakeLlmServer, *, config: ServerConfig | None = None, **options
) -> AvatarServer:
    engines = options.pop("engines", None) or engines_for(llm)
    return AvatarServer(config or ServerConfig(), engines, tmp_path / "history", port=0, **options)


class Client:
    """A websockets client that keeps every event and audio frame it received."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[dict] = []
        self.frames: list[p.AudioFrame] = []
        self.session: str | None = None

    @classmethod
    async def open(
        cls, server: AvatarServer, caps=CAPS, hello: dict | None = None, **connect_options
    ) -> Client:
        client = cls(await connect(server.ws_url, **connect_options))
        await client.send(
            {"type": "hello", "version": 1, "capabilities": caps, "audio_rate": 24000, **(hello or {})}
        )
        ready = await client.until("ready")
        client.session = ready["session"]
        return client

    async def send(self, message: dict | str | bytes) -> None:
        await self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    async def next(self) -> dict | p.AudioFrame:
        frame = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        if isinstance(frame, bytes):
            self.frames.append(p.unpack_audio(frame))
            return self.frames[-1]
        self.events.append(json.loads(frame))
        return self.events[-1]

    async def until(self, kind: str, on_event=None) -> dict:
        while True:
            item = await self.next()
            if isinstance(item, dict):
                if on_event is not None:
                    await on_event(self, item)
                if item["type"] == kind:
                    return item

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    async def close(self) -> None:
        await self.ws.close()


async def report_finished(client: Client, event: dict) -> None:
    """A client that plays instantly: every segment is reported heard when it ends."""
    if event["type"] == "segment_end":
        await client.send({"type": "playback_finished", "segment": event["segment"]})


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


@pytest.fixture
def llm():
    with FakeLlmServer() as server:
        yield server


# ------------------------------------------------------------------------------------ a full turn
def test_text_turn_streams_segments_audio_lipsync_and_records_the_history(tmp_path, llm):
    llm.script(Reply("[happy] Hello there! How are you today?"))

    async def scenario():
        async with make_server(tmp_path, llm) as server:
            client = await Client.open(server)
            assert client.of("ready")[0]["audio"] == {
                "format": "pcm16le",
                "channels": 1,
                "rate": 24000,
                "binary": True,
            }
            assert client.of("ready")[0]["character"]["expressions"]["happy"] == "smile"
            await client.send({"type": "text_input", "text": "Hi Koe"})
            end = await client.until("response_end", report_finished)
            await client.close()
            return client, end, server

    client, end, server = run(scenario())
    kinds = [e["type"] for e in client.events]
    assert kinds.index("response_start") < kinds.index("text_delta") < kinds.index("segment_start")
    assert [s["text"] for s in client.of("segment_start")] == ["Hello there!", "How are you today?"]
    assert {(s["emotion"], s["expression"]) for s in client.of("segment_start")} == {("happy", "smile")}
    assert "".join(d["text"] for d in client.of("text_delta")) == "[happy] Hello there! How are you today?"
    assert end == {
        "type": "response_end", "response": 1, "interrupted": False, "error": None,
        "heard": "Hello there! How are you today?", "reply": "Hello there! How are you today?",
    }  # fmt: skip
    states = [e["state"] for e in client.of("state")]
    assert states == ["idle", "thinking", "speaking", "idle"]
    for seg in client.of("segment_end"):
        frames = [f for f in client.frames if f.segment == seg["segment"]]
        samples = sum(len(f.samples) for f in frames)
        # The tone voice speaks 60 ms per character; resampled from 32 kHz to the asked-for 24 kHz.
        text = next(s["text"] for s in client.of("segment_start") if s["segment"] == seg["segment"])
        assert abs(samples - 0.06 * len(text) * 24000) <= 24
        assert seg["duration_ms"] == round(1000 * samples / 24000)
        assert [f.sequence for f in frames] == list(range(len(frames)))
        assert frames[-1].last and not any(f.last for f in frames[:-1])
        assert all(len(f.samples) <= 2400 for f in frames)  # at most 100 ms per frame
        lips = [e for e in client.of("lipsync") if e["segment"] == seg["segment"]]
        assert sum(len(e["volume"]) for e in lips) == sum(-(-len(f.samples) // 480) for f in frames)
        assert max(max(e["volume"]) for e in lips) > 0.5  # the hum opens the mouth
    # The conversation is in the history file, as `koe chat` writes it.
    (history_file,) = (tmp_path / "history" / "default").glob("*.jsonl")
    records = [json.loads(line) for line in history_file.read_text().splitlines()]
    assert [(r.get("role"), r.get("text")) for r in records[1:]] == [
        ("user", "Hi Koe"), ("assistant", "Hello there! How are you today?")
    ]  # fmt: skip


def test_base64_fallback_and_real_time_clock_without_playback_reports(tmp_path, llm):
    llm.script(Reply("Short one."))

    async def scenario():
        async with make_server(tmp_path, llm) as server:
            client = await Client.open(server, caps=[])
            started = time.perf_counter()
            await client.send({"type": "text_input", "text": "hi"})
            end = await client.until("response_end")
            return client, end, time.perf_counter() - started

    client, end, elapsed = run(scenario())
    assert client.frames == []
    audio = client.of("audio")
    samples = np.concatenate([p.decode_base64_pcm(a["data"]) for a in audio])
    assert abs(len(samples) - 0.06 * len("Short one.") * 24000) <= 24
    assert audio[-1]["last"] is True and [a["seq"] for a in audio] == list(range(len(audio)))
    # Without playback reports the server assumes real-time playback: the reply ends after its audio.
    assert elapsed >= 0.6 - 0.05
    assert end["heard"] == "Short one."


def test_greeting_on_a_new_session_and_voice_failure_is_reported(tmp_path, llm):
    async def broken_voice(character, text, emotion):
        raise KoeError("the voice model file is missing: pretrained/x.pth")
        yield  # pragma: no cover

    async def scenario():
        async with make_server(tmp_path, llm, greet=True) as server:
            greeted = await Client.open(server)
            start = await greeted.until("response_start")
            await greeted.until("response_end", report_finished)
        async with make_server(tmp_path, llm, engines=engines_for(llm, broken_voice)) as server:
            broken = await Client.open(server)
            await broken.send({"type": "text_input", "text": "hello?"})
            end = await broken.until("response_end")
            await broken.send({"type": "ping", "t": 5})
            pong = await broken.until("pong")
        return greeted, start, broken, end, pong

    greeted, start, broken, end, pong = run(scenario())
    assert start["text"] is None
    assert greeted.of("segment_start")[0]["text"] == "Hi, I'm Koe."
    assert end["error"] == "the voice model file is missing: pretrained/x.pth"
    assert broken.of("error")[0]["code"] == "reply_failed"
    assert pong["t"] == 5  # the session survives a failed reply


# ------------------------------------------------------------------------------------ speech input
def speech_engines(llm: FakeLlmServer) -> Engines:
    from asr.endpointer import Endpointer
    from asr_helpers import tiny_en_transcriber

    transcriber = tiny_en_transcriber()

    async def transcribe(audio: np.ndarray) -> str:
        return (await transcriber.transcribe_async(audio)).text

    vad = VadConfig(engine="webrtc", end_silence_ms=300)
    return engines_for(
        llm, transcribe=transcribe, make_endpointer=lambda: Endpointer(vad), partial_interval_s=1.5
    )


def mic_frames(audio: np.ndarray) -> list[bytes]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    return [
        p.pack_audio(p.AudioFrame(p.KIND_MIC, 0, i, pcm[start : start + 320]))
        for i, start in enumerate(range(0, len(pcm), 320))
    ]


def test_speech_input_with_server_vad_and_push_to_talk(tmp_path, llm):
    from asr_helpers import require_espeak, speak

    require_espeak()
    speech = speak("Please open the window before you leave the room.")
    silence = np.zeros(16000, dtype=np.float32)

    async def scenario():
        limits = Limits(message_burst=1000)  # the test sends seconds of audio at once, not in real time
        async with make_server(tmp_path, llm, engines=speech_engines(llm), limits=limits) as server:
            client = await Client.open(server)
            for frame in mic_frames(np.concatenate([silence[:4000], speech, silence])):
                await client.send(frame)
                await asyncio.sleep(0.001)  # faster than real time, slow enough for a partial to run
            transcript = await client.until("transcript")
            while not transcript["final"]:
                transcript = await client.until("transcript")
            reply = await client.until("response_end", report_finished)
            ptt = await Client.open(server, caps=[*CAPS, p.CAP_PUSH_TO_TALK])
            for frame in mic_frames(speech[:8000]):  # not inside speech_started/stopped: ignored
                await ptt.send(frame)
            await ptt.send({"type": "speech_started"})
            for frame in mic_frames(speech):
                await ptt.send(frame)
            await ptt.send({"type": "speech_stopped"})
            ptt_transcript = await ptt.until("transcript")
            await ptt.until("response_end", report_finished)
            return client, transcript, reply, ptt_transcript

    client, transcript, reply, ptt_transcript = run(scenario())
    for heard in (transcript, ptt_transcript):
        assert heard["final"] is True
        assert {"open", "window", "room"} <= set(
            heard["text"].lower().replace(".", "").replace(",", "").split()
        )
    assert "listening" in [e["state"] for e in client.of("state")]
    partials = [t["text"] for t in client.of("transcript") if not t["final"]]
    assert partials and all(text.startswith("Please") for text in partials), partials
    assert reply["heard"].startswith("You said:") and "window" in reply["heard"]
    assert len(llm.requests) == 2


def test_audio_without_asr_is_an_error_not_a_disconnect(tmp_path, llm):
    async def scenario():
        async with make_server(tmp_path, llm) as server:
            client = await Client.open(server)
            await client.send(mic_frames(np.zeros(320, np.float32))[0])
            error = await client.until("error")
            await client.send({"type": "ping"})
            await client.until("pong")
            return error

    error = run(scenario())
    assert error["code"] == "no_asr" and "send text_input instead" in error["message"]


def test_base64_microphone_audio_with_push_to_talk_on_a_server_without_vad(tmp_path, llm):
    from asr_helpers import require_espeak, speak

    require_espeak()
    speech = (speak("Please open the window.") * 32767).astype(np.int16)
    engines = speech_engines(llm)
    engines.make_endpointer = None  # speech recognition, but no VAD: clients must mark speech themselves

    async def scenario():
        async with make_server(tmp_path, llm, engines=engines) as server:
            client = await Client.open(server, caps=[])  # no binary frames either way
            await client.send({"type": "audio", "data": p.encode_base64_pcm(speech[:320])})
            no_vad = await client.until("error")
            await client.send({"type": "speech_started"})
            for start in range(0, len(speech), 3200):  # 200 ms per message
                await client.send(
                    {"type": "audio", "data": p.encode_base64_pcm(speech[start : start + 3200])}
                )
            await client.send({"type": "speech_stopped"})
            transcript = await client.until("transcript")
            end = await client.until("response_end")
            return no_vad, transcript, end

    no_vad, transcript, end = run(scenario())
    assert no_vad["code"] == "no_vad" and "mark speech with speech_started/stopped" in no_vad["message"]
    assert transcript["final"] and {"open", "window"} <= set(
        transcript["text"].lower().replace(".", "").split()
    )
    assert end["heard"] == f"You said: {transcript['text']}."


# ---------------------------------------------------------------------------------------- barge-in
def test_barge_in_clears_audio_and_keeps_only_what_was_heard(tmp_path, llm):
    first = "This first sentence is rather long so it plays for a while."
    llm.script(Reply(f"{first} The second one never gets heard at all."), Reply("Sorry, go on."))

    async def scenario():
        async with make_server(tmp_path, llm) as server:
            client = await Client.open(server)
            await client.send({"type": "text_input", "text": "tell me something"})
            end = await client.until("segment_end")
            half = end["duration_ms"] // 2
            await client.send(
                {"type": "playback_progress", "segment": end["segment"], "played_ms": half // 2}
            )
            await client.send({"type": "interrupt", "segment": end["segment"], "played_ms": half})
            cleared = await client.until("clear_audio")
            frames_before = len(client.frames)
            result = await client.until("response_end")
            after = len(client.frames) - frames_before
            await client.send({"type": "text_input", "text": "wait"})
            await client.until("response_end", report_finished)
            return cleared, result, after, server.sessions[client.session]

    cleared, result, frames_after_clear, session = run(scenario())
    expected = heard_prefix(first, 0.5)
    assert cleared["response"] == 1
    assert frames_after_clear == 0  # queued audio of the cut reply is never sent
    assert result["interrupted"] is True and result["heard"] == expected
    assert expected and len(expected) < len(first)
    assert session.history[1].text == expected and session.history[1].interrupted
    # The next request tells the LLM what the user actually heard.
    assert {"role": "assistant", "content": expected + INTERRUPTED} in llm.requests[1]["messages"]


def test_barge_in_without_playback_reports_counts_real_time_playback(tmp_path, llm):
    first = "Without reports the server assumes the audio plays in real time."
    llm.script(Reply(first))

    async def scenario():
        async with make_server(tmp_path, llm) as server:
            client = await Client.open(server, caps=[p.CAP_BINARY])
            await client.send({"type": "text_input", "text": "go"})
            end = await client.until("segment_end")
            await asyncio.sleep(1.0)
            await client.send({"type": "interrupt"})
            return end, await client.until("response_end")

    end, result = run(scenario())
    played = len(result["heard"]) / len(first)
    assert result["interrupted"] and first.startswith(result["heard"])
    assert 0.6 * 1000 / end["duration_ms"] < played < 1.6 * 1000 / end["duration_ms"] + 0.1


def test_new_input_during_a_reply_interrupts_it(tmp_path, llm):
    llm.script(Reply("One. Two. Three. Four. Five.", token_delay_s=0.05), Reply("Okay."))

    async def scenario():
        async with make_server(tmp_path, llm) as server:
            client = await Client.open(server)
            await client.send({"type": "text_input", "text": "count"})
            await client.until("segment_start")
            await client.send({"type": "text_input", "text": "stop"})
            first = await client.until("response_end")
            second = await client.until("response_end", report_finished)
            for _ in range(100):  # the fake server notices the closed stream at its next write
                if llm.abandoned:
                    break
                await asyncio.sleep(0.02)
            return first, second, server.sessions[client.session]

    first, second, session = run(scenario())
    assert first["interrupted"] is True and first["response"] == 1
    assert second == {**second, "response": 2, "interrupted": False, "heard": "Okay."}
    assert [m.role for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert llm.abandoned == 1  # the cut reply's HTTP stream was closed


# ------------------------------------------------------------------------------- robustness, limits
def random_frames(rng: random.Random, limit: int) -> list[str | bytes]:
    valid_types = p.CLIENT_TYPES
    frames: list[str | bytes] = []
    for i in range(1100):
        choice = i % 11
        if choice == 0:
            frames.append("{" + "".join(rng.choice('{}[]":,abc01') for _ in range(rng.randint(0, 40))))
        elif choice == 1:
            frames.append(json.dumps(rng.choice([None, 1, "x", [], [1, {"type": "ping"}], True])))
        elif choice == 2:
            frames.append(json.dumps({"type": rng.choice(["", "PING", "hello2", 5, None, "x" * 300])}))
        elif choice == 3:  # a known type with wrong field types or extra fields
            kind = rng.choice(valid_types)
            frames.append(
                json.dumps(
                    {
                        "type": kind,
                        rng.choice(["text", "segment", "played_ms", "version", "zz"]): rng.choice(
                            [-1, [], {}, 1.5, None, True]
                        ),
                    }
                )
            )
        elif choice == 4:
            frames.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
        elif choice == 5:  # a microphone header with an odd payload, or a speech (server) kind
            frames.append(
                bytes([rng.choice([1, 2, 3]), 0, 0, 0]) + bytes(8) + b"\x01" * rng.choice([1, 3, 5])
            )
        elif choice == 6:
            frames.append(
                json.dumps({"type": "playback_progress", "segment": rng.randint(0, 10**9), "played_ms": 5})
            )
        elif choice == 7:
            frames.append(
                json.dumps({"type": "set_character", "character": rng.choice(["nobody", "x" * 65, "a/b"])})
            )
        elif choice == 8:
            frames.append("[" * 5000 + "]" * 5000)  # deep nesting
        elif choice == 9:
            frames.append(json.dumps({"type": "audio", "data": rng.choice(["@@", "AA==", 5])}))
        else:
            frames.append(json.dumps({"type": "ping", "t": "x" * rng.randint(0, 50)}))
    frames += ["x" * (limit + 1), b"\x02" * (2 * limit)]  # over the message size limit
    return frames


def test_a_thousand_malformed_frames_get_errors_and_break_nothing(tmp_path, llm):
    limit = 64 * 1024
    llm.script(Reply("Still here."), Reply("Me too."))

    async def scenario():
        limits = Limits(messages_per_s=1e6, message_burst=10**6, bytes_per_s=1e9, byte_burst=10**9)
        config = ServerConfig(max_message_bytes=limit)
        async with make_server(tmp_path, llm, config=config, limits=limits) as server:
            fuzzer = await Client.open(server)
            bystander = await Client.open(server)
            frames = random_frames(random.Random(1234), limit)
            await bystander.send({"type": "text_input", "text": "are you there?"})
            reader = asyncio.create_task(_read_until_last_pong(fuzzer))
            for frame in frames:
                await fuzzer.send(frame)
            await fuzzer.send({"type": "ping", "t": "last"})
            bystander_end = await bystander.until("response_end", report_finished)
            await reader
            await fuzzer.send({"type": "text_input", "text": "and you?"})
            fuzzer_end = await fuzzer.until("response_end", report_finished)
            return frames, fuzzer, bystander_end, fuzzer_end

    frames, fuzzer, bystander_end, fuzzer_end = run(scenario())
    errors = fuzzer.of("error")
    pongs = fuzzer.of("pong")
    assert len(errors) + len(pongs) >= len(frames) - 5  # every bad frame answered (a few are valid pings)
    codes = {e["code"] for e in errors}
    assert {
        "bad_json",
        "bad_message",
        "unknown_type",
        "bad_field",
        "bad_audio",
        "unknown_segment",
        "unknown_character",
        "too_large",
    } <= codes
    assert "internal" not in codes
    assert bystander_end["heard"] == "Still here." and fuzzer_end["heard"] == "Me too."


async def _read_until_last_pong(client: Client) -> None:
    while (await client.until("pong")).get("t") != "last":
        pass


def test_twenty_concurrent_clients_each_get_their_own_reply(tmp_path, llm):
    async def one(server: AvatarServer, i: int) -> dict:
        client = await Client.open(server)
        await client.send({"type": "text_input", "text": f"number {i}"})
        end = await client.until("response_end", report_finished)
        await client.close()
        return end

    async def scenario():
        async with make_server(tmp_path, llm) as server:
            return await asyncio.gather(*(one(server, i) for i in range(20)))

    ends = run(scenario())
    assert sorted(e["heard"] for e in ends) == sorted(f"You said: number {i}." for i in range(20))


async def fast_tts(character, text, emotion):
    """The tone voice at the pace of a fast TTS engine: 200 ms of audio every 10 ms."""
    async for rate, audio in tone_voice(character, text, emotion):
        await asyncio.sleep(0.01)
        yield rate, audio


def test_a_client_that_stops_reading_is_warned_then_dropped_without_slowing_others(tmp_path, llm, caplog):
    long = " ".join(["This sentence keeps the hum going for quite a long while and on and on"] * 3) + "."
    llm.script(Reply(f"{long} {long} {long}"), Reply("Quick answer."))

    async def scenario():
        limits = Limits(
            send_queue_frames=100, audio_frame_ms=20, close_timeout_s=0.5, socket_send_buffer=4096
        )
        async with make_server(tmp_path, llm, limits=limits, engines=engines_for(llm, fast_tts)) as server:
            slow = await Client.open(server, hello={"audio_rate": 48000})
            await slow.send({"type": "text_input", "text": "talk a lot"})  # and never read again
            session = server.sessions[slow.session]
            fast = await Client.open(server)
            started = time.perf_counter()
            await fast.send({"type": "text_input", "text": "quick"})
            end = await fast.until("response_end", report_finished)
            fast_s = time.perf_counter() - started
            deadline = time.perf_counter() + 10
            while session.conn is not None and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            with pytest.raises(ConnectionClosed):
                while True:  # what was in flight, then the end of the connection
                    await asyncio.wait_for(slow.ws.recv(), 5)
            return fast_s, end, session

    with caplog.at_level("WARNING", logger="agent.server"):
        fast_s, end, session = run(scenario())
    assert end["heard"] == "Quick answer." and fast_s < 2.0
    assert session.conn is None  # dropped; the session stays for a reconnect
    messages = [r.getMessage() for r in caplog.records]
    warned = next(i for i, m in enumerate(messages) if "reads too slowly" in m)
    dropped = next(i for i, m in enumerate(messages) if "slow client: the send queue overflowed" in m)
    assert warned < dropped


def test_rate_limit_drops_frames_with_one_notice_and_keeps_the_connection(tmp_path, llm):
    async def scenario():
        limits = Limits(messages_per_s=5, message_burst=10)
        async with make_server(tmp_path, llm, limits=limits) as server:
            client = await Client.open(server)
            for i in range(40):
                await client.send({"type": "ping", "t": i})
            await client.until("error")
            await asyncio.sleep(0.5)  # the bucket refills
            await client.send({"type": "ping", "t": "after"})
            while (await client.until("pong"))["t"] != "after":
                pass
            return client

    client = run(scenario())
    assert [e["code"] for e in client.of("error")] == ["rate_limited"]
    assert 9 <= len(client.of("pong")) <= 13


# --------------------------------------------------------------------------------- auth and origins
def test_token_is_required_off_loopback_and_checked_when_set(tmp_path, llm):
    with pytest.raises(KoeError, match=r"host = '0.0.0.0' is reachable from other machines: set a token"):
        make_server(tmp_path, llm, config=ServerConfig(host="0.0.0.0"))

    async def scenario():
        async with make_server(tmp_path, llm, config=ServerConfig(token="s3cret")) as server:
            no_token = await connect(server.ws_url)
            await no_token.send(json.dumps({"type": "hello", "version": 1}))
            error = json.loads(await no_token.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(no_token.recv(), 5)
            with pytest.raises(InvalidStatus) as wrong:
                await connect(server.ws_url + "?token=nope")
            good = await Client.open(server, hello={"token": "s3cret"})
            header = await Client.open(server, additional_headers={"Authorization": "Bearer s3cret"})
            return error, closed.value, wrong.value, good, header

    error, closed, wrong, good, header = run(scenario())
    assert error["code"] == "unauthorized"
    assert closed.rcvd.code == 1008
    assert wrong.response.status_code == 401
    assert good.session and header.session


def test_origins_outside_the_allowlist_are_refused(tmp_path, llm):
    async def scenario():
        async with make_server(tmp_path, llm) as server:
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.ws_url, origin="http://evil.example")
            ok = await Client.open(server, origin="http://localhost:5173")  # "http://localhost": any port
            own = await Client.open(server, origin=f"http://127.0.0.1:{server.port}")
            return refused.value, ok, own

    refused, ok, own = run(scenario())
    assert refused.response.status_code == 403
    assert b"add it to [server] allowed_origins" in refused.response.body
    assert ok.session and own.session


def test_hello_rules(tmp_path, llm):
    async def scenario():
        async with make_server(tmp_path, llm) as server:
            ws = await connect(server.ws_url)
            await ws.send(json.dumps({"type": "ping"}))
            first = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "hello", "version": 2}))
            version = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            unknown = await Client.open(server, hello={"character": "nobody", "audio_rate": 12345})
            await unknown.send({"type": "hello", "version": 1})
            await unknown.until("error")
            return first, version, unknown

    first, version, unknown = run(scenario())
    assert first["code"] == "hello_first"
    assert version["code"] == "unsupported_version" and "this server: 1" in version["message"]
    codes = [e["code"] for e in unknown.of("error")]
    assert codes == ["bad_field", "unknown_character", "already_started"]
    ready = unknown.of("ready")[0]
    assert ready["character"]["id"] == "default" and ready["audio"]["rate"] == TONE_RATE


# -------------------------------------------------------------------------------- reconnect, resume
def test_reconnect_with_the_session_id_resumes_the_conversation(tmp_path, llm):
    llm.script(Reply("Nice to meet you, Ann."), Reply("Your name is Ann."))

    async def scenario():
        async with make_server(tmp_path, llm) as server:
            first = await Client.open(server)
            await first.send({"type": "text_input", "text": "I am Ann."})
            await first.until("response_end", report_finished)
            await first.close()
            again = await Client.open(server, hello={"session": first.session})
            await again.send({"type": "text_input", "text": "Who am I?"})
            await again.until("response_end", report_finished)
            stale = await Client.open(server, hello={"session": "no-such-session"})
            return first, again, stale

    first, again, stale = run(scenario())
    ready = again.of("ready")[0]
    assert ready["resumed"] is True and ready["session"] == first.session
    assert ready["history"] == [
        {"role": "user", "text": "I am Ann."},
        {"role": "assistant", "text": "Nice to meet you, Ann."},
    ]
    assert {"role": "assistant", "content": "Nice to meet you, Ann."} in llm.requests[1]["messages"]
    assert stale.of("error")[0]["code"] == "unknown_session"
    assert stale.of("ready")[0]["resumed"] is False and stale.session != first.session


def test_a_reply_cut_by_a_dropped_connection_keeps_what_was_played_and_resumes(tmp_path, llm):
    reply = "This answer is still playing when the connection drops, so only its start was heard."
    llm.script(Reply(reply))

    async def scenario():
        async with make_server(tmp_path, llm) as server:
            first = await Client.open(server)
            await first.send({"type": "text_input", "text": "go on"})
            end = await first.until("segment_end")
            await first.send({"type": "playback_progress", "segment": end["segment"], "played_ms": 1200})
            await first.send({"type": "ping"})
            await first.until("pong")
            first.ws.transport.abort()  # the network goes away: no closing handshake
            session = server.sessions[first.session]
            while session.busy:
                await asyncio.sleep(0.01)
            again = await Client.open(server, hello={"session": first.session})
            return again, session, end

    again, session, end = run(scenario())
    heard = session.history[-1]
    first_segment = "This answer is still playing when the connection drops,"
    assert heard.interrupted and heard.text == heard_prefix(first_segment, 1200 / end["duration_ms"])
    assert 0 < len(heard.text) < len(first_segment)
    assert again.of("ready")[0]["resumed"] is True
    assert again.of("ready")[0]["history"][-1] == {"role": "assistant", "text": heard.text}


def test_set_character_switches_to_a_new_conversation_with_the_other_character(tmp_path, llm):
    characters = tmp_path / "characters"
    characters.mkdir()
    koe = (CHARACTERS / "default.toml").read_text()
    (characters / "default.toml").write_text(koe)
    luna = koe.replace('name = "Koe"', 'name = "Luna"').replace(
        "Hi, I'm Koe. What shall we talk about?", "Luna here."
    )
    (characters / "luna.toml").write_text(luna)
    engines = engines_for(llm)
    engines.load_character = lambda name: find_character(characters, name)
    llm.script(Reply("Hello from Koe."), Reply("Hello from Luna."))

    async def scenario():
        async with make_server(tmp_path, llm, engines=engines) as server:
            client = await Client.open(server)
            await client.send({"type": "text_input", "text": "hi Koe"})
            await client.until("response_end", report_finished)
            await client.send({"type": "set_character", "character": "luna"})
            ready = await client.until("ready")
            await client.send({"type": "text_input", "text": "hi Luna"})
            end = await client.until("response_end", report_finished)
            await client.send({"type": "set_character", "character": "nobody"})
            error = await client.until("error")
            await client.send({"type": "ping", "t": 1})
            await client.until("pong")
            return client, ready, end, error, server.sessions[client.session]

    client, ready, end, error, session = run(scenario())
    assert ready["session"] == client.session and ready["resumed"] is False
    assert ready["character"]["id"] == "luna" and ready["character"]["name"] == "Luna"
    assert ready["history"] == [] and end["heard"] == "Hello from Luna."
    # Luna's conversation starts from scratch: her persona, none of what was said to Koe.
    luna_request = llm.requests[1]["messages"]
    assert "Luna" in luna_request[0]["content"] and all("hi Koe" not in m["content"] for m in luna_request)
    assert [m.text for m in session.history] == ["hi Luna", "Hello from Luna."]
    assert error["code"] == "unknown_character" and "no character 'nobody'" in error["message"]
    assert session.character.id == "luna"  # a failed switch keeps the current character
    assert sorted(f.parent.name for f in (tmp_path / "history").glob("*/*.jsonl")) == ["default", "luna"]


def test_static_demo_page_is_served(tmp_path, llm):
    import urllib.error
    import urllib.request

    async def scenario():
        async with make_server(tmp_path, llm) as server:

            def get(path):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
                        return r.status, r.headers["Content-Type"], r.read()
                except urllib.error.HTTPError as exc:
                    return exc.code, None, b""

            paths = ("/", "/app.js", "/../server.py", "/ws", "/__init__.py")
            return [await asyncio.to_thread(get, path) for path in paths]

    index, script, traversal, ws_plain, python = run(scenario())
    assert index[0] == 200 and index[1].startswith("text/html") and b"<script" in index[2]
    assert script[0] == 200 and "javascript" in script[1]
    assert traversal[0] == 404 and ws_plain[0] == 404 and python[0] == 404


# ------------------------------------------------------------------------------ the real TTS engine
def test_full_turn_with_the_tiny_test_voice(tmp_path, llm):
    """The GPT-SoVITS engine (tts.engine) behind `koe serve --voice local`, with the tiny test voice."""
    import tts_voice
    from agent.character import Character
    from agent.serve_cli import CharacterVoices
    from tts.engine import TtsEngine

    tts_voice.require_fixtures()
    character = Character.model_validate({
        "name": "Tiny", "persona": "A test voice.", "language": "en",
        "voice": {"gpt_weights": str(tts_voice.PARITY / "t2s_v2.ckpt"),
                  "sovits_weights": str(tts_voice.PARITY / "sovits_v2.pth"),
                  "ref_audio": str(tts_voice.PIPELINE / "refs" / "ref_c_32k.wav"), "ref_text": tts_voice.REF_TEXT},
        "emotions": {"neutral": {"expression": "neutral"}, "happy": {"expression": "smile"}},
    })  # fmt: skip
    character.id = "tiny"
    settings = TtsConfig(top_k=1, seed=7)  # greedy: the random-weight voice ends its sentences quickly

    def load(spec, clips):  # as TtsEngine.load: clips and text frontend ready before the first turn
        engine = TtsEngine(tts_voice.pipeline(), spec, settings)
        engine.prepare(clips)
        return engine

    voices = CharacterVoices(load)
    engine = voices.engine(character)
    llm.script(Reply("[happy] Good morning."))

    async def scenario():
        engines = Engines(
            stream_reply=LlmClient(LlmConfig(base_url=llm.url, model=MODEL)).stream,
            synthesize=voices.synthesize,
            sample_rate=engine.sample_rate,
            load_character=lambda name: character,
            default_character="tiny",
        )
        async with make_server(tmp_path, llm, engines=engines) as server:
            client = await Client.open(server, hello={"audio_rate": None})
            await client.send({"type": "text_input", "text": "hello"})
            end = await client.until("response_end", report_finished)
            return client, end

    client, end = run(scenario())
    assert client.of("ready")[0]["audio"]["rate"] == engine.sample_rate == 32000
    assert end["heard"] == "Good morning." and end["error"] is None
    assert client.of("segment_start")[0]["expression"] == "smile"
    samples = np.concatenate([f.samples for f in client.frames])
    assert client.of("segment_end")[0]["duration_ms"] == round(1000 * len(samples) / 32000) > 0
    assert np.abs(samples).max() > 0


def test_koe_serve_command_refuses_an_open_address_without_a_token(tmp_path, monkeypatch):
    import argparse

    from agent import serve_cli
    from agent.config import CharacterConfig, KoeConfig

    monkeypatch.delenv("KOE_TOKEN", raising=False)
    parser = argparse.ArgumentParser(prog="koe")
    serve_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--voice", "tone", "--no-asr"])
    config = KoeConfig(
        llm=LlmConfig(base_url="http://127.0.0.1:9/v1"), character=CharacterConfig(characters_dir=CHARACTERS)
    )
    with pytest.raises(KoeError, match=r"set a token \(\[server\] token or \$KOE_TOKEN\) or bind 127.0.0.1"):
        args.handler(args, config)
    args = parser.parse_args(["serve", "--character", "nobody", "--voice", "tone", "--no-asr"])
    with pytest.raises(KoeError, match="no character 'nobody'"):
        args.handler(args, config)
