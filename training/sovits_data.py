"""SoVITS training data: the experiment-folder dataset, its collate function and the bucket sampler.

Reads what `koe voice prepare` wrote (shared/spec/gpt-sovits-training.md sections 1.1 and 6.2):
2-name2text.txt (phones), 4-cnhubert/<name>.pt (HuBERT [1, 768, T50]), 5-wav32k/<name> (int16 WAV)
and, for v2Pro/v2ProPlus, 7-sv_cn/<name>.pt (speaker embedding [1, 20480]).

Official filtering is kept: small datasets are repeated up to about 100 items, clips are shuffled
with seed 1234, durations estimated from the file size must lie in (0.6 s, 54 s), and the bucket
sampler drops clips of at most 32 or more than 1900 frames. Deviations (documented): the candidate
names are sorted before the shuffle (upstream shuffles a Python set, whose order changes from run to
run), and a clip whose files cannot be read stops training with an error naming it instead of being
replaced by a silent dummy item.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from agent.errors import KoeError
from training.audio import load_audio_32k
from training.prepare import HUBERT_DIR, NAME2TEXT, SV_DIR, WAV32K_DIR
from tts.spectrogram import linear_spectrogram
from tts.text.symbols import phones_to_ids

log = logging.getLogger("koe.voice.sovits")

N_FFT, HOP, WIN = 2048, 640, 2048
MIN_SECONDS, MAX_SECONDS = 0.6, 54.0  # duration filter on the size-based estimate
BYTES_PER_SECOND = 32000 * 2  # int16 mono at 32 kHz; the WAV header is counted too, as upstream
BUCKET_BOUNDARIES = (32, *range(300, 2000, 100))  # in frames of 640 samples: 32, 300, 400, ..., 1900
SHUFFLE_SEED = 1234
DUPLICATE_BELOW = 100  # datasets smaller than this are repeated max(2, 100 // n) times


@dataclass(frozen=True)
class Clip:
    name: str
    phone_ids: tuple[int, ...]
    frames: int  # bucket length: file bytes // (2 * 640)


def read_phones(path: Path) -> dict[str, list[str]]:
    """name -> phones of every 4-field line of `2-name2text.txt`."""
    if not path.is_file():
        raise KoeError(f"{path} not found: run `koe voice prepare` for this experiment first")
    phones = {}
    for line in path.read_text(encoding="utf-8").split("\n"):
        fields = line.split("\t")
        if len(fields) == 4:
            phones[fields[0]] = fields[1].split(" ")
    return phones


def _names_in(folder: Path, suffix: str = "") -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name[: len(p.name) - len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix)}


def select_clips(exp_dir: Path, version: str, duplicate_below: int = DUPLICATE_BELOW) -> list[Clip]:
    """The official clip list: complete clips, repeated if few, shuffled, filtered by duration."""
    phones = read_phones(exp_dir / NAME2TEXT)
    names = set(phones) & _names_in(exp_dir / HUBERT_DIR, ".pt") & _names_in(exp_dir / WAV32K_DIR)
    if version in ("v2Pro", "v2ProPlus"):
        names &= _names_in(exp_dir / SV_DIR, ".pt")
    if not names:
        raise KoeError(
            f"no complete clips in {exp_dir}: every clip needs a line in {NAME2TEXT}, {HUBERT_DIR}/<name>.pt and "
            f"{WAV32K_DIR}/<name>"
            + (f" and {SV_DIR}/<name>.pt" if version in ("v2Pro", "v2ProPlus") else "")
            + "; run `koe voice prepare`"
        )
    names = sorted(names)
    if len(names) < duplicate_below:
        names = names * max(2, duplicate_below // len(names))
    random.Random(SHUFFLE_SEED).shuffle(names)
    clips = []
    for name in names:
        try:
            ids = phones_to_ids(phones[name], version)
        except KeyError as exc:
            log.warning("%s: skipped: phone %s is not in the %s symbol table", name, exc, version)
            continue
        size = (exp_dir / WAV32K_DIR / name).stat().st_size
        if MIN_SECONDS < size / BYTES_PER_SECOND < MAX_SECONDS:
            clips.append(Clip(name, tuple(ids), size // (2 * HOP)))
    if len(clips) < 2:
        raise KoeError(
            f"{exp_dir}: {len(clips)} usable clip(s) after the duration filter ({MIN_SECONDS}-{MAX_SECONDS} s); "
            "SoVITS training needs at least 2"
        )
    return clips


class SoVITSDataset(Dataset):
    """One item per clip: dict of ssl [768, T], spec [1025, T], wav [N], text [L] (+ sv [20480])."""

    def __init__(self, exp_dir: Path, version: str, duplicate_below: int = DUPLICATE_BELOW):
        self.exp_dir = Path(exp_dir)
        self.version = version
        self.clips = select_clips(self.exp_dir, version, duplicate_below)

    def __len__(self) -> int:
        return len(self.clips)

    def frames(self) -> list[int]:
        return [clip.frames for clip in self.clips]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip = self.clips[index]
        wav_path = self.exp_dir / WAV32K_DIR / clip.name
        wav = torch.from_numpy(load_audio_32k(wav_path))
        if wav.numel() < WIN:
            raise KoeError(f"{wav_path}: {wav.numel()} samples is too short for training; delete the clip")
        spec = linear_spectrogram(wav[None], N_FFT, HOP, WIN)[0]  # [1025, N // 640]
        ssl = _load_tensor(self.exp_dir / HUBERT_DIR / f"{clip.name}.pt").float()[0]  # [768, T50]
        if ssl.shape[-1] != spec.shape[-1]:  # HuBERT has one frame fewer: repeat the last one
            ssl = F.pad(ssl[None], (0, 1), mode="replicate")[0]
        if abs(ssl.shape[-1] - spec.shape[-1]) > 1:
            raise KoeError(
                f"{clip.name}: HuBERT features have {ssl.shape[-1]} frames, the audio {spec.shape[-1]}; "
                f"delete {HUBERT_DIR}/{clip.name}.pt and run `koe voice prepare` again"
            )
        ssl = ssl[:, : spec.shape[-1]]
        item = {"ssl": ssl, "spec": spec, "wav": wav, "text": torch.tensor(clip.phone_ids, dtype=torch.long)}
        if self.version in ("v2Pro", "v2ProPlus"):
            item["sv"] = _load_tensor(self.exp_dir / SV_DIR / f"{clip.name}.pt").float().reshape(-1)
        return item


def _load_tensor(path: Path) -> torch.Tensor:
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KoeError(f"cannot read {path}: {exc}; delete it and run `koe voice prepare` again") from None
    if not isinstance(tensor, torch.Tensor):
        raise KoeError(f"{path} does not hold a tensor; delete it and run `koe voice prepare` again")
    return tensor


def _even_length(n: int) -> int:
    """Padded time length of a batch: even and strictly longer than the longest item (as upstream)."""
    return 2 * (n // 2 + 1)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Zero-pad a list of items into a batch, longest spectrogram first.

    -> ssl [B, 768, T], spec [B, 1025, T], spec_lengths [B], wav [B, 1, N], wav_lengths [B],
       text [B, L], text_lengths [B] (+ sv [B, 20480]).
    """
    items = sorted(items, key=lambda item: item["spec"].shape[-1], reverse=True)
    frames = _even_length(max(item["spec"].shape[-1] for item in items))
    samples = max(item["wav"].shape[-1] for item in items)
    phones = max(item["text"].shape[-1] for item in items)

    def pad(key: str, length: int) -> torch.Tensor:
        return torch.stack([F.pad(item[key], (0, length - item[key].shape[-1])) for item in items])

    def lengths(key: str) -> torch.Tensor:
        return torch.tensor([item[key].shape[-1] for item in items], dtype=torch.long)

    batch = {
        "ssl": pad("ssl", frames),
        "spec": pad("spec", frames),
        "spec_lengths": lengths("spec"),
        "wav": pad("wav", samples).unsqueeze(1),
        "wav_lengths": lengths("wav"),
        "text": pad("text", phones),
        "text_lengths": lengths("text"),
    }
    if "sv" in items[0]:
        batch["sv"] = torch.stack([item["sv"] for item in items])
    return batch


