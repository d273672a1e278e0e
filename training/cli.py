"""`koe voice ...`: build a character voice from recordings (docs/training.md walks through it).

    koe voice slice raw/ -o data/aria/clips            # official silence slicer, 32 kHz clips
    koe voice label data/aria/clips --speaker aria     # faster-whisper -> data/aria/clips.list
    koe voice check data/aria/clips.list               # what training would drop, and why
    koe voice prepare data/aria/clips.list --name aria # phones, BERT, 32 kHz, HuBERT, semantic tokens
    koe voice train-sovits --name aria                 # stage 2, resumable
    koe voice train-gpt --name aria                    # stage 1, resumable
    koe voice export --name aria                       # the two small inference weight files

Each step is resumable: run it again after an interruption and it continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

from agent.config import KoeConfig
from agent.errors import KoeError

log = logging.getLogger("koe.voice")


def register(subparsers) -> None:
    voice = subparsers.add_parser(
        "voice",
        help="build a new character voice: slice, label, check, prepare, train, export",
        description="Build a new character voice from about 10 minutes of clean recordings.",
    )
    steps = voice.add_subparsers(dest="voice_command", metavar="STEP")
    voice.set_defaults(handler=lambda args, config: _print_help(voice))
    _register_slice(steps)
    _register_label(steps)
    _register_check(steps)
    _register_prepare(steps)
    _register_train_gpt(steps)
    _register_train_sovits(steps)
    _register_export(steps)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


@contextmanager
def _progress(description: str, total: int):
    """A rich progress bar on stderr; yields `advance(item)`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda _item=None: progress.advance(task)


# --- slice -------------------------------------------------------------------------------------------


def _register_slice(steps) -> None:
    p = steps.add_parser(
        "slice",
        help="cut recordings at pauses into 32 kHz clips (the official slicer)",
        description="Cut recordings at pauses exactly like the official GPT-SoVITS slicer (same cut points and "
        "file names), then re-cut clips longer than --max-clip-seconds at their quietest point.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders of them")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="folder for the clips")
    p.add_argument(
        "--threshold", type=float, default=-34.0, metavar="DB", help="silence below this RMS (dBFS)"
    )
    p.add_argument("--min-length", type=int, default=4000, metavar="MS", help="shortest clip before a cut")
    p.add_argument("--min-interval", type=int, default=300, metavar="MS", help="shortest pause that is cut")
    p.add_argument("--hop-size", type=int, default=10, metavar="MS", help="RMS frame step")
    p.add_argument("--max-sil-kept", type=int, default=500, metavar="MS", help="silence kept at each cut")
    p.add_argument("--normalize-max", type=float, default=0.9, help="peak of the normalised part of the mix")
    p.add_argument("--alpha", type=float, default=0.25, help="share of the normalised clip in the mix")
    p.add_argument(
        "--max-clip-seconds",
        type=float,
        default=15.0,
        metavar="S",
        help="re-cut longer clips at their quietest point (0 = no maximum, as the official tool)",
    )
    p.add_argument("--force", action="store_true", help="slice again inputs an earlier run finished")
    p.set_defaults(handler=run_slice)


def run_slice(args: argparse.Namespace, config: KoeConfig) -> int:
    from training.slice_audio import MixParams, collect_inputs, slice_inputs
    from training.slicer import SlicerParams

    slicer = SlicerParams(
        threshold_db=args.threshold,
        min_length_ms=args.min_length,
        min_interval_ms=args.min_interval,
        hop_size_ms=args.hop_size,
        max_sil_kept_ms=args.max_sil_kept,
        max_clip_s=args.max_clip_seconds,
    )
    mix = MixParams(args.normalize_max, args.alpha)
    inputs = collect_inputs(args.inputs)
    if not inputs:
        raise KoeError(f"no files to slice in {', '.join(args.inputs)}")
    started = time.perf_counter()
    with _progress("slicing", len(inputs)) as advance:
        summary = slice_inputs(inputs, args.output, slicer, mix, force=args.force, on_progress=advance)
    log.info(
        "slice: %d inputs -> %d new clips (%.1f min), %d clips kept from an earlier run, in %.1f s",
        len(inputs),
        len(summary.written),
        summary.seconds_written / 60,
        len(summary.reused),
        time.perf_counter() - started,
    )
    for name in summary.silent_dropped:
        log.warning("not written (digital silence): %s", name)
    for source, reason in summary.failed:
        print(f"failed: {source}: {reason}")
    print(f"{len(summary.written) + len(summary.reused)} clips in {args.output}")
    return 1 if summary.failed else 0


