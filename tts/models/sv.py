"""ERes2NetV2 speaker-verification network: the 20480-d speaker feature of SoVITS v2Pro / v2ProPlus.

The 16 kHz reference is turned into an 80-bin Kaldi filterbank (`tts.fbank`), seen as a one-channel
image (frequency = height, time = width) and run through a Res2Net-style CNN. v2Pro does not use
the network's embedding head: it takes the last fused feature map, flattens channels x frequency
and averages over time (`pooled_features`, the official `forward3`).

Building blocks (channel counts for the official size, m = 64, expansion 4):
  stem      conv 3x3 (1 -> m) + BN + ReLU                      [B, m, 80, T]
  layer1..4 Res2Net blocks, planes m, 2m, 4m, 8m, stride 1, 2, 2, 2; layers 3-4 fuse their
            sub-band branches with attention (AFF) instead of adding them
  layer3_ds conv 3x3 stride 2 of layer3 to layer4's width, fused with layer4 by AFF -> [B, 2048, 10, T/8]
The file is a plain state dict (official `sv/pretrained_eres2netv2w24s4ep4.ckpt`), loaded strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tts.fbank import batch_fbank
from tts.weights import read_state_dict
from tts.weights.sovits import check_keys

CLIP = 20.0  # the blocks' activation is ReLU clipped at 20 (Hardtanh(0, 20))


@dataclass(frozen=True)
class SVConfig:
    """Constructor sizes; the defaults are the official network (file ...w24s4ep4.ckpt)."""

    base_width: int = 24
    scale: int = 4
    expansion: int = 4
    m_channels: int = 64
    num_blocks: tuple[int, ...] = (3, 4, 6, 3)
    embedding_size: int = 192  # size of the unused `seg_1` head; kept so the file loads strictly
    feat_dim: int = 80

    @classmethod
    def from_constructor_args(cls, args: dict[str, Any]) -> SVConfig:
        """Map the official constructor's argument names (baseWidth, m_channels, ...) to this config."""
        return cls(
            base_width=int(args.get("baseWidth", cls.base_width)),
            scale=int(args.get("scale", cls.scale)),
            expansion=int(args.get("expansion", cls.expansion)),
            m_channels=int(args.get("m_channels", cls.m_channels)),
            num_blocks=tuple(int(n) for n in args.get("num_blocks", cls.num_blocks)),
            embedding_size=int(args.get("embedding_size", cls.embedding_size)),
            feat_dim=int(args.get("feat_dim", cls.feat_dim)),
        )

    @property
    def out_channels(self) -> int:
        return 8 * self.m_channels * self.expansion

    @property
    def out_freq_bins(self) -> int:
        return self.feat_dim // 8

    @property
    def pooled_dim(self) -> int:
        """Size of the speaker feature: 20480 for the official network."""
        return self.out_channels * self.out_freq_bins


def clipped_relu(x: torch.Tensor) -> torch.Tensor:
    return F.hardtanh(x, 0.0, CLIP)


