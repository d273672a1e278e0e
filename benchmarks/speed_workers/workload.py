"""The shared workload of `benchmarks/speed.py` and what every engine worker needs to report on it.

NumPy and the standard library only: the peer workers import this from their own virtual
environments. Every engine does the same work on the same seeded inputs: 60 phones (20 prompt + 40
target) with zero BERT features and 125 prompt tokens (5 s), exactly 100 generated tokens (4 s of
audio, EOS masked), then SoVITS renders 100 codes against the same 5 s reference clip.

The machine is shared: another busy process makes a 2-thread run 5-45x slower. So each run waits
for a quiet machine first (`wait_quiet`) and records the CPU time that other processes used while
it ran (`LoadMeter`, from /proc/stat); the driver drops disturbed runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_PROMPT_PHONES = 20
N_TARGET_PHONES = 40
N_PROMPT_TOKENS = 125  # 5 s at 25 tokens/s
N_DECODE_TOKENS = 100  # 4 s of generated audio
STREAM_CHUNK = 16  # tokens in the first streamed chunk
SAMPLE_RATE = 32000
REF_SECONDS = 5.0
PHONE_VOCAB = 732
SEMANTIC_VOCAB = 1024
SEED = 1234
# the whole-pipeline runs (koe's `TTSPipeline.run`, the official `TTS.run()`): reference transcript
# and sentences
PROMPT_TEXT = "Every morning the baker opens his little shop before the sun comes up."
SHORT = "The quick brown fox jumps over the lazy dog near the river bank."  # 13 words
SHORT_ZH = "今天早上我和朋友一起去河边的公园散步。"  # 18 characters, about 10 words
# the NLTK tagger data the English front ends need (the test copy beside the repo)
NLTK_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "nltk_data"
RESULT_PREFIX = "RESULT "  # the worker's last stdout line: RESULT {json}


def inputs() -> dict[str, np.ndarray]:
    """The seeded inputs every engine gets (int64 ids, float32 audio)."""
    rng = np.random.default_rng(SEED)
    return {
        "prompt_phones": rng.integers(1, PHONE_VOCAB, N_PROMPT_PHONES).astype(np.int64),
        "target_phones": rng.integers(1, PHONE_VOCAB, N_TARGET_PHONES).astype(np.int64),
        "prompt_tokens": rng.integers(0, SEMANTIC_VOCAB, N_PROMPT_TOKENS).astype(np.int64),
        "codes": rng.integers(0, SEMANTIC_VOCAB, N_DECODE_TOKENS).astype(np.int64),
        "reference": (rng.standard_normal(int(REF_SECONDS * SAMPLE_RATE)) * 0.1).astype(np.float32),
        "ssl": rng.standard_normal((1, 768, 2 * N_PROMPT_TOKENS)).astype(np.float32),
    }


# ------------------------------------------------------------------------------ machine load
_HZ = os.sysconf("SC_CLK_TCK")


def machine_busy_ticks() -> int:
    """CPU ticks spent by everyone since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def own_ticks() -> int:
    """CPU ticks of this process, all threads, children that were waited for included."""
    with open("/proc/self/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return int(v[11]) + int(v[12]) + int(v[13]) + int(v[14])


def foreign_cores(busy_ticks: int, own: int, seconds: float) -> float:
    """Mean number of cores other processes kept busy: (machine ticks - own ticks) / Hz / wall seconds."""
    return max(0.0, (busy_ticks - own) / _HZ / max(seconds, 1e-6))


@dataclass
class LoadMeter:
    """Foreign CPU load between `LoadMeter.start()` and `.foreign()`."""

    wall: float
    busy: int
    own: int

    @classmethod
    def start(cls) -> LoadMeter:
        return cls(time.perf_counter(), machine_busy_ticks(), own_ticks())

    def foreign(self) -> float:
        return foreign_cores(
            machine_busy_ticks() - self.busy, own_ticks() - self.own, time.perf_counter() - self.wall
        )


def wait_quiet(threshold: float, max_wait: float, window: float = 0.5, quiet_windows: int = 1) -> float:
    """Wait until others used < `threshold` cores for `quiet_windows` windows in a row (at most
    `max_wait` s); returns the seconds waited."""
    started = time.perf_counter()
    quiet = 0
    while quiet < quiet_windows and time.perf_counter() - started < max_wait:
        meter = LoadMeter.start()
        time.sleep(window)
        quiet = quiet + 1 if meter.foreign() < threshold else 0
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------- reporting
def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def median(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def step_times_ms(stamps: list[float]) -> list[float]:
    """Per-token decode times from the times each model pass returned its logits."""
    return [(b - a) * 1000 for a, b in zip(stamps, stamps[1:])]


def worker_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", required=True, help="folder with the random-weight voice files")
    parser.add_argument("--mode", default="fp32", help="engine mode (koe: the T2S precision)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs")
    parser.add_argument("--warm", type=int, default=1, help="warm-up runs, not reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=0.25, help="foreign cores below which a run starts")
    parser.add_argument("--max-wait", type=float, default=30.0, help="most seconds to wait before a run")
    parser.add_argument("--no-stream", action="store_true", help="skip the first-audio measurement")
    parser.add_argument("--no-pipeline", action="store_true", help="skip whole-pipeline runs (koe)")
    return parser.parse_args()


class Recorder:
    """Collects measured runs (warm-ups dropped) with their foreign load and prints the result."""

    def __init__(self, engine: str, mode: str, args: argparse.Namespace):
        self.args = args
        self.result: dict = {"engine": engine, "mode": mode, "runs": {}, "notes": [], "versions": {}}
        self.result["rss_start_mb"] = rss_mb()[0]

    def measure(self, name: str, fn) -> None:
        """Run `fn` (returning a dict of figures) warm + runs times, each after a quiet wait."""
        rows = self.result["runs"].setdefault(name, [])
        for i in range(self.args.warm + self.args.runs):
            waited = wait_quiet(self.args.quiet, self.args.max_wait, quiet_windows=2)
            meter = LoadMeter.start()
            figures = fn()
            figures.update(foreign=meter.foreign(), waited=waited)
            label = "warm" if i < self.args.warm else "run"
            shown = " ".join(f"{k} {v:.1f}" for k, v in figures.items() if isinstance(v, float))
            print(
                f"{self.result['engine']}-{self.result['mode']} {name} {label} {i}: {shown}", file=sys.stderr
            )
            if i >= self.args.warm:
                rows.append(figures)

    def note(self, text: str) -> None:
        self.result["notes"].append(text)
        print(f"note: {text}", file=sys.stderr)

    def loaded(self, seconds: float) -> None:
        self.result["load_s"] = seconds
        self.result["rss_loaded_mb"] = rss_mb()[0]

    def measure_engine(self, t2s, sovits, first_audio=None) -> None:
        """The engine-level figures every worker reports, then the engine's resident and peak memory."""
        self.measure("t2s", t2s)
        self.measure("sovits", sovits)
        if first_audio is not None:
            self.measure("stream", first_audio)
        self.result["rss_engine_mb"], self.result["rss_engine_peak_mb"] = rss_mb()

    def emit(self) -> None:
        self.result["rss_end_mb"], self.result["rss_peak_mb"] = rss_mb()
        print(RESULT_PREFIX + json.dumps(self.result), flush=True)


def skip(engine: str, mode: str, why: str) -> None:
    """Report that this engine/mode cannot run here, and why."""
    print(RESULT_PREFIX + json.dumps({"engine": engine, "mode": mode, "skipped": why}), flush=True)