# --- label -------------------------------------------------------------------------------------------


def _register_label(steps) -> None:
    p = steps.add_parser(
        "label",
        help="transcribe clips with faster-whisper into a .list (path|speaker|LANG|text)",
        description="Transcribe every clip of a folder into a GPT-SoVITS .list file. Clips that cannot be "
        "trained (other language, no speech, a path with '|') go to <list>.skipped.tsv with the reason.",
    )
    p.add_argument("clips", type=Path, metavar="CLIPS_DIR", help="folder of clips (from `koe voice slice`)")
    p.add_argument(
        "-o", "--output", type=Path, metavar="LIST", help="the .list to write (default: CLIPS_DIR.list)"
    )
    p.add_argument("--speaker", help="speaker name written on every line (default: the folder name)")
    p.add_argument(
        "--language",
        default="auto",
        help="auto (detect per clip) or one of zh, ja, en, ko, yue (also ZH, JA/JP, EN, KO, YUE)",
    )
    p.add_argument("--model", help="faster-whisper model name or folder (default: [asr] model)")
    p.add_argument("--beam-size", type=int, default=5, help="beam size (official labeller: 5)")
    p.set_defaults(handler=run_label)


def run_label(args: argparse.Namespace, config: KoeConfig) -> int:
    from asr.transcriber import Transcriber
    from training.label import find_clips, label_clips, skipped_path, whisper_language

    language = whisper_language(args.language)
    clips = find_clips(args.clips)
    if not clips:
        raise KoeError(f"no audio clips in {args.clips} (expected .wav files from `koe voice slice`)")
    clips_dir = args.clips.resolve()
    list_path = args.output or clips_dir.with_name(clips_dir.name + ".list")
    started = time.perf_counter()
    transcriber = Transcriber(
        args.model or config.asr.model,
        models_dir=config.models.dir,
        device=config.asr.device,
        compute_type=config.asr.compute_type,
        language=language,
        beam_size=args.beam_size,
        cpu_threads=config.asr.cpu_threads,
        vad_filter=True,  # the official labeller's Silero pass (silences of 700 ms or more are skipped)
    )
    log.info("label: model loaded in %.1f s", time.perf_counter() - started)
    started = time.perf_counter()
    with _progress("labelling", len(clips)) as advance:
        summary = label_clips(
            clips,
            list_path,
            transcriber,
            speaker=args.speaker or clips_dir.name,
            language=language,
            on_progress=advance,
        )
    elapsed = time.perf_counter() - started
    log.info(
        "label: %d clips labelled (%.1f min of audio, %.1f s transcribing), %d already done, in %.1f s",
        len(summary.labelled),
        summary.seconds_of_audio / 60,
        summary.seconds_transcribing,
        summary.already_done,
        elapsed,
    )
    print(
        f"{len(summary.labelled)} clips labelled into {list_path} ({summary.already_done} were already done)"
    )
    if summary.skipped:
        print(f"{len(summary.skipped)} clips skipped, reasons in {skipped_path(list_path)}")
    return 0


# --- check -------------------------------------------------------------------------------------------


