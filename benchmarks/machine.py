"""The machine's description and physical floors for the speed benchmark (`benchmarks/speed.py`).

A T2S decode step reads every weight once for one token, so it is bound by memory bandwidth: its
floor is (weight bytes + KV-cache bytes) / DRAM read bandwidth, per weight precision. The SoVITS
generator and the T2S prefill are bound by arithmetic: their floor is their FLOPs over the fp32 (or
bf16) GEMM throughput. Both rates are measured here, on this machine, in the same run as the engines,
because machines of this kind differ by up to 1.7x from one day to the next.

    .venv/bin/python benchmarks/machine.py            # prints the description, the rates and the floors
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "speed_workers"))

import workload as W  # noqa: E402

INTERESTING_FLAGS = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip
BANDWIDTH_MIB = 512  # buffer much larger than any last-level cache
GEMM_N = 2048
PREFILL_POSITIONS = W.N_PROMPT_PHONES + W.N_TARGET_PHONES + W.N_PROMPT_TOKENS  # 185
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}  # codes only (not the block scales)


# ------------------------------------------------------------------------------------ description
def describe() -> dict:
    """CPU model, core count, vector flags of interest, memory: what decides which fast path wins."""
    info: dict = {"machine": platform.machine(), "cores": len(os.sched_getaffinity(0))}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and "cpu" not in info:
                info["cpu"] = value.strip()
            elif key == "flags" and "flags" not in info:
                present = set(value.split())
                info["flags"] = [flag for flag in INTERESTING_FLAGS if flag in present]
    with open("/proc/meminfo") as f:
        info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    return info


def has_bf16_hardware(flags: list[str]) -> bool:
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ----------------------------------------------------------------------------------- model sizes
def t2s_decode_weights(dim: int = 512, layers: int = 24, ffn: int = 2048, vocab: int = 1025) -> int:
    """Weights one T2S decode step multiplies with: per layer qkv, out, ffn up and down; the output layer."""
    return layers * (3 * dim * dim + dim * dim + 2 * dim * ffn) + vocab * dim


def t2s_kv_bytes(positions: float, dim: int = 512, layers: int = 24) -> float:
    """fp32 keys and values a decode step reads at `positions` cached positions."""
    return 2 * layers * dim * positions * 4


def t2s_prefill_flops(positions: int = PREFILL_POSITIONS, dim: int = 512, layers: int = 24) -> float:
    """Matrix products of the prompt pass: 2 FLOPs per weight per position, plus the attention scores."""
    return 2.0 * positions * t2s_decode_weights(dim, layers) + layers * 4.0 * positions * positions * dim


def sovits_flops() -> float:
    """FLOPs of koe's SoVITS v2 `decode` on the workload (100 codes, 40 phones, 5 s reference), counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tts.models.sovits import SoVITSConfig, SynthesizerTrn

    torch.manual_seed(0)
    model = SynthesizerTrn(SoVITSConfig(version="v2")).eval()
    x = W.inputs()
    frames = int(W.REF_SECONDS * W.SAMPLE_RATE) // 640
    spec = torch.rand(1, 1025, frames)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.decode(
            torch.from_numpy(x["codes"]).view(1, 1, -1), torch.from_numpy(x["target_phones"])[None], [spec]
        )
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------- rates
def _best_seconds(fn, repeats: int, quiet: float, max_wait: float) -> tuple[float, list[float]]:
    """Best wall time of `fn` over `repeats` runs (one warm-up first), and each run's foreign load."""
    fn()
    times, foreign = [], []
    for _ in range(repeats):
        W.wait_quiet(quiet, max_wait, quiet_windows=2)
        meter = W.LoadMeter.start()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
        foreign.append(meter.foreign())
    return min(times), foreign


