"""The official GPT-SoVITS silence slicer and its per-clip loudness mix, in plain numpy.

`slice_points(audio, params)` returns the same (start, end) sample offsets as the official
`tools/slice_audio.py` at 32 kHz (spec: shared/spec/gpt-sovits-training.md, section 3): an RMS curve in
10 ms frames, cuts only at the end of a long-enough silence once the clip in progress is long enough,
each cut at the quietest frame. `max_clip_s` is our addition: longer clips are cut again at their
quietest inner frame, so no clip exceeds what the GPU can train on. `loudness_mix` is the official
peak-normalised mix, bit-exact in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.errors import KoeError

RMS_BLOCK_FRAMES = 4096  # frames per block when computing the RMS curve (bounds memory on long files)


@dataclass(frozen=True)
class SlicerParams:
    """The WebUI's slicer settings (its defaults), plus our maximum clip length (0 = no maximum)."""

    threshold_db: float = -34.0
    min_length_ms: int = 4000
    min_interval_ms: int = 300
    hop_size_ms: int = 10
    max_sil_kept_ms: int = 500
    max_clip_s: float = 15.0
    sample_rate: int = 32_000

    def __post_init__(self) -> None:
        if not self.min_length_ms >= self.min_interval_ms >= self.hop_size_ms > 0:
            raise KoeError(
                f"slicer: need min_length ({self.min_length_ms} ms) >= min_interval ({self.min_interval_ms} ms)"
                f" >= hop_size ({self.hop_size_ms} ms) > 0"
            )
        if self.max_sil_kept_ms < self.hop_size_ms:
            raise KoeError(
                f"slicer: max_sil_kept ({self.max_sil_kept_ms} ms) must be >= hop_size ({self.hop_size_ms} ms)"
            )
        if self.max_clip_s < 0:
            raise KoeError(
                f"slicer: max clip length must be >= 0 seconds (0 = no maximum), got {self.max_clip_s}"
            )
        if 0 < self.max_clip_s * 1000 < 2 * self.hop_size_ms:
            raise KoeError(f"slicer: max clip length {self.max_clip_s} s is shorter than two hops")

    # Derived constants, with Python's round-half-to-even exactly as the reference computes them.
    @property
    def hop(self) -> int:
        """RMS frame step in samples."""
        return round(self.sample_rate * self.hop_size_ms / 1000)

    @property
    def window(self) -> int:
        """RMS window in samples."""
        return min(round(self.sample_rate * self.min_interval_ms / 1000), 4 * self.hop)

    @property
    def threshold(self) -> float:
        return 10 ** (self.threshold_db / 20)

    @property
    def min_length(self) -> int:
        """Frames a clip must have before it may be cut."""
        return round(self.sample_rate * self.min_length_ms / 1000 / self.hop)

    @property
    def min_interval(self) -> int:
        """Frames a silence must last to be a cut candidate."""
        return round(self.sample_rate * self.min_interval_ms / 1000 / self.hop)

    @property
    def max_sil_kept(self) -> int:
        """Frames of silence kept on either side of a cut."""
        return round(self.sample_rate * self.max_sil_kept_ms / 1000 / self.hop)

    @property
    def max_clip_frames(self) -> int | None:
        return round(self.max_clip_s * self.sample_rate / self.hop) if self.max_clip_s > 0 else None


def rms_curve(audio: np.ndarray, window: int, hop: int) -> np.ndarray:
    """float32 RMS per frame; frame k is centred on sample k*hop (zero padding of window//2 each side)."""
    pad = window // 2
    padded = np.pad(np.asarray(audio, dtype=np.float32), (pad, pad))
    n_frames = (len(padded) - window) // hop + 1
    out = np.empty(n_frames, dtype=np.float32)
    for first in range(0, n_frames, RMS_BLOCK_FRAMES):
        last = min(first + RMS_BLOCK_FRAMES, n_frames)
        span = padded[first * hop : (last - 1) * hop + window]
        frames = np.lib.stride_tricks.sliding_window_view(span, window)[::hop]  # [frames, window]
        out[first:last] = np.sqrt(np.mean(np.square(frames), axis=-1))
    return out


def _argmin(rms: np.ndarray, begin: int, end: int) -> int:
    """Absolute index of the first minimum of rms[begin:end]."""
    return begin + int(np.argmin(rms[begin:end]))


