"""One reply turn end to end: the real fake-LLM HTTP server, the real segmenter, a fake voice.

Checks what the listener gets (ordered, clean pieces, emotion events, first audio while the LLM is still
writing), the small queue between TTS and playback, barge-in (LLM stream closed at once, only the heard
part kept, marked interrupted) and that every LLM fault ends the turn with a message while the next
turn works.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from agent.character import find_character
from agent.config import LlmConfig
from agent.conversation import Conversation
from agent.history import HistoryStore
from agent.llm import LlmClient
from agent.turn import Piece, Turn, heard_prefix, join_pieces
from fake_llm_server import MODEL, FakeLlmServer, Reply
from fake_voice import FakeVoice

ROOT = Path(__file__).resolve().parent.parent
CHARACTER = find_character(ROOT / "characters", "default")
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def server():
    with FakeLlmServer() as s:
        yield s


_clients: list[LlmClient] = []  # closed by run() on the loop that used them


def llm_for(server: FakeLlmServer, **options) -> LlmClient:
    settings = {"base_url": server.url, "model": MODEL, "retries": 1, "first_token_timeout_s": 20.0} | options
    _clients.append(LlmClient(LlmConfig(**settings)))
    return _clients[-1]


def run(scenario):
    async def main():
        try:
            return await scenario()
        finally:
            while _clients:
                await _clients.pop().close()

    return asyncio.run(main())


async def until(condition, timeout: float = 10.0, what: object = None) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise AssertionError(
                f"condition not reached in {timeout} s: {what() if callable(what) else what}"
            )
        await asyncio.sleep(0.005)


def test_a_reply_is_spoken_piece_by_piece_clean_and_with_emotion_events(server):
    server.script(
        Reply(
            "<think>They greet me.</think>[happy] Hello there! **Nice** to meet you 😀. "
            "[sad] But I'm tired, e.g. sleepy.\n```\ncode()\n```\nBye.",
            token_delay_s=0.03,
        )
    )
    events = []

    async def scenario():
        voice = FakeVoice()
        still_writing = []

        async def speak(piece: Piece) -> None:
            still_writing.append(server.completed == 0)
            await voice.speak(piece)

        turn = Turn(CHARACTER, llm_for(server).stream, MESSAGES, speak, on_event=events.append)
        result = await turn.run()
        await voice.aclose()
        return result, still_writing

    result, still_writing = run(scenario)
    texts = ["Hello there!", "Nice to meet you.", "But I'm tired, e.g. sleepy.", "Bye."]
    assert [p.text for p in result.pieces] == texts
    assert [p.emotion for p in result.pieces] == ["happy", "happy", "sad", "sad"]
    assert result.heard == result.reply == " ".join(texts)
    assert result.emotions == ["happy", "sad"] and not result.interrupted and result.error is None
    assert still_writing[0] is True  # the first piece was handed over while the LLM was still streaming
    assert result.first_piece_s is not None and result.first_piece_s < 2.0
    emotion_events = [e for e in events if e["type"] == "emotion"]
    assert emotion_events == [
        {"type": "emotion", "tag": "happy", "expression": "smile", "piece": 0},
        {"type": "emotion", "tag": "sad", "expression": "sad", "piece": 2},
    ]
    assert [e["text"] for e in events if e["type"] == "piece"] == texts
    assert events[-1] == {"type": "end", "interrupted": False, "heard": result.heard}


def test_at_most_max_ahead_pieces_wait_for_playback_and_tts_overlaps_playback(server):
    server.script(Reply("One. Two. Three. Four. Five. Six."))

    async def scenario():
        voice = FakeVoice(synth_s=0.01, play_s=0.05)
        unheard_at_handover = []

        async def speak(piece: Piece) -> None:
            unheard_at_handover.append(sum(not p.played for p in voice.spoken))
            await voice.speak(piece)

        result = await Turn(CHARACTER, llm_for(server).stream, MESSAGES, speak, max_ahead=2).run()
        await voice.aclose()
        return result, voice.log, unheard_at_handover

    result, log, unheard = run(scenario)
    assert result.heard == "One. Two. Three. Four. Five. Six."
    assert max(unheard) <= 1  # one playing + the one being synthesised = max_ahead 2
    when = {(what, index): t for what, index, t in log}
    for k in range(5):
        assert when["synth_start", k + 1] < when["play_end", k]  # the next piece is prepared during playback
        assert when["play_end", k] <= when["play_start", k + 1]  # and played strictly in order


def test_barge_in_closes_the_llm_stream_and_keeps_only_what_was_heard(server, tmp_path):
    server.script(
        Reply("Alpha beta gamma. Delta epsilon zeta. " + "More words here. " * 300, token_delay_s=0.01)
    )

    async def scenario():
        voice = FakeVoice(play_s=0.8, steps=4)  # 0.2 s per step: room for a busy machine
        conversation = Conversation(
            CHARACTER, llm_for(server).stream, HistoryStore(tmp_path, "default").new()
        )
        task = asyncio.create_task(conversation.respond("talk", voice.speak, stop_playback=voice.stop))
        # half of piece 2 heard
        await until(
            lambda: len(voice.spoken) >= 2 and voice.spoken[1].heard_text,
            what=lambda: (voice.log, task.done() and task.result().error, server.requests),
        )
        conversation.interrupt()
        result = await task
        stopped = voice.stopped
        await until(lambda: server.abandoned == 1)
        await voice.aclose()
        return result, stopped, conversation

    result, stopped, conversation = run(scenario)
    assert result.interrupted and result.error is None
    assert stopped == 1 and server.completed == 0
    assert result.heard.startswith("Alpha beta gamma.") and len(result.heard) < len(result.reply)
    assert "zeta" not in result.heard  # the second piece was cut off after a quarter of it
    user, reply = conversation.log.messages
    assert (user.role, user.text) == ("user", "talk")
    assert reply.text == result.heard and reply.interrupted
    saved = [json.loads(line) for line in conversation.log.path.read_text().splitlines()]
    assert saved[-1]["interrupted"] is True and saved[-1]["text"] == result.heard
    # the next request tells the LLM where it was cut off
    assert conversation.messages_for("sorry?")[-2] == {
        "role": "assistant",
        "content": result.heard + " [interrupted]",
    }


def test_cancelling_the_task_from_outside_still_records_the_heard_part(server, tmp_path):
    server.script(Reply("First sentence here. " * 30, token_delay_s=0.01))

    async def scenario():
        voice = FakeVoice(play_s=0.05)
        conversation = Conversation(
            CHARACTER, llm_for(server).stream, HistoryStore(tmp_path, "default").new()
        )
        task = asyncio.create_task(conversation.respond("go", voice.speak, stop_playback=voice.stop))
        await until(lambda: any(p.played for p in voice.spoken))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await voice.aclose()
        return conversation

    conversation = run(scenario)
    reply = conversation.log.messages[-1]
    assert reply.interrupted and reply.text.startswith("First sentence here.")


FAULTS = {
    "http 500": ([Reply(status=500), Reply(status=500)], "failed with HTTP 500 and retries ran out", ""),
    "http 429": ([Reply(status=429), Reply(status=429)], "rate limiting (HTTP 429)", ""),
    "slow first token": ([Reply("Late.", first_token_delay_s=10)], "no reply within 0.5 s", ""),
    "cut mid-sentence": ([Reply("Hello there. How are you", cut_after=4)], "broke off", "Hello there."),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_every_llm_fault_ends_the_turn_with_a_message_and_the_next_turn_works(server, tmp_path, fault):
    replies, message, heard = FAULTS[fault]

    async def scenario():
        voice = FakeVoice()
        events = []
        llm = llm_for(server)
        assert [text async for text in llm.stream(MESSAGES)]  # warm: timeouts measure the server only
        conversation = Conversation(CHARACTER, llm.stream, HistoryStore(tmp_path, "default").new())
        server.script(*replies)
        llm.config.first_token_timeout_s = 0.5
        failed = await conversation.respond("first", voice.speak, on_event=events.append)
        llm.config.first_token_timeout_s = 20.0
        after = await conversation.respond("second", voice.speak)
        await voice.aclose()
        return failed, after, events, conversation

    failed, after, events, conversation = run(scenario)
    assert message in failed.error and failed.heard == heard and not failed.interrupted
    assert [e["message"] for e in events if e["type"] == "error"] == [failed.error]
    assert after.error is None and after.heard == "You said: second."
    assert [m.text for m in conversation.log.messages] == ["first", heard, "second", "You said: second."]
    assert conversation.log.messages[1].error == failed.error


def test_a_failing_voice_stops_the_llm_and_ends_the_turn(server):
    server.script(Reply("One. Two. Three. " * 30, token_delay_s=0.01))

    async def scenario():
        voice = FakeVoice(fail_on=1)
        result = await Turn(CHARACTER, llm_for(server).stream, MESSAGES, voice.speak).run()
        await until(lambda: server.abandoned == 1)
        await voice.aclose()
        return result

    result = run(scenario)
    assert result.error == "TTS failed on piece 1"
    assert result.heard == "One."


def test_greeting_starts_a_new_conversation_only(server, tmp_path):
    async def scenario():
        voice = FakeVoice()
        store = HistoryStore(tmp_path, "default")
        conversation = Conversation(CHARACTER, llm_for(server).stream, store.new())
        greeted = await conversation.greet(voice.speak)
        again = await Conversation(CHARACTER, llm_for(server).stream, store.resume()).greet(voice.speak)
        await voice.aclose()
        return greeted, again, store

    greeted, again, store = run(scenario)
    assert greeted.heard == CHARACTER.greeting and again is None
    assert [(m.role, m.text) for m in store.open("last").messages] == [("assistant", CHARACTER.greeting)]
    assert server.requests == []  # the greeting needs no LLM


def test_turns_that_leave_the_window_are_summarised(server, tmp_path):
    async def scenario():
        voice = FakeVoice()
        stream = llm_for(server).stream
        conversation = Conversation(
            CHARACTER, stream, HistoryStore(tmp_path, "default").new(), history_turns=1, summarize=True
        )
        for n in range(3):
            await conversation.respond(f"fact {n}", voice.speak)
            await conversation.aclose()
        await voice.aclose()
        return conversation

    server.script(
        Reply("Noted zero."), Reply("Noted one."), Reply("Noted two."), Reply("User told facts 0 and 1.")
    )
    conversation = run(scenario)
    assert conversation.log.summary == "User told facts 0 and 1." and conversation.log.summary_covers == 4
    summary_request = server.requests[3]["messages"][1]["content"]
    assert "user: fact 0" in summary_request and "assistant: Noted one." in summary_request
    # the next turn's system prompt carries the summary; the window holds only the last turn
    messages = conversation.messages_for("next")
    assert "Summary of the earlier conversation: User told facts 0 and 1." in messages[0]["content"]
    assert [m["content"] for m in messages[1:]] == ["fact 2", "Noted two.", "next"]
    reloaded = HistoryStore(tmp_path, "default").open("last")
    assert (reloaded.summary, reloaded.summary_covers) == (conversation.log.summary, 4)


@pytest.mark.parametrize(
    "text,fraction,expected",
    [
        ("Hello there my friend.", 0.5, "Hello there"),
        ("Hello there my friend.", 0.0, ""),
        ("Hello there my friend.", 0.2, ""),  # "Hell" is not a heard word
        ("Hello there my friend.", 1.0, "Hello there my friend."),
        ("你好，今天天气很好。", 0.5, "你好，今天"),
    ],
)
def test_heard_fraction_counts_whole_words(text, fraction, expected):
    assert heard_prefix(text, fraction) == expected


def test_heard_can_be_reported_as_text_and_pieces_join_by_script():
    piece = Piece(0, "Hello there.", None, None)
    piece.heard("Hello")
    assert piece.heard_text == "Hello" and not piece.played
    piece.heard("Hello there.")
    assert piece.played
    assert join_pieces(["Hello.", "你好。", "今天。", "OK."]) == "Hello.你好。今天。OK."
    assert join_pieces(["Hi.", "", "Bye."]) == "Hi. Bye."