def measure_rates(threads: int = 2, repeats: int = 5, quiet: float = 0.25, max_wait: float = 15.0) -> dict:
    """DRAM read bandwidth, GEMM throughput and torch's own fp32 GEMV over the T2S decode matrices."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    rates: dict = {"threads": threads, "foreign": []}
    # Pages that were never written all map to one zero page and read from cache: fill first.
    buffer = torch.ones(BANDWIDTH_MIB * 2**20 // 4)
    best, foreign = _best_seconds(buffer.sum, repeats, quiet, max_wait)
    rates["dram_read_gbps"] = buffer.numel() * 4 / best / 1e9
    rates["foreign"] += foreign
    del buffer

    flags = describe()["flags"]
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not has_bf16_hardware(flags):
            rates["gemm_bf16_gflops"] = None  # emulated only: not a usable path here
            continue
        a = torch.randn(GEMM_N, GEMM_N, dtype=dtype)
        b = torch.randn(GEMM_N, GEMM_N, dtype=dtype)
        best, foreign = _best_seconds(lambda a=a, b=b: torch.mm(a, b), repeats, quiet, max_wait)
        rates[f"gemm_{name}_gflops"] = 2 * GEMM_N**3 / best / 1e9
        rates["foreign"] += foreign

    shapes = [(1536, 512), (512, 512), (2048, 512), (512, 2048)] * 24  # the decode step's matrices
    weights = [torch.randn(o, i) for o, i in shapes]
    vectors = {i: torch.randn(1, i) for i in (512, 2048)}

    def gemv() -> None:
        for w in weights:
            F.linear(vectors[w.shape[1]], w)

    best, foreign = _best_seconds(gemv, repeats, quiet, max_wait)
    rates["torch_gemv_fp32_ms"] = best * 1000
    rates["foreign"] += foreign
    return rates


# --------------------------------------------------------------------------------------- floors
def floors(rates: dict, sovits_gflop: float) -> dict:
    """Per-token, prefill, SoVITS, RTF and first-audio floors (ms) from the measured rates."""
    bandwidth = rates["dram_read_gbps"] * 1e9
    gemm = {"fp32": rates["gemm_fp32_gflops"], "bf16": rates.get("gemm_bf16_gflops")}
    weights = t2s_decode_weights()
    kv = t2s_kv_bytes(PREFILL_POSITIONS + W.N_DECODE_TOKENS / 2)  # mean over the 100 steps
    out: dict = {"t2s_decode_weights_m": weights / 1e6, "kv_mb": kv / 1e6, "sovits_gflop": sovits_gflop}
    for precision, size in WEIGHT_BYTES.items():
        out[f"step_ms_{precision}"] = (weights * size + kv) / bandwidth * 1000
    best_gemm = max(g for g in gemm.values() if g)
    out["prefill_ms"] = t2s_prefill_flops() / (gemm["fp32"] * 1e9) * 1000
    out["sovits_ms_fp32"] = sovits_gflop / gemm["fp32"] * 1000
    out["sovits_ms_best"] = sovits_gflop / best_gemm * 1000
    return out


def derived(floor: dict, precision: str, sovits_key: str = "sovits_ms_fp32") -> dict:
    """The whole-engine floors of one mode: RTF and first audio (prefill, 15 more tokens, 16-token SoVITS)."""
    step = floor[f"step_ms_{precision}"]
    sovits = floor[sovits_key]
    t2s = floor["prefill_ms"] + (W.N_DECODE_TOKENS - 1) * step
    speech_ms = W.N_DECODE_TOKENS / 25 * 1000
    first = floor["prefill_ms"] + (W.STREAM_CHUNK - 1) * step + sovits * W.STREAM_CHUNK / W.N_DECODE_TOKENS
    return {
        "prefill_ms": floor["prefill_ms"], "step_ms": step, "sovits_ms": sovits,
        "rtf": (t2s + sovits) / speech_ms, "first_audio_ms": first,
    }  # fmt: skip


def main() -> None:
    """Print the description, rates and floors as one RESULT line (what `speed.py` reads)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quiet", type=float, default=0.25)
    parser.add_argument("--max-wait", type=float, default=15.0, help="most seconds to wait before a repeat")
    args = parser.parse_args()
    rates = measure_rates(args.threads, args.repeats, args.quiet, args.max_wait)
    gflop = sovits_flops() / 1e9
    result = {"machine": describe(), "rates": rates, "floors": floors(rates, gflop)}
    print(json.dumps({k: v for k, v in result.items()}, indent=1), file=sys.stderr)
    print(W.RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
