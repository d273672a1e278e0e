"""What `koe chat` needs before it starts, and the offers to fix what is missing (the first run).

Each check looks at one thing and returns `None` (fine) or a `Missing`: what is missing, the one-line
fix, and optionally an interactive `offer` that fixes it:

    check_character        the character file exists          offer: create it from a clip / 5 s recording
    check_reference_clip   its reference clip exists          offer: give it a clip / 5 s recording
    check_models           the model files of the TTS and ASR offer: `ModelManager.download`
    check_llm              an LLM endpoint that answers       offer: probe local servers, write [llm]

`prepare()` runs them in that order before the chat is built. On a terminal (stdin is a TTY) it shows
what is missing and asks; otherwise, or when the user says no, it raises the `KoeError` that the CLI
prints as one `koe: error: ...` line with the fix. Local servers probed: Ollama (11434), llama.cpp
(8080) and vLLM (8000) on 127.0.0.1; `$KOE_LLM_PROBE_PORTS` ("11434,8080") replaces the list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from rich.console import Console
from rich.markup import escape
from rich.prompt import Confirm, Prompt

from agent.character import Character, Language, character_path, find_character, list_characters
from agent.config import DEFAULT_CONFIG_NAME, KoeConfig
from agent.errors import KoeError
from agent.model_manager import ModelManager

RECORD_SECONDS = 5.0
PROBE_PORTS_ENV = "KOE_LLM_PROBE_PORTS"
LOCAL_SERVERS = {11434: "Ollama", 8080: "llama.cpp", 8000: "vLLM"}
PROBE_TIMEOUT_S = 0.5  # local servers answer in milliseconds; a silent port must not stall the start
CHINESE_LANGUAGES = {"zh", "auto"}  # the Chinese text frontend needs the BERT model


@dataclass
class Missing:
    """Something `koe chat` cannot start without, the fix to tell the user, and the offer to do it."""

    what: str
    fix: str
    offer: Callable[[Console], bool] | None = None  # asks on the console; True once it is fixed

    def error(self) -> KoeError:
        return KoeError(f"{self.what}; {self.fix}")


def prepare(config: KoeConfig, args: argparse.Namespace, console: Console) -> None:
    """Run every check `koe chat` needs with these options; fix (ask) or raise the first problem."""
    interactive = sys.stdin.isatty()
    character_id = args.character or config.character.name
    speaks, listens = not args.mute, not args.text
    resolve(check_character(config, character_id), console, interactive)
    character = find_character(config.character.characters_dir, character_id)
    if speaks and config.tts.backend == "local":
        resolve(check_reference_clip(config, character), console, interactive)
        character = find_character(config.character.characters_dir, character_id)
    resolve(check_models(config, character if speaks else None, listens), console, interactive)
    if speaks:
        character.check_files()  # what no offer fixes (an emotion's clip, a trained voice) is named here
    resolve(check_llm(config), console, interactive)


def resolve(missing: Missing | None, console: Console, interactive: bool) -> None:
    """Offer the fix on a terminal; raise the one-line error when there is none or the user declines."""
    if missing is None:
        return
    if not interactive or missing.offer is None:
        raise missing.error()
    console.print(f"[yellow]{escape(missing.what)}[/]")
    try:
        fixed = missing.offer(console)
    except EOFError:  # stdin closed while asking
        fixed = False
    if not fixed:
        raise missing.error()


# ------------------------------------------------------------------------------------ character
def check_character(config: KoeConfig, character_id: str) -> Missing | None:
    folder = config.character.characters_dir
    path = character_path(folder, character_id)
    if path.is_file():
        return None
    known = ", ".join(list_characters(folder)) or "none"
    return Missing(
        f"no character {character_id!r}: {path} does not exist (characters in {folder}: {known})",
        f"create it with `koe character new {character_id} --clip FILE` (or --record 6), "
        "or pick another with --character NAME",
        offer=lambda console: offer_new_character(config, character_id, console),
    )


def offer_new_character(config: KoeConfig, character_id: str, console: Console) -> bool:
    """Create the character with `koe character new`'s code, from a clip or a microphone recording."""
    from agent.character_cli import CHARACTER_ID, run_character_new

    if not CHARACTER_ID.match(character_id) or not Confirm.ask(
        f"Create the character {character_id!r} now, from a 3-10 s clip of its voice?", console=console
    ):
        return False
    language = Prompt.ask(
        "Language it speaks", choices=list(get_args(Language)), default="en", console=console
    )
    clip_dir = config.character.characters_dir / "voices" / character_id
    clip, text = ask_clip(config, clip_dir, language, console)
    new = argparse.Namespace(
        id=character_id, clip=str(clip), record=None, text=text, language=language,
        display_name=None, persona=None, force=False,
    )  # fmt: skip
    run_character_new(new, config)
    return True


