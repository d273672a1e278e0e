"""The SoVITS text encoder's ONNX Runtime graph (`tts/models/text_encoder_onnx.py`) against torch.

The official decode fixtures also run through it (test_parity_models.py); here: lengths other than
the traced example's, a padded batch, and the clear error once the torch weights are gone.
"""

from __future__ import annotations

import pytest
import torch

from agent.errors import KoeError
from tts.models.sovits_modules import TextEncoder
from tts.models.text_encoder_onnx import OnnxTextEncoder


def _encoder(seed: int = 0) -> TextEncoder:
    torch.manual_seed(seed)
    encoder = TextEncoder(32, 48, 96, 2, 4, 3, 0.1, 64).eval()
    for p in encoder.parameters():  # trained-like: random init leaves the norms at identity
        p.data.add_(torch.randn_like(p) * 0.05)
    return encoder


def _inputs(frames: list[int], phones: list[int]):
    generator = torch.Generator().manual_seed(1)
    batch = len(frames)
    ssl = torch.randn(batch, TextEncoder.SSL_DIM, max(frames), generator=generator)
    text = torch.randint(1, 64, (batch, max(phones)), generator=generator)
    ge = torch.randn(batch, 512, 1, generator=generator)
    return ssl, torch.tensor(frames), text, torch.tensor(phones), ge


@pytest.mark.parametrize(("frames", "phones"), [([16], [40]), ([200], [9]), ([30, 22], [11, 17])])
def test_graph_matches_torch_for_any_length_and_padded_batches(frames, phones):
    encoder = _encoder()
    inputs = _inputs(frames, phones)
    with torch.no_grad():
        expected_y, expected_mask = encoder.encode(*inputs)
    encoder.onnx = OnnxTextEncoder(encoder, threads=1)
    y, mask = encoder.encode(*inputs)
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(y * mask, expected_y * expected_mask, atol=1e-5, rtol=1e-4)


def test_released_torch_weights_leave_only_the_graph():
    encoder = _encoder()
    encoder.onnx = OnnxTextEncoder(encoder, threads=1, release_torch_weights=True)
    assert encoder.encoder_text.attn_layers[0].conv_q.weight.numel() == 0
    assert encoder.proj.weight.numel() > 0  # `prior` stays in torch
    y, _ = encoder.encode(*_inputs([12], [7]))
    assert y.shape == (1, 48, 12)
    with pytest.raises(KoeError, match="only through its ONNX Runtime graph"):
        encoder.encode(*[t.double() if t.is_floating_point() else t for t in _inputs([12], [7])])


def test_graph_cache_is_read_back_and_keyed_by_the_weight_file(tmp_path):
    from tts.models.text_encoder_onnx import graph_cache_path

    weights = tmp_path / "voice.pth"
    weights.write_bytes(b"first weights")
    cache = graph_cache_path(tmp_path / "cache", weights)
    encoder = _encoder()
    inputs = _inputs([20], [9])
    traced = OnnxTextEncoder(encoder, threads=1, cache=cache)
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    cached = OnnxTextEncoder(encoder, threads=1, cache=cache)  # read back, not traced again
    assert cache.stat().st_mtime_ns == stamp
    assert torch.equal(traced(*inputs)[0], cached(*inputs)[0])
    weights.write_bytes(b"other weights, retrained")
    assert graph_cache_path(tmp_path / "cache", weights) != cache
