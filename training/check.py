"""`koe voice check`: what training would do with a `.list` dataset, before any GPU time is spent.

The official pipeline skips bad lines and clips silently (a warning scrolled away at best): unknown
language codes, duplicate basenames that overwrite each other's features, clips the SoVITS or GPT
dataset drops for their length or phoneme rate. This module applies the same rules (spec:
shared/spec/gpt-sovits-training.md, sections 4.1, 5.2, 6.2, 7.1, 11) and says, per clip, what would
happen and why; plus clipping and silence, which the trainers do not look at but the voice suffers from.

Severities: `error` (the line or clip cannot be used, or breaks a step), `dropped` (a trainer leaves
the clip out), `warning` (trains, but probably hurts the voice), `info`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agent.errors import KoeError
from training.audio import SAMPLE_RATE, load_audio_32k
from training.dataset import (
    LANGUAGE_CODES,
    SUPPORTED_LANGUAGES,
    ListEntry,
    canonical_language,
    read_list,
    resolve_audio,
)
from training.slicer import rms_curve

log = logging.getLogger(__name__)

PhonesFn = Callable[[str, str], list[str]]  # (text, canonical language) -> phones, as 1Aa would make them

# Limits of the official trainers.
WAV_HEADER_BYTES = 44  # the 5-wav32k copy is a plain 16-bit mono WAV; SoVITS estimates duration from its size
SOVITS_MIN_S, SOVITS_MAX_S = 0.6, 54.0  # kept only if min < bytes / 64000 < max
BUCKET_MIN, BUCKET_MAX = 32, 1900  # bucket length bytes // 1280 must be in (32, 1900]
GPT_MAX_TOKENS = 54 * 25  # 25 Hz semantic tokens
GPT_MAX_PHONES = int(54 * 25 / 2.5)
GPT_MIN_RATE, GPT_MAX_RATE = 3.0, 25.0  # phones per second of tokens
PEAK_FILTERED = 2.2  # 1Ab skips clips louder than this
BERT_MAX_CHARS = 510  # Chinese text longer than this breaks the 512-token BERT
# Our own advice thresholds (not enforced by the trainers).
LONG_CLIP_S = 15.0  # GPT training memory grows fast with clip length
REFERENCE_MIN_S, REFERENCE_MAX_S = 3.0, 10.0  # inference reference clips must be this long
SILENCE_DB = -40.0
MOSTLY_SILENT = 0.5  # share of 10 ms frames below SILENCE_DB
LONG_EDGE_SILENCE_S = 1.0
CLIPPED_RUN = 3  # this many consecutive samples at the peak value look like clipping
SMALL_DATASET = 100  # both trainers repeat smaller lists up to this size


@dataclass
class Finding:
    severity: str  # error | dropped | warning | info
    category: str  # short machine-readable key, e.g. "missing-audio", "too-short"
    message: str
    line: int | None = None
    name: str | None = None


@dataclass
class ClipInfo:
    line: int
    name: str
    language: str | None  # canonical, None when the code is not accepted
    path: str
    seconds: float | None = None
    peak: float | None = None
    phones: int | None = None
    tokens: int | None = None
    usable: bool = True  # would reach both trainers


@dataclass
class CheckReport:
    list_path: str
    findings: list[Finding] = field(default_factory=list)
    clips: list[ClipInfo] = field(default_factory=list)
    phones_checked: bool = False
    phones_unavailable: dict[str, str] = field(default_factory=dict)  # language -> why its G2P cannot run

    def add(self, severity: str, category: str, message: str, clip: ClipInfo | None = None) -> None:
        self.findings.append(
            Finding(severity, category, message, clip.line if clip else None, clip.name if clip else None)
        )
        if clip is not None and severity in ("error", "dropped"):
            clip.usable = False

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    @property
    def ok(self) -> bool:
        """True when every line reaches both trainers (warnings allowed)."""
        return self.count("error") == 0 and self.count("dropped") == 0

    def seconds_by_language(self, usable_only: bool = True) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for clip in self.clips:
            if clip.seconds is not None and (clip.usable or not usable_only):
                totals[clip.language or "unknown"] += clip.seconds
        return dict(sorted(totals.items()))

    def to_dict(self) -> dict:
        return {
            "list": self.list_path,
            "ok": self.ok,
            "counts": {s: self.count(s) for s in ("error", "dropped", "warning", "info")},
            "clips": len(self.clips),
            "usable_clips": sum(c.usable for c in self.clips),
            "seconds_by_language": self.seconds_by_language(),
            "seconds_by_language_all": self.seconds_by_language(usable_only=False),
            "phones_checked": self.phones_checked,
            "phones_unavailable": self.phones_unavailable,
            "findings": [asdict(f) for f in self.findings],
            "clip_details": [asdict(c) for c in self.clips],
        }


def semantic_tokens(num_samples_32k: int) -> int:
    """25 Hz tokens 1Ac makes from a clip: HuBERT frames of the 16 kHz copy, halved by `ssl_proj`."""
    n16 = math.ceil(num_samples_32k / 2)
    hubert_frames = (n16 - 400) // 320 + 1 if n16 >= 400 else 0
    return hubert_frames // 2


def gpt_steps_per_epoch(usable_clips: int, batch_size: int) -> int:
    """Optimiser steps the GPT trainer makes per epoch (one GPU): it repeats lists under 100 items, caps
    the batch size at a quarter of the list, and steps only on batch indices 4, 8, 12, ..."""
    if usable_clips == 0:
        return 0
    items = (
        usable_clips
        if usable_clips >= SMALL_DATASET
        else usable_clips * max(2, SMALL_DATASET // usable_clips)
    )
    batch = max(min(batch_size, items // 4), 1)
    batches = math.ceil(items / batch)
    return (batches - 1) // 4


def check_dataset(
    list_path: Path,
    *,
    gpt_batch_size: int = 4,
    audio_dir: Path | None = None,
    phones_fn: PhonesFn | None = None,
    phones_unavailable: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Check every line of `list_path`; problems become findings, never exceptions.

    `gpt_batch_size` ([training] gpt_batch_size) is used to warn when a GPT epoch would make no optimiser
    step. `phones_fn` enables the GPT phone-count and phone-rate rules; without it they are reported as
    skipped, with `phones_unavailable` as the reason. Only a missing or unreadable list file raises.
    """
    entries, bad_lines = read_list(list_path)
    report = CheckReport(str(list_path), phones_checked=phones_fn is not None)
    for bad in bad_lines:
        report.findings.append(
            Finding("error", "bad-line", f"{bad.reason}: {bad.content[:80]!r}", bad.line_number)
        )
    if not entries:
        report.add("error", "empty-list", f"{list_path} has no usable lines: nothing to train on")
        return report
    for number, entry in entries:
        clip = ClipInfo(number, entry.name, canonical_language(entry.language), "")
        report.clips.append(clip)
        _check_text(report, clip, entry)
        path = resolve_audio(entry, list_path, audio_dir)
        clip.path = str(path)
        _check_audio(report, clip, path)
        if clip.seconds is not None and clip.language is not None and entry.text.strip():
            _check_phones(report, clip, entry, phones_fn)
        if on_progress:
            on_progress(number)
    _check_duplicates(report)
    if phones_fn is None:
        report.add(
            "info",
            "phones-skipped",
            f"phone count and phone-rate checks skipped ({phones_unavailable or 'text frontend unavailable'})",
        )
    _check_totals(report, gpt_batch_size)
    return report