class AFF(nn.Module):
    """Attentional feature fusion of two maps with `channels` channels: a learned per-position gate."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        inner = channels // reduction
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inner, 1),
            nn.BatchNorm2d(inner),
            nn.SiLU(),
            nn.Conv2d(inner, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gate = 1.0 + torch.tanh(self.local_att(torch.cat([x, y], dim=1)))  # in (0, 2)
        return x * gate + y * (2.0 - gate)


class Res2NetBlock(nn.Module):
    """1x1 conv, `scale` chained 3x3 sub-band branches (added or AFF-fused), 1x1 conv, residual."""

    def __init__(self, in_planes: int, planes: int, stride: int, cfg: SVConfig, fused: bool):
        super().__init__()
        self.width = planes * cfg.base_width // 64
        self.scale = cfg.scale
        out_planes = planes * cfg.expansion
        hidden = self.width * self.scale
        self.conv1 = nn.Conv2d(in_planes, hidden, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.convs = nn.ModuleList(
            nn.Conv2d(self.width, self.width, 3, padding=1, bias=False) for _ in range(self.scale)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(self.scale))
        if fused:
            self.fuse_models = nn.ModuleList(AFF(self.width) for _ in range(self.scale - 1))
        self.fused = fused
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = clipped_relu(self.bn1(self.conv1(x)))  # [B, width*scale, F', T']
        chunks = torch.split(out, self.width, dim=1)
        branches = []
        for i, chunk in enumerate(chunks):
            if i == 0:
                sp = chunk
            elif self.fused:
                sp = self.fuse_models[i - 1](sp, chunk)
            else:
                sp = sp + chunk
            sp = clipped_relu(self.bns[i](self.convs[i](sp)))
            branches.append(sp)
        out = self.bn3(self.conv3(torch.cat(branches, dim=1)))  # [B, planes*expansion, F', T']
        return clipped_relu(out + self.shortcut(x))


class ERes2NetV2(nn.Module):
    def __init__(self, cfg: SVConfig):
        super().__init__()
        self.cfg = cfg
        m = cfg.m_channels
        self.conv1 = nn.Conv2d(1, m, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        layers, in_planes = [], m
        for index, (n_blocks, stride) in enumerate(zip(cfg.num_blocks, (1, 2, 2, 2))):
            planes = m * 2**index
            blocks = []
            for b in range(n_blocks):
                blocks.append(Res2NetBlock(in_planes, planes, stride if b == 0 else 1, cfg, fused=index >= 2))
                in_planes = planes * cfg.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        c3, c4 = 4 * m * cfg.expansion, 8 * m * cfg.expansion
        self.layer3_ds = nn.Conv2d(c3, c4, 3, stride=2, padding=1, bias=False)
        self.fuse34 = AFF(c4)
        # Embedding head of the official `forward` (mean+std pooling -> Linear); v2Pro never runs it.
        self.seg_1 = nn.Linear(2 * cfg.pooled_dim, cfg.embedding_size)

    def feature_map(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [B, T, feat_dim] log-mel -> fused map [B, 8·m·expansion, feat_dim/8, ceil(T/8)]"""
        x = feats.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        x = F.relu(self.bn1(self.conv1(x)))  # [B, m, F, T]
        out3 = self.layer3(self.layer2(self.layer1(x)))  # [B, 4m·e, F/4, T/4]
        out4 = self.layer4(out3)  # [B, 8m·e, F/8, T/8]
        return self.fuse34(out4, self.layer3_ds(out3))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [B, T, feat_dim] -> speaker feature [B, pooled_dim] (channel-major over frequency)."""
        return pooled_features(self.feature_map(feats))


def pooled_features(fmap: torch.Tensor) -> torch.Tensor:
    """[B, C, F, T] -> [B, C·F] time average, index c·F + f."""
    return fmap.flatten(1, 2).mean(dim=-1)


@torch.inference_mode()
def speaker_embedding(model: ERes2NetV2, wave16k: torch.Tensor) -> torch.Tensor:
    """16 kHz waveforms [B, N] in [-1, 1] -> v2Pro speaker features [B, pooled_dim]."""
    return model(batch_fbank(wave16k))


def load_sv_model(path: str | Path, cfg: SVConfig | None = None) -> ERes2NetV2:
    """Load a plain-state-dict ERes2NetV2 checkpoint (strict keys and shapes), eval mode, float32."""
    path = Path(path)
    state = read_state_dict(
        path,
        "speaker-verification model not found (v2Pro/v2ProPlus need sv/pretrained_eres2netv2w24s4ep4.ckpt "
        "from the GPT-SoVITS pretrained models: `koe models download gsv-v2pro`)",
    )
    cfg = cfg or SVConfig()
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = ERes2NetV2(cfg)
    what = (
        f"an ERes2NetV2 speaker-verification model with {cfg} "
        "(the official file is sv/pretrained_eres2netv2w24s4ep4.ckpt)"
    )
    check_keys(path, state, model.state_dict(), what)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, assign=True
    )
    return model.eval()
