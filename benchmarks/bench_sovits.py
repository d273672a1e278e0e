"""SoVITS v2 decode speed at full size (random weights): time, real-time factor, peak memory.

Builds the official v2 configuration (40.8 M inference parameters), decodes `--seconds` of audio
(25 semantic tokens per second, one 3 s reference) and prints one table row per device.

    .venv/bin/python benchmarks/bench_sovits.py                 # CPU, and CUDA when present
    .venv/bin/python benchmarks/bench_sovits.py --device cpu --seconds 4 --repeats 3 --threads 2

RTF = decode time / audio duration (below 1 is faster than real time). CPU peak memory is the
growth of the process's peak resident set during the run; CUDA peak memory is torch's allocator peak.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tts.models.sovits import SoVITSConfig, SynthesizerTrn  # noqa: E402

TOKENS_PER_SECOND = 25
SAMPLE_RATE = 32000


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench(device: str, seconds: float, repeats: int) -> dict:
    torch.manual_seed(0)
    model = SynthesizerTrn(SoVITSConfig(version="v2")).eval().to(device)
    codes = torch.randint(0, 1024, (1, 1, int(seconds * TOKENS_PER_SECOND)), device=device)
    text = torch.randint(0, 732, (1, int(seconds * 12)), device=device)
    reference = torch.rand(1, 1025, 150, device=device)  # 3 s reference spectrogram
    rss_before = _peak_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.decode(codes, text, [reference])  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        audio = model.decode(codes, text, [reference])
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    duration = audio.shape[-1] / SAMPLE_RATE
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mib() - rss_before
    best = min(times)
    return {"device": device, "audio_s": duration, "best_s": best, "rtf": best / duration, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio length to synthesize")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    print(
        f"SoVITS v2 full size, random weights, torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    print(f"{'device':<8}{'audio s':>9}{'decode s':>10}{'RTF':>8}{'peak MiB':>10}")
    for device in devices:
        r = bench(device, args.seconds, args.repeats)
        print(
            f"{r['device']:<8}{r['audio_s']:>9.2f}{r['best_s']:>10.3f}{r['rtf']:>8.3f}{r['peak_mib']:>10.0f}"
        )


if __name__ == "__main__":
    main()
