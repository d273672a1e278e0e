"""The `koe` command line: one sub-command per front door, each with its own --help.

Each package adds its own commands through a `register(subparsers)` function in its `cli.py`; a
command's handler is `handler(args, config) -> int`. User mistakes (`KoeError`) print one line and
exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

# torch's OpenMP threads would spin for ~200 ms after every op and take the cores from ONNX Runtime's
# threads, which run the T2S, generator and BERT graphs in between (10% slower decoding measured on two
# cores). Read once when OpenMP loads, so it is set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from agent.errors import KoeError  # noqa: E402

log = logging.getLogger("koe")

# Packages whose `cli.register(subparsers)` adds commands, in the order they appear in --help.
COMMAND_MODULES = (
    "agent.commands",
    "agent.chat",
    "agent.character_cli",
    "agent.serve_cli",
    "asr.cli",
    "tts.say_cli",
    "tts.cli",
    "training.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koe",
        description="koe: talk to a character in its own GPT-SoVITS voice.",
    )
    parser.add_argument(
        "--config", metavar="PATH", help="config file (default: $KOE_CONFIG or ./config.toml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = _import_optional(module_name)
        if module is not None:
            module.register(subparsers)
    # --config and -v are accepted after the sub-command too (`koe doctor --config x.toml`).
    for sub in subparsers.choices.values():
        _add_common_options(sub)
    return parser


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logs")
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for sub in action.choices.values():
            _add_common_options(sub)


def _import_optional(module_name: str):
    import importlib

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def setup_logging(verbose: bool, level: str = "info") -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else getattr(logging, level.upper()),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, rich_tracebacks=True, console=_stderr_console())],
        force=True,
    )
    for noisy in (
        "httpx",
        "httpcore",
        "httpx2",
        "httpcore2",
        "urllib3",
        "filelock",
        "numba",
        "jieba",
        "matplotlib",
        "faster_whisper",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def use_downloaded_frontend_data(models_dir) -> None:
    """Point NLTK and Open JTalk at the data `koe models download` put in the models folder."""
    import os

    nltk_dir = models_dir / "nltk_data"
    if nltk_dir.is_dir() and "NLTK_DATA" not in os.environ:
        os.environ["NLTK_DATA"] = str(nltk_dir)
    jtalk_dir = models_dir / "open_jtalk_dic_utf_8-1.11"
    if jtalk_dir.is_dir() and "OPEN_JTALK_DICT_DIR" not in os.environ:
        os.environ["OPEN_JTALK_DICT_DIR"] = str(jtalk_dir)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        from agent.config import load_config

        config = load_config(args.config)
        setup_logging(args.verbose, config.logging.level)
        use_downloaded_frontend_data(config.models.dir)
        started = time.perf_counter()
        status = handler(args, config)
        log.debug("%s finished in %.2f s", args.command, time.perf_counter() - started)
        return int(status or 0)
    except KoeError as exc:
        print(f"koe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("koe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `koe config show | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
