"""Residual vector quantizer of the SoVITS content path (keys `quantizer.vq.layers.i._codebook.*`).

Only nearest-neighbour encoding and codebook lookup are needed at inference; `cluster_size` and
`embed_avg` are the training EMA state and are kept so that files round-trip unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def nearest_code(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """x [N, D], embed [K, D] -> [N] index of the closest codebook row (squared Euclidean).

    Computed as the official code does, as the maximum of -(|x|^2 - 2 x.e + |e|^2).
    """
    e = embed.t()  # [D, K]
    neg_dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ e + e.pow(2).sum(0, keepdim=True))  # [N, K]
    return neg_dist.max(dim=-1).indices


class EuclideanCodebook(nn.Module):
    def __init__(self, dim: int, size: int):
        super().__init__()
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed", torch.randn(size, dim))
        self.register_buffer("embed_avg", self.embed.clone())


class VectorQuantization(nn.Module):
    def __init__(self, dim: int, size: int):
        super().__init__()
        self._codebook = EuclideanCodebook(dim, size)


class _LayerStack(nn.Module):
    def __init__(self, dim: int, size: int, n_q: int):
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantization(dim, size) for _ in range(n_q))


class ResidualVectorQuantizer(nn.Module):
    """`quantizer`: [B, D, T] features <-> [n_q, B, T] codes."""

    def __init__(self, dim: int = 768, size: int = 1024, n_q: int = 1):
        super().__init__()
        self.vq = _LayerStack(dim, size, n_q)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, D, T] -> codes [n_q, B, T] (each layer quantizes the residual of the previous ones)."""
        b, d, t = x.shape
        residual = x.transpose(1, 2).reshape(b * t, d)  # [B*T, D]
        codes = []
        for layer in self.vq.layers:
            embed = layer._codebook.embed
            index = nearest_code(residual, embed)
            residual = residual - F.embedding(index, embed)
            codes.append(index.view(b, t))
        return torch.stack(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [n_q, B, T] -> [B, D, T] sum of the selected codebook rows."""
        out = 0.0
        for layer, index in zip(self.vq.layers, codes):
            out = out + F.embedding(index, layer._codebook.embed)  # [B, T, D]
        return out.transpose(1, 2)
