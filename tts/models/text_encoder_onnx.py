"""The SoVITS text encoder's `encode` (SSL and phoneme encoders, MRTE) as an ONNX Runtime graph.

On the CPU, `TextEncoder.encode` is hundreds of small torch ops (12 relative-position attention
layers over a few dozen frames), so for a streaming chunk or a short sentence it costs far more
than its arithmetic: measured 105 ms in torch against 36 ms here for a first 8-token chunk, and
160 against 55 ms for 4 s of speech. Unlike the T2S stack and the generator, this graph is traced
from the torch module itself (`torch.onnx.export`): every op is a plain tensor op, and tracing keeps
the graph exactly what the torch code computes (the same numbers within float rounding; the SoVITS
parity fixtures run through it).

Build it once per loaded SoVITS weights: `sovits.enc_p.onnx = OnnxTextEncoder(sovits.enc_p)`.
Tracing takes a few seconds, so with a cache folder the graph is kept on disk, keyed by the weight
file's content, the code that computes it and the torch version (`graph_cache_path`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tts.models import sovits_modules
from tts.models.onnx_graph import TracedGraph, trace_to_onnx, traced_graph_path

ENCODE_PARTS = ("ssl_proj", "encoder_ssl", "text_embedding", "encoder_text", "mrte", "encoder2")


class _Encode(nn.Module):
    """`encoder.encode` as a module's forward, the form the exporter traces."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, ssl, ssl_lengths, text, text_lengths, ge):
        return self.encoder.encode(ssl, ssl_lengths, text, text_lengths, ge)


def export_encode_graph(encoder: nn.Module) -> bytes:
    """The ONNX model of `encoder.encode` (weights included), traced on a small example with every
    length dynamic.

    Inputs: ssl [B, 768, T] float, ssl_lengths [B] int64, text [B, L] int64, text_lengths [B] int64,
    ge [B, 512, 1] float (the style the MRTE adds). Outputs: y [B, C, T], mask [B, 1, T].
    """
    example = (
        torch.zeros(1, encoder.SSL_DIM, 12),
        torch.tensor([12]),
        torch.ones(1, 7, dtype=torch.long),
        torch.tensor([7]),
        torch.zeros(1, encoder.mrte.HIDDEN, 1),
    )
    names = ["ssl", "ssl_lengths", "text", "text_lengths", "ge"]
    dynamic = {
        "ssl": {0: "batch", 2: "frames"}, "ssl_lengths": {0: "batch"}, "text": {0: "batch", 1: "phones"},
        "text_lengths": {0: "batch"}, "ge": {0: "batch"}, "y": {0: "batch", 2: "frames"},
        "mask": {0: "batch", 2: "frames"},
    }  # fmt: skip
    return trace_to_onnx(_Encode(encoder), example, names, ["y", "mask"], dynamic, "SoVITS text encoder")


def graph_cache_path(cache_dir: Path, weights_path: str | Path) -> Path:
    """Where the traced graph of this SoVITS file's text encoder is kept (see `traced_graph_path`)."""
    return traced_graph_path(cache_dir, weights_path, "text-encoder", (sovits_modules.__file__, __file__))


class OnnxTextEncoder(TracedGraph):
    """`TextEncoder.encode` on the CPU through ONNX Runtime."""

    def __init__(
        self,
        encoder: nn.Module,
        threads: int | None = None,
        release_torch_weights: bool = False,
        cache: Path | None = None,
    ):
        """`release_torch_weights` drops the torch copies of the parts the graph holds (inference-only
        models; `prior`'s projection stays in torch). `cache`: a file (`graph_cache_path`) the graph
        is read from, or written to after tracing."""
        parts = nn.ModuleList(getattr(encoder, part) for part in ENCODE_PARTS)
        release = parts if release_torch_weights else None
        super().__init__("SoVITS text encoder", lambda: export_encode_graph(encoder), release, threads, cache)

    def __call__(self, ssl, ssl_lengths, text, text_lengths, ge) -> tuple[torch.Tensor, torch.Tensor]:
        feed = {
            "ssl": ssl.detach().contiguous().numpy(),
            "ssl_lengths": ssl_lengths.to(torch.long).numpy(),
            "text": text.to(torch.long).contiguous().numpy(),
            "text_lengths": text_lengths.to(torch.long).numpy(),
            "ge": ge.detach().float().contiguous().numpy(),
        }
        y, mask = self.session.run(["y", "mask"], feed)
        return torch.from_numpy(y), torch.from_numpy(mask)
