"""Speed of the v2Pro speaker embedding and of one v4 CFM (DiT) Euler step, at the official sizes.

Random weights (speed does not depend on their values). Prints a table; times are the median of
`--repeats` runs after one warm-up run.

    .venv/bin/python benchmarks/bench_sv_v4.py                     # 5 s SV clip, 4 s of v4 mel, 1 thread
    .venv/bin/python benchmarks/bench_sv_v4.py --threads 2 --repeats 5 --cfm-seconds 8

Reference costs (spec 8): a DiT step is about 0.39 GFLOP per mel frame (100 frames per second of
audio); a v4 sentence runs `sample_steps` such steps (default 8 in the UI, 32 in the API) over the
prompt plus the target frames.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from tts.fbank import fbank
from tts.models.cfm import DiT, DiTConfig
from tts.models.sv import ERes2NetV2, SVConfig

MEL_FRAMES_PER_SECOND = 100  # v4: 32 kHz, hop 320
SV_RATE = 16000


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_sv(seconds: float, repeats: int) -> list[tuple[str, str, float]]:
    model = ERes2NetV2(SVConfig()).eval()
    wave = 0.1 * torch.randn(int(seconds * SV_RATE))
    feats = fbank(wave)[None]  # [1, T, 80]
    with torch.inference_mode():
        t_fbank = median_seconds(lambda: fbank(wave), repeats)
        t_net = median_seconds(lambda: model(feats), repeats)
    size = f"{seconds:g} s clip, {feats.shape[1]} frames"
    return [("SV fbank (80 bins)", size, t_fbank), ("SV ERes2NetV2 forward3 -> 20480-d", size, t_net)]


def bench_cfm_step(seconds: float, repeats: int) -> list[tuple[str, str, float]]:
    cfg = DiTConfig()
    dit = DiT(cfg).eval()
    T = int(seconds * MEL_FRAMES_PER_SECOND)
    x = torch.randn(1, T, cfg.mel_dim)
    prompt = torch.zeros(1, T, cfg.mel_dim)
    cond = torch.randn(1, T, cfg.text_dim)
    lengths, t, dt = torch.tensor([T]), torch.tensor([0.25]), torch.tensor([0.125])
    with torch.inference_mode():
        text = dit.embed_condition(cond)
        t_text = median_seconds(lambda: dit.embed_condition(cond), repeats)
        t_step = median_seconds(lambda: dit(x, prompt, text, lengths, t, dt), repeats)
    size = f"{seconds:g} s of mel, {T} frames"
    return [
        ("CFM condition embedding (once per call)", size, t_text),
        ("CFM Euler step (full DiT)", size, t_step),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sv-seconds", type=float, default=5.0)
    parser.add_argument("--cfm-seconds", type=float, default=4.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = bench_sv(args.sv_seconds, args.repeats) + bench_cfm_step(args.cfm_seconds, args.repeats)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} runs\n")
    print(f"| {'stage':<40} | {'input':<26} | {'time (ms)':>10} |")
    print(f"|{'-' * 42}|{'-' * 28}|{'-' * 12}|")
    for name, size, seconds in rows:
        print(f"| {name:<40} | {size:<26} | {seconds * 1000:>10.1f} |")


if __name__ == "__main__":
    main()
