"""The fixed-shape decode step that koe records as a CUDA graph (`tts/models/t2s_cuda_graph.py`).

On the CPU the fixed-shape step runs eagerly: it must give the eager torch step's logits and cache,
token after token, for one item and for a left-padded batch, so that a recording of it computes the
model. A recording that cannot be made (here: no CUDA) leaves the generation to eager torch with a
warning, with the same tokens. On a machine with a GPU the recorded graph itself runs against eager.
"""

from __future__ import annotations

import logging

import pytest
import torch

from test_t2s_onnx import CONFIG, trained_like_model
from tts.models.sampling import SamplingParams
from tts.models.t2s import T2SModel, prefill_mask
from tts.models.t2s_cuda_graph import CudaGraphDecodeStep, StaticDecodeStep
from tts.models.t2s_decode import generate, generate_batch

TEXT, PROMPT, STEPS = 10, 14, 12


def _decode(model: T2SModel, fixed_shape: bool, batch: int = 1, key_ok: torch.Tensor | None = None):
    """Prefill, then STEPS decode steps on seeded inputs, eagerly or through `StaticDecodeStep`."""
    generator = torch.Generator().manual_seed(3)
    capacity = TEXT + PROMPT + STEPS + 5  # spare columns: they must stay masked
    cache = model.new_cache(batch, capacity)
    cache.keys.fill_(float("nan"))  # what never-written memory may hold: it must never be read
    cache.values.fill_(float("nan"))
    allowed = prefill_mask(TEXT, PROMPT)
    if key_ok is not None:
        allowed = allowed & key_ok[:, None, None, : TEXT + PROMPT]
    logits = []
    with torch.no_grad():
        xy = torch.randn(batch, TEXT + PROMPT, CONFIG.dim, generator=generator)
        model.prefill(xy, allowed, cache)
        static = StaticDecodeStep(model, cache) if fixed_shape else None
        for _ in range(STEPS):
            x = torch.randn(batch, 1, CONFIG.dim, generator=generator)
            mask = None if key_ok is None else key_ok[:, None, None, : cache.length + 1]
            if static is None:
                logits.append(model.decode_step(x, cache, mask))
            else:
                static.load(x, mask)
                logits.append(static.run().clone())
                cache.length += 1
    return torch.stack(logits), cache


def test_fixed_shape_step_gives_the_eager_steps_logits_and_cache():
    model = trained_like_model()
    eager, eager_cache = _decode(model, fixed_shape=False)
    fixed, fixed_cache = _decode(model, fixed_shape=True)
    assert fixed_cache.length == eager_cache.length == TEXT + PROMPT + STEPS
    torch.testing.assert_close(fixed, eager, atol=1e-5, rtol=1e-5)
    used = eager_cache.length
    torch.testing.assert_close(fixed_cache.keys[:, :, :, :used], eager_cache.keys[:, :, :, :used])
    torch.testing.assert_close(fixed_cache.values[:, :, :, :used], eager_cache.values[:, :, :, :used])


def test_fixed_shape_step_masks_a_left_padded_batch_like_the_eager_step():
    model = trained_like_model(1)
    capacity = TEXT + PROMPT + STEPS
    key_ok = torch.ones(2, capacity, dtype=torch.bool)
    key_ok[1, :4] = False  # the second item's text is 4 phones shorter (left padding)
    eager, _ = _decode(model, fixed_shape=False, batch=2, key_ok=key_ok)
    fixed, _ = _decode(model, fixed_shape=True, batch=2, key_ok=key_ok)
    torch.testing.assert_close(fixed, eager, atol=1e-5, rtol=1e-5)
    # the padding really is masked: without it the padded row would differ
    unmasked, _ = _decode(model, fixed_shape=True, batch=2, key_ok=None)
    assert (unmasked[:, 1] - eager[:, 1]).abs().max() > 1e-3


def test_a_step_that_cannot_be_recorded_falls_back_to_eager_torch_once(caplog):
    model = trained_like_model(2)
    params = SamplingParams(top_k=5, temperature=1.0)
    ids = torch.randint(0, CONFIG.phoneme_vocab_size, (1, TEXT))
    bert = torch.randn(1, 1024, TEXT)
    prompt = torch.randint(0, 128, (1, PROMPT))
    torch.manual_seed(7)
    expected = generate(model, ids, bert, prompt, params, max_steps=STEPS).sequence

    graphed = CudaGraphDecodeStep(model)
    graphed.supports = lambda x, cache: not graphed.disabled  # on this CPU machine: try to record
    model.cuda_graph = graphed
    torch.manual_seed(7)
    with caplog.at_level(logging.WARNING, logger="tts.models.t2s_cuda_graph"):
        got = generate(model, ids, bert, prompt, params, max_steps=STEPS).sequence
    model.cuda_graph = None
    assert graphed.disabled
    assert len(caplog.records) == 1 and "CUDA graph" in caplog.records[0].message
    assert torch.equal(got, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_recorded_graph_decodes_the_eager_tokens_on_a_gpu():
    model = trained_like_model(3).cuda()
    params = SamplingParams(top_k=5, temperature=1.0)
    ids = torch.randint(0, CONFIG.phoneme_vocab_size, (2, TEXT), device="cuda")
    bert = torch.randn(2, 1024, TEXT, device="cuda")
    prompt = torch.randint(0, 128, (1, PROMPT), device="cuda")
    torch.manual_seed(7)
    expected = generate(model, ids[:1], bert[:1], prompt, params, max_steps=STEPS).sequence
    batch_expected = generate_batch(model, [ids[0], ids[1, 3:]], [bert[0], bert[1, :, 3:]], prompt, params)

    model.cuda_graph = CudaGraphDecodeStep(model)
    torch.manual_seed(7)
    got = generate(model, ids[:1], bert[:1], prompt, params, max_steps=STEPS).sequence
    batch_got = generate_batch(model, [ids[0], ids[1, 3:]], [bert[0], bert[1, :, 3:]], prompt, params)
    assert not model.cuda_graph.disabled and model.cuda_graph._graph is not None
    assert torch.equal(got, expected)
    for a, b in zip(batch_got, batch_expected):
        assert torch.equal(a.sequence, b.sequence)
