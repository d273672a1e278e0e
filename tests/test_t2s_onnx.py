"""The ONNX Runtime stack (`tts/models/t2s_onnx.py`) against the torch stack it replaces.

The exact fp32 graph also runs every official decode fixture (test_parity_models.py); here: the prompt
pass and the decode steps match torch and fill the cache like torch, padded batches work through the
attention bias, the quantized weights are laid out as `DynamicQuantizeMatMul` (int8) and `MatMulNBits`
(int4) read them, and the int8 and int4 graphs stay as close to fp32 as their documented deviation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tts.models.onnx_graph import (
    GraphBuilder,
    cpu_session,
    dequantize_blocks_4bit,
    dequantize_columns,
    quantize_blocks_4bit,
    quantize_columns,
)
from tts.models.t2s import T2SConfig, T2SModel, prefill_mask
from tts.models.t2s_onnx import OnnxStack

CONFIG = T2SConfig(dim=128, num_heads=4, num_layers=3, phoneme_vocab_size=64, vocab_size=129, eos=128)
TEXT, PROMPT = 12, 20


def trained_like_model(seed: int = 0) -> T2SModel:
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


def test_quantize_columns_round_trip_error_is_half_a_step_within_7_bits():
    weight = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    weight[:, 3] = 0  # an all-zero column keeps a usable scale
    codes, scale = quantize_columns(weight)
    assert codes.dtype == np.int8 and codes.shape == (64, 16) and scale.shape == (16,)
    assert np.abs(codes).max() == 63  # 7 bits: AVX2's pairwise int16 sums cannot saturate
    assert (np.abs(codes).max(axis=0)[[0, 1, 2, 4]] == 63).all()
    error = np.abs(dequantize_columns(codes, scale) - weight)
    assert (error <= scale / 2 + 1e-7).all()


def test_quantize_blocks_4bit_round_trip_error_is_half_a_step():
    weight = np.random.default_rng(0).standard_normal((16, 96)).astype(np.float32)
    codes, scale, zero = quantize_blocks_4bit(weight, block=32)
    assert codes.dtype == np.uint8 and codes.shape == (16, 3, 16) and scale.shape == (48,)
    assert zero.shape == (16, 2)  # 3 zero points per row, two per byte
    error = np.abs(dequantize_blocks_4bit(codes, scale, zero) - weight).reshape(16, 3, 32)
    assert (error <= scale.reshape(16, 3, 1) / 2 + 1e-6).all()


def _one_matmul(weight: torch.Tensor, bias: torch.Tensor, weights: str):
    """A graph with one `GraphBuilder.linear` of `weight` [N, K] and `bias`, as an ONNX Runtime session."""
    from onnx import TensorProto, helper

    rows, cols = weight.shape
    g = GraphBuilder(weights)
    y = g.linear("x", weight, bias, "w")
    built = g.build(
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cols])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, rows])],
    )
    return cpu_session(built, threads=1), y


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantized_codes_are_what_the_kernel_multiplies(weights):
    """The graph's product equals x times the dequantized codes plus the bias (activations quantized
    per call add ~1% error), and not the product with the codes read another way or the bias lost."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 128)).astype(np.float32) + rng.standard_normal((64, 1)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32) * 10
    x = rng.standard_normal((1, 128)).astype(np.float32)
    session, output = _one_matmul(torch.from_numpy(w), torch.from_numpy(bias), weights)
    got = session.run([output], {"x": x})[0][0]
    if weights == "int8":
        dequantized = dequantize_columns(*quantize_columns(w.T)).T
        peak = np.abs(w).max(axis=1, keepdims=True)
        wrong = dequantized * peak[::-1] / peak  # each output column scaled by another column's scale
    else:
        codes, scale, zero = quantize_blocks_4bit(w)
        dequantized = dequantize_blocks_4bit(codes, scale, zero)
        swapped = (codes >> 4) | ((codes & 0x0F) << 4)  # the odd input in the low nibble
        wrong = dequantize_blocks_4bit(swapped, scale, zero)
    expected = (x @ dequantized.T)[0] + bias

    def cosine(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cosine(got, expected) > 0.9995
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()
    assert cosine(got, (x @ wrong.T)[0] + bias) < 0.99
    assert np.abs(got - (x @ dequantized.T)[0]).max() > 5  # the bias was added


def test_fp32_graph_matches_torch_and_fills_the_cache_in_place():
    model = trained_like_model()
    exact, torch_cache = _run(model, None)
    onnx, onnx_cache = _run(model, OnnxStack(model, "fp32", threads=1))
    for a, b in zip(exact, onnx):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    n = torch_cache.length
    assert onnx_cache.length == n
    assert torch.allclose(torch_cache.keys[..., :n, :], onnx_cache.keys[..., :n, :], atol=1e-5)
    assert torch.allclose(torch_cache.values[..., :n, :], onnx_cache.values[..., :n, :], atol=1e-5)


def test_padded_batch_runs_through_the_attention_bias():
    model = trained_like_model()
    key_ok = torch.ones(2, TEXT + PROMPT + 8, dtype=torch.bool)
    key_ok[1, :5] = False  # the second item's text is left-padded by 5 columns
    exact, _ = _run(model, None, batch=2, key_ok=key_ok)
    onnx, _ = _run(model, OnnxStack(model, "fp32", threads=1), batch=2, key_ok=key_ok)
    for a, b in zip(exact, onnx):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("weights", "min_cosine", "min_agreement"), [("int8", 0.999, 0.9), ("int4", 0.99, 0.75)]
)
def test_quantized_graph_stays_close_to_fp32(weights, min_cosine, min_agreement):
    """The tiny random model's logits are nearly flat (top tokens often within 1%), so int4 may swap a
    near tie; the full-size figures are in the benchmark's quality column."""
    model = trained_like_model()
    exact, _ = _run(model, None, steps=12)
    quantized, _ = _run(model, OnnxStack(model, weights, threads=1), steps=12)
    cosine = [float(torch.cosine_similarity(a, b).min()) for a, b in zip(exact, quantized)]
    agree = np.mean([int(a.argmax() == b.argmax()) for a, b in zip(exact, quantized)])
    print(f"{weights} vs fp32: logit cosine min {min(cosine):.5f}, argmax agreement {agree:.2f}")
    assert not torch.equal(exact[-1], quantized[-1])  # the quantized weights really ran
    assert min(cosine) > min_cosine
    assert agree >= min_agreement


def test_unknown_weight_format_is_a_clear_error():
    from agent.errors import KoeError

    with pytest.raises(KoeError, match="int3"):
        OnnxStack(trained_like_model(), "int3")
