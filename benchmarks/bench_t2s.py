"""Speed of the full-size v2 T2S model (random weights): prefill, per-token decode, peak memory.

Prefill runs 60 phones + 125 prompt tokens (about 5 s of prompt audio); then `--steps` tokens are
decoded one by one with the KV cache, EOS masked so every run decodes the same number of tokens.
Each decode step includes sampling (the official defaults: top_k 15, repetition penalty 1.35).

    .venv/bin/python benchmarks/bench_t2s.py                    # CPU (and CUDA when present)
    .venv/bin/python benchmarks/bench_t2s.py --device cuda      # fp32, fp16, fp16 + CUDA graphs
    .venv/bin/python benchmarks/bench_t2s.py --steps 50 --threads 2 --device cpu
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from tts.models.sampling import SamplingParams, sample
from tts.models.t2s import T2SConfig, T2SModel, prefill_mask
from tts.models.t2s_cuda_graph import CudaGraphDecodeStep

PHONES, PROMPT_TOKENS = 60, 125


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def bench(model: T2SModel, device: torch.device, steps: int, repeats: int) -> dict:
    """Median prefill time, median per-token decode time and peak memory for one configuration."""
    params = SamplingParams()
    eos = model.config.eos
    ids = torch.randint(0, 732, (1, PHONES), device=device)
    bert = torch.randn(1, 1024, PHONES, device=device, dtype=model.bert_proj.weight.dtype)
    prompt = torch.randint(0, 1024, (1, PROMPT_TOKENS), device=device)
    mask = prefill_mask(PHONES, PROMPT_TOKENS, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prefill_times, step_times = [], []
    for _ in range(repeats + 1):  # the first run warms up
        cache = model.new_cache(1, PHONES + PROMPT_TOKENS + steps)
        history = torch.zeros(1, PROMPT_TOKENS + steps, dtype=torch.long, device=device)
        history[:, :PROMPT_TOKENS] = prompt
        _sync(device)
        start = time.perf_counter()
        xy = torch.cat([model.embed_text(ids, bert), model.embed_audio(prompt)], dim=1)
        logits = model.prefill(xy, mask, cache)
        _sync(device)
        prefill_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        length = PROMPT_TOKENS
        for t in range(steps):
            if t:
                x = model.embed_audio(history[:, length - 1 : length], start=length - 1)
                logits = model.decode_step(x, cache)
            logits[:, eos] = float("-inf")
            history[:, length] = sample(logits, history[:, :length], params).tokens
            length += 1
        _sync(device)
        step_times.append((time.perf_counter() - start) / steps)
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "prefill_ms": 1000 * sorted(prefill_times[1:])[repeats // 2],
        "step_ms": 1000 * sorted(step_times[1:])[repeats // 2],
        "peak_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="tokens decoded after the prefill")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = []  # (device, dtype, decode steps as CUDA graph replays)
    if args.device in ("all", "cpu"):
        runs.append((torch.device("cpu"), torch.float32, False))
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        cuda = torch.device("cuda")
        runs += [(cuda, torch.float32, False), (cuda, torch.float16, False), (cuda, torch.float16, True)]

    torch.manual_seed(0)
    base = T2SModel(T2SConfig()).eval()
    print(f"T2S v2 full size, {sum(p.numel() for p in base.parameters()) / 1e6:.1f} M parameters")
    print(f"prefill {PHONES} phones + {PROMPT_TOKENS} prompt tokens; decode {args.steps} tokens (EOS masked)")
    print(
        f"{'device':<8}{'dtype':<10}{'graphs':<8}{'threads':>8}{'prefill ms':>12}{'ms/token':>10}{'tokens/s':>10}{'peak MiB':>10}"
    )
    for device, dtype, graphs in runs:
        model = base.to(device=device, dtype=dtype)
        model.cuda_graph = CudaGraphDecodeStep(model) if graphs else None
        r = bench(model, device, args.steps, args.repeats)
        if graphs and model.cuda_graph.disabled:
            print("(CUDA graph recording failed: the row below is eager)")
        threads = torch.get_num_threads() if device.type == "cpu" else "-"
        print(
            f"{device.type:<8}{str(dtype).removeprefix('torch.'):<10}{'yes' if graphs else 'no':<8}{threads:>8}{r['prefill_ms']:>12.1f}"
            f"{r['step_ms']:>10.2f}{1000 / r['step_ms']:>10.1f}{r['peak_mib']:>10.0f}"
        )
        model.cuda_graph = None
        base = model.to("cpu", torch.float32)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