def check_reference_clip(config: KoeConfig, character: Character) -> Missing | None:
    clip = character.voice.ref_audio
    if clip.is_file():
        return None
    return Missing(
        f"the voice of {character.name} has no reference clip: {clip} does not exist",
        f"put a 3-10 s clip of the voice there and its words in [voice] ref_text of {character.source}, "
        f"or recreate it with `koe character new {character.id} --record 6 --force`",
        offer=lambda console: offer_reference_clip(config, character, console),
    )


def offer_reference_clip(config: KoeConfig, character: Character, console: Console) -> bool:
    """Give an existing character a clip (copied next to it) and write it into its file."""
    if not Confirm.ask(f"Give {character.name} a reference clip now?", console=console):
        return False
    clip_dir = config.character.characters_dir / "voices" / character.id
    clip, text = ask_clip(config, clip_dir, character.voice.ref_language or character.language, console)
    relative = os.path.relpath(clip, character.source.parent)
    update_toml(character.source, "voice", {"ref_audio": relative, "ref_text": text})
    console.print(escape(f"wrote the clip into {character.source}"))
    return True


def ask_clip(config: KoeConfig, clip_dir: Path, language: str, console: Console) -> tuple[Path, str]:
    """A reference clip in `clip_dir` (copied from a path, or recorded for 5 s) and what is said in it."""
    from agent.character_cli import copy_clip, record_clip, transcribe_clip

    answer = Prompt.ask(
        f"Path of the clip, or Enter to record {RECORD_SECONDS:g} s from the microphone",
        default="", show_default=False, console=console,
    )  # fmt: skip
    if answer.strip():
        clip = Path(answer.strip()).expanduser()
        if not clip.is_file():
            raise KoeError(f"no such clip: {clip}")
        clip = copy_clip(clip, clip_dir)  # checks the length before anything else is asked
    else:
        clip = record_clip(config, RECORD_SECONDS, clip_dir / "reference.wav")
    text = Prompt.ask(
        "What is said in the clip? (Enter: transcribe it with the ASR model)",
        default="", show_default=False, console=console,
    ).strip()  # fmt: skip
    while not text:
        try:
            text = transcribe_clip(config, clip, language)
            console.print(f"transcript: {escape(text)}")
        except KoeError as exc:
            console.print(f"[red]{escape(str(exc))}[/]")
            text = Prompt.ask("Type what is said in the clip", console=console).strip()
    return clip, text


# --------------------------------------------------------------------------------------- models
def needed_models(config: KoeConfig, character: Character | None, listens: bool) -> list[str]:
    """Manifest components `koe chat` loads: the voice's (when it speaks) and the ASR model's."""
    manager = ModelManager(config.models.dir)
    names = []
    if character is not None and config.tts.backend == "local":
        names.append("chinese-hubert-base")
        languages = {character.language} | {character.reference(tag).language for tag in character.tags}
        if languages & CHINESE_LANGUAGES:
            names.append("chinese-roberta-wwm-ext-large")
        if not _nltk_data_found():  # every character language reads English words with it
            names.append("nltk-data")
        weights = {character.voice.gpt_weights, character.voice.sovits_weights}
        for name, component in manager.components.items():  # the download that provides the weights
            if weights & set(manager.expected_paths(component)):
                names.append(name)
    if listens:
        from asr.transcriber import MODEL_FOLDER_PREFIX

        if not Path(config.asr.model).expanduser().is_dir():  # a size name, not a model folder
            names.append(f"{MODEL_FOLDER_PREFIX}{config.asr.model}")
    return [name for name in dict.fromkeys(names) if name in manager.components]


def _nltk_data_found() -> bool:
    """Whether NLTK finds its data (NLTK_DATA, the models folder or its default folders)."""
    from tts.text.english import nltk_data_found

    try:
        return nltk_data_found()
    except ImportError:  # without nltk the English frontend names `pip install 'koe[en]'` itself
        return False


def check_models(config: KoeConfig, character: Character | None, listens: bool) -> Missing | None:
    manager = ModelManager(config.models.dir)
    missing = [n for n in needed_models(config, character, listens) if not manager.status(n).complete]
    if not missing:
        return None
    described = ", ".join(f"{n} ({manager.component(n).description})" for n in missing)
    command = f"koe models download {' '.join(missing)}"
    return Missing(
        f"model files missing in {manager.models_dir}: {described}",
        f"fetch them with `{command}`",
        offer=lambda console: offer_download(
            manager, missing, command, config.models.allow_download, console
        ),
    )


def offer_download(
    manager: ModelManager, names: list[str], command: str, allowed: bool, console: Console
) -> bool:
    """Download with the model manager ([models] allow_download = true: without asking)."""
    if not allowed and not Confirm.ask(f"Download them now ({command})?", console=console):
        return False
    for name in names:
        status = manager.download(name)
        if not status.complete:
            raise KoeError(f"{name}: download incomplete ({status.missing[0]} missing); run `{command}`")
        console.print(f"{name}: ok")
    return True


