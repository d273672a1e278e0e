"""Parity runners for the T2S model: `t2s_teacher_forced` and `t2s_decode` fixture cases.

Each runner loads the case's checkpoint through our GPT loader, runs the call the manifest describes
(parameters from `params`) and returns every array the harness compares.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tts.models.sampling import SamplingParams
from tts.models.t2s_decode import StepRecord, generate, generate_batch
from tts.models.t2s_onnx import OnnxStack
from tts.weights.gpt import load_gpt


@lru_cache(maxsize=8)
def _model(path: Path, runtime: str = "torch"):
    """The model of a fixture; runtime "onnx" runs its stack through the exact (fp32) ONNX graph."""
    model = load_gpt(path).model
    if runtime == "onnx":
        model.onnx_stack = OnnxStack(model, "fp32", threads=1)
    return model


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def run_teacher_forced(manifest: dict, arrays: dict, folder: Path) -> dict:
    model = _model(folder / manifest["checkpoint"])
    with torch.no_grad():
        out = model.forward_train(
            _tensor(arrays["phoneme_ids"]),
            _tensor(arrays["phoneme_ids_len"]),
            _tensor(arrays["semantic_ids"]),
            _tensor(arrays["semantic_ids_len"]),
            _tensor(arrays["bert_feature"]),
        )
    return {
        "logits": out.logits.numpy(),
        "targets": out.targets.numpy(),
        "decoder_input_semantic": out.decoder_input.numpy(),
        "loss_sum": out.loss_sum.numpy(),
        "top3_acc": out.top3_acc.numpy(),
    }


def run_decode(manifest: dict, arrays: dict, folder: Path, runtime: str = "torch") -> dict:
    model = _model(folder / manifest["checkpoint"], runtime)
    params = manifest["params"]
    sampling = SamplingParams(
        top_k=params["top_k"],
        top_p=params["top_p"],
        temperature=params["temperature"],
        repetition_penalty=params["repetition_penalty"],
    )
    phoneme_ids = _tensor(arrays["phoneme_ids"])
    bert = _tensor(arrays["bert_feature"])
    prompt = None if params["ref_free"] else _tensor(arrays["prompt_semantic"])
    steps: list[StepRecord] = []

    torch.manual_seed(params["seed"])
    if params["mode"] == "naive":
        result = generate(
            model, phoneme_ids, bert, prompt, sampling, params["early_stop_num"], on_step=steps.append
        )
    elif params["mode"] == "batch":
        [result] = generate_batch(  # the official call passes the whole first row as the only item
            model,
            [phoneme_ids[0]],
            [bert[0]],
            prompt,
            sampling,
            params["early_stop_num"],
            on_step=steps.append,
        )
    else:
        raise ValueError(f"unknown decode mode {params['mode']!r}")

    vocab = model.config.vocab_size
    probs = np.zeros((len(steps), vocab), dtype=np.float32)
    noise = np.full((len(steps), vocab), np.nan, dtype=np.float32)
    for i, record in enumerate(steps):
        width = record.sample.probs.shape[-1]
        probs[i, :width] = record.sample.probs[0].numpy()
        noise[i, :width] = record.sample.noise[0].numpy()
    return {
        "y_returned": result.sequence.numpy(),
        "idx": np.array(result.idx, dtype=np.int64),
        "tts_semantic": result.semantic_tokens.numpy(),
        "eos_hit": np.array(result.eos_hit),
        "num_steps": np.array(result.num_steps, dtype=np.int64),
        "n_generated_in_returned_y": np.array(len(result.sequence) - result.prompt_len, dtype=np.int64),
        "step_logits": torch.cat([r.logits for r in steps]).numpy(),
        "step_vocab_width": np.array([r.sample.probs.shape[-1] for r in steps], dtype=np.int64),
        "step_sampled_token": np.array([int(r.sample.tokens[0]) for r in steps], dtype=np.int64),
        "step_probs": probs,
        "step_exp_noise": noise,
    }


RUNNERS = {"t2s_teacher_forced": run_teacher_forced, "t2s_decode": run_decode}
