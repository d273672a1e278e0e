"""Avatar feed cost: latency the WebSocket server adds to audio, and server memory per connection.

The server runs in a child process (`--serve`) with the fake LLM server and a voice that stamps the
monotonic clock into the first samples of each 100 ms chunk it yields (the client asks for the voice's
own rate, so samples arrive unchanged). Clients in this process read the stamp from every frame:

1. Added latency: from a TTS chunk ready (yielded by the voice) to its frame received by a client on
   loopback, median / p95 / max, for 1 and 20 clients speaking at once.
2. Memory: the server's resident set growth per idle connection (after `ready`) and per active one
   (the peak while all of them receive a reply), for 1 and 20 clients.

    .venv/bin/python benchmarks/bench_ws.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

RATE = 32000
CHUNK = RATE // 10  # 100 ms, one frame each
REPLY = "This reply is long enough to stream a few seconds of audio to every client. " * 2


def stamp(audio: np.ndarray) -> np.ndarray:
    """Write time.monotonic_ns() into the first four samples (16 bits each)."""
    now = time.monotonic_ns()
    audio[:4] = np.array([(now >> (16 * k)) & 0xFFFF for k in range(4)], dtype=np.uint16).view(np.int16)
    return audio


def read_stamp(samples: np.ndarray) -> int:
    parts = samples[:4].view(np.uint16).astype(np.int64)
    return int(sum(int(parts[k]) << (16 * k) for k in range(4)))


async def stamped_voice(character, text: str, emotion):
    """3 seconds of hum per piece, one 100 ms chunk every 20 ms (a fast TTS), each stamped when ready."""
    t = np.arange(CHUNK) / RATE
    hum = (0.3 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    for _ in range(30):
        await asyncio.sleep(0.02)
        yield RATE, stamp(hum.copy())


def serve() -> None:
    """Child process: the server on a free port; prints it, then runs until stdin closes."""
    from agent.character import find_character
    from agent.config import LlmConfig, ServerConfig
    from agent.llm import LlmClient
    from agent.server import AvatarServer, Engines, Limits
    from fake_llm_server import MODEL, FakeLlmServer, Reply

    async def main() -> None:
        with FakeLlmServer() as llm:
            llm.script(*[Reply(REPLY) for _ in range(1000)])
            engines = Engines(
                stream_reply=LlmClient(LlmConfig(base_url=llm.url, model=MODEL)).stream,
                synthesize=stamped_voice,
                sample_rate=RATE,
                load_character=lambda name: find_character(ROOT / "characters", name),
            )
            import tempfile

            with tempfile.TemporaryDirectory() as history:
                server = AvatarServer(ServerConfig(), engines, Path(history), limits=Limits(), port=0)
                async with server:
                    print(server.port, flush=True)
                    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def open_client(port: int):
    from websockets.asyncio.client import connect

    ws = await connect(f"ws://127.0.0.1:{port}/ws", max_size=None)
    await ws.send(
        json.dumps(
            {
                "type": "hello",
                "version": 1,
                "capabilities": ["binary_audio", "playback_reports"],
                "audio_rate": RATE,
            }
        )
    )
    while json.loads(await ws.recv())["type"] != "ready":
        pass
    return ws


async def one_reply(ws, latencies: list[float]) -> None:
    """Ask, then read until response_end, reporting each segment played at once."""
    from agent import protocol as p

    await ws.send(json.dumps({"type": "text_input", "text": "talk"}))
    while True:
        frame = await ws.recv()
        if isinstance(frame, bytes):
            received = time.monotonic_ns()
            audio = p.unpack_audio(frame)
            if len(audio.samples) >= 4:
                latencies.append((received - read_stamp(audio.samples)) / 1e6)
            continue
        event = json.loads(frame)
        if event["type"] == "segment_end":
            await ws.send(json.dumps({"type": "playback_finished", "segment": event["segment"]}))
        elif event["type"] == "response_end":
            return


async def measure(port: int, pid: int, clients: int) -> dict:
    warm = await open_client(port)
    await one_reply(warm, [])
    await asyncio.sleep(0.3)
    base = rss_kib(pid)
    sockets = [await open_client(port) for _ in range(clients)]
    await asyncio.sleep(0.3)
    idle = rss_kib(pid)
    latencies: list[float] = []
    peak = idle
    replies = asyncio.gather(*(one_reply(ws, latencies) for ws in sockets))
    while not replies.done():
        peak = max(peak, rss_kib(pid))
        await asyncio.sleep(0.02)
    await replies
    for ws in [*sockets, warm]:
        await ws.close()
    latencies.sort()
    return {
        "clients": clients,
        "frames": len(latencies),
        "median_ms": statistics.median(latencies),
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
        "max_ms": latencies[-1],
        "idle_kib": (idle - base) / clients,
        "active_kib": (peak - idle) / clients,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 20])
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(child.stdout.readline())
        rows = [asyncio.run(measure(port, child.pid, n)) for n in args.clients]
    finally:
        child.stdin.close()
        child.wait(10)
    print("clients  frames  added latency ms (median / p95 / max)  server KiB per idle conn  per active conn")
    for r in rows:
        print(
            f"{r['clients']:7d}  {r['frames']:6d}  {r['median_ms']:8.2f} / {r['p95_ms']:6.2f} / {r['max_ms']:6.2f}"
            f"            {r['idle_kib']:10.0f}  {r['active_kib']:15.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
