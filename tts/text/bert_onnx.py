"""The Chinese BERT's encoder layers as an ONNX Runtime graph: the fast CPU path of `ChineseBert`.

chinese-roberta-wwm-ext-large is the largest model a Chinese sentence passes through (22 of its 24
layers are used, ~300 M weights), and a sentence is only ~10-50 tokens, so a call is bound by reading
the weights. Torch took ~350 ms for a 20-character sentence on two AVX2 cores, the same fp32 layers
through MLAS ~190 ms, and with 8-bit weights (the T2S fast modes' `DynamicQuantizeMatMul`) 83 ms, its
features at cosine 0.997 to fp32's (4-bit weights: 139 ms, cosine 0.95, so they are not offered).

The embeddings stay in torch (a lookup); the graph maps their output [1, T, hidden] to the output of
the last kept layer.
"""

from __future__ import annotations

import logging
import time

import torch

from agent.errors import KoeError
from tts.models.onnx_graph import BuiltGraph, GraphBuilder, cpu_session, release_parameters

log = logging.getLogger(__name__)


WEIGHT_FORMATS = ("fp32", "int8")


def build_encoder_graph(model, weights: str = "fp32") -> BuiltGraph:
    """The graph of a transformers `BertModel`'s encoder layers (post-norm, exact GELU, no mask), with
    its matrices in `weights` ("fp32" or "int8", see `GraphBuilder`)."""
    from onnx import TensorProto, helper

    config = model.config
    if config.hidden_act != "gelu":
        raise KoeError(f"the ONNX BERT path supports the exact GELU activation, not {config.hidden_act!r}")
    if weights not in WEIGHT_FORMATS:
        raise KoeError(f"unknown BERT ONNX weight format {weights!r}; expected one of {WEIGHT_FORMATS}")
    g = GraphBuilder(weights)
    hidden = config.hidden_size
    inputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, "tokens", hidden])]
    x = "hidden"
    for i, layer in enumerate(model.encoder.layer):
        name, attention = f"layer{i}", layer.attention
        q, k, v = (
            g.linear(x, proj.weight, proj.bias, f"{name}.{part}")
            for part, proj in (
                ("q", attention.self.query),
                ("k", attention.self.key),
                ("v", attention.self.value),
            )
        )
        attended = g.node(
            "MultiHeadAttention", [q, k, v], f"{name}.attn", domain="com.microsoft",
            num_heads=config.num_attention_heads,
        )  # fmt: skip
        out = g.linear(attended, attention.output.dense.weight, attention.output.dense.bias, f"{name}.out")
        x = g.layer_norm(g.node("Add", [x, out], f"{name}.res1"), attention.output.LayerNorm, f"{name}.norm1")
        inner = g.linear(x, layer.intermediate.dense.weight, layer.intermediate.dense.bias, f"{name}.ffn1")
        inner = g.node("Gelu", [inner], f"{name}.gelu", domain="com.microsoft")  # erf GELU
        ffn = g.linear(inner, layer.output.dense.weight, layer.output.dense.bias, f"{name}.ffn2")
        x = g.layer_norm(g.node("Add", [x, ffn], f"{name}.res2"), layer.output.LayerNorm, f"{name}.norm2")
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, "tokens", hidden])]
    return g.build("bert_encoder", inputs, outputs)


class OnnxBertEncoder:
    """`BertModel.encoder` of one loaded model on the CPU through ONNX Runtime (drops its torch layers)."""

    def __init__(self, model, weights: str = "fp32", threads: int | None = None):
        started = time.perf_counter()
        graph = build_encoder_graph(model, weights)
        release_parameters(model.encoder)
        self.session = cpu_session(graph, threads)
        self.weights = weights
        log.info("BERT %s ONNX Runtime graph ready in %.1f s", weights, time.perf_counter() - started)

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[1, T, hidden] embedding output -> [1, T, hidden] output of the last layer."""
        (out,) = self.session.run(["last_hidden_state"], {"hidden": embeddings.float().contiguous().numpy()})
        return torch.from_numpy(out)
