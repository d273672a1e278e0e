"""The T2S decode step on a GPU as a CUDA graph: one replay per token instead of ~300 kernel launches.

A decode step of the full-size model is 24 layers of small kernels (a [1, 512] row through each
matrix), so on a GPU eager torch spends its time launching them, not computing. A CUDA graph records
the step's kernels once and replays them with one launch. That needs fixed shapes and addresses:
`StaticDecodeStep` keeps the step's input, position and padding mask in tensors of its own and
attends over the whole KV cache capacity (columns past the position are masked), so the same
recording serves every token of a generation. A new KV cache (a new generation, or rows dropped from
a batch) is recorded anew.

Attach it once per loaded GPT weights on a GPU: `model.cuda_graph = CudaGraphDecodeStep(model)`.
"""

from __future__ import annotations

import logging
import time

import torch

from tts.models.t2s import KVCache, T2SModel

log = logging.getLogger(__name__)


class StaticDecodeStep:
    """One decode step of `model` against `cache` over buffers that keep their address: `load` copies
    a step's input in, `run` computes it (what a CUDA graph records and replays)."""

    def __init__(self, model: T2SModel, cache: KVCache):
        self.model, self.cache = model, cache
        batch, device = cache.keys.shape[1], cache.keys.device
        self.x = torch.zeros(batch, 1, model.config.dim, dtype=cache.keys.dtype, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.padding = torch.ones(batch, 1, 1, cache.capacity, dtype=torch.bool, device=device)
        self.columns = torch.arange(cache.capacity, device=device)
        self.logits: torch.Tensor | None = None
        # The columns past the position are masked, yet the attention still multiplies their values
        # by a weight of 0: memory never written may hold NaN, and 0 * NaN is NaN.
        cache.keys[:, :, :, cache.length :].zero_()
        cache.values[:, :, :, cache.length :].zero_()

    def load(self, x: torch.Tensor, allowed: torch.Tensor | None) -> None:
        """The step's input x [B, 1, dim] at position `cache.length`; allowed: the padding mask
        [B, 1, 1, cache.length + 1] of a left-padded batch, or None."""
        self.x.copy_(x)
        self.position.fill_(self.cache.length)
        if allowed is None:
            self.padding.fill_(True)
        else:
            self.padding[..., : allowed.shape[-1]].copy_(allowed.expand(-1, 1, 1, -1))

    def run(self) -> torch.Tensor:
        """Write this position's keys and values into the cache -> logits [B, vocab] (kept in
        `self.logits`). Does not advance `cache.length`."""
        allowed = (self.columns <= self.position) & self.padding  # [B, 1, 1, capacity]
        hidden = self.model.h(self.x, allowed, self.cache, positions=self.position)
        self.logits = self.model.ar_predict_layer(hidden[:, -1])
        return self.logits


class CudaGraphDecodeStep:
    """`T2SModel.decode_step` on a GPU replayed from a CUDA graph, recorded once per KV cache.

    If recording fails (an old driver, a kernel that cannot be captured) it says so once and leaves
    every later step to eager torch: slower, never wrong.
    """

    def __init__(self, model: T2SModel):
        self.model = model
        self.disabled = False
        self._static: StaticDecodeStep | None = None
        self._graph = None
        self._recorded_for: tuple | None = None

    def supports(self, x: torch.Tensor, cache: KVCache) -> bool:
        return (
            not self.disabled
            and x.is_cuda
            and x.shape[1] == 1
            and cache.keys.is_cuda
            and cache.length < cache.capacity
        )

    def __call__(self, x: torch.Tensor, cache: KVCache, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, 1, dim] at position cache.length -> logits [B, vocab]; appends to `cache`."""
        key = (cache.keys.data_ptr(), cache.values.data_ptr(), tuple(cache.keys.shape), x.dtype)
        if key != self._recorded_for:
            try:
                self._record(cache, x, allowed)
            except Exception as e:  # noqa: BLE001 - any capture failure: eager torch still works
                log.warning(
                    "could not record the T2S decode step as a CUDA graph (%s: %s); decoding without it",
                    type(e).__name__, e,
                )  # fmt: skip
                self.disabled, self._static, self._graph, self._recorded_for = True, None, None, None
                return self.model.torch_decode_step(x, cache, allowed)
            self._recorded_for = key
        self._static.load(x, allowed)
        self._graph.replay()
        cache.length += 1
        return self._static.logits.clone()  # the caller may change it in place (sampling penalties)

    def _record(self, cache: KVCache, x: torch.Tensor, allowed: torch.Tensor | None) -> None:
        started = time.perf_counter()
        self._graph = self._static = None  # the previous recording's memory goes first
        static = StaticDecodeStep(self.model, cache)
        static.load(x, allowed)  # the recording writes this position's keys: the same ones the replay will
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            static.run()  # a warm-up outside the graph: library handles and kernel choices are made here
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static.run()
        self._static, self._graph = static, graph
        log.debug(
            "T2S decode step recorded as a CUDA graph in %.1f ms (batch %d, capacity %d)",
            (time.perf_counter() - started) * 1000, cache.keys.shape[1], cache.capacity,
        )  # fmt: skip
