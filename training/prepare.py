"""Dataset preparation (WebUI tab 1A): a `.list` -> the experiment folder both trainers read.

Steps and files (shared/spec/gpt-sovits-training.md sections 1.1 and 5), all keyed by clip basename:
  text      2-name2text.txt (`name\\tphones\\tword2ph\\tnorm_text`), 3-bert/<name>.pt [1024, n_phones] (zh)
  audio     5-wav32k/<name> (the 0.95/0.5 loudness mix, int16), 4-cnhubert/<name>.pt [1, 768, T50]
  speaker   7-sv_cn/<name>.pt [1, 20480] (v2Pro / v2ProPlus only)
  semantic  6-name2semantic.tsv (header + `name\\tcodes`), from the *pretrained* SoVITS quantizer
Each step is incremental like the official one: work already on disk is kept and skipped. Unlike the
official scripts, digital-silence clips are skipped with a warning (they make NaN features and loop
the official retry forever) and the int16 wrap-around of over-loud float input is done explicitly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from agent.errors import KoeError
from training.audio import SAMPLE_RATE, load_audio_32k, write_clip_int16
from training.dataset import ListEntry, canonical_language, resolve_audio

log = logging.getLogger("koe.voice.prepare")

NAME2TEXT = "2-name2text.txt"
BERT_DIR = "3-bert"
HUBERT_DIR = "4-cnhubert"
WAV32K_DIR = "5-wav32k"
NAME2SEMANTIC = "6-name2semantic.tsv"
SV_DIR = "7-sv_cn"
SEMANTIC_HEADER = "item_name\tsemantic_audio"

PEAK_LIMIT = 2.2  # 1Ab skips louder (float) sources
MIX_NORMALISED, MIX_ORIGINAL = 0.95 * 0.5, 0.5  # share of the peak-normalised and the original signal
INT16_SCALE = 32768.0
HUBERT_SCALE = 1145.14  # the official HuBERT input scale (not 1.0)
HUBERT_RATE = 16_000
PRO_VERSIONS = ("v2Pro", "v2ProPlus")

Progress = Callable[[str], None] | None


@dataclass
class StepResult:
    """What one step did: clips newly written, clips already done, clips skipped (name, why)."""

    done: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _skip(result: StepResult, name: str, why: str) -> None:
    log.warning("%s: skipped: %s", name, why)
    result.skipped.append((name, why))


def _save_tensor(tensor: torch.Tensor, path: Path, half: bool) -> None:
    """`torch.save` a feature atomically, fp16 when the models ran in half precision (as upstream)."""
    tensor = tensor.detach().cpu()
    tensor = tensor.half() if half else tensor.float()
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(tensor, tmp)
    os.replace(tmp, path)


# --- 1Aa: text -> phones (+ BERT for Chinese) --------------------------------------------------------


def name2text_line(name: str, phones: Sequence[str], word2ph: list[int] | None, norm_text: str) -> str:
    """One `2-name2text.txt` line; word2ph as Python writes a list (`[2, 2, 1]`) or `None`."""
    return f"{name}\t{' '.join(phones)}\t{word2ph}\t{norm_text}"


def read_name2text(path: Path) -> dict[str, list[str]]:
    """name -> [phones, word2ph, norm_text] of an existing `2-name2text.txt` (empty when absent)."""
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text(encoding="utf-8").split("\n"):
        fields = line.split("\t")
        if len(fields) == 4:
            rows[fields[0]] = fields[1:]
    return rows


def prepare_text(
    entries: Sequence[ListEntry],
    exp_dir: Path,
    version: str,
    bert=None,
    half: bool = False,
    on_progress: Progress = None,
) -> StepResult:
    """1Aa. `bert`: a `tts.text.bert.ChineseBert` (needed only when there are ZH lines)."""
    from tts.text.cleaner import clean_text

    started = time.perf_counter()
    result = StepResult()
    out_path = exp_dir / NAME2TEXT
    bert_dir = exp_dir / BERT_DIR
    bert_dir.mkdir(parents=True, exist_ok=True)
    existing = read_name2text(out_path)
    with out_path.open("a", encoding="utf-8", newline="\n") as out:
        for entry in entries:
            name, language = entry.name, canonical_language(entry.language)
            if on_progress:
                on_progress(name)
            if name in existing:
                result.reused.append(name)
                continue
            if language is None:
                _skip(result, name, f"language code {entry.language!r} is not one the trainers accept")
                continue
            text = entry.text.replace("%", "-").replace("￥", ",")
            try:
                cleaned = clean_text(text, language, version)
            except Exception as exc:  # the official step drops a line whose G2P fails, and goes on
                _skip(result, name, f"text frontend failed on {text!r}: {exc}")
                continue
            if language == "zh":
                bert_path = bert_dir / f"{name}.pt"
                if not bert_path.is_file():
                    if bert is None:
                        raise KoeError("Chinese lines need the BERT model (chinese-roberta-wwm-ext-large)")
                    features = bert(cleaned.norm_text, cleaned.word2ph)  # [1024, n_phones]
                    if features.shape[-1] != len(cleaned.phones):
                        _skip(
                            result,
                            name,
                            f"BERT gave {features.shape[-1]} frames for {len(cleaned.phones)} phones",
                        )
                        continue
                    _save_tensor(features, bert_path, half)
            line = name2text_line(name, cleaned.phones, cleaned.word2ph, cleaned.norm_text)
            out.write(line + "\n")
            out.flush()
            existing[name] = line.split("\t")[1:]
            result.done.append(name)
    result.seconds = time.perf_counter() - started
    return result


# --- 1Ab: the 32 kHz training copy and HuBERT features ----------------------------------------------


def loudness_mix(x: np.ndarray, peak: float, scale: float) -> np.ndarray:
    """x/peak * (0.95 * 0.5 * scale) + (0.5 * scale) * x: the official mix at `scale` (float32)."""
    return (x / peak * (MIX_NORMALISED * scale) + (MIX_ORIGINAL * scale) * x).astype(np.float32)


def to_int16_wrapping(x: np.ndarray) -> np.ndarray:
    """float -> int16 by truncation with two's-complement wrap-around (numpy's astype on x86, made
    explicit because a float -> int16 cast out of range is undefined behaviour in C)."""
    return np.trunc(x).astype(np.int64).astype(np.int16)


def prepare_audio(
    entries: Sequence[ListEntry],
    exp_dir: Path,
    list_path: Path,
    hubert,
    audio_dir: Path | None = None,
    half: bool = False,
    on_progress: Progress = None,
) -> StepResult:
    """1Ab. `hubert`: a `tts.hubert.HubertEncoder` (16 kHz waveform -> [1, 768, T])."""
    from tts.resample import soxr_resample

    started = time.perf_counter()
    result = StepResult()
    hubert_dir, wav_dir = exp_dir / HUBERT_DIR, exp_dir / WAV32K_DIR
    hubert_dir.mkdir(parents=True, exist_ok=True)
    wav_dir.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        name = entry.name
        if on_progress:
            on_progress(name)
        feature_path = hubert_dir / f"{name}.pt"
        if feature_path.is_file():
            result.reused.append(name)
            continue
        try:
            x = load_audio_32k(resolve_audio(entry, list_path, audio_dir))
        except KoeError as exc:
            _skip(result, name, str(exc))
            continue
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak > PEAK_LIMIT:
            _skip(result, name, f"peak {peak:.2f} is above {PEAK_LIMIT} (the official step filters it)")
            continue
        if peak == 0.0:
            _skip(result, name, "digital silence (would give NaN HuBERT features)")
            continue
        write_clip_int16(wav_dir / name, to_int16_wrapping(loudness_mix(x, peak, INT16_SCALE)), SAMPLE_RATE)
        h16 = soxr_resample(loudness_mix(x, peak, HUBERT_SCALE), SAMPLE_RATE, HUBERT_RATE)
        features = hubert(torch.from_numpy(h16)).float()  # [1, 768, T50]
        if not torch.isfinite(features).all():
            _skip(result, name, "HuBERT features contain NaN/inf")
            continue
        _save_tensor(features, feature_path, half)
        result.done.append(name)
    result.seconds = time.perf_counter() - started
    return result


# --- 1Ab-sv: speaker-verification embeddings (v2Pro / v2ProPlus) ------------------------------------


def prepare_speaker(
    names: Sequence[str], exp_dir: Path, sv_model, half: bool = False, on_progress: Progress = None
) -> StepResult:
    """7-sv_cn/<name>.pt from the mixed 32 kHz copy. `sv_model`: a `tts.models.sv.ERes2NetV2`."""
    import soundfile

    from tts.models.sv import speaker_embedding
    from tts.resample import sinc_resample

    started = time.perf_counter()
    result = StepResult()
    sv_dir = exp_dir / SV_DIR
    sv_dir.mkdir(parents=True, exist_ok=True)
    device = next(sv_model.parameters()).device
    for name in names:
        if on_progress:
            on_progress(name)
        out_path = sv_dir / f"{name}.pt"
        if out_path.is_file():
            result.reused.append(name)
            continue
        wav_path = exp_dir / WAV32K_DIR / name
        if not wav_path.is_file():
            _skip(result, name, f"{wav_path} missing (run the audio step first)")
            continue
        audio, rate = soundfile.read(wav_path, dtype="float32")  # int16 / 32768, like torchaudio.load
        if rate != SAMPLE_RATE:
            _skip(result, name, f"{wav_path} is {rate} Hz, expected {SAMPLE_RATE}")
            continue
        wave16k = sinc_resample(torch.from_numpy(audio).reshape(1, -1), SAMPLE_RATE, HUBERT_RATE)
        embedding = speaker_embedding(sv_model, wave16k.to(device))  # [1, 20480]
        _save_tensor(embedding, out_path, half)
        result.done.append(name)
    result.seconds = time.perf_counter() - started
    return result


# --- 1Ac: semantic tokens ---------------------------------------------------------------------------


def read_name2semantic(path: Path) -> dict[str, str]:
    """name -> space-separated codes of an existing `6-name2semantic.tsv` (empty when absent)."""
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text(encoding="utf-8").split("\n")[1:]:
        fields = line.split("\t")
        if len(fields) == 2:
            rows[fields[0]] = fields[1]
    return rows


def write_name2semantic(path: Path, rows: dict[str, str]) -> None:
    """The merged file as the WebUI writes it: header, one row per clip, trailing newline (atomic)."""
    lines = [SEMANTIC_HEADER] + [f"{name}\t{codes}" for name, codes in rows.items()]
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@torch.inference_mode()
def prepare_semantic(names: Sequence[str], exp_dir: Path, sovits, on_progress: Progress = None) -> StepResult:
    """6-name2semantic.tsv: 25 Hz codes of every clip with HuBERT features (`sovits`: the pretrained
    generator, of which only `ssl_proj` and the quantizer codebook are used)."""
    started = time.perf_counter()
    result = StepResult()
    out_path = exp_dir / NAME2SEMANTIC
    rows = read_name2semantic(out_path)
    device = next(sovits.parameters()).device
    for name in names:
        if on_progress:
            on_progress(name)
        if name in rows:
            result.reused.append(name)
            continue
        feature_path = exp_dir / HUBERT_DIR / f"{name}.pt"
        if not feature_path.is_file():
            continue  # the audio step skipped it (and said why); the official step skips silently too
        ssl = torch.load(feature_path, map_location=device, weights_only=True).float()  # [1, 768, T50]
        codes = sovits.extract_latent(ssl)[0, 0].tolist()  # floor(T50 / 2) ids in 0..1023
        rows[name] = " ".join(str(c) for c in codes)
        result.done.append(name)
    write_name2semantic(out_path, rows)
    result.seconds = time.perf_counter() - started
    return result


# --- all steps --------------------------------------------------------------------------------------


@dataclass
class PrepareModels:
    """Paths of the models dataset preparation needs (the speaker model only for Pro versions)."""

    sovits: Path  # the pretrained SoVITS generator of the chosen version
    hubert: Path  # chinese-hubert-base folder
    bert: Path | None = None  # chinese-roberta-wwm-ext-large folder (ZH lines only)
    sv: Path | None = None  # sv/pretrained_eres2netv2w24s4ep4.ckpt
    sv_config: object | None = None  # a tts.models.sv.SVConfig; None = the official size


def prepare_dataset(
    entries: Sequence[ListEntry],
    list_path: Path,
    exp_dir: Path,
    version: str,
    models: PrepareModels,
    *,
    audio_dir: Path | None = None,
    device: str = "cpu",
    half: bool = False,
    progress: Callable[[str, int], Callable[[str], None]] | None = None,
) -> dict[str, StepResult]:
    """Run every 1A step in order; models are loaded one step at a time (and freed after it).

    `progress(step_name, total)` returns the per-clip callback of a step (e.g. a progress bar).
    """
    from tts.hubert import HubertEncoder
    from tts.weights.sovits import load_sovits

    exp_dir.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    on = (lambda step: progress(step, len(entries))) if progress else (lambda step: None)
    results: dict[str, StepResult] = {}

    bert = None
    if any(canonical_language(e.language) == "zh" for e in entries):
        from tts.text.bert import ChineseBert

        if models.bert is None:
            raise KoeError("the .list has ZH lines: Chinese BERT features need chinese-roberta-wwm-ext-large")
        bert = ChineseBert(models.bert, device=device, dtype=dtype)
    results["text"] = prepare_text(entries, exp_dir, version, bert, half, on("text"))
    del bert

    hubert = HubertEncoder(models.hubert, device=device, dtype=dtype)
    results["audio"] = prepare_audio(entries, exp_dir, list_path, hubert, audio_dir, half, on("audio"))
    del hubert

    names = [e.name for e in entries]
    if version in PRO_VERSIONS:
        from tts.models.sv import load_sv_model

        if models.sv is None:
            raise KoeError(
                f"{version} needs the speaker-verification model sv/pretrained_eres2netv2w24s4ep4.ckpt"
            )
        sv_model = load_sv_model(models.sv, models.sv_config).to(device)
        results["speaker"] = prepare_speaker(names, exp_dir, sv_model, half, on("speaker"))
        del sv_model

    sovits = load_sovits(models.sovits, device=device)
    if sovits.config.version != version:
        raise KoeError(
            f"{models.sovits} is a SoVITS {sovits.config.version} model, but the voice is {version}: "
            "semantic tokens must come from the pretrained SoVITS of the chosen version"
        )
    results["semantic"] = prepare_semantic(names, exp_dir, sovits, on("semantic"))
    for step, result in results.items():
        log.info(
            "prepare %s: %d done, %d already there, %d skipped, %.1f s",
            step,
            len(result.done),
            len(result.reused),
            len(result.skipped),
            result.seconds,
        )
    return results