def bucket_of(frames: int, boundaries=BUCKET_BOUNDARIES) -> int | None:
    """Index j with boundaries[j] < frames <= boundaries[j + 1], or None (dropped)."""
    for j in range(len(boundaries) - 1):
        if boundaries[j] < frames <= boundaries[j + 1]:
            return j
    return None


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length clips, sharded over ranks (upstream's DistributedBucketSampler).

    Each epoch (seeded with the epoch number): every bucket is shuffled and padded to a multiple of
    batch_size x world_size by repeating its own items; rank r takes every world_size-th item;
    consecutive groups of batch_size form the batches; the batch order is shuffled.
    """

    def __init__(self, frames: list[int], batch_size: int, world_size: int = 1, rank: int = 0):
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.epoch = 0
        buckets: dict[int, list[int]] = {}
        for index, n in enumerate(frames):
            j = bucket_of(n)
            if j is not None:
                buckets.setdefault(j, []).append(index)
        self.buckets = [buckets[j] for j in sorted(buckets)]
        dropped = len(frames) - sum(len(b) for b in self.buckets)
        if dropped:
            log.warning(
                "%d clip(s) shorter than %.2f s or longer than %.0f s are not used for SoVITS training",
                dropped, BUCKET_BOUNDARIES[0] * HOP / 32000, BUCKET_BOUNDARIES[-1] * HOP / 32000,
            )  # fmt: skip
        if not self.buckets:
            raise KoeError(
                "no clip has a usable length for SoVITS training (between about 0.7 and 38 seconds)"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _per_rank(self, n: int) -> int:
        total = self.batch_size * self.world_size
        return -(-n // total) * self.batch_size  # items this rank gets from a bucket of n

    def __len__(self) -> int:
        return sum(self._per_rank(len(b)) // self.batch_size for b in self.buckets)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.epoch)
        total = self.batch_size * self.world_size
        batches = []
        for bucket in self.buckets:
            order = [bucket[i] for i in torch.randperm(len(bucket), generator=g).tolist()]
            padded_size = -(-len(order) // total) * total
            padded = (order * (padded_size // len(order) + 1))[:padded_size]
            mine = padded[self.rank :: self.world_size]
            batches += [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]