# ------------------------------------------------------------------------------------------ LLM
def check_llm(config: KoeConfig) -> Missing | None:
    """An endpoint is configured and answers, or the OpenAI API with a key."""
    llm = config.llm
    base_url = llm.resolved_base_url() or None  # an empty $OPENAI_BASE_URL is unset
    if base_url is None:
        if llm.resolved_api_key():
            return None  # the OpenAI API with a key: not probed (a round trip to the internet)
        what = f"no LLM to talk to: ${llm.api_key_env} is not set and [llm] base_url is empty"
    else:
        if probe(base_url, llm.resolved_api_key(), timeout=2.0) is not None:
            return None
        what = f"the LLM at {base_url} does not answer"
    servers = find_local_servers()
    found = "; ".join(f"{name} answers at {url}" for name, url, _ in servers)
    fix = (
        f"set ${llm.api_key_env} for the OpenAI API, or [llm] base_url (or $OPENAI_BASE_URL) to an "
        f"OpenAI-compatible server such as Ollama, llama.cpp or vLLM{f' ({found})' if found else ''}"
    )
    return Missing(what, fix, offer=lambda console: offer_llm(config, servers, console))


def probe(base_url: str, api_key: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> list[str] | None:
    """The model ids an OpenAI-compatible server offers (`GET /models`); None when nothing answers."""
    request = urllib.request.Request(base_url.rstrip("/") + "/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    local = urllib.parse.urlsplit(base_url).hostname in ("127.0.0.1", "localhost", "::1")
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))
    try:
        with opener.open(request, timeout=timeout) as response:
            data = json.load(response)
    except urllib.error.HTTPError:
        return []  # something answers there (it may want a key, or have no /models)
    except (OSError, ValueError):
        return None
    entries = data.get("data", []) if isinstance(data, dict) else []
    return [m["id"] for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str)]


def probe_ports() -> list[int]:
    raw = os.environ.get(PROBE_PORTS_ENV)
    if raw is None:
        return list(LOCAL_SERVERS)
    try:
        return [int(port) for port in raw.replace(",", " ").split()]
    except ValueError:
        raise KoeError(f"${PROBE_PORTS_ENV}={raw!r}: expected port numbers like '11434,8080'") from None


def find_local_servers() -> list[tuple[str, str, list[str]]]:
    """(name, base_url, models) of each local OpenAI-compatible server that answers."""
    found = []
    for port in probe_ports():
        url = f"http://127.0.0.1:{port}/v1"
        models = probe(url)
        if models is not None:
            found.append((LOCAL_SERVERS.get(port, "an OpenAI-compatible server"), url, models))
    return found


def offer_llm(config: KoeConfig, servers: list[tuple[str, str, list[str]]], console: Console) -> bool:
    """Pick a local server (or a typed address) and a model, use them, and offer to save them."""
    for n, (name, url, models) in enumerate(servers, 1):
        console.print(escape(f"  {n}. {name} at {url} ({', '.join(models[:5]) or 'no models listed'})"))
    if servers:
        choices = [str(n) for n in range(1, len(servers) + 1)]
        pick = Prompt.ask("Use which server?", choices=choices, default="1", console=console)
        _, url, models = servers[int(pick) - 1]
    else:
        console.print(
            f"No local LLM server answers (ports {', '.join(map(str, probe_ports()))}). "
            f"Start Ollama, llama.cpp or vLLM, set ${config.llm.api_key_env}, or type a server address."
        )
        url = Prompt.ask(
            "Base URL (e.g. http://127.0.0.1:11434/v1), Enter to stop", default="", console=console
        )
        if not url.strip():
            return False
        url = url.strip()
        models = probe(url, config.llm.resolved_api_key(), timeout=2.0)
        if models is None:
            raise KoeError(f"nothing answers at {url}/models; is the server running?")
    model = config.llm.model
    if models and model not in models:
        model = Prompt.ask("Model", choices=models, default=models[0], console=console)
    config.llm.base_url, config.llm.model = url, model
    target = config.source or Path.cwd() / DEFAULT_CONFIG_NAME
    if Confirm.ask(escape(f"Save base_url = {url!r} and model = {model!r} in {target}?"), console=console):
        update_toml(target, "llm", {"base_url": url, "model": model})
        console.print(escape(f"wrote [llm] in {target}"))
    return True


# ----------------------------------------------------------------------------------------- TOML
def update_toml(path: Path, section: str, values: dict[str, str]) -> None:
    """Set `[section] key = value` in a TOML file, keeping its comments and layout (new file if none)."""
    import tomlkit

    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8")) if path.is_file() else tomlkit.document()
    except tomlkit.exceptions.ParseError as exc:
        raise KoeError(f"{path}: not valid TOML, not changed: {exc}") from None
    if section not in document:
        document.add(section, tomlkit.table())
    for key, value in values.items():
        document[section][key] = value
    path.write_text(tomlkit.dumps(document), encoding="utf-8")
