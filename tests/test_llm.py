"""The LLM client against a real OpenAI-compatible streaming server on 127.0.0.1 with injected faults.

Every fault must end in an `LlmError` whose message says what happened, and the next request on the
same client must work. Timeouts are generous except where a test is about one (the machine is shared).
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from agent.config import LlmConfig
from agent.errors import KoeError
from agent.llm import LlmClient, LlmError, LlmStreamBroken
from fake_llm_server import MODEL, FakeLlmServer, Reply

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
ECHO = ["You", " said:", " hi."]  # the server's reply when nothing is scripted


@pytest.fixture
def server():
    with FakeLlmServer() as s:
        yield s


def client_for(server: FakeLlmServer, **options) -> LlmClient:
    settings = {"base_url": server.url, "model": MODEL, "retries": 2, "first_token_timeout_s": 20.0} | options
    return LlmClient(LlmConfig(**settings))


def run(server: FakeLlmServer, scenario, **options):
    """Run `scenario(client)` on a fresh client that is closed afterwards, on one event loop."""

    async def main():
        async with client_for(server, **options) as client:
            return await scenario(client)

    return asyncio.run(main())


async def collect(client: LlmClient, messages=MESSAGES) -> list[str]:
    return [text async for text in client.stream(messages)]


async def collect_until_error(client: LlmClient) -> tuple[list[str], LlmError]:
    got = []
    with pytest.raises(LlmError) as caught:
        async for text in client.stream(MESSAGES):
            got.append(text)
    return got, caught.value


def test_streams_the_reply_and_sends_every_configured_field(server, monkeypatch):
    monkeypatch.setenv("KOE_TEST_LLM_KEY", "sk-test-123")
    server.script(Reply("Hello there. How are you?"))
    options = {
        "api_key_env": "KOE_TEST_LLM_KEY",
        "temperature": 0.3,
        "max_tokens": 77,
        "extra_body": {"top_k": 40},
    }
    assert run(server, collect, **options) == ["Hello", " there.", " How", " are", " you?"]
    body = server.requests[0]
    assert body["model"] == MODEL and body["stream"] is True and body["messages"] == MESSAGES
    assert (body["temperature"], body["max_tokens"], body["top_k"]) == (0.3, 77, 40)
    assert server.authorization == ["Bearer sk-test-123"]


def test_a_5xx_before_the_first_token_is_retried(server):
    server.script(Reply(status=500), Reply(status=502), Reply("Recovered."))
    assert run(server, collect, retries=2) == ["Recovered."]
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    "status,message",
    [
        (503, "failed with HTTP 503 and retries ran out"),
        (429, "rate limiting (HTTP 429) and retries ran out"),
    ],
)
def test_retries_that_run_out_give_a_clear_message_and_the_next_turn_works(server, status, message):
    async def scenario(client):
        server.script(Reply(status=status), Reply(status=status))
        got, error = await collect_until_error(client)
        assert got == [] and message in str(error) and server.url in str(error)
        assert not isinstance(error, LlmStreamBroken)
        assert len(server.requests) == 2  # one try + one retry
        assert await collect(client) == ECHO

    run(server, scenario, retries=1)


@pytest.mark.parametrize(
    "status,message",
    [(401, "rejected the API key (HTTP 401)"), (404, "does not know model 'fake-model' (HTTP 404)")],
)
def test_client_errors_are_not_retried(server, status, message):
    server.script(Reply(status=status))
    _, error = run(server, collect_until_error, retries=3)
    assert message in str(error)
    assert len(server.requests) == 1


def test_a_slow_first_token_times_out_and_the_next_turn_works(server):
    async def scenario(client):
        assert await collect(client) == ECHO  # a warm client: the timeout below measures the server only
        client.config.first_token_timeout_s = 0.5
        server.script(Reply("Too late.", first_token_delay_s=10.0))
        started = time.perf_counter()
        got, error = await collect_until_error(client)
        assert time.perf_counter() - started < 5.0  # it gave up; it did not wait for the token
        assert got == [] and "no reply within 0.5 s" in str(error) and "first_token_timeout_s" in str(error)
        client.config.first_token_timeout_s = 20.0
        assert await collect(client) == ECHO

    run(server, scenario, retries=0)


def test_reasoning_is_not_yielded_but_keeps_the_first_token_timeout_at_bay(server):
    async def scenario(client):
        await collect(client)  # warm up
        client.config.first_token_timeout_s = 0.5
        # reasoning starts at once; the answer comes 1.5 s later, long after the first-token timeout
        server.script(Reply("Answer.", reasoning=["Let", " me", " think"], token_delay_s=0.5))
        return await collect(client)

    assert run(server, scenario) == ["Answer."]


def test_a_stream_cut_mid_sentence_keeps_what_was_said_and_the_next_turn_works(server):
    async def scenario(client):
        server.script(Reply("Hello there. How are you doing today?", cut_after=3))
        got, error = await collect_until_error(client)
        assert got == ["Hello", " there.", " How"]
        assert isinstance(error, LlmStreamBroken)
        assert "broke off after 16 characters" in str(error) and "connection lost" in str(error)
        assert len(server.requests) == 1  # never retried once words were out
        assert await collect(client) == ECHO

    run(server, scenario)


def test_an_unreachable_server_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed

    async def scenario():
        async with LlmClient(LlmConfig(base_url=f"http://127.0.0.1:{port}/v1", retries=0)) as client:
            return await collect_until_error(client)

    _, error = asyncio.run(scenario())
    assert f"cannot reach the LLM at http://127.0.0.1:{port}/v1" in str(error) and "base_url" in str(error)


def test_cancelling_the_consumer_closes_the_stream_at_once(server):
    server.script(Reply("word " * 300, token_delay_s=0.01))

    async def scenario(client):
        got = []

        async def consume():
            async for text in client.stream(MESSAGES):
                got.append(text)

        task = asyncio.create_task(consume())
        while len(got) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        deadline = time.perf_counter() + 10
        while not server.abandoned and time.perf_counter() < deadline:  # noticed on its next write
            await asyncio.sleep(0.01)
        return got

    got = run(server, scenario)
    assert server.abandoned == 1 and server.completed == 0
    assert len(got) < 300


def test_list_models(server):
    assert run(server, lambda client: client.list_models()) == [MODEL]


def test_the_openai_api_without_a_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("KOE_NO_SUCH_KEY", raising=False)
    with pytest.raises(KoeError, match=r"no API key for the OpenAI API: set \$KOE_NO_SUCH_KEY"):
        LlmClient(LlmConfig(api_key_env="KOE_NO_SUCH_KEY"))
