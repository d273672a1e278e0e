"""Build a tiny random-weight Whisper directly in CTranslate2 format (numpy only: no torch, no hub).

`faster_whisper.WhisperModel(<dir>)` loads the result and `transcribe()` runs end to end (language
detection included): good for testing code paths, never words. `end_bias` makes the decoder choose
<|endoftext|> almost at once (a fixed direction in its last layer norm that the end token's output row
points along), so a call takes milliseconds instead of seconds of decoding 448 random tokens.

Usage: python make_random_ct2_whisper.py OUT_DIR TOKENIZER_JSON
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
from ctranslate2.specs import whisper_spec
from ctranslate2.specs.model_spec import OPTIONAL, visit_spec

END_OF_TEXT = 50257


def build(
    out_dir: str, tokenizer_json: str, d_model=64, ffn=128, layers=2, heads=2, n_mels=80, seed=0, end_bias=5.0
) -> None:
    rng = np.random.default_rng(seed)
    with open(tokenizer_json, encoding="utf-8") as fh:
        tokenizer = json.load(fh)
    token_by_id = {i: t for t, i in tokenizer["model"]["vocab"].items()}
    token_by_id.update({a["id"]: a["content"] for a in tokenizer["added_tokens"]})
    vocabulary = [token_by_id[i] for i in range(len(token_by_id))]

    spec = whisper_spec.WhisperSpec(layers, heads, layers, heads)
    linear_shapes = {  # (out, in) of every linear layer, keyed by (block, layer)
        ("self_attention", "linear_0"): (3 * d_model, d_model),  # fused q, k, v
        ("self_attention", "linear_1"): (d_model, d_model),
        ("attention", "linear_0"): (d_model, d_model),  # cross-attention query
        ("attention", "linear_1"): (2 * d_model, d_model),  # cross-attention fused k, v
        ("attention", "linear_2"): (d_model, d_model),
        ("ffn", "linear_0"): (ffn, d_model),
        ("ffn", "linear_1"): (d_model, ffn),
    }

    def shape_of(path: list[str]) -> tuple[int, ...]:
        leaf, parent = path[-1], path[-2]
        if leaf in ("gamma", "beta"):
            return (d_model,)
        if leaf == "encodings":
            return (1500, d_model) if path[0] == "encoder" else (448, d_model)
        if parent == "conv1":
            return (d_model, n_mels, 3) if leaf == "weight" else (d_model,)
        if parent == "conv2":
            return (d_model, d_model, 3) if leaf == "weight" else (d_model,)
        if parent in ("embeddings", "projection"):
            return (len(vocabulary), d_model)
        weight = linear_shapes[(path[-3], parent)]
        return weight if leaf == "weight" else (weight[0],)

    def fill(layer, scope: str, value) -> None:
        path = scope.split("/")
        leaf, parent = path[-1], path[-2]
        wanted_optional = (
            isinstance(value, str)
            and value == OPTIONAL
            and (leaf == "encodings" or (leaf == "bias" and parent != "projection"))
        )
        if value is None or wanted_optional:
            shape = shape_of(path)
            if leaf == "gamma":
                array = np.ones(shape, np.float32)
            elif leaf == "beta":
                array = np.zeros(shape, np.float32)
            else:
                array = (rng.standard_normal(shape) * 0.05).astype(np.float32)
            setattr(layer, leaf, array)

    visit_spec(spec, fill)
    if end_bias:
        direction = rng.standard_normal(d_model).astype(np.float32)
        direction /= np.linalg.norm(direction)
        spec.decoder.layer_norm.beta = 2.0 * direction  # every decoder output leans this way
        spec.decoder.projection.weight[END_OF_TEXT] = end_bias * direction
    spec.register_vocabulary(vocabulary)
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = [220, END_OF_TEXT]
    spec.config.lang_ids = list(range(50259, 50259 + 99))
    spec.config.alignment_heads = [(layers - 1, h) for h in range(heads)]
    spec.validate()
    spec.optimize(quantization="int8")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    spec.save(out_dir)
    shutil.copy(tokenizer_json, os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as fh:
        json.dump(
            {
                "feature_size": n_mels,
                "sampling_rate": 16000,
                "hop_length": 160,
                "chunk_length": 30,
                "n_fft": 400,
            },
            fh,
        )


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2])
    print(sorted(os.listdir(sys.argv[1])))