def silence_tags(rms: np.ndarray, params: SlicerParams) -> list[tuple[int, int]]:
    """Frame ranges (begin, end) the official scan removes between clips, in order."""
    threshold, keep = params.threshold, params.max_sil_kept
    n_frames = len(rms)
    tags: list[tuple[int, int]] = []
    silence_start: int | None = None
    clip_start = 0
    for i, value in enumerate(rms):
        if value < threshold:
            if silence_start is None:
                silence_start = i
            continue
        if silence_start is None:
            continue
        leading = silence_start == 0 and i > keep
        long_enough = i - silence_start >= params.min_interval and i - clip_start >= params.min_length
        if not leading and not long_enough:
            silence_start = None
            continue
        length = i - silence_start
        if length <= keep:  # short pause: one shared cut frame
            pos = _argmin(rms, silence_start, i + 1)
            tags.append((0, pos) if silence_start == 0 else (pos, pos))
            clip_start = pos
        elif length <= 2 * keep:  # medium pause: remove what lies between the two kept edges
            pos = _argmin(rms, i - keep, silence_start + keep + 1)
            pos_left = _argmin(rms, silence_start, silence_start + keep + 1)
            pos_right = _argmin(rms, i - keep, i + 1)
            if silence_start == 0:
                tags.append((0, pos_right))
                clip_start = pos_right
            else:
                tags.append((min(pos_left, pos), max(pos_right, pos)))
                clip_start = max(pos_right, pos)
        else:  # long pause: keep at most `keep` frames on each side
            pos_left = _argmin(rms, silence_start, silence_start + keep + 1)
            pos_right = _argmin(rms, i - keep, i + 1)
            tags.append((0, pos_right) if silence_start == 0 else (pos_left, pos_right))
            clip_start = pos_right
        silence_start = None
    if silence_start is not None and n_frames - silence_start >= params.min_interval:
        end = min(n_frames, silence_start + keep)
        tags.append((_argmin(rms, silence_start, end + 1), n_frames + 1))
    return tags


def chunks_from_tags(tags: list[tuple[int, int]], n_frames: int) -> list[tuple[int, int]]:
    """The kept frame ranges between the removed ones."""
    if not tags:
        return [(0, n_frames)]
    chunks = []
    if tags[0][0] > 0:
        chunks.append((0, tags[0][0]))
    chunks.extend((left[1], right[0]) for left, right in zip(tags, tags[1:]))
    if tags[-1][1] < n_frames:
        chunks.append((tags[-1][1], n_frames))
    return chunks


def split_long_chunk(
    rms: np.ndarray, begin: int, end: int, max_frames: int, min_piece: int
) -> list[tuple[int, int]]:
    """Cut a frame range longer than max_frames at its quietest frame, recursively.

    Each cut leaves at least min(min_piece, max_frames // 2) frames on both sides, so pieces are never
    tiny and the recursion always ends.
    """
    if end - begin <= max_frames:
        return [(begin, end)]
    margin = max(1, min(min_piece, max_frames // 2))
    pos = _argmin(rms, begin + margin, end - margin + 1)
    return split_long_chunk(rms, begin, pos, max_frames, min_piece) + split_long_chunk(
        rms, pos, end, max_frames, min_piece
    )


def slice_points(audio: np.ndarray, params: SlicerParams) -> list[tuple[int, int]]:
    """(start, end) sample offsets of the clips, as the official tool names them (multiples of the hop).

    `end` of the last clip may lie past the end of the audio; the clip's data is `audio[start:end]`.
    A signal of at most `min_length` samples (under 13 ms, where the reference fails) gives no clips.
    """
    if len(audio) <= params.min_length:
        return []
    rms = rms_curve(audio, params.window, params.hop)
    chunks = chunks_from_tags(silence_tags(rms, params), len(rms))
    max_frames = params.max_clip_frames
    if max_frames is not None:
        chunks = [
            piece
            for begin, end in chunks
            for piece in split_long_chunk(rms, begin, end, max_frames, params.min_length)
        ]
    return [(begin * params.hop, end * params.hop) for begin, end in chunks]


def loudness_mix(chunk: np.ndarray, max_peak: float = 0.9, alpha: float = 0.25) -> np.ndarray:
    """The official per-clip mix `y = x/peak * (max*alpha) + (1-alpha) * x`, as int16 (truncated).

    float32 arithmetic in the reference's order (bit-exact). A peak above 1 first rescales the clip
    without updating the peak (an upstream quirk kept for parity). An all-zero clip raises ValueError.
    """
    x = np.asarray(chunk, dtype=np.float32)
    peak = np.abs(x).max() if len(x) else np.float32(0)
    if peak == 0:
        raise ValueError("clip is digital silence (peak 0): the mix would divide by zero")
    if peak > 1:
        x = x / peak
    mixed = x / peak * np.float32(max_peak * alpha) + np.float32(1 - alpha) * x
    return (mixed * np.float32(32767)).astype(np.int16)


def clip_name(source_name: str, start: int, end: int) -> str:
    """Output file name the official tool writes: `<input basename with extension>_<start>_<end>.wav`."""
    return f"{source_name}_{start:010d}_{end:010d}.wav"
