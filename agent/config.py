"""koe's configuration: every setting as a typed model, loaded from one TOML file.

`load_config(path)` reads `config.toml` (or the built-in defaults when no file exists), validates it
against the models below and turns every user mistake (unknown key, wrong type, missing file) into a
`KoeError` that names the file, the key and what was expected. Components never read the file
themselves: they receive the section they need.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from agent.errors import KoeError

CONFIG_ENV = "KOE_CONFIG"
DEFAULT_CONFIG_NAME = "config.toml"


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AudioConfig(Section):
    input_device: str | int | None = None  # name (substring) or index; None = system default
    output_device: str | int | None = None
    block_ms: int = Field(20, ge=10, le=30)  # microphone block length
    headphones: bool = False  # True turns echo cancellation off (the mic cannot hear the speakers)
    echo_cancellation: bool = True
    jitter_buffer_ms: int = Field(60, ge=0, le=1000)
    barge_in: bool = True  # speaking while the character talks interrupts it
    barge_in_min_ms: int = Field(300, ge=0)  # speech needed to interrupt (coughs and "mm" do not)


class VadConfig(Section):
    engine: Literal["webrtc", "silero", "both"] = "both"  # both = webrtc gate, Silero confirms
    webrtc_aggressiveness: int = Field(2, ge=0, le=3)
    silero_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    start_ms: int = Field(120, ge=0)  # speech needed before an utterance starts
    end_silence_ms: int = Field(500, ge=100)  # silence that ends the turn
    preroll_ms: int = Field(300, ge=0)  # audio kept before the detected start
    min_utterance_ms: int = Field(250, ge=0)
    max_utterance_s: float = Field(20.0, gt=1.0)  # longer monologues are cut at a pause


class AsrConfig(Section):
    model: str = "small"  # faster-whisper size name (see `koe models list`) or a local directory
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "auto"  # auto = int8 on CPU, float16 on CUDA
    language: str | None = None  # None = detect
    beam_size: int = Field(1, ge=1, le=10)
    initial_prompt: str | None = None
    hotwords: str | None = None
    cpu_threads: int = Field(0, ge=0)  # 0 = library default
    partial_interval_ms: int = Field(0, ge=0)  # >0: partial transcripts while the user speaks


class LlmConfig(Section):
    base_url: str | None = None  # None = $OPENAI_BASE_URL, else the OpenAI API
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = None  # prefer the environment variable named below
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(400, ge=1)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(30.0, gt=0)
    first_token_timeout_s: float = Field(15.0, gt=0)
    retries: int = Field(3, ge=0)
    history_turns: int = Field(20, ge=0)
    history_tokens: int = Field(3000, ge=100)

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get(self.api_key_env)

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL")


class TtsConfig(Section):
    backend: Literal["local", "api_v2"] = "local"
    api_v2_url: str = "http://127.0.0.1:9880"  # used when backend = "api_v2"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "int8", "int4", "fp16", "bf16"] = "fp32"
    text_split_method: Literal["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"] = "cut5"
    top_k: int = Field(15, ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0)
    repetition_penalty: float = Field(1.35, ge=1.0)
    speed: float = Field(1.0, gt=0.2, le=3.0)
    pause_s: float = Field(0.3, ge=0.0)  # silence between sentences
    seed: int = -1  # -1 = random
    batch_size: int = Field(1, ge=1)
    parallel_infer: bool = True
    stream_chunk_tokens: int = Field(16, ge=4)  # token-chunk streaming inside a sentence
    stream_first_chunk_tokens: int = Field(8, ge=4)  # a shorter first chunk: first audio sooner
    stream_overlap_tokens: int = Field(2, ge=1)  # decoded again across a chunk join (official overlap_length)
    g2pw: bool = False  # Chinese polyphone model (needs `koe models download g2pw`)
    keep_hubert: bool = False  # keep HuBERT (~380 MB) loaded after the voice's clips are prepared
    cache_dir: Path | None = None  # reference features and traced graphs; None = <models.dir>/cache


class CharacterConfig(Section):
    name: str = "default"  # <characters_dir>/<name>.toml
    characters_dir: Path = Path("characters")
    history_dir: Path = Path("history")  # conversations, one JSONL file each


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    token: SecretStr | None = None  # required when host is not a loopback address; or $KOE_TOKEN
    allowed_origins: list[str] = Field(default_factory=lambda: ["http://127.0.0.1", "http://localhost"])
    max_message_bytes: int = Field(1 << 20, ge=1024)
    tts_serve_host: str = "127.0.0.1"
    tts_serve_port: int = Field(9880, ge=1, le=65535)

    def resolved_token(self) -> str | None:
        if self.token is not None:
            return self.token.get_secret_value()
        return os.environ.get("KOE_TOKEN")


class TrainingConfig(Section):
    exp_dir: Path = Path("runs")
    version: Literal["v1", "v2", "v2Pro", "v2ProPlus", "v4"] = "v2"
    sovits_batch_size: int = Field(4, ge=1)
    sovits_epochs: int = Field(8, ge=1)
    gpt_batch_size: int = Field(4, ge=1)
    gpt_epochs: int = Field(15, ge=1)
    sovits_save_every_epochs: int = Field(4, ge=1)
    gpt_save_every_epochs: int = Field(5, ge=1)  # the WebUI's: SoVITS every 4 epochs, GPT every 5
    keep_latest: int = Field(3, ge=1)
    fp16: bool = True  # mixed precision on CUDA


class ModelsConfig(Section):
    dir: Path = Path("pretrained")  # where model files live
    allow_download: bool = False  # True: fetch missing files at startup instead of failing


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class KoeConfig(Section):
    audio: AudioConfig = Field(default_factory=AudioConfig)
    vad: VadConfig = Field(default_factory=VadConfig)
    asr: AsrConfig = Field(default_factory=AsrConfig)
    llm: LlmConfig = Field(default_factory=LlmConfig)
    tts: TtsConfig = Field(default_factory=TtsConfig)
    character: CharacterConfig = Field(default_factory=CharacterConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    # Where the file came from (None = built-in defaults); relative paths are resolved against it.
    source: Path | None = Field(default=None, exclude=True)


def find_config_path(explicit: str | os.PathLike | None = None) -> Path | None:
    """The config file to use: --config, then $KOE_CONFIG, then ./config.toml; None if none exists."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    return local if local.is_file() else None