def _check_duplicates(report: CheckReport) -> None:
    lines_by_name: dict[str, list[int]] = defaultdict(list)
    for clip in report.clips:
        lines_by_name[clip.name].append(clip.line)
    for clip in report.clips:
        others = [n for n in lines_by_name[clip.name] if n != clip.line]
        if others:
            report.add(
                "error",
                "duplicate-name",
                f"basename {clip.name!r} is also used on line(s) {others}: every training step keys its files "
                "by basename, so these clips overwrite each other; rename all but one",
                clip,
            )


def _check_text(report: CheckReport, clip: ClipInfo, entry: ListEntry) -> None:
    if clip.language is None:
        hint = _language_hint(entry.language)
        report.add(
            "error",
            "unknown-language",
            f"language code {entry.language!r} is not accepted: dataset preparation skips this line "
            f"(use one of ZH, JA, EN, KO, YUE{hint})",
            clip,
        )
    text = entry.text.strip()
    if not text:
        report.add("warning", "empty-text", "empty transcript: the clip trains against no words", clip)
    if entry.text.endswith("\r"):
        report.add(
            "warning", "crlf", "line ends with \\r (Windows line ending); save the .list with \\n", clip
        )
    if clip.language == "zh" and len(text) > BERT_MAX_CHARS:
        report.add(
            "error",
            "text-too-long",
            f"{len(text)} characters: Chinese BERT features fail beyond {BERT_MAX_CHARS}; split the clip",
            clip,
        )


