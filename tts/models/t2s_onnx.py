"""The T2S transformer stack and output layer as one ONNX Runtime graph: the fast path of `T2SModel`.

A decode step reads every weight of the model once for one token, so it is bound by memory bandwidth,
and torch's own M=1 paths stay far from it (measured: fp32 about 3x off the DRAM floor, int8 dynamic
quantization no better); MLAS streams much closer to it, in fp32 (the same numbers within ~1e-6) or
with 8-bit weights (a quarter of the bytes; MLAS's int8 GEMM also runs the prompt pass about twice as
fast as fp32) or 4-bit block-quantized ones (an eighth: the fastest steps). One graph holds the
whole stack (24 layers, 8 nodes each: the fused q/k/v projection feeds the attention packed), so a
token costs one `run` instead of thousands of torch ops.

The KV cache stays koe's `KVCache` (torch tensors [layers, batch, heads, capacity, head_dim]):
`GroupQueryAttention` reads and appends to each layer's buffer in place (past and present bound to the
same memory), so nothing is copied per step. The attention mask travels as an additive bias, so the
prompt pass (text sees all text) and padded batches run through the same graph.

Build it once per loaded GPT weights: `model.onnx_stack = OnnxStack(model, "int4")`.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from agent.errors import KoeError
from tts.models.onnx_graph import BuiltGraph, GraphBuilder, cpu_session, release_parameters

log = logging.getLogger(__name__)

WEIGHT_FORMATS = ("fp32", "int8", "int4")


def build_stack_graph(model, weights: str) -> BuiltGraph:
    """The ONNX graph of `model`'s stack (a `T2SModel`) over S new positions.

    Inputs: x [B, S, dim] (embedded positions), seqlens_k [B] int32 (positions cached after this call,
    minus one), total_len [] int32, attention_bias [B or 1, 1, S, total] (0 = may attend, -inf = not),
    past_key_i / past_value_i [B, heads, capacity, head_dim] per layer.
    Outputs: logits [B, 1, vocab] of the last position, present_key_i / present_value_i (the same
    buffers, S rows longer).
    """
    from onnx import TensorProto, helper

    config = model.config
    dim, heads, head_dim = config.dim, config.num_heads, config.head_dim
    g = GraphBuilder(weights)
    cache_shape = ["batch", heads, "capacity", head_dim]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length", dim]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_len", TensorProto.INT32, []),
        helper.make_tensor_value_info(
            "attention_bias", TensorProto.FLOAT, ["bias_batch", 1, "length", "total"]
        ),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, config.vocab_size])]
    x = "x"
    for i, layer in enumerate(model.h.layers):
        attn, name = layer.self_attn, f"layer{i}"
        qkv = g.linear(x, attn.in_proj_weight, attn.in_proj_bias, f"{name}.qkv")
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", TensorProto.FLOAT, cache_shape))
            outputs.append(
                helper.make_tensor_value_info(f"present_{kind}_{i}", TensorProto.FLOAT, cache_shape)
            )
        g.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [qkv, "", "", f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_len",
                 "", "", "", "attention_bias"],
                [f"{name}.attn", f"present_key_{i}", f"present_value_{i}"],
                domain="com.microsoft", num_heads=heads, kv_num_heads=heads, causal=0,
            )
        )  # fmt: skip
        attended = g.linear(f"{name}.attn", attn.out_proj.weight, attn.out_proj.bias, f"{name}.out")
        x = g.layer_norm(g.node("Add", [x, attended], f"{name}.res1"), layer.norm1, f"{name}.norm1")
        hidden = g.node(
            "Relu", [g.linear(x, layer.linear1.weight, layer.linear1.bias, f"{name}.ffn1")], f"{name}.relu"
        )
        ffn = g.linear(hidden, layer.linear2.weight, layer.linear2.bias, f"{name}.ffn2")
        x = g.layer_norm(g.node("Add", [x, ffn], f"{name}.res2"), layer.norm2, f"{name}.norm2")
    last = g.node(
        "Slice", [x, g.const("last.start", np.array([-1])), g.const("last.end", np.array([2**62])),
                  g.const("last.axis", np.array([1]))], "last",
    )  # fmt: skip
    logits = g.linear(last, model.ar_predict_layer.weight, None, "predict")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    return g.build("t2s_stack", inputs, outputs)


class OnnxStack:
    """`T2SModel`'s stack + output layer on the CPU through ONNX Runtime, for `prefill` and `decode_step`."""

    def __init__(
        self, model, weights: str = "int8", threads: int | None = None, release_torch_weights: bool = False
    ):
        """`release_torch_weights` drops the torch copies of the stack's weights (inference-only models:
        the torch stack cannot run afterwards)."""
        if weights not in WEIGHT_FORMATS:
            raise KoeError(f"unknown T2S ONNX weight format {weights!r}; expected one of {WEIGHT_FORMATS}")
        started = time.perf_counter()
        graph = build_stack_graph(model, weights)
        if release_torch_weights:  # before the session copies the graph's weights: a lower peak
            release_parameters(model.h)
        self.session = cpu_session(graph, threads, spin=True)  # a run every few ms: keep threads awake
        self.weights = weights
        self.num_layers = model.config.num_layers
        self.vocab_size = model.config.vocab_size
        self.released_torch_weights = release_torch_weights
        self._binding = None
        self._bound_cache: tuple | None = None
        log.info("T2S %s ONNX Runtime graph ready in %.1f s", weights, time.perf_counter() - started)

    def supports(self, x: torch.Tensor, cache) -> bool:
        """Whether this graph can run: CPU fp32 tensors and room left in the cache."""
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and cache.keys.dtype == torch.float32
            and cache.keys.is_contiguous()
            and cache.values.is_contiguous()
            and cache.length + x.shape[1] <= cache.capacity
        )

    def __call__(self, x: torch.Tensor, cache, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, S, dim] at positions cache.length .. +S-1 -> logits of the last position [B, vocab].

        allowed: bool, True = may attend, broadcastable to [B, 1, S, cache.length + S]; None = all.
        Appends the new keys and values to `cache`.
        """
        batch, new = x.shape[0], x.shape[1]
        total = cache.length + new
        if allowed is None:
            bias = torch.zeros(1, 1, new, total)
        else:
            allowed = allowed.reshape((-1, 1, *allowed.shape[-2:])).expand(-1, 1, new, total)
            bias = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))
        feeds = {  # held here until the run: the binding may read them in place
            "x": x.contiguous().numpy(),
            "seqlens_k": np.full(batch, total - 1, dtype=np.int32),
            "total_len": np.array(total, dtype=np.int32),
            "attention_bias": bias.numpy(),
        }
        binding = self._binding_for(cache)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        logits = torch.empty(batch, 1, self.vocab_size)
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.data_ptr())
        self.session.run_with_iobinding(binding)
        cache.length = total
        return logits[:, 0]

    def _binding_for(self, cache):
        """The session's IO binding with every layer's cache buffer bound as past and present; bound
        again only when the cache's tensors change (a new generation, or rows dropped from a batch)."""
        key = (cache.keys.data_ptr(), cache.values.data_ptr(), tuple(cache.keys.shape))
        if key != self._bound_cache:
            binding = self._binding = self.session.io_binding()
            for i in range(self.num_layers):
                for kind, buffer in (("key", cache.keys[i]), ("value", cache.values[i])):
                    shape, pointer = list(buffer.shape), buffer.data_ptr()
                    binding.bind_input(f"past_{kind}_{i}", "cpu", 0, np.float32, shape, pointer)
                    binding.bind_output(f"present_{kind}_{i}", "cpu", 0, np.float32, shape, pointer)
            self._bound_cache = key
        return self._binding
