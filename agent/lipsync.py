"""Lip-sync data for the avatar: a mouth-opening envelope and A/I/U/E/O vowel estimates every 20 ms.

The envelope is the RMS level of each 20 ms frame on a dB scale (-60 dBFS -> 0, -10 dBFS -> 1). The
vowels come from where the energy sits in the spectrum: the first two formants separate the five
Japanese vowels well enough for a mouth (A: F1 high; I: F1 low, F2 high; U: both low; E: F1 mid, F2
high; O: F1 mid, F2 low). F1 and F2 are estimated as spectral centroids of the 250-1000 Hz and
1000-3000 Hz bands, and each vowel gets a weight from its distance to typical (F1, F2) values. The
weights of a frame sum to its envelope value, so silence closes the mouth. VRM 1.0 expression names
for the five are `aa`, `ih`, `ou`, `ee`, `oh` (VRM 0.x: A, I, U, E, O).
"""

from __future__ import annotations

import numpy as np

FRAME_MS = 20
VOWELS = ("A", "I", "U", "E", "O")
VRM_EXPRESSIONS = ("aa", "ih", "ou", "ee", "oh")
# Typical (F1, F2) in Hz of each vowel (adult voices, averaged over speakers).
FORMANTS = np.array([[800.0, 1300.0], [300.0, 2300.0], [350.0, 1250.0], [500.0, 1900.0], [500.0, 850.0]])
FORMANT_SPREAD_HZ = np.array([150.0, 350.0])  # how far from a vowel's formants it still counts
F1_BAND = (250.0, 1000.0)
F2_BAND = (1000.0, 3000.0)
SILENCE_DB = -60.0
LOUD_DB = -10.0


def frames(audio: np.ndarray, sample_rate: int, frame_ms: int = FRAME_MS) -> np.ndarray:
    """Float audio in [-1, 1] cut into `frame_ms` frames [n_frames, frame_len]; the tail is zero-padded."""
    samples = audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio.astype(np.float32)
    frame_len = max(1, sample_rate * frame_ms // 1000)
    n_frames = -(-len(samples) // frame_len)
    padded = np.zeros(n_frames * frame_len, dtype=np.float32)
    padded[: len(samples)] = samples
    return padded.reshape(n_frames, frame_len)


def envelope(audio: np.ndarray, sample_rate: int, frame_ms: int = FRAME_MS) -> np.ndarray:
    """Mouth opening in [0, 1] per frame [n_frames]: the frame's RMS mapped from dBFS."""
    rms = np.sqrt(np.mean(frames(audio, sample_rate, frame_ms) ** 2, axis=1))
    db = 20.0 * np.log10(np.maximum(rms, 1e-9))
    return np.clip((db - SILENCE_DB) / (LOUD_DB - SILENCE_DB), 0.0, 1.0)


def band_centroid(power: np.ndarray, freqs: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Power-weighted mean frequency inside `band` per frame [n_frames] (the band middle if silent)."""
    inside = (freqs >= band[0]) & (freqs < band[1])
    weights = power[:, inside]
    total = weights.sum(axis=1)
    centroid = (weights * freqs[inside]).sum(axis=1) / np.maximum(total, 1e-12)
    return np.where(total > 1e-12, centroid, (band[0] + band[1]) / 2)


def vowel_weights(audio: np.ndarray, sample_rate: int, frame_ms: int = FRAME_MS) -> np.ndarray:
    """A/I/U/E/O weights per frame [n_frames, 5]; each row sums to that frame's envelope value."""
    framed = frames(audio, sample_rate, frame_ms)  # [n, frame_len]
    window = np.hanning(framed.shape[1]).astype(np.float32)
    n_fft = max(256, 1 << int(np.ceil(np.log2(framed.shape[1]))))
    power = np.abs(np.fft.rfft(framed * window, n=n_fft, axis=1)) ** 2  # [n, n_fft // 2 + 1]
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    f1 = band_centroid(power, freqs, F1_BAND)
    f2 = band_centroid(power, freqs, F2_BAND)
    distance = (
        (np.stack([f1, f2], axis=1)[:, None, :] - FORMANTS[None]) / FORMANT_SPREAD_HZ
    ) ** 2  # [n, 5, 2]
    score = np.exp(-0.5 * distance.sum(axis=2))  # [n, 5]
    share = score / np.maximum(score.sum(axis=1, keepdims=True), 1e-12)
    return share * envelope(audio, sample_rate, frame_ms)[:, None]


def lipsync(audio: np.ndarray, sample_rate: int, frame_ms: int = FRAME_MS) -> dict:
    """The `lipsync` event fields for one audio chunk: envelope and vowels, rounded for the wire."""
    return {
        "frame_ms": frame_ms,
        "volume": np.round(envelope(audio, sample_rate, frame_ms), 3).tolist(),
        "vowels": np.round(vowel_weights(audio, sample_rate, frame_ms), 3).tolist(),
    }
