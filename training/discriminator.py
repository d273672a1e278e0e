"""SoVITS training discriminator: HiFi-GAN's multi-period discriminator (one scale + N period heads).

Keys equal the official `s2D*.pth` files (`discriminators.0` is the scale discriminator,
`discriminators.1..N` the period ones; every conv weight-normed as `weight_g` / `weight_v`), so the
pretrained discriminators load unchanged. Periods: [2, 3, 5, 7, 11] for v1/v2, plus 17 and 23 for
v2Pro/v2ProPlus (shared/spec/gpt-sovits-training.md section 6.4; key list and shapes in
shared/spec/gpt-sovits-export-keys.json). Paddings are "same"-style ((k - 1) / 2), which reproduces
the official output lengths.

`channel_divisor` shrinks every width (tests and benchmarks of tiny models); 1 is the official size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from agent.errors import KoeError
from tts.models.sovits_modules import with_weight_norm

LRELU_SLOPE = 0.1
PERIODS = {"v1": (2, 3, 5, 7, 11), "v2": (2, 3, 5, 7, 11)}
PRO_PERIODS = (2, 3, 5, 7, 11, 17, 23)  # v2Pro, v2ProPlus

# Scale discriminator: (out channels, kernel, stride, groups) after a 1-channel input.
SCALE_LAYERS = (
    (16, 15, 1, 1),
    (64, 41, 4, 4),
    (256, 41, 4, 16),
    (1024, 41, 4, 64),
    (1024, 41, 4, 256),
    (1024, 5, 1, 1),
)
PERIOD_CHANNELS = (32, 128, 512, 1024, 1024)  # kernel (5, 1); stride (3, 1) except the last (1, 1)
PERIOD_KERNEL, PERIOD_STRIDE = 5, 3

# (score [B, n], feature maps) of one sub-discriminator
Output = tuple[torch.Tensor, list[torch.Tensor]]


def periods_for(version: str) -> tuple[int, ...]:
    return PERIODS.get(version, PRO_PERIODS)


def run_stack(convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor) -> Output:
    """leaky-ReLU conv layers then conv_post: (flattened score, every layer's output as features)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        features.append(x)
    x = conv_post(x)
    features.append(x)
    return torch.flatten(x, 1), features


class ScaleDiscriminator(nn.Module):
    """Strided grouped 1-D convolutions over the raw waveform [B, 1, N]."""

    def __init__(self, divisor: int = 1):
        super().__init__()
        layers, channels = [], 1
        for out, kernel, stride, groups in SCALE_LAYERS:
            out //= divisor
            conv = nn.Conv1d(
                channels, out, kernel, stride, groups=max(1, groups // divisor), padding=kernel // 2
            )
            layers.append(with_weight_norm(conv, True))
            channels = out
        self.convs = nn.ModuleList(layers)
        self.conv_post = with_weight_norm(nn.Conv1d(channels, 1, 3, 1, padding=1), True)

    def forward(self, x: torch.Tensor) -> Output:
        return run_stack(self.convs, self.conv_post, x)


class PeriodDiscriminator(nn.Module):
    """2-D convolutions over the waveform folded into [B, 1, N / period, period]."""

    def __init__(self, period: int, divisor: int = 1):
        super().__init__()
        self.period = period
        layers, channels = [], 1
        for i, out in enumerate(PERIOD_CHANNELS):
            out //= divisor
            stride = PERIOD_STRIDE if i < len(PERIOD_CHANNELS) - 1 else 1
            conv = nn.Conv2d(channels, out, (PERIOD_KERNEL, 1), (stride, 1), padding=(PERIOD_KERNEL // 2, 0))
            layers.append(with_weight_norm(conv, True))
            channels = out
        self.convs = nn.ModuleList(layers)
        self.conv_post = with_weight_norm(nn.Conv2d(channels, 1, (3, 1), 1, padding=(1, 0)), True)

    def forward(self, x: torch.Tensor) -> Output:
        b, c, n = x.shape
        if n % self.period:  # reflect-pad to a whole number of periods
            x = F.pad(x, (0, self.period - n % self.period), mode="reflect")
        x = x.view(b, c, -1, self.period)  # [B, 1, N / p, p]
        return run_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    """`discriminators.0` = scale discriminator, then one period discriminator per period."""

    def __init__(self, periods: tuple[int, ...] = PERIODS["v2"], channel_divisor: int = 1):
        super().__init__()
        if channel_divisor < 1 or 16 % channel_divisor:
            raise ValueError(f"channel_divisor must divide 16, got {channel_divisor}")
        self.periods = tuple(periods)
        self.channel_divisor = channel_divisor
        self.discriminators = nn.ModuleList(
            [ScaleDiscriminator(channel_divisor)] + [PeriodDiscriminator(p, channel_divisor) for p in periods]
        )

    def forward(self, waveform: torch.Tensor) -> list[Output]:
        """waveform [B, 1, N] -> one (score, feature maps) per sub-discriminator."""
        return [d(waveform) for d in self.discriminators]


def discriminator_for(
    weights: Mapping[str, torch.Tensor], version: str, source: str
) -> MultiPeriodDiscriminator:
    """A discriminator shaped like the state dict `weights` (official size or shrunk), for `version`.

    Raises KoeError when the file does not hold a discriminator of that version.
    """
    first = weights.get("discriminators.0.convs.0.weight_v")
    if first is None:
        raise KoeError(
            f"{source} is not a SoVITS discriminator: it has no key discriminators.0.convs.0.weight_v "
            f"(expected the pretrained s2D*.pth of the chosen version)"
        )
    full = SCALE_LAYERS[0][0]
    divisor = full // first.shape[0] if first.shape[0] and full % first.shape[0] == 0 else 0
    periods = periods_for(version)
    heads = {int(k.split(".")[1]) for k in weights if k.startswith("discriminators.")}
    if len(heads) != len(periods) + 1:
        raise KoeError(
            f"{source} has {len(heads)} sub-discriminators, a SoVITS {version} discriminator has "
            f"{len(periods) + 1} (periods {list(periods)}); pass the s2D file of version {version}"
        )
    try:
        return MultiPeriodDiscriminator(periods, divisor)
    except ValueError:
        raise KoeError(
            f"{source}: unexpected discriminator width {first.shape[0]} (official: {full})"
        ) from None
