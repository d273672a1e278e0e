"""The SoVITS flow run in reverse (prior latent -> posterior latent) as an ONNX Runtime graph.

`CouplingFlow` is 4 couplings of 4-layer WaveNets: little arithmetic on a streaming chunk's few
dozen frames but ~150 small torch ops, so on the CPU it cost 46-69 ms of a first 8-token chunk's
~280 ms SoVITS decode. Like the text encoder, the graph is traced from the torch module
(`torch.onnx.export`), so it computes what the torch code computes (the SoVITS parity fixtures run
through it), and with a cache folder it is kept on disk (`graph_cache_path`).

Build it once per loaded SoVITS weights: `sovits.flow.onnx = OnnxFlow(sovits.flow)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tts.models import sovits_modules
from tts.models.onnx_graph import TracedGraph, trace_to_onnx, traced_graph_path


class _Reverse(nn.Module):
    """The flow's inference direction as a module's forward, the form the exporter traces."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def forward(self, z_p, mask, ge):
        return self.flow(z_p, mask, g=ge, reverse=True)


def export_flow_graph(flow: nn.Module) -> bytes:
    """The ONNX model of `flow(z_p, mask, g=ge, reverse=True)`, traced with batch and frames dynamic.

    Inputs: z_p [B, C, T], mask [B, 1, T], ge [B, gin, 1] (float). Output: z [B, C, T].
    """
    first = flow.flows[0]
    channels, gin = 2 * first.half, first.enc.cond_layer.in_channels
    example = (torch.zeros(1, channels, 12), torch.ones(1, 1, 12), torch.zeros(1, gin, 1))
    dynamic = {
        "z_p": {0: "batch", 2: "frames"}, "mask": {0: "batch", 2: "frames"}, "ge": {0: "batch"},
        "z": {0: "batch", 2: "frames"},
    }  # fmt: skip
    return trace_to_onnx(_Reverse(flow), example, ["z_p", "mask", "ge"], ["z"], dynamic, "SoVITS flow")


def graph_cache_path(cache_dir: Path, weights_path: str | Path) -> Path:
    """Where the traced flow of this SoVITS file is kept (see `traced_graph_path`)."""
    return traced_graph_path(cache_dir, weights_path, "flow", (sovits_modules.__file__, __file__))


class OnnxFlow(TracedGraph):
    """`CouplingFlow` in reverse on the CPU through ONNX Runtime."""

    def __init__(
        self,
        flow: nn.Module,
        threads: int | None = None,
        release_torch_weights: bool = False,
        cache: Path | None = None,
    ):
        """`release_torch_weights` drops the torch weights (inference-only models: the forward
        direction, used in training, cannot run afterwards). `cache`: see `graph_cache_path`."""
        release = flow if release_torch_weights else None
        super().__init__("SoVITS flow", lambda: export_flow_graph(flow), release, threads, cache)

    def __call__(self, z_p: torch.Tensor, mask: torch.Tensor, ge: torch.Tensor) -> torch.Tensor:
        feed = {
            "z_p": z_p.detach().contiguous().numpy(),
            "mask": mask.detach().float().contiguous().numpy(),
            "ge": ge.detach().float().contiguous().numpy(),
        }
        (z,) = self.session.run(["z"], feed)
        return torch.from_numpy(z)
