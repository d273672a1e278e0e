"""Building ONNX graphs from koe's torch modules, and running them on the CPU with ONNX Runtime.

On the CPU, ONNX Runtime's MLAS kernels beat torch's for what koe runs most: one-token matrix-vector
products (the T2S decode step, bandwidth-bound) and the narrow 1-D convolutions of the SoVITS
generator (compute-bound). The graphs are built in memory from the loaded weights (no export step,
no files): `GraphBuilder` collects nodes and weights, `cpu_session` compiles them.

Weights go in as fp32 (the same model, within float rounding) or, for matrix products, as 8-bit codes
with a scale per output column (`DynamicQuantizeMatMul`: activations quantized per call, MLAS's int8
GEMM, which also makes many-row products about twice as fast as fp32) or 4-bit codes with a scale per
block of 32 inputs (`MatMulNBits`: an eighth of the bytes, int8 dot products).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agent.errors import KoeError
from tts.memory import release_memory

log = logging.getLogger(__name__)

QUANT_BLOCK = 32  # 4-bit weights per scale (along the input dimension)
ACCURACY_INT8 = 4  # MatMulNBits accuracy_level 4: int8 activations x int8 weights (the fast kernels)
INT7_MAX = 63  # the 8-bit format's codes: see quantize_columns
OPSET = 17
EXTERNAL_BYTES = 1 << 16  # initializers this large are passed to ONNX Runtime in place, not serialized


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 7-bit quantization per output column, in `DynamicQuantizeMatMul`'s layout:
    weight [K, N] -> (int8 codes [K, N] within +-63, float32 scales [N]); w = code * scale.

    Why 7 bits: without VNNI (AVX2 only), MLAS multiplies uint8 activations by int8 weights in pairs
    summed into int16 (vpmaddubsw), which saturates for full-range codes; 255 * 63 * 2 fits.
    """
    scale = np.abs(weight).max(axis=0) / INT7_MAX
    scale[scale == 0] = 1.0
    codes = np.clip(np.round(weight / scale), -INT7_MAX, INT7_MAX)
    return codes.astype(np.int8), scale.astype(np.float32)


