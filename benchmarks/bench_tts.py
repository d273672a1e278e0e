"""Whole-pipeline speed on full-size v2 models with random weights (the compute of real weights).

Writes a full-size GPT .ckpt and SoVITS .pth with koe's own exporters, a full-size random HuBERT
(transformers `save_pretrained`) and an espeak-ng reference clip into a scratch folder, loads them
like a user's voice, warms the reference cache, then measures for a short sentence (~10 words) and
a paragraph: time to first audio (text in -> first chunk out) and real-time factor, for one-shot,
sentence streaming and token-chunk streaming. English text (no BERT needed). One table per device:
the CPU, and CUDA when present. Needs NLTK_DATA (English); it defaults to the shared test data.

    .venv/bin/python benchmarks/bench_tts.py                   # CPU (and CUDA when present), 2 threads
    .venv/bin/python benchmarks/bench_tts.py --threads 2 --repeats 3 --device cuda --precision fp16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NLTK_DATA", str(ROOT.parent / "shared" / "data" / "nltk_data"))

from benchmarks.common import write_espeak_reference, write_gpt, write_hubert, write_sovits  # noqa: E402

SHORT = "The quick brown fox jumps over the lazy dog near the river bank."
PARAGRAPH = (
    "Every morning the baker opens his little shop before the sun comes up. "
    "The smell of fresh bread drifts down the quiet street, and the neighbours wake up hungry. "
    "By seven o'clock there is a queue outside the door, and by nine the shelves are empty again."
)
REF_TEXT = "Every morning the baker opens his little shop before the sun comes up over the hills."


def write_models(folder: Path) -> dict:
    """Full-size v2 GPT, SoVITS, HuBERT and a 5 s reference clip, in the official formats."""
    # Random weights rarely pick EOS: the early stop (50 x max_sec tokens) ends each sentence at
    # 100 tokens = 4 s of audio, like the fixed 100 tokens of the peer measurements.
    return {
        "gpt": write_gpt(folder / "bench-e1.ckpt", max_sec=2),
        "sovits": write_sovits(folder / "bench_e1_s1.pth"),
        "hubert": write_hubert(folder / "chinese-hubert-base"),
        "ref": write_espeak_reference(folder / "ref.wav", REF_TEXT),
    }


async def measure(engine, text: str, stream: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    seconds = 0.0
    async for chunk in engine.synthesize(text, "en", stream=stream):
        first = first if first is not None else time.perf_counter() - started
        seconds += chunk.seconds
    total = time.perf_counter() - started
    return first, total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--precision", default="fp32", help="T2S precision ([tts] precision): fp32, int8, int4, fp16"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from agent.config import TtsConfig
    from tts.engine import TtsEngine, VoiceSpec
    from tts.pipeline import TTSPipeline

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_models(Path(tmp))
        for device in devices:
            started = time.perf_counter()
            pipeline = TTSPipeline.from_paths(
                paths["gpt"], paths["sovits"], None, paths["hubert"], device=device, precision=args.precision
            )
            load_s = time.perf_counter() - started
            voice = VoiceSpec(paths["gpt"], paths["sovits"], paths["ref"], REF_TEXT, "en")
            engine = TtsEngine(pipeline, voice, TtsConfig(seed=1, stream_chunk_tokens=16))
            pipeline.references.prepare(paths["ref"])  # reference cached, as in a conversation
            rows = []
            for name, text in (("short", SHORT), ("paragraph", PARAGRAPH)):
                for stream in ("none", "sentence", "tokens"):
                    runs = [asyncio.run(measure(engine, text, stream)) for _ in range(args.repeats)]
                    rows.append((name, stream, median(r[0] for r in runs), median(r[1] for r in runs)))
            if device == "cuda":
                peak = f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
            else:
                peak = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
            print(
                f"\nkoe TTS pipeline, full-size v2 random weights, {device}, T2S {args.precision}, "
                f"{args.threads} CPU threads"
            )
            print(f"command: .venv/bin/python benchmarks/bench_tts.py {' '.join(sys.argv[1:])}".rstrip())
            print(f"voice load {load_s:.1f} s, {peak}\n")
            print("| text | streaming | first audio (s) | RTF |\n|---|---|---:|---:|")
            for name, stream, first, rtf in rows:
                print(f"| {name} | {stream} | {first:.2f} | {rtf:.2f} |")
            del engine, pipeline


if __name__ == "__main__":
    main()
