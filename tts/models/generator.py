"""HiFi-GAN generator (`dec` of SoVITS; with other sizes also the v4 vocoder).

Latent frames are upsampled by transposed convolutions (total factor = product of `upsample_rates`);
after each upsampling the mean of several multi-receptive-field residual blocks refines the signal.
Keys follow the official layout: `conv_pre`, `cond`, `ups.i`, `resblocks.(i*K+j).convs1/convs2.n`
(or `convs.n` for resblock "2"), `conv_post`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agent.errors import KoeError
from tts.models.sovits_modules import with_weight_norm

LRELU_SLOPE = 0.1


def dilated_padding(kernel_size: int, dilation: int) -> int:
    """Padding that keeps the length of a dilated, odd-kernel convolution."""
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Per dilation d: x += conv2(lrelu(conv1_d(lrelu(x))))."""

    def __init__(self, channels: int, kernel_size: int, dilations, weight_norm: bool = False):
        super().__init__()

        def conv(d):
            c = nn.Conv1d(
                channels, channels, kernel_size, dilation=d, padding=dilated_padding(kernel_size, d)
            )
            return with_weight_norm(c, weight_norm)

        self.convs1 = nn.ModuleList(conv(d) for d in dilations)
        self.convs2 = nn.ModuleList(conv(1) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """Per dilation d (first two only): x += conv_d(lrelu(x))."""

    def __init__(self, channels: int, kernel_size: int, dilations, weight_norm: bool = False):
        super().__init__()
        self.convs = nn.ModuleList(
            with_weight_norm(
                nn.Conv1d(
                    channels, channels, kernel_size, dilation=d, padding=dilated_padding(kernel_size, d)
                ),
                weight_norm,
            )
            for d in dilations[:2]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """[B, in_channels, T] latent (+ [B, gin, 1] style) -> [B, 1, T * prod(upsample_rates)] waveform."""

    def __init__(
        self,
        in_channels: int,
        resblock: str,
        resblock_kernel_sizes,
        resblock_dilation_sizes,
        upsample_rates,
        upsample_initial_channel: int,
        upsample_kernel_sizes,
        gin_channels: int = 0,
        post_bias: bool = False,
        weight_norm: bool = False,
    ):
        super().__init__()
        if resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {resblock!r}")
        block = ResBlock1 if resblock == "1" else ResBlock2
        self.num_kernels = len(resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(in_channels, upsample_initial_channel, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for rate, kernel in zip(upsample_rates, upsample_kernel_sizes):
            up = nn.ConvTranspose1d(channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2)
            self.ups.append(with_weight_norm(up, weight_norm))
            channels //= 2
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(block(channels, k, d, weight_norm))
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3, bias=post_bias)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)
        self.onnx = None  # the same network as an ONNX Runtime graph (generator_onnx.py), used when set

    def forward_pre_tanh(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Waveform before the final tanh (the conv_post output)."""
        if self.onnx is not None and not self.training:
            if self.onnx.supports(x):
                return self.onnx(x, g)
            if self.onnx.released_torch_weights:
                raise KoeError("this generator runs only through its ONNX Runtime graph (CPU, fp32 input)")
        x = self.conv_pre(x)  # [B, C0, T]
        if g is not None:
            x = x + self.cond(g)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # [B, C0 / 2^(i+1), T * rates[:i+1]]
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total / self.num_kernels
        return self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as in the official model

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.forward_pre_tanh(x, g))
