"""Conversation pipeline overhead: user text in -> first piece handed to `speak`, with instant fakes.

The LLM and the voice cost nothing here, so the numbers are koe's own overhead per turn: building the
context (system prompt, history window), the openai client and HTTP (for the server rows), the stream
filter, segmenter, tag and markdown cleanup, and the hand-over to `speak`. Each row runs --turns turns
of one `Conversation` (history written to a temporary folder) after 10 warm-up turns.

    .venv/bin/python benchmarks/bench_turn.py                # 200 turns per row
    .venv/bin/python benchmarks/bench_turn.py --turns 500 --history 400

Rows:
- in-process LLM: an async generator yields the reply tokens at once (no HTTP): pure pipeline cost.
- fake HTTP LLM: the same tokens from tests/fake_llm_server.py on 127.0.0.1 through the openai client.
- ... + long history: the HTTP row with --history messages already in the conversation.

Columns: first piece p50/p95/mean (ms) from `respond(user_text)` to the first `speak(piece)` call, and
the whole turn p50 (ms) up to the history write.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent.character import find_character  # noqa: E402
from agent.config import LlmConfig  # noqa: E402
from agent.conversation import Conversation  # noqa: E402
from agent.history import HistoryStore, Message  # noqa: E402
from agent.llm import LlmClient  # noqa: E402
from benchmarks.tables import print_table  # noqa: E402
from fake_llm_server import MODEL, FakeLlmServer, Reply, tokenize  # noqa: E402

REPLY = (
    "<think>The user says hello; answer warmly.</think>[happy] Hello there! It's **really** nice to hear "
    "from you, e.g. on a day like this. [neutral] What would you like to talk about today? 😊"
)
WARMUP = 10


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run_turns(conversation: Conversation, turns: int) -> tuple[list[float], list[float]]:
    first, total = [], []
    for n in range(WARMUP + turns):
        handed: list[float] = []

        async def speak(piece, handed=handed) -> None:
            handed.append(time.perf_counter())
            piece.heard(1.0)  # instant playback

        started = time.perf_counter()
        result = await conversation.respond(f"hello number {n}", speak)
        ended = time.perf_counter()
        if result.error or not handed:
            raise SystemExit(f"turn {n} failed: {result.error}")
        if n >= WARMUP:
            first.append((handed[0] - started) * 1000)
            total.append((ended - started) * 1000)
    return first, total


def in_process_stream(tokens: list[str]):
    async def stream(messages):
        for token in tokens:
            yield token

    return stream


def prefill(conversation: Conversation, messages: int) -> None:
    for n in range(messages // 2):
        conversation.log.add(
            Message("user", f"Earlier question {n} about something long enough to count."),
            Message("assistant", f"Earlier answer {n}, with a few more words to make it realistic."),
        )


async def bench(turns: int, history: int) -> list[list]:
    character = find_character(ROOT / "characters", "default")
    tokens = tokenize(REPLY)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FakeLlmServer() as server:
        store = HistoryStore(Path(tmp), "default")
        llm = LlmClient(LlmConfig(base_url=server.url, model=MODEL))
        setups = [
            ("in-process LLM", in_process_stream(tokens), 0),
            ("fake HTTP LLM", llm.stream, 0),
            (f"fake HTTP LLM + {history} messages of history", llm.stream, history),
        ]
        for name, stream, prior in setups:
            conversation = Conversation(character, stream, store.new())
            prefill(conversation, prior)
            server.script(*[Reply(tokens) for _ in range(WARMUP + turns)] if stream == llm.stream else [])
            first, total = await run_turns(conversation, turns)
            rows.append(
                [
                    name,
                    turns,
                    percentile(first, 0.5),
                    percentile(first, 0.95),
                    statistics.fmean(first),
                    percentile(total, 0.5),
                ]
            )
        await llm.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--history", type=int, default=200, help="messages already in the long-history row")
    args = parser.parse_args()
    rows = asyncio.run(bench(args.turns, args.history))
    print_table(
        "user text -> first piece handed to speak (instant fake LLM and voice)",
        ["setup", "turns", "first p50 ms", "first p95 ms", "first mean ms", "turn p50 ms"],
        rows,
    )


if __name__ == "__main__":
    main()
