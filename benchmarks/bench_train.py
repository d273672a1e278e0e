"""Training speed of the full-size v2 models (random weights): steps per second and peak memory.

GPT part: one training step = forward + backward of the official loss on a batch of `--seconds`-long
clips (about 15 phones per second, 25 tokens per second) plus a ScaledAdam update, as
`koe voice train-gpt` runs it (fp16 autocast on CUDA, fp32 on CPU). Batch sizes 1/4/8 by default.
SoVITS part: one `koe voice train-sovits` update (discriminator then generator, official losses,
AdamW) on a batch of `--seconds`-long clips.

    .venv/bin/python benchmarks/bench_train.py                          # CPU (and CUDA when present)
    .venv/bin/python benchmarks/bench_train.py --device cpu --batch-sizes 1 4 --steps 2 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time

import torch

from training.gpt_train import GPTItem, GPTTrainingModule, collate
from training.scaled_adam import ScaledAdam
from tts.models.t2s import T2SConfig, T2SModel

PHONES_PER_SECOND, TOKENS_PER_SECOND = 15, 25



def _result(times: list[float], batch_size: int, device: torch.device) -> dict:
    """Median step time (first step = warm-up, dropped), throughput and peak memory."""
    step_s = sorted(times[1:])[len(times[1:]) // 2]
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)
    return {"step_s": step_s, "steps_per_s": 1 / step_s, "items_per_s": batch_size / step_s, "peak_mb": peak_mb}

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


def print_sovits_table(devices: list[str], batch_sizes: list[int], seconds: float, steps: int) -> None:
    print(
        f"\nSoVITS v2 (G 51.3 M + D 46.7 M parameters), {seconds:.0f} s clips, AdamW, 0.64 s decoded per item"
    )
    print(f"{'device':<6} {'batch':>5} {'s/step':>8} {'steps/s':>8} {'items/s':>8} {'peak MB':>9}")
    for name in devices:
        device = torch.device(name)
        for batch_size in batch_sizes:
            r = bench_sovits(device, batch_size, seconds, steps)
            print(
                f"{name:<6} {batch_size:>5} {r['step_s']:>8.3f} {r['steps_per_s']:>8.2f} "
                f"{r['items_per_s']:>8.2f} {r['peak_mb']:>9.0f}"
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=8.0, help="clip length of every batch item")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    print(
        f"GPT (T2S v2, 77.6 M parameters), {args.seconds:.0f} s clips, ScaledAdam; torch {torch.__version__}"
    )
    print(f"{'device':<6} {'batch':>5} {'s/step':>8} {'steps/s':>8} {'items/s':>8} {'peak MB':>9}")
    for name in devices:
        device = torch.device(name)
        for batch_size in args.batch_sizes:
            r = bench_gpt(device, batch_size, args.seconds, args.steps)
            print(
                f"{name:<6} {batch_size:>5} {r['step_s']:>8.3f} {r['steps_per_s']:>8.2f} "
                f"{r['items_per_s']:>8.2f} {r['peak_mb']:>9.0f}"
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print_sovits_table(devices, args.batch_sizes, args.seconds, args.steps)


if __name__ == "__main__":
    main()
