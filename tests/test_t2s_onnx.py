"""The ONNX Runtime stack (`tts/models/t2s_onnx.py`) against the torch stack it replaces.

The exact fp32 graph also runs every official decode fixture (test_parity_models.py); here: the prompt
pass and the decode steps match torch and fill the cache like torch, padded batches work through the
attention bias, and the int8 graph stays close to fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tts.models.onnx_graph import dequantize_blocks, quantize_blocks
from tts.models.t2s import T2SConfig, T2SModel, prefill_mask
from tts.models.t2s_onnx import OnnxStack

CONFIG = T2SConfig(dim=128, num_heads=4, num_layers=3, phoneme_vocab_size=64, vocab_size=129, eos=128)
TEXT, PROMPT = 12, 20


def _model(seed: int = 0) -> T2SModel:
    torch.manual_seed(seed)
    model = T2SModel(CONFIG).eval()
    for p in model.parameters():  # trained-like: random init leaves the LayerNorms at identity
        p.data.add_(torch.randn_like(p) * 0.02)
    return model


def _run(model: T2SModel, stack: OnnxStack | None, steps: int = 8, batch: int = 1, key_ok=None):
    """Prefill + `steps` decode steps with the same seeded inputs; returns (logits per call, cache)."""
    model.onnx_stack = stack
    generator = torch.Generator().manual_seed(1)
    cache = model.new_cache(batch, TEXT + PROMPT + steps)
    allowed = prefill_mask(TEXT, PROMPT)
    if key_ok is not None:
        allowed = allowed & key_ok[:, None, None, : TEXT + PROMPT]
    with torch.no_grad():
        logits = [
            model.prefill(torch.randn(batch, TEXT + PROMPT, CONFIG.dim, generator=generator), allowed, cache)
        ]
        for _ in range(steps):
            mask = None if key_ok is None else key_ok[:, None, None, : cache.length + 1]
            x = torch.randn(batch, 1, CONFIG.dim, generator=generator)
            logits.append(model.decode_step(x, cache, mask))
    model.onnx_stack = None
    return logits, cache


def test_quantize_blocks_round_trip_error_is_half_a_step():
    weight = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    codes, scale = quantize_blocks(weight, block=32)
    assert codes.dtype == np.uint8 and codes.shape == (16, 2, 32) and scale.shape == (32,)
    error = np.abs(dequantize_blocks(codes, scale) - weight).reshape(16, 2, 32)
    assert (error <= scale.reshape(16, 2, 1) / 2 + 1e-7).all()


def test_fp32_graph_matches_torch_and_fills_the_cache_in_place():
    model = _model()
    exact, torch_cache = _run(model, None)
    onnx, onnx_cache = _run(model, OnnxStack(model, "fp32", threads=1))
    for a, b in zip(exact, onnx):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    n = torch_cache.length
    assert onnx_cache.length == n
    assert torch.allclose(torch_cache.keys[..., :n, :], onnx_cache.keys[..., :n, :], atol=1e-5)
    assert torch.allclose(torch_cache.values[..., :n, :], onnx_cache.values[..., :n, :], atol=1e-5)


def test_padded_batch_runs_through_the_attention_bias():
    model = _model()
    key_ok = torch.ones(2, TEXT + PROMPT + 8, dtype=torch.bool)
    key_ok[1, :5] = False  # the second item's text is left-padded by 5 columns
    exact, _ = _run(model, None, batch=2, key_ok=key_ok)
    onnx, _ = _run(model, OnnxStack(model, "fp32", threads=1), batch=2, key_ok=key_ok)
    for a, b in zip(exact, onnx):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_int8_graph_stays_close_to_fp32():
    model = _model()
    exact, _ = _run(model, None, steps=12)
    int8, _ = _run(model, OnnxStack(model, "int8", threads=1), steps=12)
    cosine = [float(torch.cosine_similarity(a, b).min()) for a, b in zip(exact, int8)]
    agree = np.mean([int(a.argmax() == b.argmax()) for a, b in zip(exact, int8)])
    print(f"int8 vs fp32: logit cosine min {min(cosine):.5f}, argmax agreement {agree:.2f}")
    assert not torch.equal(exact[-1], int8[-1])  # the int8 weights really ran
    assert min(cosine) > 0.999
    assert agree >= 0.9


def test_unknown_weight_format_is_a_clear_error():
    from agent.errors import KoeError

    with pytest.raises(KoeError, match="int4"):
        OnnxStack(_model(), "int4")
