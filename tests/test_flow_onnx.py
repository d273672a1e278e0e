"""The traced SoVITS flow (`tts/models/flow_onnx.py`) against the torch flow it replaces at inference.

The official SoVITS decode fixtures also run through it (test_parity_models.py, runtime "onnx").
"""

from __future__ import annotations

import pytest
import torch

from agent.errors import KoeError
from tts.models import text_encoder_onnx
from tts.models.flow_onnx import OnnxFlow, graph_cache_path
from tts.models.onnx_graph import _file_digest
from tts.models.sovits_modules import CouplingFlow

CHANNELS, HIDDEN, GIN = 16, 24, 32


def _flow(seed: int = 0) -> CouplingFlow:
    torch.manual_seed(seed)
    flow = CouplingFlow(CHANNELS, HIDDEN, GIN).eval()
    for p in flow.parameters():  # trained-like: the official init zeroes the couplings' output convs
        p.data.add_(torch.randn_like(p) * 0.05)
    return flow


def _inputs(frames: list[int]):
    generator = torch.Generator().manual_seed(1)
    batch, longest = len(frames), max(frames)
    z_p = torch.randn(batch, CHANNELS, longest, generator=generator)
    mask = (torch.arange(longest)[None] < torch.tensor(frames)[:, None]).float()[:, None]
    ge = torch.randn(batch, GIN, 1, generator=generator)
    return z_p, mask, ge


@pytest.mark.parametrize("frames", [[16], [400], [30, 22]])
def test_graph_matches_torch_for_any_length_and_padded_batches(frames):
    flow = _flow()
    z_p, mask, ge = _inputs(frames)
    with torch.no_grad():
        expected = flow(z_p, mask, g=ge, reverse=True)
    flow.onnx = OnnxFlow(flow, threads=1)
    got = flow(z_p, mask, g=ge, reverse=True)
    assert not torch.equal(expected, z_p)  # the couplings really shift
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the forward direction (training) stays torch's
        assert torch.allclose(flow(got, mask, g=ge) * mask, z_p * mask, atol=1e-4)  # and inverts it


def test_released_torch_weights_leave_only_the_graph():
    flow = _flow()
    flow.onnx = OnnxFlow(flow, threads=1, release_torch_weights=True)
    assert flow.flows[0].pre.weight.numel() == 0
    z = flow(*_inputs([12])[:2], g=_inputs([12])[2], reverse=True)
    assert z.shape == (1, CHANNELS, 12)
    z_p, mask, ge = (t.double() for t in _inputs([12]))
    with pytest.raises(KoeError, match="only through its ONNX Runtime graph"):
        flow(z_p, mask, g=ge, reverse=True)


def test_graph_cache_is_read_back_and_keyed_by_the_weight_file(tmp_path):
    weights = tmp_path / "voice.pth"
    weights.write_bytes(b"first weights")
    cache = graph_cache_path(tmp_path / "cache", weights)
    flow = _flow()
    inputs = _inputs([20])
    traced = OnnxFlow(flow, threads=1, cache=cache)
    assert cache.is_file() and cache.name.startswith("flow-")
    stamp = cache.stat().st_mtime_ns
    cached = OnnxFlow(flow, threads=1, cache=cache)  # read back, not traced again
    assert cache.stat().st_mtime_ns == stamp
    assert torch.equal(traced(*inputs), cached(*inputs))
    weights.write_bytes(b"other weights, retrained")
    assert graph_cache_path(tmp_path / "cache", weights) != cache


def test_the_weight_file_is_read_once_for_the_graphs_of_all_its_parts(tmp_path):
    weights = tmp_path / "voice.pth"
    weights.write_bytes(b"weights" * 1000)
    _file_digest.cache_clear()
    paths = {graph_cache_path(tmp_path, weights), text_encoder_onnx.graph_cache_path(tmp_path, weights)}
    assert len(paths) == 2  # one file per part
    assert _file_digest.cache_info().misses == 1  # but the file was hashed once