def dequantize_columns(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The weight [K, N] that `quantize_columns` codes stand for."""
    return codes.astype(np.float32) * scale


def quantize_blocks_4bit(
    weight: np.ndarray, block: int = QUANT_BLOCK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit quantization per block of `block` inputs, in `MatMulNBits`' bits=4 layout.

    weight [N, K] -> (codes uint8 [N, K/block, block/2], two per byte, the even input in the low
    nibble; scales float32 [N * K/block]; zero points uint8 [N, ceil(K/block / 2)], two per byte).
    A block's range [min, max] (widened to hold 0) maps onto the 16 codes: w = (code - zero) * scale.
    """
    rows, cols = weight.shape
    if cols % block or block % 2:
        raise KoeError(f"cannot quantize a [{rows}, {cols}] weight in blocks of {block}")
    blocks = weight.reshape(rows, cols // block, block)
    low, high = np.minimum(blocks.min(axis=-1), 0), np.maximum(blocks.max(axis=-1), 0)
    scale = (high - low) / 15.0
    scale[scale == 0] = 1.0
    zero = np.clip(np.round(-low / scale), 0, 15).astype(np.uint8)
    codes = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
    if zero.shape[1] % 2:  # an odd block count: the last byte's high nibble is unused
        zero = np.pad(zero, ((0, 0), (0, 1)))
    return (
        _pack_nibbles(codes),
        scale.astype(np.float32).reshape(-1),
        _pack_nibbles(zero),
    )


def dequantize_blocks_4bit(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """The weight [N, K] that `quantize_blocks_4bit` codes stand for."""
    rows, nblocks, half = codes.shape
    values = _unpack_nibbles(codes).astype(np.float32)  # [N, blocks, block]
    zeros = _unpack_nibbles(zero)[:, :nblocks, None].astype(np.float32)
    return ((values - zeros) * scale.reshape(rows, nblocks, 1)).reshape(rows, nblocks * half * 2)


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 values < 16 [..., 2n] -> bytes [..., n], the even element in the low nibble."""
    return values[..., 0::2] | (values[..., 1::2] << 4)


def _unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class GraphBuilder:
    """Collects the nodes and initializers of one graph; each helper returns its output's name.

    `weights` ("fp32", "int8" or "int4") is the format of the matrices given to `linear`.
    """

    def __init__(self, weights: str = "fp32"):
        try:
            from onnx import helper, numpy_helper
        except ImportError:
            raise KoeError("the ONNX Runtime paths need the onnx package: pip install onnx") from None
        self.helper, self.numpy_helper = helper, numpy_helper
        self.weights = weights
        self.nodes: list = []
        self.initializers: list = []
        self.external: dict[str, np.ndarray] = {}  # large weights, handed to ONNX Runtime in place

    def const(self, name: str, value: np.ndarray) -> str:
        value = np.ascontiguousarray(value)
        if value.nbytes < EXTERNAL_BYTES:
            self.initializers.append(self.numpy_helper.from_array(value, name))
            return name
        # Large weights stay out of the protobuf (fewer copies at build time): the graph only names
        # them as external data, and `cpu_session` hands ONNX Runtime the arrays.
        from onnx import TensorProto, helper

        tensor = TensorProto(
            name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype), dims=value.shape
        )
        _mark_external(tensor, value.nbytes)
        self.initializers.append(tensor)
        self.external[name] = value
        return name

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], domain=domain, **attrs))
        return output

    def linear(self, x: str, weight: torch.Tensor, bias: torch.Tensor | None, name: str) -> str:
        """y = x W^T + b over the last axis, with W in the builder's weight format."""
        w = _array(weight)
        rows, cols = w.shape
        if self.weights == "fp32":
            y = self.node("MatMul", [x, self.const(f"{name}.wT", w.T)], f"{name}.mm")
            if bias is None:
                return y
            return self.node("Add", [y, self.const(f"{name}.b", _array(bias))], f"{name}.y")
        bias_input = "" if bias is None else self.const(f"{name}.b", _array(bias))  # added by the kernel
        if self.weights == "int8":
            codes, scale = quantize_columns(w.T)
            inputs = [x, self.const(f"{name}.q", codes), self.const(f"{name}.scale", scale), "", bias_input]
            return self.node("DynamicQuantizeMatMul", inputs, f"{name}.mm", domain="com.microsoft")
        codes, scale, zero = quantize_blocks_4bit(w)
        inputs = [x, self.const(f"{name}.q", codes), self.const(f"{name}.scale", scale),
                  self.const(f"{name}.zero", zero), "", bias_input]  # fmt: skip
        return self.node(
            "MatMulNBits", inputs, f"{name}.mm", domain="com.microsoft", K=cols, N=rows, bits=4,
            block_size=QUANT_BLOCK, accuracy_level=ACCURACY_INT8,
        )  # fmt: skip

    def layer_norm(self, x: str, norm: torch.nn.LayerNorm, name: str) -> str:
        gamma, beta = (
            self.const(f"{name}.weight", _array(norm.weight)),
            self.const(f"{name}.bias", _array(norm.bias)),
        )
        return self.node("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=norm.eps)

    def conv1d(self, x: str, conv: torch.nn.Conv1d, name: str) -> str:
        """A torch Conv1d (plain weights: fold weight norm first) on [B, C, T]."""
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise KoeError(f"{name}: only zero-padded convolutions with explicit padding are supported")
        inputs = [x, self.const(f"{name}.weight", _array(conv.weight))]
        if conv.bias is not None:
            inputs.append(self.const(f"{name}.bias", _array(conv.bias)))
        return self.node(
            "Conv", inputs, name, kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
            dilations=list(conv.dilation), pads=[conv.padding[0]] * 2, group=conv.groups,
        )  # fmt: skip

    def conv_transpose1d(self, x: str, conv: torch.nn.ConvTranspose1d, name: str) -> str:
        inputs = [x, self.const(f"{name}.weight", _array(conv.weight))]
        if conv.bias is not None:
            inputs.append(self.const(f"{name}.bias", _array(conv.bias)))
        return self.node(
            "ConvTranspose", inputs, name, kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
            dilations=list(conv.dilation), pads=[conv.padding[0]] * 2, group=conv.groups,
            output_padding=list(conv.output_padding),
        )  # fmt: skip

    def leaky_relu(self, x: str, slope: float, name: str) -> str:
        return self.node("LeakyRelu", [x], name, alpha=slope)

    def build(self, graph_name: str, inputs: list, outputs: list) -> BuiltGraph:
        graph = self.helper.make_graph(self.nodes, graph_name, inputs, outputs, self.initializers)
        opsets = [self.helper.make_opsetid("", OPSET), self.helper.make_opsetid("com.microsoft", 1)]
        return BuiltGraph(
            self.helper.make_model(graph, opset_imports=opsets).SerializeToString(), self.external
        )


@dataclass
class BuiltGraph:
    """A serialized graph and the large weights it names as external data."""

    model: bytes
    external: dict[str, np.ndarray]

    @classmethod
    def from_onnx(cls, model: bytes) -> BuiltGraph:
        """A graph serialized elsewhere (e.g. by torch's exporter), with its large initializers moved
        out of the protobuf as `GraphBuilder` leaves them."""
        import onnx
        from onnx import numpy_helper

        proto = onnx.load_from_string(model)
        external = {}
        for tensor in proto.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.raw_data:
                continue
            value = numpy_helper.to_array(tensor)
            if value.nbytes < EXTERNAL_BYTES:
                continue
            external[tensor.name] = value
            tensor.ClearField("raw_data")
            _mark_external(tensor, value.nbytes)
        return cls(proto.SerializeToString(), external)


def trace_to_onnx(
    module: torch.nn.Module, example: tuple, inputs: list[str], outputs: list[str], dynamic: dict, what: str
) -> bytes:
    """The ONNX model (weights included) of `module.forward`, traced by torch's exporter on `example`
    with the `dynamic` axes left free. For modules of plain tensor ops: tracing keeps the graph
    exactly what the torch code computes."""
    buffer = io.BytesIO()
    modes = {part: part.training for part in module.modules()}  # a wrapper's mode need not be its parts'
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic, and its deprecation
            torch.onnx.export(
                module, example, buffer, input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                opset_version=OPSET, dynamo=False,
            )  # fmt: skip
    except Exception as e:  # the exporter is torch's; name what failed and let the torch path run
        raise KoeError(f"could not export the {what} to ONNX: {type(e).__name__}: {e}") from e
    finally:
        for part, training in modes.items():
            part.training = training
    return buffer.getvalue()


def traced_graph_path(cache_dir: Path, weights_path: str | Path, part: str, sources: Iterable[str]) -> Path:
    """Where the traced graph of one part of a weight file is kept: a new weight file, a change to the
    code that computes it (`sources`: module files) or another torch gives another name, so a stale
    graph is never read."""
    key = hashlib.sha256()
    stat = Path(weights_path).stat()
    key.update(_file_digest(str(weights_path), stat.st_size, stat.st_mtime_ns))
    for module_file in (*sources, __file__):
        key.update(Path(module_file).read_bytes())
    key.update(torch.__version__.encode())
    return Path(cache_dir) / f"{part}-{key.hexdigest()[:20]}.onnx"


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> bytes:
    """sha256 of a weight file, read once per version of it (several parts of one file are traced)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def cached_trace(cache: Path | None, trace: Callable[[], bytes]) -> tuple[BuiltGraph, bool]:
    """The graph from `cache` when it is there, else traced (and written there); -> (graph, from cache)."""
    from tts.weights import write_atomic

    cached = cache is not None and cache.is_file()
    if cached:
        model = cache.read_bytes()
    else:
        model = trace()
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache, model)
    return BuiltGraph.from_onnx(model), cached  # the weights handed over in place, not kept serialized


class TracedGraph:
    """A part of a torch model traced to ONNX (`trace_to_onnx`) and run on the CPU through ONNX
    Runtime; subclasses feed it. `release` is the torch module whose weights the graph replaces (then
    dropped: inference-only models), or None to keep them."""

    def __init__(
        self,
        what: str,
        trace: Callable[[], bytes],
        release: torch.nn.Module | None = None,
        threads: int | None = None,
        cache: Path | None = None,
    ):
        started = time.perf_counter()
        graph, cached = cached_trace(cache, trace)
        if release is not None:  # before the session copies the graph's weights: a lower peak
            release_parameters(release)
        self.session = cpu_session(graph, threads)
        self.released_torch_weights = release is not None
        log.info(
            "%s ONNX Runtime graph ready in %.1f s%s", what, time.perf_counter() - started,
            " (from the cache)" if cached else "",
        )  # fmt: skip

    def supports(self, x: torch.Tensor) -> bool:
        """Whether the graph can take this input (CPU fp32); otherwise the torch code runs."""
        return x.device.type == "cpu" and x.dtype == torch.float32


def _mark_external(tensor, nbytes: int) -> None:
    """Name a TensorProto's data as held outside the graph (handed over by `cpu_session`)."""
    from onnx import TensorProto

    tensor.data_location = TensorProto.EXTERNAL
    for key, entry in (("location", "koe-memory"), ("offset", "0"), ("length", str(nbytes))):
        tensor.external_data.add(key=key, value=entry)


def release_parameters(module: torch.nn.Module) -> None:
    """Drop the torch copies of weights that an ONNX Runtime graph holds (resident memory), and hand
    the freed pages back to the system. Arrays a `GraphBuilder` still shares stay until it is done."""
    for parameter in module.parameters():
        parameter.data = torch.empty(0, dtype=parameter.dtype)
    release_memory()


def session_options(threads: int | None = None, spin: bool = False):
    """ONNX Runtime CPU session options with koe's thread count (torch's by default).

    `spin`: whether the session's threads keep spinning for work after a run (ONNX Runtime's
    default), for graphs run many times a second (the T2S decode step: measured ~20% slower per
    token without it). Other graphs let their threads sleep at once, because a spinning pool takes
    the cores from whatever runs next: measured on 2 cores, a first SoVITS chunk (text encoder, flow
    and generator graphs in a row) took 300-350 ms with every pool spinning and 220-260 ms without.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise KoeError("the ONNX Runtime paths need onnxruntime: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def cpu_session(graph: BuiltGraph, threads: int | None = None, spin: bool = False):
    """An ONNX Runtime CPU session for a built graph (`session_options` says what `spin` is for).

    ONNX Runtime copies the graph's large weights while it loads (AddExternalInitializers); the
    arrays can be dropped afterwards. (It keeps the serialized graph for the session's life, which is
    why large weights never go into it.)
    """
    import onnxruntime as ort

    options = session_options(threads, spin)
    if graph.external:
        names = list(graph.external)
        options.add_external_initializers(
            names, [ort.OrtValue.ortvalue_from_numpy(graph.external[n]) for n in names]
        )
    session = ort.InferenceSession(graph.model, options, providers=["CPUExecutionProvider"])
    del options
    graph.external.clear()
    release_memory()
    return session
