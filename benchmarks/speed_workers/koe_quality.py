"""How far a reduced-precision koe mode is from the exact fp32 mode (not timed).

For a few seeded inputs (60 phones, zero BERT, 125 prompt tokens) both models are fed the same token
sequence (fp32's own greedy choice, EOS masked), 100 steps: the logit cosine similarity per step
(mean and worst) and the share of steps where both pick the same top token. SoVITS: the SNR of the
mode's waveform against fp32's for the workload codes, same seed ("same" when the mode leaves SoVITS
in fp32 and the waveforms are identical). BERT: the cosine similarity of the mode's Chinese BERT features
to fp32's for the workload's Chinese sentence, per phone (when the models folder has the BERT).

    .venv/bin/python benchmarks/speed_workers/koe_quality.py --models DIR --modes int8,int4,bf16
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import workload as W  # noqa: E402

SEEDS = (1, 2, 3)
BERT_FOLDER = "chinese-roberta-wwm-ext-large"


def load(models: Path, precision: str):
    from tts.pipeline import TTSPipeline

    bert = models / BERT_FOLDER  # loads at the first Chinese text only
    return TTSPipeline.from_paths(
        models / "rand-v2-e1.ckpt", models / "rand-v2_e1_s1.pth", bert if bert.is_dir() else None,
        models / "chinese-hubert-base", precision=precision,
    )  # fmt: skip


def bert_features(pipeline):
    """[1024, phones] BERT features of the workload's Chinese sentence, or None without the BERT."""
    if pipeline.frontend.bert_dir is None:
        return None
    return pipeline.frontend.phones_and_bert(W.SHORT_ZH, "zh")[1]


def seeded_case(seed: int):
    import torch

    rng = np.random.default_rng(seed)
    phones = torch.from_numpy(rng.integers(1, W.PHONE_VOCAB, W.N_PROMPT_PHONES + W.N_TARGET_PHONES))[None]
    prompt = torch.from_numpy(rng.integers(0, W.SEMANTIC_VOCAB, W.N_PROMPT_TOKENS))[None]
    return phones, prompt


def forced_logits(model, phones, prompt, tokens=None):
    """Logits [steps, vocab] (float32) of `model` fed `tokens` (or its own EOS-masked argmax), and the tokens."""
    import torch

    from tts.models.t2s import prefill_mask

    steps = W.N_DECODE_TOKENS
    bert = torch.zeros(1, 1024, phones.shape[1], dtype=model.bert_proj.weight.dtype)
    p = prompt.shape[1]
    cache = model.new_cache(1, phones.shape[1] + p + steps)
    out, chosen = [], []
    with torch.inference_mode():
        text = model.embed_text(phones, bert)
        xy = torch.cat([text, model.embed_audio(prompt)], dim=1)
        logits = model.prefill(xy, prefill_mask(text.shape[1], p, xy.device), cache)
        for t in range(steps):
            row = logits[0].float().clone()
            out.append(row)
            row_masked = row.clone()
            row_masked[model.config.eos] = float("-inf")
            token = int(row_masked.argmax()) if tokens is None else int(tokens[t])
            chosen.append(token)
            if t + 1 < steps:
                x = model.embed_audio(torch.tensor([[token]]), start=p + t)
                logits = model.decode_step(x, cache)
    return torch.stack(out), chosen


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-noise ratio of `other` against `reference` in dB (inf when identical)."""
    noise = float(np.sum((reference - other) ** 2))
    signal = float(np.sum(reference**2))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True)
    parser.add_argument("--modes", default="int8,int4,bf16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from agent.errors import KoeError

    torch.set_num_threads(args.threads)
    models = Path(args.models)
    exact = load(models, "fp32")
    x = W.inputs()
    codes = torch.from_numpy(x["codes"]).view(1, 1, -1)
    text = torch.from_numpy(x["target_phones"])[None]
    spec = exact.references.style(str(models / "ref5s.wav")).spec

    def waveform(pipeline) -> np.ndarray:
        torch.manual_seed(0)
        with torch.inference_mode():
            return pipeline.sovits.decode(codes, text, [spec])[0, 0].float().numpy()

    reference_cases = [forced_logits(exact.t2s, *seeded_case(s)) for s in SEEDS]
    reference_audio = waveform(exact)
    reference_bert = bert_features(exact)
    results = {}
    for mode in [m for m in args.modes.split(",") if m and m != "fp32"]:
        try:
            fast = load(models, mode)
        except KoeError as e:
            results[mode] = {"skipped": str(e)}
            continue
        cosines, agree = [], []
        for seed, (ref_logits, ref_tokens) in zip(SEEDS, reference_cases):
            logits, _ = forced_logits(fast.t2s, *seeded_case(seed), tokens=ref_tokens)
            cosines.append(torch.cosine_similarity(logits, ref_logits, dim=-1))
            masked = logits.clone()
            masked[:, fast.t2s.config.eos] = float("-inf")
            agree.append((masked.argmax(-1) == torch.tensor(ref_tokens)).float())
        cos = torch.cat(cosines)
        snr = snr_db(reference_audio, waveform(fast))
        bert = (
            None
            if reference_bert is None
            else torch.cosine_similarity(bert_features(fast), reference_bert, dim=0)
        )
        results[mode] = {
            "logit_cosine_mean": float(cos.mean()),
            "logit_cosine_min": float(cos.min()),
            "token_agreement": float(torch.cat(agree).mean()),
            "sovits_snr_db": None if math.isinf(snr) else snr,
            "sovits_same": math.isinf(snr),
            "bert_cosine_mean": None if bert is None else float(bert.mean()),
            "bert_cosine_min": None if bert is None else float(bert.min()),
            "cases": len(SEEDS),
        }
        print(f"{mode}: {results[mode]}", file=sys.stderr)
        del fast
    print(W.RESULT_PREFIX + json.dumps({"engine": "koe-quality", "modes": results}), flush=True)


if __name__ == "__main__":
    main()
