"""Linear and log-mel spectrograms with the official GPT-SoVITS parameters (torch only).

`linear_spectrogram` is the SoVITS reference / training spectrogram: reflect padding of
(n_fft - hop) / 2 on both sides, STFT without centring, periodic Hann window, magnitude
sqrt(re^2 + im^2 + 1e-8). `mel_spectrogram` applies a Slaney-style mel filterbank (the defaults of
librosa.filters.mel, reproduced here so librosa is not needed) and log(max(x, 1e-5)).

Official settings (n_fft, n_mels, sample rate, hop, win): SoVITS v2 training loss
(2048, 128, 32000, 640, 2048); v4 reference mel (1280, 100, 32000, 320, 1280); v3 reference mel
(1024, 100, 24000, 256, 1024); fmin 0 and fmax = Nyquist everywhere.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

MAGNITUDE_EPS = 1e-8
LOG_FLOOR = 1e-5


def linear_spectrogram(wave: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """wave [B, N] -> magnitude [B, n_fft // 2 + 1, frames], frames = (N + 2p - n_fft) // hop + 1."""
    pad = (n_fft - hop) // 2
    if wave.shape[-1] <= max(pad, n_fft - 2 * pad - 1):
        raise ValueError(
            f"waveform of {wave.shape[-1]} samples is too short for a spectrogram with n_fft {n_fft}"
        )
    padded = torch.nn.functional.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(win, dtype=wave.dtype, device=wave.device)
    stft = torch.stft(
        padded,
        n_fft,
        hop_length=hop,
        win_length=win,
        window=window,
        center=False,
        onesided=True,
        return_complex=True,
    )
    return torch.sqrt(stft.real.pow(2) + stft.imag.pow(2) + MAGNITUDE_EPS)


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_step = np.log(6.4) / 27.0
    high = hz >= 1000.0
    return np.where(high, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


def mel_filterbank_np(
    sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32 triangles on the Slaney mel scale with Slaney area
    normalisation (equal to librosa.filters.mel with its defaults)."""
    fmax = sr / 2 if fmax is None else fmax
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_edges)
    ramps = mel_edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area = 2.0 / (mel_edges[2:] - mel_edges[:-2])
    return (weights * area[:, None]).astype(np.float32)


@lru_cache(maxsize=16)
def _filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    return torch.from_numpy(mel_filterbank_np(sr, n_fft, n_mels, fmin, fmax))


def mel_filterbank(
    sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """Cached torch version of `mel_filterbank_np` (float32, CPU)."""
    return _filterbank(int(sr), int(n_fft), int(n_mels), float(fmin), None if fmax is None else float(fmax))


def spec_to_log_mel(
    spec: torch.Tensor, sr: int, n_fft: int, n_mels: int, fmin=0.0, fmax=None
) -> torch.Tensor:
    """Linear magnitude [B, n_fft // 2 + 1, T] -> natural-log mel [B, n_mels, T]."""
    basis = mel_filterbank(sr, n_fft, n_mels, fmin, fmax).to(spec.device, spec.dtype)
    return torch.log(torch.clamp(torch.matmul(basis, spec), min=LOG_FLOOR))


def mel_spectrogram(
    wave: torch.Tensor, n_fft: int, n_mels: int, sr: int, hop: int, win: int, fmin=0.0, fmax=None
) -> torch.Tensor:
    """wave [B, N] -> natural-log mel [B, n_mels, frames] (same framing as `linear_spectrogram`)."""
    return spec_to_log_mel(linear_spectrogram(wave, n_fft, hop, win), sr, n_fft, n_mels, fmin, fmax)