def load_config(path: str | os.PathLike | None = None) -> KoeConfig:
    """Load and validate the configuration; user mistakes raise `KoeError` naming file and key."""
    config_path = find_config_path(path)
    if config_path is None:
        return resolve_paths(KoeConfig())
    if not config_path.is_file():
        raise KoeError(f"config file not found: {config_path} (pass --config PATH or create config.toml)")
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise KoeError(f"{config_path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KoeError(f"{config_path}: cannot read: {exc}") from None
    try:
        config = KoeConfig.model_validate(data)
    except ValidationError as exc:
        raise KoeError(describe_validation_error(config_path, exc)) from None
    config.source = config_path.resolve()
    return resolve_paths(config)


def describe_validation_error(path: Path, exc: ValidationError) -> str:
    """One line per problem: `file: [section] key: what is wrong (what is expected)`."""
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else f"[{loc[0]}]"
        if error["type"] == "extra_forbidden":
            section = loc[0] if len(loc) > 1 else None
            known = _known_keys(section)
            kind = "key" if section else "section"
            lines.append(f"{path}: unknown {kind} {where} (known {kind}s: {', '.join(known)})")
        else:
            lines.append(f"{path}: {where}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


def _known_keys(section: str | None) -> list[str]:
    if section is None:
        return sorted(name for name in KoeConfig.model_fields if name != "source")
    field = KoeConfig.model_fields.get(section)
    model = field.annotation if field is not None else None
    return sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def resolve_paths(config: KoeConfig) -> KoeConfig:
    """Make relative paths relative to the config file's folder, so koe works from any directory."""
    base = config.source.parent if config.source else Path.cwd()

    def absolute(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    config.models.dir = absolute(config.models.dir)
    config.character.characters_dir = absolute(config.character.characters_dir)
    config.character.history_dir = absolute(config.character.history_dir)
    config.training.exp_dir = absolute(config.training.exp_dir)
    config.tts.cache_dir = absolute(config.tts.cache_dir) or config.models.dir / "cache"
    return config


def masked_dict(config: KoeConfig) -> dict[str, Any]:
    """The effective configuration as plain data with secrets masked (for `koe config show`)."""
    data = config.model_dump(mode="json")
    data["llm"]["api_key"] = "***" if config.llm.resolved_api_key() else None
    data["server"]["token"] = "***" if config.server.resolved_token() else None
    return data


def is_loopback(host: str) -> bool:
    """Whether a bind address is this machine only (networked parts need a token otherwise)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
