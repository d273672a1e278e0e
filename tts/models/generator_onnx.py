"""The SoVITS HiFi-GAN generator as an ONNX Runtime graph: the fast CPU path of `Generator`.

The generator is most of a SoVITS decode (about 160 GFLOP per 4 s of audio), spent in narrow 1-D
convolutions (32-256 channels over 2k-64k samples) where MLAS's direct convolution kernels run 1.5-3x
faster than torch's oneDNN path on these CPUs. The graph is the same fp32 model (within float
rounding); weight norm must already be folded (koe's inference models are).

Attach it once per loaded SoVITS weights: `generator.onnx = OnnxGenerator(generator)`.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from tts.models.generator import LRELU_SLOPE, Generator, ResBlock1
from tts.models.onnx_graph import BuiltGraph, GraphBuilder, cpu_session, release_parameters

log = logging.getLogger(__name__)


def build_generator_graph(generator: Generator) -> BuiltGraph:
    """The ONNX graph of `generator.forward_pre_tanh`: x [B, C, T] (+ g [B, gin, 1]) -> [B, 1, S]."""
    from onnx import TensorProto, helper

    g = GraphBuilder("fp32")
    channels = generator.conv_pre.in_channels
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, "frames"])]
    x = g.conv1d("x", generator.conv_pre, "conv_pre")
    if hasattr(generator, "cond"):
        inputs.append(
            helper.make_tensor_value_info("g", TensorProto.FLOAT, ["batch", generator.cond.in_channels, 1])
        )
        x = g.node("Add", [x, g.conv1d("g", generator.cond, "cond")], "conditioned")
    kernels = generator.num_kernels
    for i, up in enumerate(generator.ups):
        x = g.conv_transpose1d(g.leaky_relu(x, LRELU_SLOPE, f"ups.{i}.act"), up, f"ups.{i}")
        total = None
        for j, block in enumerate(generator.resblocks[i * kernels : (i + 1) * kernels]):
            out = _resblock(g, x, block, f"resblocks.{i * kernels + j}")
            total = out if total is None else g.node("Add", [total, out], f"stage{i}.sum{j}")
        x = g.node(
            "Div",
            [total, g.const(f"stage{i}.kernels", np.array(kernels, dtype=np.float32))],
            f"stage{i}.mean",
        )
    out = g.conv1d(g.leaky_relu(x, 0.01, "post.act"), generator.conv_post, "conv_post")
    g.nodes.append(helper.make_node("Identity", [out], ["pre_tanh"]))
    outputs = [helper.make_tensor_value_info("pre_tanh", TensorProto.FLOAT, ["batch", 1, "samples"])]
    return g.build("sovits_generator", inputs, outputs)


def _resblock(g: GraphBuilder, x: str, block, name: str) -> str:
    if isinstance(block, ResBlock1):
        for n, (c1, c2) in enumerate(zip(block.convs1, block.convs2)):
            h = g.conv1d(g.leaky_relu(x, LRELU_SLOPE, f"{name}.{n}.act1"), c1, f"{name}.convs1.{n}")
            h = g.conv1d(g.leaky_relu(h, LRELU_SLOPE, f"{name}.{n}.act2"), c2, f"{name}.convs2.{n}")
            x = g.node("Add", [x, h], f"{name}.{n}.res")
        return x
    for n, conv in enumerate(block.convs):
        h = g.conv1d(g.leaky_relu(x, LRELU_SLOPE, f"{name}.{n}.act"), conv, f"{name}.convs.{n}")
        x = g.node("Add", [x, h], f"{name}.{n}.res")
    return x


class OnnxGenerator:
    """`Generator.forward_pre_tanh` on the CPU through ONNX Runtime."""

    def __init__(self, generator: Generator, threads: int | None = None, release_torch_weights: bool = False):
        """`release_torch_weights` drops the torch copies (inference-only models)."""
        started = time.perf_counter()
        graph = build_generator_graph(generator)
        if release_torch_weights:  # the graph holds the arrays until the session has copied them
            release_parameters(generator)
        self.session = cpu_session(graph, threads)
        self.conditioned = hasattr(generator, "cond")
        self.released_torch_weights = release_torch_weights
        log.info("SoVITS generator ONNX Runtime graph ready in %.1f s", time.perf_counter() - started)

    def supports(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype == torch.float32

    def __call__(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        feed = {"x": x.detach().contiguous().numpy()}
        if self.conditioned:
            feed["g"] = g.detach().float().contiguous().numpy()
        (out,) = self.session.run(["pre_tanh"], feed)
        return torch.from_numpy(out)
