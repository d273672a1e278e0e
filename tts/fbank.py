"""Kaldi-compatible log-mel filterbank: the 80-bin input of the v2Pro speaker-verification network.

Computes what `torchaudio.compliance.kaldi.fbank(wave, num_mel_bins=80, sample_frequency=16000,
dither=0)` computes with its other defaults (torchaudio itself cannot be installed here):
25 ms frames every 10 ms without edge padding (`snip_edges`), DC removal, pre-emphasis 0.97, the
Povey window, zero-padding to a power of two, power spectrum, triangular mel filters on the Kaldi
mel scale between 20 Hz and Nyquist, and `log(max(energy, float32 eps))`. No dither, no energy
coefficient, no mean subtraction. Everything runs in float32 like the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

# Kaldi options whose value is fixed in this implementation (the v2Pro speaker path's settings).
FIXED_KALDI_OPTIONS = {
    "dither": 0,
    "window_type": "povey",
    "remove_dc_offset": True,
    "round_to_power_of_two": True,
    "snip_edges": True,
    "use_power": True,
    "use_log_fbank": True,
    "use_energy": False,
    "subtract_mean": False,
    "htk_compat": False,
    "vtln_warp": 1.0,
    "channel": -1,
}


@dataclass(frozen=True)
class FbankConfig:
    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0 means an offset from Nyquist (Kaldi convention)

    @classmethod
    def from_kaldi_options(cls, options: dict[str, Any]) -> FbankConfig:
        """Config from `torchaudio.compliance.kaldi.fbank` keyword arguments; other settings than the
        ones this module implements raise ValueError (naming the option)."""
        for name, value in options.items():
            if name in FIXED_KALDI_OPTIONS and FIXED_KALDI_OPTIONS[name] != value:
                raise ValueError(
                    f"fbank option {name}={value!r} is not supported (only {FIXED_KALDI_OPTIONS[name]!r})"
                )
        mapping = {
            "sample_frequency": "sample_rate",
            "num_mel_bins": "num_mel_bins",
            "frame_length": "frame_length_ms",
            "frame_shift": "frame_shift_ms",
            "preemphasis_coefficient": "preemphasis",
            "low_freq": "low_freq",
            "high_freq": "high_freq",
        }
        return cls(
            **{field: type(getattr(cls, field))(options[k]) for k, field in mapping.items() if k in options}
        )

    @property
    def window_size(self) -> int:
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def fft_size(self) -> int:
        return 1 << (self.window_size - 1).bit_length()  # next power of two


def povey_window(size: int) -> torch.Tensor:
    """Kaldi's Povey window: a symmetric Hann window raised to the power 0.85. [size]"""
    return torch.hann_window(size, periodic=False).pow(0.85)


def correctly_rounded_log(x: torch.Tensor) -> torch.Tensor:
    """float32 natural log rounded from float64. torch's vectorised float32 log can be one ulp off,
    which moves filter weights near a triangle's edge by up to ~1e-5 relative to the reference."""
    return x.double().log().to(x.dtype)


def kaldi_mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    """Kaldi mel scale: 1127 · ln(1 + f / 700)."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * correctly_rounded_log(1.0 + freq / 700.0)
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(cfg: FbankConfig) -> torch.Tensor:
    """Triangular filters equally spaced on the Kaldi mel scale, with a zero Nyquist column. [mels, fft/2+1]"""
    num_fft_bins = cfg.fft_size // 2
    nyquist = 0.5 * cfg.sample_rate
    high_freq = cfg.high_freq if cfg.high_freq > 0 else cfg.high_freq + nyquist
    mel_low, mel_high = kaldi_mel(cfg.low_freq), kaldi_mel(high_freq)
    mel_delta = (mel_high - mel_low) / (cfg.num_mel_bins + 1)

    band = torch.arange(cfg.num_mel_bins, dtype=torch.float32).unsqueeze(1)  # [mels, 1]
    left = mel_low + band * mel_delta
    center = mel_low + (band + 1.0) * mel_delta
    right = mel_low + (band + 2.0) * mel_delta

    bin_width = cfg.sample_rate / cfg.fft_size
    mel = kaldi_mel(bin_width * torch.arange(num_fft_bins, dtype=torch.float32)).unsqueeze(0)  # [1, fft/2]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # [mels, fft/2]
    return torch.nn.functional.pad(banks, (0, 1))  # [mels, fft/2 + 1]


def frame_signal(wave: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """Cut a 1-D signal into the frames that fit entirely (`snip_edges`). [N] -> [T, window]"""
    if wave.numel() < cfg.window_size:
        return wave.new_zeros(0, cfg.window_size)
    return wave.unfold(0, cfg.window_size, cfg.window_shift)


def preemphasize(frames: torch.Tensor, coefficient: float) -> torch.Tensor:
    """x[j] -= c·x[j-1] per frame; the first sample is its own predecessor. [T, W] -> [T, W]"""
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    return frames - coefficient * previous


def fbank(wave: torch.Tensor, cfg: FbankConfig = FbankConfig()) -> torch.Tensor:
    """Log-mel filterbank of one mono waveform. wave: [N] or [1, N] float in [-1, 1] -> [T, num_mel_bins]"""
    if wave.dim() == 2:
        if wave.shape[0] != 1:
            raise ValueError(f"fbank expects one channel, got a waveform of shape {tuple(wave.shape)}")
        wave = wave[0]
    wave = wave.to(torch.float32)
    frames = frame_signal(wave, cfg)  # [T, W]
    if frames.shape[0] == 0:
        return wave.new_zeros(0, cfg.num_mel_bins)
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC offset
    frames = preemphasize(frames, cfg.preemphasis)
    frames = frames * povey_window(cfg.window_size).unsqueeze(0)
    frames = torch.nn.functional.pad(frames, (0, cfg.fft_size - cfg.window_size))  # [T, fft]
    power = torch.fft.rfft(frames).abs().pow(2.0)  # [T, fft/2 + 1]
    energies = torch.mm(power, kaldi_mel_banks(cfg).T)  # [T, mels]
    eps = torch.tensor(torch.finfo(torch.float32).eps)
    return torch.maximum(energies, eps).log()


def batch_fbank(waves: torch.Tensor, cfg: FbankConfig = FbankConfig()) -> torch.Tensor:
    """Filterbanks of equally long waveforms, one per row. [B, N] -> [B, T, num_mel_bins]"""
    return torch.stack([fbank(w, cfg) for w in waves])
