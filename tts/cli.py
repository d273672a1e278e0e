"""The TTS commands: `koe tts-serve` (a GPT-SoVITS api_v2 compatible HTTP server)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from agent.config import KoeConfig, is_loopback
from agent.errors import KoeError

log = logging.getLogger(__name__)

# The pretrained component (pretrained/manifest.toml) that holds each version's default weights.
VERSION_COMPONENTS = {
    "v1": "gsv-v1",
    "v2": "gsv-v2",
    "v2Pro": "gsv-v2pro",
    "v2ProPlus": "gsv-v2proplus",
    "v4": "gsv-v4",
}
HUBERT_COMPONENT = "chinese-hubert-base"
BERT_COMPONENT = "chinese-roberta-wwm-ext-large"


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "tts-serve",
        help="serve the GPT-SoVITS api_v2 HTTP API (for SillyTavern, Open-LLM-VTuber, ...)",
        description=(
            "Serve koe's TTS engine over the GPT-SoVITS api_v2 protocol (/tts, /set_gpt_weights, "
            "/set_sovits_weights, /set_refer_audio, /control), so api_v2 clients work unchanged. "
            "Models: --gpt/--sovits/--bert/--hubert, else the custom: section of --tts-config (a "
            "GPT-SoVITS tts_infer.yaml), else the pretrained files of that version under [models] dir."
        ),
    )
    serve.add_argument("--host", help="address to bind (default: [server] tts_serve_host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: [server] tts_serve_port, 9880)")
    serve.add_argument(
        "--tts-config",
        metavar="YAML",
        help="a GPT-SoVITS tts_infer.yaml; its custom: section sets device, version and model paths",
    )
    serve.add_argument("--gpt", metavar="CKPT", help="GPT (T2S) weights .ckpt")
    serve.add_argument("--sovits", metavar="PTH", help="SoVITS weights .pth")
    serve.add_argument("--bert", metavar="DIR", help="Chinese BERT folder")
    serve.add_argument("--hubert", metavar="DIR", help="chinese-hubert-base folder")
    serve.set_defaults(handler=run_tts_serve)


@dataclass
class ServeModels:
    gpt: Path
    sovits: Path
    bert: Path
    hubert: Path
    device: str


def read_tts_infer_yaml(path: Path) -> dict:
    """The `custom:` section of a GPT-SoVITS tts_infer.yaml, relative paths made absolute.

    Relative paths are resolved against the YAML's folder (the official server resolves them against
    its working directory, which is the GPT-SoVITS checkout the YAML lives in).
    """
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KoeError(f"--tts-config: file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KoeError(f"--tts-config {path}: cannot read it as YAML: {exc}") from None
    custom = data.get("custom") if isinstance(data, dict) else None
    if not isinstance(custom, dict):
        raise KoeError(f"--tts-config {path}: no `custom:` section (the one the official server uses)")
    keys = ("t2s_weights_path", "vits_weights_path", "bert_base_path", "cnhuhbert_base_path")
    for key in keys:
        if custom.get(key):
            value = Path(str(custom[key]))
            custom[key] = value if value.is_absolute() else (path.parent / value).resolve()
    return custom


def resolve_models(args: argparse.Namespace, config: KoeConfig) -> ServeModels:
    """Model paths and device: command-line flags, then the YAML, then the version's pretrained files."""
    custom = read_tts_infer_yaml(Path(args.tts_config)) if args.tts_config else {}
    version = str(custom.get("version") or "v2")
    chosen = {
        "gpt": args.gpt or custom.get("t2s_weights_path"),
        "sovits": args.sovits or custom.get("vits_weights_path"),
        "bert": args.bert or custom.get("bert_base_path"),
        "hubert": args.hubert or custom.get("cnhuhbert_base_path"),
    }
    if not all(chosen.values()):
        from agent.model_manager import ModelManager

        manager = ModelManager(config.models.dir)
        if not chosen["gpt"] or not chosen["sovits"]:
            if version not in VERSION_COMPONENTS:
                raise KoeError(
                    f"no pretrained weights known for version {version!r} (known: {', '.join(VERSION_COMPONENTS)}); "
                    "give t2s_weights_path and vits_weights_path in --tts-config, or --gpt and --sovits"
                )
            component = manager.component(VERSION_COMPONENTS[version])
            manager.require(component.name)
            files = manager.expected_paths(component)
            # GPT = the .ckpt outside sv/ (speaker model); SoVITS generators are named s2G*.pth.
            chosen["gpt"] = chosen["gpt"] or next(
                p for p in files if p.suffix == ".ckpt" and p.parent.name != "sv"
            )
            chosen["sovits"] = chosen["sovits"] or next(p for p in files if p.name.startswith("s2G"))
        chosen["hubert"] = chosen["hubert"] or manager.require(HUBERT_COMPONENT)
        chosen["bert"] = chosen["bert"] or manager.require(BERT_COMPONENT)
    for name, value in chosen.items():
        if not Path(value).exists():
            raise KoeError(f"tts-serve: {name} model not found: {value} (check --{name} or --tts-config)")
    device = str(custom.get("device") or config.tts.device)
    return ServeModels(**{k: Path(v) for k, v in chosen.items()}, device=_usable_device(device))


def _usable_device(device: str) -> str:
    """`auto` / `cuda` fall back to the CPU when CUDA is unavailable, as in the official server."""
    if device == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return "cuda" if device == "auto" else device


def load_pipeline(models: ServeModels, config: KoeConfig):
    try:
        from tts.pipeline import TTSPipeline
    except ModuleNotFoundError as exc:
        if exc.name == "tts.pipeline":
            raise KoeError("the TTS engine (tts.pipeline) is not part of this build yet") from None
        raise
    sv_path = config.models.dir / "sv" / "pretrained_eres2netv2w24s4ep4.ckpt"  # v2Pro/v2ProPlus speaker model
    return TTSPipeline.from_paths(
        models.gpt,
        models.sovits,
        models.bert,
        models.hubert,
        device=models.device,
        cache_dir=config.tts.cache_dir,
        sv_path=sv_path if sv_path.is_file() else None,
    )


def run_tts_serve(args: argparse.Namespace, config: KoeConfig) -> int:
    import uvicorn

    from tts.server import create_app

    host = args.host or config.server.tts_serve_host
    port = args.port or config.server.tts_serve_port
    if not 1 <= port <= 65535:
        raise KoeError(f"--port {port}: must be between 1 and 65535")
    models = resolve_models(args, config)
    log.info("loading %s and %s on %s", models.gpt.name, models.sovits.name, models.device)
    engine = load_pipeline(models, config)
    if not is_loopback(host):
        log.warning(
            "binding %s: anyone who can reach this port can make the server read files by path "
            "(ref_audio_path, weights_path); keep it on 127.0.0.1 unless you trust the network",
            host,
        )
    log.info("GPT-SoVITS api_v2 server (version %s) on http://%s:%d", engine.version, host, port)
    uvicorn.Server(uvicorn.Config(create_app(engine), host=host, port=port, log_level="info")).run()
    return 0
