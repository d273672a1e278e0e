"""The v4 vocoder: 100-band log mel (the denormalised CFM output, 100 frames/s) -> 48 kHz waveform.

It is the SoVITS HiFi-GAN generator (`tts.models.generator.Generator`) with other sizes: 100 input
channels, upsampling x480 (rates 10, 6, 2, 2, 2; kernels 20, 12, 4, 4, 4), 512 initial channels, no
speaker conditioning and a biased output conv. The official file `gsv-v4-pretrained/vocoder.pth`
is a plain state dict with weight norm already removed; files that still hold `weight_g` /
`weight_v` pairs are folded at load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from tts.models.generator import Generator
from tts.weights import read_state_dict
from tts.weights.sovits import check_keys, fold_weight_norm


@dataclass
class VocoderConfig:
    """Generator sizes; the defaults are the official v4 vocoder (manifest vocoder_v4.json)."""

    initial_channel: int = 100
    resblock: str = "1"
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    upsample_rates: list[int] = field(default_factory=lambda: [10, 6, 2, 2, 2])
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [20, 12, 4, 4, 4])
    gin_channels: int = 0
    is_bias: bool = True  # bias on conv_post
    sample_rate: int = 48000

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VocoderConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame (480 for v4)."""
        return math.prod(self.upsample_rates)


def build_vocoder(cfg: VocoderConfig | None = None) -> Generator:
    """Randomly initialised generator with the layout of `cfg` (weight norm folded)."""
    cfg = cfg or VocoderConfig()
    return Generator(
        cfg.initial_channel,
        cfg.resblock,
        cfg.resblock_kernel_sizes,
        cfg.resblock_dilation_sizes,
        cfg.upsample_rates,
        cfg.upsample_initial_channel,
        cfg.upsample_kernel_sizes,
        gin_channels=cfg.gin_channels,
        post_bias=cfg.is_bias,
    )


def load_vocoder(path: str | Path, cfg: VocoderConfig | None = None) -> Generator:
    """Load a v4 vocoder state dict (strict keys and shapes), float32, eval mode.

    Call the result on a denormalised log mel [B, 100, T] to get a waveform [B, 1, 480·T] in [-1, 1].
    """
    path = Path(path)
    state = read_state_dict(
        path,
        "v4 vocoder not found (SoVITS v4 needs gsv-v4-pretrained/vocoder.pth from the GPT-SoVITS pretrained "
        "models: `koe models download gsv-v4`)",
    )
    cfg = cfg or VocoderConfig()
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = build_vocoder(cfg)
    weights = {k: v.float() for k, v in fold_weight_norm(state).items()}
    check_keys(path, weights, model.state_dict(), f"a v4 vocoder generator with {cfg}")
    model.load_state_dict(weights, assign=True)
    return model.eval()
