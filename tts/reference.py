"""Reference clips: from a WAV file to everything synthesis needs from it, cached by content.

Exactly the official preprocessing (spec 4.2, 5.1, 6.2):
* prompt tokens: the clip at 16 kHz as librosa loads it (channel mean, soxr HQ), 3-10 s, followed by
  0.3 s of zeros at the SoVITS rate (9600 samples), through HuBERT and SoVITS `extract_latent`;
* the style spectrogram: the clip as torchaudio loads it, channels averaged, resampled to the SoVITS
  rate with torchaudio's default sinc filter, divided by min(2, peak) when its peak exceeds 1;
* v2Pro / v2ProPlus: that normalised waveform resampled to 16 kHz for the speaker embedding.
Documented deviations: the official code only mixes exactly two channels, we average any number;
clips below 8 kHz, or at a rate so odd that the sinc kernel would not fit in memory, are refused;
the speaker embedding is computed once per clip (officially once per batch; same numbers).
Prompt tokens are cached per clip content and model in memory and, with `cache_dir`, on disk.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from agent.errors import KoeError
from tts.resample import sinc_resample, soxr_resample
from tts.spectrogram import linear_spectrogram

log = logging.getLogger(__name__)

HUBERT_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 3.0, 10.0
MIN_RATE = 8000  # below this a clip holds no usable speech band for the 16/32 kHz models
MAX_RATE_RATIO = 1 << 24  # reduced rate pair orig * new: the sinc kernel's size, 64 MB in float32
PROMPT_PAD_SECONDS = 0.3  # zeros after the prompt clip, counted at the SoVITS rate (official quirk)

SpeakerEncoder = Callable[[torch.Tensor], torch.Tensor]  # 16 kHz audio [1, N] -> [1, 20480]


@dataclass
class ReferenceAudio:
    """One clip's style inputs: the spectrogram, and the 16 kHz audio for speaker embeddings."""

    path: str
    key: str  # the clip's content key (`content_key`)
    spec: torch.Tensor  # [1, n_fft // 2 + 1, frames]
    audio16: torch.Tensor | None  # [1, N] (Pro models only)
    sv_emb: torch.Tensor | None = None  # [1, 20480] (Pro models only)


