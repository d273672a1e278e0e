"""Training speed of the full-size v2 models (random weights): steps per second and peak memory.

GPT part: one training step = forward + backward of the official loss on a batch of `--seconds`-long
clips (about 15 phones per second, 25 tokens per second) plus a ScaledAdam update, as
`koe voice train-gpt` runs it (fp16 autocast on CUDA, fp32 on CPU). Batch sizes 1/4/8 by default.
SoVITS part: one `koe voice train-sovits` update (discriminator then generator, official losses,
AdamW) on a batch of `--seconds`-long clips.

    .venv/bin/python benchmarks/bench_train.py                          # CPU (and CUDA when present)
    .venv/bin/python benchmarks/bench_train.py --device cpu --batch-sizes 1 4 --steps 2 --threads 2

Peak memory: on CUDA `torch.cuda.max_memory_allocated` of the configuration; on CPU the peak resident
size of a fresh process that runs only that configuration (model, optimiser state, activations and
the Python/torch runtime, about 0.2 GB of it).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tables import print_table  # noqa: E402
from training.gpt_train import GPTItem, GPTTrainingModule, collate  # noqa: E402
from training.scaled_adam import ScaledAdam  # noqa: E402
from tts.models.t2s import T2SConfig, T2SModel  # noqa: E402

PHONES_PER_SECOND, TOKENS_PER_SECOND = 15, 25


def _result(times: list[float], batch_size: int, device: torch.device) -> dict:
    """Median step time (first step = warm-up, dropped), throughput and peak memory."""
    step_s = sorted(times[1:])[len(times[1:]) // 2]
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        # Peak RSS of the process (Linux: KiB); `run_one` gives each CPU configuration its own process.
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "step_s": step_s,
        "steps_per_s": 1 / step_s,
        "items_per_s": batch_size / step_s,
        "peak_mb": peak_mb,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(step, steps: int, device: torch.device) -> list[float]:
    """Seconds of each of `steps + 1` calls of `step` (the first one warms up), peak memory reset first."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps + 1):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _batch(batch_size: int, seconds: float, device: torch.device) -> dict[str, torch.Tensor]:
    nx, ny = int(seconds * PHONES_PER_SECOND), int(seconds * TOKENS_PER_SECOND)
    items = [
        GPTItem(f"b{i}", torch.randint(0, 732, (nx,)), torch.randint(0, 1024, (ny,)), torch.randn(1024, nx))
        for i in range(batch_size)
    ]
    return {k: v.to(device) for k, v in collate(items, eos=1024).items()}


def bench_gpt(device: torch.device, batch_size: int, seconds: float, steps: int) -> dict:
    torch.manual_seed(0)
    module = GPTTrainingModule(T2SModel(T2SConfig())).to(device).train()
    optimizer = ScaledAdam(module.parameters(), lr=0.002, betas=(0.9, 0.95))
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if use_amp else contextlib.nullcontext
    batch = _batch(batch_size, seconds, device)

    def step() -> None:
        with autocast():
            out = module(**batch)
        scaler.scale(out.loss_sum).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return _result(_timed_steps(step, steps, device), batch_size, device)


# --- SoVITS (added with the SoVITS trainer) -------------------------------------------------------------


def bench_sovits(
    device: torch.device, batch_size: int, seconds: float, steps: int, version: str = "v2"
) -> dict:
    """One `koe voice train-sovits` update (D then G, official losses, AdamW) on full-size random models."""
    from training.discriminator import MultiPeriodDiscriminator, periods_for
    from training.sovits_data import collate as sovits_collate
    from training.sovits_train import SoVITSUpdate, official_config
    from tts.models.sovits import SynthesizerTrn
    from tts.spectrogram import linear_spectrogram
    from tts.weights.sovits import config_from_file

    torch.manual_seed(0)
    config = official_config(version)
    net_g = SynthesizerTrn(config_from_file(config, version), weight_norm=True, posterior=True).train()
    net_d = MultiPeriodDiscriminator(periods_for(version)).train()
    update = SoVITSUpdate(net_g, net_d, config, use_amp=device.type == "cuda").to(device)
    items = []
    for _ in range(batch_size):
        wav = 0.1 * torch.randn(int(seconds * 32000))
        spec = linear_spectrogram(wav[None], 2048, 640, 2048)[0]
        item = {"ssl": torch.randn(768, spec.shape[-1]), "spec": spec, "wav": wav,
                "text": torch.randint(0, 732, (int(seconds * PHONES_PER_SECOND),))}  # fmt: skip
        if version in ("v2Pro", "v2ProPlus"):
            item["sv"] = torch.randn(20480)
        items.append(item)
    batch = sovits_collate(items)
    return _result(_timed_steps(lambda: update.step(batch), steps, device), batch_size, device)


def run_one(stage: str, device_name: str, batch_size: int, seconds: float, steps: int, threads: int) -> dict:
    """One configuration; on CPU in a fresh process, so its peak RSS is this configuration's alone."""
    if device_name == "cpu":
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(_measure, stage, device_name, batch_size, seconds, steps, threads).result()
    result = _measure(stage, device_name, batch_size, seconds, steps, threads)
    torch.cuda.empty_cache()
    return result


def _measure(stage: str, device_name: str, batch_size: int, seconds: float, steps: int, threads: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    bench = bench_gpt if stage == "gpt" else bench_sovits
    return bench(torch.device(device_name), batch_size, seconds, steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=8.0, help="clip length of every batch item")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    parser.add_argument("--stages", nargs="+", choices=("gpt", "sovits"), default=["gpt", "sovits"])
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    titles = {
        "gpt": f"GPT (T2S v2, 77.6 M parameters), {args.seconds:.0f} s clips, ScaledAdam",
        "sovits": f"SoVITS v2 (G 51.3 M + D 46.7 M parameters), {args.seconds:.0f} s clips, AdamW, "
        "0.64 s decoded per item",
    }
    print(
        f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, {args.steps} timed steps"
    )
    header = ["device", "batch", "s/step", "steps/s", "items/s", "peak MB"]
    for stage in args.stages:
        rows = []
        for name in devices:
            for batch_size in args.batch_sizes:
                r = run_one(stage, name, batch_size, args.seconds, args.steps, args.threads)
                print(
                    f"  {stage} {name} batch {batch_size}: {r['step_s']:.3f} s/step",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(
                    [name, batch_size, r["step_s"], r["steps_per_s"], r["items_per_s"], round(r["peak_mb"])]
                )
        print_table(titles[stage], header, rows, digits=3)


if __name__ == "__main__":
    main()