def _language_hint(code: str) -> str:
    stripped = code.strip()
    if stripped in LANGUAGE_CODES:
        return f"; remove the spaces around {stripped!r}"
    if stripped.lower() in SUPPORTED_LANGUAGES:
        return f"; {stripped.upper()!r} is the accepted spelling"
    if stripped.upper() == "AUTO":
        return "; 'AUTO' comes from labelling with language auto: relabel or set the language per line"
    return ""


def _check_audio(report: CheckReport, clip: ClipInfo, path: Path) -> None:
    if not path.is_file():
        report.add("error", "missing-audio", f"audio file not found: {path}", clip)
        return
    try:
        audio = load_audio_32k(path)
    except KoeError as exc:
        report.add("error", "unreadable-audio", str(exc), clip)
        return
    clip.seconds = len(audio) / SAMPLE_RATE
    clip.tokens = semantic_tokens(len(audio))
    clip.peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if clip.peak == 0.0:
        report.add(
            "error",
            "digital-silence",
            "the clip is digital silence: its HuBERT features are NaN (the official fp16 retry then never ends)",
            clip,
        )
        return
    _check_lengths(report, clip, len(audio))
    if clip.peak > PEAK_FILTERED:
        report.add(
            "dropped",
            "peak-filtered",
            f"peak {clip.peak:.2f} > {PEAK_FILTERED}: feature extraction skips it",
            clip,
        )
    elif (0.475 + 0.5 * clip.peak) * 32768 > 32767:
        report.add(
            "warning",
            "int16-wrap",
            f"peak {clip.peak:.3f} > 1.05: the 16-bit training copy wraps around (loud clicks); normalise the clip",
            clip,
        )
    _check_levels(report, clip, audio)


def _check_lengths(report: CheckReport, clip: ClipInfo, num_samples: int) -> None:
    size = WAV_HEADER_BYTES + 2 * num_samples  # the 5-wav32k copy SoVITS measures
    estimated = size / (SAMPLE_RATE * 2)
    bucket = size // 1280
    seconds = clip.seconds
    if not SOVITS_MIN_S < estimated < SOVITS_MAX_S:
        bound = f"<= {SOVITS_MIN_S}" if estimated <= SOVITS_MIN_S else f">= {SOVITS_MAX_S}"
        report.add(
            "dropped",
            "too-short" if estimated <= SOVITS_MIN_S else "too-long",
            f"{seconds:.2f} s: SoVITS drops clips {bound} s",
            clip,
        )
    elif bucket <= BUCKET_MIN:
        report.add(
            "dropped",
            "too-short",
            f"{seconds:.2f} s ({bucket} frames): the SoVITS batch sampler drops clips of <= {BUCKET_MIN} "
            "frames (about 0.66 s)",
            clip,
        )
    elif bucket > BUCKET_MAX:
        report.add(
            "dropped",
            "too-long",
            f"{seconds:.2f} s ({bucket} frames): the SoVITS batch sampler drops clips over {BUCKET_MAX} "
            "frames (about 38 s); re-slice it",
            clip,
        )
    if clip.tokens > GPT_MAX_TOKENS:
        report.add(
            "dropped",
            "too-long",
            f"{clip.tokens} semantic tokens: GPT drops clips over {GPT_MAX_TOKENS} (54 s)",
            clip,
        )
    if seconds > LONG_CLIP_S and clip.usable:
        report.add(
            "warning",
            "long-clip",
            f"{seconds:.1f} s: GPT training memory grows fast with clip length; clips over "
            f"{LONG_CLIP_S:.0f} s may not fit the GPU (re-slice with --max-clip-seconds)",
            clip,
        )


