"""Resampling exactly as the official pipeline does it, without torchaudio or librosa.

Two resamplers meet in GPT-SoVITS and both matter for parity:
* the 32 kHz spectrogram path (and the 32k -> 16k speaker-embedding path) uses torchaudio's default
  `Resample`: a windowed-sinc (Hann) polyphase filter, 6 zero crossings, roll-off 0.99;
* the 16 kHz HuBERT path loads with librosa's default, which is soxr "HQ" and a length of
  ceil(n * new / old) samples.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc kernel [new, 1, 2 * width + orig] for reduced rates orig -> new."""
    base_freq = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base_freq)
    idx = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx  # [new, 1, L]
    t *= base_freq
    t = t.clamp_(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2  # Hann
    t *= math.pi
    scale = base_freq / orig
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * scale
    return kernels, width


def sinc_resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """torchaudio-default resampling of [..., time] audio (identity when the rates are equal)."""
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // gcd, int(new_freq) // gcd
    kernel, width = _sinc_kernel(orig, new, waveform.dtype)
    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])  # [n_wavs, time]
    length = flat.shape[-1]
    padded = F.pad(flat, (width, width + orig))
    out = F.conv1d(padded[:, None], kernel.to(waveform.device), stride=orig)  # [n_wavs, new, frames]
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    target_length = math.ceil(new * length / orig)
    return out[..., :target_length].reshape(*shape[:-1], -1)


def soxr_resample(audio: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """librosa's default resampling of mono float32 audio: soxr HQ, length ceil(n * new / old)."""
    import soxr

    if orig_freq == new_freq:
        return audio
    out = soxr.resample(audio, orig_freq, new_freq, quality="HQ").astype(np.float32, copy=False)
    n = math.ceil(audio.shape[-1] * new_freq / orig_freq)
    if out.shape[-1] < n:
        out = np.pad(out, (0, n - out.shape[-1]))
    return out[:n]