@dataclass
class Reference:
    """Everything synthesis takes from the main clip (+ auxiliary clips for the style average)."""

    prompt_semantic: torch.Tensor  # [T_sem] int64
    refs: list[ReferenceAudio] = field(default_factory=list)  # main first, then auxiliaries


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """[channels, N] float32 in [-1, 1] and the file's rate; a `KoeError` for missing/unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise KoeError(f"reference audio not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise KoeError(f"cannot read reference audio {path}: {exc}") from None
    if data.shape[0] == 0:
        raise KoeError(f"reference audio {path} is empty")
    return np.ascontiguousarray(data.T), int(rate)


def check_rate(path: str | Path, rate: int, target: int) -> None:
    """Refuse file rates the resamplers cannot serve: too low, or so odd that the windowed-sinc
    kernel of the pair (torchaudio's algorithm, one row per output phase) would take gigabytes."""
    if rate < MIN_RATE:
        raise KoeError(
            f"reference audio {path} is sampled at {rate} Hz; at least {MIN_RATE} Hz is needed "
            f"(record or export it at 16000-48000 Hz)"
        )
    gcd = math.gcd(rate, target)
    if (rate // gcd) * (target // gcd) > MAX_RATE_RATIO:
        raise KoeError(
            f"reference audio {path} has an unusual sample rate of {rate} Hz that cannot be resampled to "
            f"{target} Hz; convert it to a standard rate first (16000, 22050, 24000, 32000, 44100 or "
            f"48000 Hz, e.g. `sox in.wav -r 32000 out.wav`)"
        )


def load_16k(path: str | Path) -> np.ndarray:
    """The clip as librosa.load(path, sr=16000) returns it: mono float32 at 16 kHz."""
    data, rate = read_audio(path)
    check_rate(path, rate, HUBERT_RATE)
    mono = data.mean(axis=0) if data.shape[0] > 1 else data[0]
    return soxr_resample(mono, rate, HUBERT_RATE)


def check_length(path: str | Path, n_16k: int) -> None:
    seconds = n_16k / HUBERT_RATE
    if not MIN_SECONDS * HUBERT_RATE <= n_16k <= MAX_SECONDS * HUBERT_RATE:
        raise KoeError(
            f"reference audio {path} is {seconds:.2f} s long; it must be between {MIN_SECONDS:g} and "
            f"{MAX_SECONDS:g} s (cut or pick another clip)"
        )


def load_for_style(path: str | Path, rate: int) -> torch.Tensor:
    """The clip for the style spectrogram: [1, N] at `rate`, channels averaged, peak rule applied."""
    data, file_rate = read_audio(path)
    check_rate(path, file_rate, rate)
    audio = torch.from_numpy(data.mean(axis=0, keepdims=True) if data.shape[0] > 1 else data)
    audio = sinc_resample(audio, file_rate, rate)
    peak = audio.abs().max()
    if peak > 1:
        audio = audio / min(2.0, float(peak))
    return audio


def content_key(path: str | Path, *parts: str) -> str:
    """A cache key from the file's bytes and whatever else decides the result (models, rates)."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes())
    except (FileNotFoundError, IsADirectoryError):
        raise KoeError(f"reference audio not found: {path}") from None
    for part in parts:
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()


class ReferenceProcessor:
    """Turns clips into `Reference`s for one SoVITS model; results are cached per clip content.

    sovits: a loaded SoVITS model (`config` with the rates, `extract_latent`); hubert: a callable
    16 kHz waveform -> [1, 768, T]; speaker_encoder: for Pro models, 16 kHz [1, N] -> [1, 20480].
    `model_id` names the loaded weights, so switching weights never reuses stale features.
    """

    def __init__(
        self,
        sovits: torch.nn.Module,
        hubert: Callable[[torch.Tensor], torch.Tensor],
        speaker_encoder: SpeakerEncoder | None = None,
        model_id: str = "",
        cache_dir: Path | None = None,
    ):
        self.sovits = sovits
        self.hubert = hubert
        self.speaker_encoder = speaker_encoder
        self.model_id = model_id
        self.cache_dir = cache_dir
        self._tokens: dict[str, torch.Tensor] = {}
        self._styles: dict[str, ReferenceAudio] = {}
        self._style_vectors: dict[tuple[str, ...], torch.Tensor] = {}  # by the clips' content keys

    @property
    def config(self):
        return self.sovits.config

    @torch.inference_mode()
    def prompt_semantic(self, path: str | Path) -> torch.Tensor:
        """Prompt tokens [T_sem] of the main clip (3-10 s rule applies)."""
        key = content_key(path, "tokens", self.model_id)
        if key in self._tokens:
            return self._tokens[key]
        cached = self._disk_load(key)
        if cached is not None:
            self._tokens[key] = cached
            return cached
        wav16k = load_16k(path)
        check_length(path, wav16k.shape[-1])
        pad = torch.zeros(int(self.config.sampling_rate * PROMPT_PAD_SECONDS), dtype=torch.float32)
        wav = torch.cat([torch.from_numpy(wav16k), pad])
        ssl = self.hubert(wav)  # [1, 768, T_h]
        tokens = self.sovits.extract_latent(ssl.float())[0, 0].cpu()  # [T_sem]
        self._tokens[key] = tokens
        self._disk_save(key, tokens)
        return tokens

    @torch.inference_mode()
    def style(self, path: str | Path) -> ReferenceAudio:
        """Spectrogram (and 16 kHz audio for Pro models) of one clip."""
        key = content_key(path, "style", str(self.config.sampling_rate), str(self.config.filter_length))
        if key in self._styles:
            return self._styles[key]
        audio = load_for_style(path, self.config.sampling_rate)
        cfg = self.config
        spec = linear_spectrogram(audio, cfg.filter_length, cfg.hop_length, cfg.win_length)
        audio16 = sinc_resample(audio, cfg.sampling_rate, HUBERT_RATE) if cfg.is_pro else None
        ref = ReferenceAudio(str(path), key, spec, audio16)
        self._styles[key] = ref
        return ref

    def prepare(self, path: str | Path, aux_paths: Sequence[str | Path] = ()) -> Reference:
        """The main clip's tokens and the style inputs of the main and auxiliary clips."""
        tokens = self.prompt_semantic(path)
        refs = [self.style(path)]
        for aux in aux_paths:
            if not Path(aux).is_file():
                log.warning("auxiliary reference %s not found: skipped", aux)
                continue
            refs.append(self.style(aux))
        return Reference(tokens, refs)

    def speaker_embeddings(self, refs: Sequence[ReferenceAudio]) -> list[torch.Tensor] | None:
        """One speaker embedding per reference for Pro models (None for the others).

        Computed once per clip and kept with its cached style inputs (the official code reruns the
        speaker network for every batch; it draws no random numbers, so the result is the same)."""
        if not self.config.is_pro:
            return None
        if self.speaker_encoder is None:
            raise KoeError(
                f"SoVITS {self.config.version} needs the speaker-verification model; "
                f"fetch it with `koe models download gsv-v2pro`"
            )
        for ref in refs:
            if ref.sv_emb is None:
                ref.sv_emb = self.speaker_encoder(ref.audio16)
        return [ref.sv_emb for ref in refs]

    @torch.inference_mode()
    def style_vector(self, refs: Sequence[ReferenceAudio], device: torch.device) -> torch.Tensor:
        """SoVITS's style vector ge [1, gin, 1] of these references, computed once per set: it depends
        on the clips only, and the official code recomputes it for every decode (same numbers)."""
        key = tuple(ref.key for ref in refs)
        if key not in self._style_vectors:
            specs = [ref.spec.to(device) for ref in refs]
            self._style_vectors[key] = self.sovits.style_vector(specs, self.speaker_embeddings(refs))
        return self._style_vectors[key]

    def _disk_load(self, key: str) -> torch.Tensor | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.npy"
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (FileNotFoundError, ValueError, OSError):
            return None

    def _disk_save(self, key: str, tokens: torch.Tensor) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f"{key}.tmp.npy"
        np.save(tmp, tokens.numpy())
        tmp.replace(self.cache_dir / f"{key}.npy")