def _check_levels(report: CheckReport, clip: ClipInfo, audio: np.ndarray) -> None:
    at_peak = np.abs(audio) >= clip.peak - 1 / 32768
    longest = _longest_run(at_peak)
    if longest >= CLIPPED_RUN:
        report.add(
            "warning",
            "clipping",
            f"{longest} consecutive samples at the peak level: the recording looks clipped",
            clip,
        )
    rms = rms_curve(audio, window=1280, hop=320)
    silent = rms < 10 ** (SILENCE_DB / 20)
    share = float(silent.mean())
    voiced = np.flatnonzero(~silent)
    frame_s = 320 / SAMPLE_RATE
    lead = voiced[0] * frame_s if len(voiced) else 0.0
    tail = (len(silent) - 1 - voiced[-1]) * frame_s if len(voiced) else 0.0
    if share > MOSTLY_SILENT:
        report.add(
            "warning",
            "silence",
            f"{share:.0%} of the clip is below {SILENCE_DB:.0f} dBFS: mostly silence",
            clip,
        )
    elif max(lead, tail) > LONG_EDGE_SILENCE_S:
        report.add(
            "warning",
            "silence",
            f"{lead:.1f} s of silence at the start, {tail:.1f} s at the end: trim or re-slice",
            clip,
        )


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True values."""
    if not mask.any():
        return 0
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


# Errors that mean the frontend cannot run here (a missing package, dictionary or NLTK corpus), not
# that this text is bad: the phone checks are skipped for the language instead of dropping every clip.
ENVIRONMENT_ERRORS = (ImportError, LookupError, OSError, KoeError)


def _check_phones(report: CheckReport, clip: ClipInfo, entry: ListEntry, phones_fn: PhonesFn | None) -> None:
    if phones_fn is None or clip.language in report.phones_unavailable:
        return
    text = entry.text.replace("%", "-").replace("￥", ",")  # the only edits 1Aa makes before G2P
    try:
        phones = phones_fn(text, clip.language)
    except ENVIRONMENT_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}"
        report.phones_unavailable[clip.language] = reason
        report.add(
            "info", "phones-skipped", f"{clip.language} phone checks skipped (frontend cannot run: {reason})"
        )
        return
    except Exception as exc:  # noqa: BLE001 - the official step drops the line on any G2P failure
        report.add(
            "dropped", "g2p-failed", f"text frontend failed ({type(exc).__name__}: {exc}): 1Aa drops it", clip
        )
        return
    clip.phones = len(phones)
    if clip.phones > GPT_MAX_PHONES:
        report.add(
            "dropped",
            "too-many-phones",
            f"{clip.phones} phones: GPT drops clips with more than {GPT_MAX_PHONES}",
            clip,
        )
    if clip.tokens:
        rate = clip.phones / (clip.tokens / 25)
        if not GPT_MIN_RATE <= rate <= GPT_MAX_RATE:
            report.add(
                "dropped",
                "phone-rate",
                f"{rate:.1f} phones per second (allowed {GPT_MIN_RATE:.0f} to {GPT_MAX_RATE:.0f}): GPT drops it; "
                "the transcript probably does not match the audio",
                clip,
            )


def _check_totals(report: CheckReport, gpt_batch_size: int) -> None:
    usable = [c for c in report.clips if c.usable]
    if not usable:
        report.add(
            "error", "no-usable-clips", "no clip would reach training (the official trainers crash on this)"
        )
        return
    if len(usable) < SMALL_DATASET:
        repeats = max(2, SMALL_DATASET // len(usable))
        report.add(
            "info",
            "small-dataset",
            f"{len(usable)} usable clips: both trainers repeat the list {repeats} times per epoch",
        )
    steps = gpt_steps_per_epoch(len(usable), gpt_batch_size)
    if steps == 0:
        report.add(
            "warning",
            "gpt-no-steps",
            f"with {len(usable)} usable clips and GPT batch size {gpt_batch_size} an epoch has at most 4 "
            "batches, and the official GPT trainer steps only on every 4th batch after the first: it would "
            "never update; lower [training] gpt_batch_size or add clips",
        )
    references = sum(REFERENCE_MIN_S <= (c.seconds or 0) <= REFERENCE_MAX_S for c in usable)
    if references == 0:
        report.add(
            "warning",
            "no-reference-clip",
            f"no usable clip lasts {REFERENCE_MIN_S:.0f} to {REFERENCE_MAX_S:.0f} s: inference needs one as "
            "its reference",
            None,
        )
    languages = Counter(c.language for c in usable)
    for language, seconds in report.seconds_by_language().items():
        report.add(
            "info", "duration", f"{language}: {languages[language]} clips, {seconds / 60:.1f} min usable"
        )
