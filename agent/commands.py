"""The general commands: `koe doctor`, `koe config show`, `koe models list|download|verify`."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import platform
import sys
import time

from rich.console import Console
from rich.table import Table

from agent.config import KoeConfig, masked_dict
from agent.errors import KoeError
from agent.model_manager import ModelManager

log = logging.getLogger(__name__)

PACKAGES = (
    "koe",
    "torch",
    "numpy",
    "transformers",
    "faster-whisper",
    "ctranslate2",
    "onnxruntime",
    "webrtcvad-wheels",
    "sounddevice",
    "soundfile",
    "soxr",
    "websockets",
    "openai",
    "pydantic",
    "huggingface_hub",
    "pypinyin",
    "jieba",
    "g2p_en",
    "nltk",
    "pyopenjtalk",
    "g2pk2",
    "ToJyutping",
)


# `koe models download` without names: what `koe chat` with the default (English) character needs.
DEFAULT_DOWNLOAD = ("gsv-v2", "chinese-hubert-base", "chinese-roberta-wwm-ext-large", "nltk-data")


def register(subparsers: argparse._SubParsersAction) -> None:
    doctor = subparsers.add_parser("doctor", help="check the installation, devices, models and LLM endpoint")
    doctor.set_defaults(handler=run_doctor)

    config = subparsers.add_parser("config", help="show the effective configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print the effective configuration (secrets masked)")
    show.add_argument("--json", action="store_true", help="JSON instead of TOML")
    show.set_defaults(handler=run_config_show)

    models = subparsers.add_parser("models", help="list, download and verify model files")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = models_sub.add_parser("list", help="every component: present / missing, size")
    listing.add_argument("--json", action="store_true", help="one JSON object per component")
    listing.set_defaults(handler=run_models_list)
    download = models_sub.add_parser(
        "download", help=f"download components (default: {', '.join(DEFAULT_DOWNLOAD)})"
    )
    download.add_argument("names", nargs="*", metavar="NAME", help="components (see `koe models list`)")
    download.add_argument("--force", action="store_true", help="download again even when present")
    download.set_defaults(handler=run_models_download)
    verify = models_sub.add_parser("verify", help="check the checksums of present files")
    verify.add_argument("names", nargs="*", metavar="NAME", help="components (default: all present)")
    verify.set_defaults(handler=run_models_verify)


# ----------------------------------------------------------------------------------- doctor
def run_doctor(args: argparse.Namespace, config: KoeConfig) -> int:
    console = Console()
    table = Table(title="koe doctor", show_lines=False)
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    table.add_row("python", platform.python_version(), sys.executable)
    table.add_row("config", "file" if config.source else "defaults", str(config.source or "(no config.toml)"))
    for package in PACKAGES:
        try:
            table.add_row(f"  {package}", importlib.metadata.version(package), "")
        except importlib.metadata.PackageNotFoundError:
            table.add_row(f"  {package}", "[yellow]not installed[/]", "")
    table.add_row("torch device", *_torch_device())
    for row in _audio_devices():
        table.add_row(*row)
    manager = ModelManager(config.models.dir)
    for name in sorted(manager.components):
        status = manager.status(name)
        if status.complete:
            table.add_row(f"model {name}", "[green]present[/]", _human(status.size_bytes))
        elif "tts" in status.component.tags or name == f"faster-whisper-{config.asr.model}":
            table.add_row(f"model {name}", "[yellow]missing[/]", f"koe models download {name}")
    for row in _frontend_data():
        table.add_row(*row)
    table.add_row("LLM endpoint", *_llm_status(config))
    console.print(table)
    return 0


def _torch_device() -> tuple[str, str]:
    try:
        import torch
    except ImportError:
        return "[red]torch missing[/]", "pip install torch"
    if torch.cuda.is_available():
        return "cuda", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return "cpu", f"{torch.get_num_threads()} threads"


def _audio_devices() -> list[tuple[str, str, str]]:
    try:
        import sounddevice as sd

        devices = sd.query_devices()
    except Exception as exc:  # PortAudio missing or broken: report, don't die
        return [("audio devices", "[red]unavailable[/]", f"{type(exc).__name__}: {exc}")]
    inputs = [d["name"] for d in devices if d["max_input_channels"] > 0]
    outputs = [d["name"] for d in devices if d["max_output_channels"] > 0]
    return [
        ("audio inputs", str(len(inputs)) if inputs else "[yellow]none[/]", ", ".join(inputs)),
        ("audio outputs", str(len(outputs)) if outputs else "[yellow]none[/]", ", ".join(outputs)),
    ]


def _frontend_data() -> list[tuple[str, str, str]]:
    """The text-frontend data that is not a pip package: NLTK data (English, Korean), Open JTalk (Japanese)."""
    rows = []
    from tts.text.english import nltk_data_found

    try:
        if nltk_data_found():
            rows.append(("NLTK data", "[green]present[/]", "English tagger, cmudict"))
        else:
            rows.append(("NLTK data", "[yellow]missing[/]", "koe models download nltk-data"))
    except ModuleNotFoundError:
        rows.append(("NLTK data", "[yellow]nltk not installed[/]", "pip install 'koe[en]'"))
    from tts.text.japanese import dictionary_dir

    try:
        rows.append(("Open JTalk dictionary", "[green]present[/]", str(dictionary_dir())))
    except KoeError:
        rows.append(("Open JTalk dictionary", "[yellow]missing[/]", "koe models download open-jtalk-dict"))
    return rows


def _llm_status(config: KoeConfig) -> tuple[str, str]:
    base_url = config.llm.resolved_base_url() or "https://api.openai.com/v1"
    try:
        import openai

        client = openai.OpenAI(
            base_url=base_url, api_key=config.llm.resolved_api_key() or "none", timeout=3.0, max_retries=0
        )
        started = time.perf_counter()
        models = [m.id for m in client.models.list()]
        elapsed = (time.perf_counter() - started) * 1000
        served = "model served" if config.llm.model in models else f"model {config.llm.model!r} not listed"
        return "[green]answers[/]", f"{base_url} in {elapsed:.0f} ms; {served}"
    except Exception as exc:  # any failure is a finding, not a crash
        return "[yellow]no answer[/]", f"{base_url}: {type(exc).__name__}: {str(exc)[:120]}"


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ----------------------------------------------------------------------------------- config
def run_config_show(args: argparse.Namespace, config: KoeConfig) -> int:
    data = masked_dict(config)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(f"# effective configuration ({config.source or 'built-in defaults'})")
        print(to_toml(data))
    return 0


def to_toml(data: dict) -> str:
    """Sections of scalars, lists and inline tables: enough for koe's config."""
    out = []
    for section, values in data.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                out.append(f"# {key} = (unset)")
            else:
                out.append(f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


# ----------------------------------------------------------------------------------- models
def run_models_list(args: argparse.Namespace, config: KoeConfig) -> int:
    manager = ModelManager(config.models.dir)
    statuses = [manager.status(name) for name in manager.components]
    if args.json:
        for s in statuses:
            print(
                json.dumps(
                    {
                        "name": s.component.name,
                        "present": s.complete,
                        "size": s.size_bytes,
                        "missing": [str(p) for p in s.missing],
                        "description": s.component.description,
                    }
                )
            )
        return 0
    table = Table(title=f"models in {manager.models_dir}")
    for column in ("name", "status", "size", "description"):
        table.add_column(column)
    for s in statuses:
        state = (
            "[green]present[/]" if s.complete else ("[yellow]partial[/]" if s.present else "[dim]missing[/]")
        )
        table.add_row(
            s.component.name, state, _human(s.size_bytes) if s.present else "", s.component.description
        )
    Console().print(table)
    return 0


def run_models_download(args: argparse.Namespace, config: KoeConfig) -> int:
    manager = ModelManager(config.models.dir)
    names = args.names or list(DEFAULT_DOWNLOAD)
    for name in names:
        manager.component(name)  # unknown names fail before anything downloads
    for name in names:
        status = manager.download(name, force=args.force)
        print(f"{name}: {'ok' if status.complete else 'incomplete'} ({_human(status.size_bytes)})")
    return 0


def run_models_verify(args: argparse.Namespace, config: KoeConfig) -> int:
    manager = ModelManager(config.models.dir)
    names = args.names or [n for n in manager.components if manager.status(n).present]
    if not names:
        print("no model files present; nothing to verify")
        return 0
    failed = False
    for name in names:
        problems = manager.verify(name)
        hard = [p for p in problems if not p.endswith("not verified")]
        failed |= bool(hard)
        print(f"{name}: {'ok' if not problems else '; '.join(problems)}")
    if failed:
        raise KoeError("some model files failed verification (see above); download them again with --force")
    return 0