def _register_check(steps) -> None:
    p = steps.add_parser(
        "check",
        help="report what training would do with a .list dataset (drops, errors, durations)",
        description="Check a .list dataset before training: missing or unreadable audio, duplicate basenames, "
        "unknown language codes, clips the trainers would drop and why, total duration per language, "
        "clipping and silence. Exit status 1 when a line has an error or would be dropped.",
    )
    p.add_argument("list", type=Path, metavar="LIST", help="the .list file")
    p.add_argument(
        "--audio-dir",
        type=Path,
        metavar="DIR",
        help="read clips as DIR/<basename> (the WebUI's 'training audio folder'); default: paths as written",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the full report as JSON")
    p.set_defaults(handler=run_check)


def load_phones_fn(version: str):
    """The text frontend's phones for a (text, language), as dataset preparation makes them; or
    (None, why not) when the frontend is not installed."""
    try:
        from tts.text.cleaner import clean_text
    except ImportError as exc:
        return None, f"text frontend unavailable: {exc}"
    return (lambda text, language: clean_text(text, language, version).phones), None


def run_check(args: argparse.Namespace, config: KoeConfig) -> int:
    from training.check import check_dataset
    from training.dataset import read_list

    entries, _bad = read_list(args.list)  # a missing list is a KoeError, before the frontend loads
    phones_fn, why_not = load_phones_fn(config.training.version)
    started = time.perf_counter()
    with _progress("checking", len(entries)) as advance:
        report = check_dataset(
            args.list,
            gpt_batch_size=config.training.gpt_batch_size,
            audio_dir=args.audio_dir,
            phones_fn=phones_fn,
            phones_unavailable=why_not,
            on_progress=advance,
        )
    log.info("check: %d lines in %.1f s", len(report.clips), time.perf_counter() - started)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
    return 0 if report.ok else 1


def print_report(report) -> None:
    """One line per finding (worst first, then by line number), then the totals."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)  # soft wrap: a finding stays on one line
    styles = {"error": "red", "dropped": "yellow", "warning": "magenta", "info": "cyan"}
    order = list(styles)
    console.print(f"[bold]koe voice check: {escape(report.list_path)}[/]")
    for f in sorted(report.findings, key=lambda f: (order.index(f.severity), f.line or 0)):
        where = " ".join(part for part in (f"line {f.line}" if f.line else "", f.name or "") if part)
        where = f"{escape(where)}: " if where else ""
        console.print(f"[{styles[f.severity]}]{f.severity:<7}[/] {where}{escape(f.message)}")
    usable = sum(c.usable for c in report.clips)
    minutes = (
        ", ".join(f"{lang} {s / 60:.1f} min" for lang, s in report.seconds_by_language().items()) or "none"
    )
    console.print(
        f"{len(report.clips)} clips, {usable} usable ({minutes}); "
        f"{report.count('error')} errors, {report.count('dropped')} dropped, {report.count('warning')} warnings"
    )


# --- prepare / train-gpt / export (GPT stage) ----------------------------------------------------------
#
#   koe voice prepare data/aria/clips.list --name aria    # phones, BERT, 32 kHz copies, HuBERT, tokens
#   koe voice train-gpt --name aria                       # fine-tune the GPT (resumes after a crash)
#   koe voice export --name aria --stage gpt              # small weights from the newest checkpoint

PRETRAINED_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")
SV_COMPONENT = "gsv-v2pro"  # holds sv/pretrained_eres2netv2w24s4ep4.ckpt


def _add_experiment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="experiment (voice) name: the folder under --exp-dir")
    p.add_argument(
        "--version", choices=PRETRAINED_VERSIONS, help="model version (default: [training] version)"
    )
    p.add_argument(
        "--exp-dir", type=Path, metavar="DIR", help="experiments folder (default: [training] exp_dir)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def _experiment(args: argparse.Namespace, config: KoeConfig) -> tuple[Path, str]:
    version = args.version or config.training.version
    if version not in PRETRAINED_VERSIONS:
        raise KoeError(f"koe trains versions {', '.join(PRETRAINED_VERSIONS)}, not {version!r}")
    name = args.name.rstrip()
    if not name or "/" in name or name in (".", ".."):
        raise KoeError(f"--name {args.name!r} is not a usable folder name")
    return (args.exp_dir or config.training.exp_dir) / name, version


def _pretrained_file(config: KoeConfig, version: str, kind: str) -> Path:
    """The pretrained GPT (.ckpt), SoVITS generator (s2G*.pth) or speaker model of `version`."""
    from agent.model_manager import ModelManager
    from tts.cli import VERSION_COMPONENTS

    manager = ModelManager(config.models.dir)
    component = SV_COMPONENT if kind == "sv" else VERSION_COMPONENTS[version]
    manager.require(component)
    files = manager.expected_paths(manager.component(component))
    if kind == "sv":
        return next(p for p in files if p.parent.name == "sv")
    if kind == "gpt":
        return next(p for p in files if p.suffix == ".ckpt" and p.parent.name != "sv")
    return next(p for p in files if p.name.startswith("s2G"))


def _resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _register_prepare(steps) -> None:
    p = steps.add_parser(
        "prepare",
        help="prepare a .list for training: phones, BERT, 32 kHz copies, HuBERT, speaker and semantic tokens",
        description="Turn a checked .list into the official experiment folder (2-name2text.txt, 3-bert/, "
        "4-cnhubert/, 5-wav32k/, 7-sv_cn/ for v2Pro, 6-name2semantic.tsv). Work already done is kept. "
        "Lines with errors (missing or unreadable audio, bad lines) stop it with the check report, "
        "unless --skip-bad.",
    )
    p.add_argument("list", type=Path, metavar="LIST", help="the .list file (from `koe voice label`)")
    _add_experiment_options(p)
    p.add_argument("--audio-dir", type=Path, metavar="DIR", help="read clips as DIR/<basename>")
    p.add_argument("--sovits-pretrained", type=Path, metavar="PTH", help="pretrained SoVITS generator")
    p.add_argument("--hubert", type=Path, metavar="DIR", help="chinese-hubert-base folder")
    p.add_argument("--bert", type=Path, metavar="DIR", help="chinese-roberta-wwm-ext-large folder")
    p.add_argument("--sv", type=Path, metavar="CKPT", help="speaker-verification model (v2Pro/v2ProPlus)")
    p.add_argument("--skip-bad", action="store_true", help="leave out lines with errors instead of stopping")
    p.add_argument("--fp16", action="store_true", help="half-precision models on CUDA (features saved fp16)")
    p.set_defaults(handler=run_prepare)


def run_prepare(args: argparse.Namespace, config: KoeConfig) -> int:
    from training.check import check_dataset
    from training.dataset import read_list
    from training.prepare import PRO_VERSIONS, PrepareModels, prepare_dataset

    exp_dir, version = _experiment(args, config)
    entries, _bad = read_list(args.list)
    report = check_dataset(args.list, gpt_batch_size=config.training.gpt_batch_size, audio_dir=args.audio_dir)
    bad_lines = {f.line for f in report.findings if f.severity == "error" and f.line is not None}
    if not entries or (report.count("error") and not args.skip_bad):
        print_report(report)
        print("fix the errors above (or run with --skip-bad to leave those lines out)")
        return 1
    usable = [entry for number, entry in entries if number not in bad_lines]
    if bad_lines:
        log.warning("prepare: %d lines with errors left out", len(bad_lines))
    if not usable:
        print_report(report)
        return 1
    from training.dataset import canonical_language

    has_zh = any(canonical_language(e.language) == "zh" for e in usable)
    models = PrepareModels(
        sovits=args.sovits_pretrained or _pretrained_file(config, version, "sovits"),
        hubert=args.hubert or _component_dir(config, "chinese-hubert-base"),
        bert=args.bert or (_component_dir(config, "chinese-roberta-wwm-ext-large") if has_zh else None),
        sv=(args.sv or _pretrained_file(config, version, "sv")) if version in PRO_VERSIONS else None,
    )
    device = _resolve_device(args.device)
    started = time.perf_counter()
    bars = []

    def progress(step: str, total: int):  # one bar per step; rich shows one live display at a time
        while bars:
            bars.pop().__exit__(None, None, None)
        bars.append(_progress(f"prepare {step}", total))
        return bars[-1].__enter__()

    try:
        results = prepare_dataset(
            usable,
            args.list,
            exp_dir,
            version,
            models,
            audio_dir=args.audio_dir,
            device=device,
            half=args.fp16 and device.startswith("cuda"),
            progress=progress,
        )
    finally:
        for bar in bars:
            bar.__exit__(None, None, None)
    for step, result in results.items():
        for name, why in result.skipped:
            print(f"{step}: skipped {name}: {why}")
    tokens = results["semantic"]
    print(
        f"prepared {len(tokens.done) + len(tokens.reused)} of {len(usable)} clips in {exp_dir} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return 0 if tokens.done or tokens.reused else 1


def _component_dir(config: KoeConfig, name: str) -> Path:
    from agent.model_manager import ModelManager

    return ModelManager(config.models.dir).require(name)


def _register_train_gpt(steps) -> None:
    p = steps.add_parser(
        "train-gpt",
        help="fine-tune the GPT (text -> semantic tokens) on a prepared experiment",
        description="Fine-tune the pretrained GPT of the version with the official loss, optimiser "
        "(ScaledAdam) and schedule. Saves every --save-every epochs and at the end, resumes from the "
        "newest checkpoint after an interruption, logs to TensorBoard (logs_s1_<version>/tensorboard). "
        "Several GPUs: torchrun --nproc-per-node N -m agent.cli voice train-gpt ...",
    )
    _add_experiment_options(p)
    p.add_argument("--pretrained", type=Path, metavar="CKPT", help="pretrained GPT (default: the version's)")
    p.add_argument("--batch-size", type=int, metavar="N", help="default: [training] gpt_batch_size")
    p.add_argument("--epochs", type=int, metavar="N", help="default: [training] gpt_epochs")
    p.add_argument("--save-every", type=int, metavar="N", help="default: [training] gpt_save_every_epochs")
    p.add_argument(
        "--keep-latest", type=int, metavar="N", help="full checkpoints kept ([training] keep_latest)"
    )
    p.add_argument("--no-fp16", action="store_true", help="train in fp32 on CUDA too")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimiser steps (trial runs)")
    p.set_defaults(handler=run_train_gpt)


def run_train_gpt(args: argparse.Namespace, config: KoeConfig) -> int:
    from training.gpt_train import GPTTrainOptions, train_gpt

    exp_dir, version = _experiment(args, config)
    training = config.training
    for flag in ("batch_size", "epochs", "save_every", "keep_latest", "max_steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise KoeError(f"--{flag.replace('_', '-')} must be at least 1 (got {value})")
    options = GPTTrainOptions(
        exp_dir=exp_dir,
        exp_name=exp_dir.name,
        version=version,
        pretrained=args.pretrained or _pretrained_file(config, version, "gpt"),
        batch_size=args.batch_size or training.gpt_batch_size,
        epochs=args.epochs or training.gpt_epochs,
        save_every=args.save_every or training.gpt_save_every_epochs,
        keep_latest=args.keep_latest or training.keep_latest,
        device=args.device,
        fp16=training.fp16 and not args.no_fp16,
        max_steps=args.max_steps,
    )
    with _progress("training GPT", None) as advance:
        result = train_gpt(options, on_batch=lambda done, total, loss: advance())
    if result.rank != 0:
        return 0
    print(
        f"GPT: {result.epochs_done} epochs, {result.global_step} steps, last loss {result.last_loss:.2f}, "
        f"{result.seconds:.1f} s"
    )
    for path in result.weights:
        print(f"weights: {path}")
    return 0


def _register_export(steps) -> None:
    p = steps.add_parser(
        "export",
        help="write the small inference weights from the newest (or a given) training checkpoint",
        description="Export inference weights in the official formats: GPT_weights_<version>/<name>-e<E>.ckpt.",
    )
    _add_experiment_options(p)
    p.add_argument("--stage", choices=("gpt", "sovits", "both"), default="both", help="which model to export")
    p.add_argument("--checkpoint", type=Path, metavar="FILE", help="a full training checkpoint")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="folder for the weights")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace, config: KoeConfig) -> int:
    from training.checkpoints import latest_checkpoint
    from training.export import export_gpt
    from training.gpt_train import CHECKPOINT_PATTERN, GPTTrainOptions

    exp_dir, version = _experiment(args, config)
    if args.checkpoint and args.stage == "both":
        raise KoeError("--checkpoint names one stage's checkpoint: add --stage gpt or --stage sovits")
    if args.stage in ("gpt", "both"):
        options = GPTTrainOptions(exp_dir, exp_dir.name, version, pretrained=Path())
        checkpoint = args.checkpoint or latest_checkpoint(options.ckpt_dir, CHECKPOINT_PATTERN)
        if checkpoint is None:
            raise KoeError(
                f"no GPT training checkpoint in {options.ckpt_dir}: run `koe voice train-gpt` first"
            )
        path = export_gpt(checkpoint, args.output or options.resolved_weights_dir(), exp_dir.name)
        print(f"exported {path}")
    if args.stage in ("sovits", "both"):
        from training.export import export_sovits_checkpoint
        from training.sovits_train import SoVITSTrainSettings, latest_pair

        settings = SoVITSTrainSettings(exp_dir, Path(), Path(), version=version)
        found = None if args.checkpoint else latest_pair(settings.checkpoint_dir)
        checkpoint = args.checkpoint or (found[1] if found else None)
        if checkpoint is None:
            raise KoeError(
                f"no SoVITS training checkpoint in {settings.checkpoint_dir}: run `koe voice train-sovits` first"
            )
        path = export_sovits_checkpoint(checkpoint, args.output or settings.weights_dir, exp_dir.name)
        print(f"exported {path}")
    return 0


# --- train-sovits -------------------------------------------------------------------------------------
#   koe voice train-sovits --name aria                    # fine-tune SoVITS from the version's pretrained G/D

# version -> (component, file) of the pretrained discriminator (upstream: the G file's name, s2G -> s2D)
PRETRAINED_DISCRIMINATORS = {
    "v2": ("gsv-v2-train", "s2D2333k.pth"),
    "v2Pro": ("gsv-v2pro-train", "s2Dv2Pro.pth"),
    "v2ProPlus": ("gsv-v2pro-train", "s2Dv2ProPlus.pth"),
}


def _pretrained_discriminator(config: KoeConfig, version: str) -> Path:
    """The pretrained s2D*.pth of `version` (a KoeError with the download command when missing)."""
    from agent.model_manager import ModelManager

    if version not in PRETRAINED_DISCRIMINATORS:
        raise KoeError(f"no pretrained discriminator is listed for {version}; pass --pretrained-d FILE")
    component, name = PRETRAINED_DISCRIMINATORS[version]
    manager = ModelManager(config.models.dir)
    manager.require(component)
    return next(p for p in manager.expected_paths(manager.component(component)) if p.name == name)


def _register_train_sovits(steps) -> None:
    p = steps.add_parser(
        "train-sovits",
        help="fine-tune SoVITS (semantic tokens -> waveform) on a prepared experiment",
        description="Fine-tune the pretrained SoVITS generator and discriminator of the version with the "
        "official losses, AdamW optimisers and learning-rate schedule. Saves every --save-every epochs and "
        "at the end (logs_s2_<version>/G_<step>.pth, D_<step>.pth and SoVITS_weights_<version>/"
        "<name>_e<E>_s<S>.pth), resumes from the newest checkpoint after an interruption, logs to "
        "TensorBoard (logs_s2_<version>/tensorboard). Several GPUs: "
        "torchrun --nproc-per-node N -m agent.cli voice train-sovits ...",
    )
    _add_experiment_options(p)
    p.add_argument("--pretrained-g", type=Path, metavar="PTH", help="pretrained s2G (default: the version's)")
    p.add_argument("--pretrained-d", type=Path, metavar="PTH", help="pretrained s2D (default: the version's)")
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="per GPU; default: [training] sovits_batch_size"
    )
    p.add_argument("--epochs", type=int, metavar="N", help="default: [training] sovits_epochs")
    p.add_argument("--save-every", type=int, metavar="N", help="default: [training] sovits_save_every_epochs")
    p.add_argument("--keep-latest", type=int, metavar="N", help="G/D pairs kept ([training] keep_latest)")
    p.add_argument("--no-fp16", action="store_true", help="train in fp32 on CUDA too")
    p.add_argument(
        "--text-low-lr-rate",
        type=float,
        default=0.4,
        metavar="R",
        help="learning-rate factor of the text modules",
    )
    p.add_argument("--no-weights", action="store_true", help="do not write small inference weights at saves")
    p.add_argument(
        "--weights-dir", type=Path, metavar="DIR", help="default: <exp-dir>/SoVITS_weights_<version>"
    )
    p.add_argument("--workers", type=int, default=2, metavar="N", help="data-loading processes (default 2)")
    p.add_argument(
        "--repeat-below", type=int, default=100, metavar="N",
        help="repeat datasets of fewer than N clips (official: 100; 0 = never)",
    )  # fmt: skip
    p.add_argument("--log-every", type=int, default=100, metavar="N", help="steps between log lines")
    p.set_defaults(handler=run_train_sovits)


def run_train_sovits(args: argparse.Namespace, config: KoeConfig) -> int:
    from training.sovits_train import SoVITSTrainSettings, train_sovits

    exp_dir, version = _experiment(args, config)
    training = config.training
    if not 0 < args.text_low_lr_rate <= 1:
        raise KoeError(f"--text-low-lr-rate must be in (0, 1], got {args.text_low_lr_rate}")
    for flag in ("workers", "repeat_below"):
        if getattr(args, flag) < 0:
            raise KoeError(f"--{flag.replace('_', '-')} must not be negative (got {getattr(args, flag)})")
    settings = SoVITSTrainSettings(
        exp_dir=exp_dir,
        pretrained_g=args.pretrained_g or _pretrained_file(config, version, "sovits"),
        pretrained_d=args.pretrained_d or _pretrained_discriminator(config, version),
        version=version,
        exp_name=exp_dir.name,
        batch_size=args.batch_size if args.batch_size is not None else training.sovits_batch_size,
        epochs=args.epochs if args.epochs is not None else training.sovits_epochs,
        save_every_epochs=training.sovits_save_every_epochs if args.save_every is None else args.save_every,
        keep_latest=args.keep_latest if args.keep_latest is not None else training.keep_latest,
        fp16=training.fp16 and not args.no_fp16,
        text_low_lr_rate=args.text_low_lr_rate,
        save_weights=not args.no_weights,
        weights_dir=args.weights_dir,
        num_workers=args.workers,
        duplicate_below=args.repeat_below,
        log_interval=args.log_every,
        device=_resolve_device(args.device),
    )
    with _progress("training SoVITS", None) as advance:
        result = train_sovits(settings, on_step=lambda step, scalars: advance())
    if result.rank != 0:
        return 0
    print(f"SoVITS: {result.epochs_done} epochs, {result.global_step} steps")
    for path in result.weights:
        print(f"weights: {path}")
    return 0
