"""Characters: who the agent is, how it sounds, and how each emotion looks and sounds.

A character is one TOML file in the characters folder (`[character] characters_dir`); its file name is
its id (`characters/default.toml` is "default"). See `characters/default.toml` for every key. Relative
paths inside a character file are relative to that file, so a characters folder can be moved whole.

The emotion map is what makes the character expressive: the LLM is told the tags (`[happy]`, ...), the
avatar gets each tag's `expression`, and a tag with its own reference clip changes the voice too.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import KoeError

Language = Literal["en", "zh", "ja", "ko", "yue", "auto"]
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "yue": "Cantonese"}
TAG_PATTERN = r"^[a-z][a-z_-]{0,23}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reference(_Strict):
    """A reference clip (3-10 s of the voice) and its transcript: what the TTS imitates."""

    audio: Path
    text: str = ""  # empty: reference-free synthesis (weaker imitation)
    language: Language


class Voice(_Strict):
    gpt_weights: Path  # GPT (T2S) checkpoint, .ckpt
    sovits_weights: Path  # SoVITS checkpoint, .pth
    ref_audio: Path
    ref_text: str = ""
    ref_language: Language | None = None  # None: the character's language


class Emotion(_Strict):
    expression: str  # the avatar's expression (blend shape / animation) name
    ref_audio: Path | None = None  # a clip spoken in this mood; None: the voice's clip
    ref_text: str = ""
    ref_language: Language | None = None


class Character(_Strict):
    name: str = Field(min_length=1)  # display name, told to the LLM
    persona: str = Field(min_length=1)  # the system prompt: who the character is and how it talks
    greeting: str = ""  # said when a new conversation starts
    language: Language = "en"  # language of the replies (and of the TTS text)
    voice: Voice
    emotions: dict[str, Emotion] = Field(default_factory=dict)
    default_emotion: str = "neutral"  # used until the LLM sends a tag

    id: str = Field("", exclude=True)  # the file name without .toml
    source: Path | None = Field(None, exclude=True)

    @field_validator("emotions")
    @classmethod
    def _tags_are_words(cls, emotions: dict[str, Emotion]) -> dict[str, Emotion]:
        bad = [tag for tag in emotions if not re.match(TAG_PATTERN, tag)]
        if bad:
            raise ValueError(f"emotion tags must be lower-case words like 'happy' (got {bad})")
        return emotions

    @model_validator(mode="after")
    def _default_is_known(self) -> Character:
        if self.emotions and self.default_emotion not in self.emotions:
            raise ValueError(
                f"default_emotion {self.default_emotion!r} is not in [emotions] (tags: {', '.join(self.emotions)})"
            )
        return self

    @property
    def tags(self) -> list[str]:
        return list(self.emotions)

    def expression(self, emotion: str | None) -> str | None:
        """The avatar expression for an emotion tag (None: the default emotion)."""
        entry = self.emotions.get(emotion or self.default_emotion)
        return entry.expression if entry else None

    def reference(self, emotion: str | None = None) -> Reference:
        """The reference clip to speak `emotion` with: the emotion's own clip, else the voice's."""
        entry = self.emotions.get(emotion or self.default_emotion)
        if entry is not None and entry.ref_audio is not None:
            return Reference(
                audio=entry.ref_audio, text=entry.ref_text, language=entry.ref_language or self.language
            )
        voice = self.voice
        return Reference(
            audio=voice.ref_audio, text=voice.ref_text, language=voice.ref_language or self.language
        )

    def emotion_clips(self) -> tuple[Path, ...]:
        """The emotions' own reference clips (the voice's clip is not among them)."""
        return tuple(e.ref_audio for e in self.emotions.values() if e.ref_audio is not None)

    def files(self) -> dict[str, Path]:
        """Every file the character needs, by the key that names it."""
        found = {
            "voice.gpt_weights": self.voice.gpt_weights,
            "voice.sovits_weights": self.voice.sovits_weights,
            "voice.ref_audio": self.voice.ref_audio,
        }
        for tag, emotion in self.emotions.items():
            if emotion.ref_audio is not None:
                found[f"emotions.{tag}.ref_audio"] = emotion.ref_audio
        return found

    def check_files(self) -> None:
        """Raise `KoeError` listing every missing file (before a conversation starts, not mid-sentence)."""
        missing = [f"{key} = {path}" for key, path in self.files().items() if not path.is_file()]
        if missing:
            raise KoeError(
                f"{self.source}: missing files: {'; '.join(missing)} "
                "(fetch the base voice with `koe models download gsv-v2`; record a clip with "
                "`koe character new NAME --record 6`)"
            )


def character_path(characters_dir: Path, character_id: str) -> Path:
    return Path(characters_dir) / f"{character_id}.toml"


def list_characters(characters_dir: Path) -> list[str]:
    """Ids of the characters in the folder, sorted."""
    folder = Path(characters_dir)
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def find_character(characters_dir: Path, character_id: str) -> Character:
    """Load `<characters_dir>/<id>.toml`; a missing one names the characters that exist."""
    path = character_path(characters_dir, character_id)
    if not path.is_file():
        known = ", ".join(list_characters(characters_dir)) or "none"
        raise KoeError(
            f"no character {character_id!r}: {path} does not exist (characters in {characters_dir}: {known}); "
            f"create one with `koe character new {character_id}`"
        )
    return load_character(path)


def load_character(path: Path) -> Character:
    """Read and validate a character file; mistakes raise `KoeError` naming the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise KoeError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KoeError(f"{path}: cannot read: {exc}") from None
    try:
        character = Character.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(file)"
            if error["type"] == "extra_forbidden":
                problems.append(f"{path}: unknown key {key}")
            elif error["type"] == "missing":
                problems.append(f"{path}: {key} is required")
            else:
                problems.append(f"{path}: {key}: {error['msg']} (got {error.get('input')!r})")
        raise KoeError("\n".join(problems)) from None
    return _resolve_paths(character, path)


def _resolve_paths(character: Character, path: Path) -> Character:
    base = path.resolve().parent

    def absolute(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    voice = character.voice
    voice.gpt_weights = absolute(voice.gpt_weights)
    voice.sovits_weights = absolute(voice.sovits_weights)
    voice.ref_audio = absolute(voice.ref_audio)
    for emotion in character.emotions.values():
        emotion.ref_audio = absolute(emotion.ref_audio)
    character.id = path.stem
    character.source = path.resolve()
    return character


def write_character(
    path: Path,
    *,
    name: str,
    language: str,
    ref_audio: str,
    ref_text: str,
    persona: str | None = None,
    greeting: str | None = None,
    gpt_weights: str,
    sovits_weights: str,
) -> Character:
    """Write a new character file with the standard emotion map; return it loaded (validated)."""
    quote = lambda s: json.dumps(s, ensure_ascii=False)  # noqa: E731 - a JSON string is a TOML basic string
    persona = persona or (
        f"You are {name}, a friendly companion who chats with the user by voice. "
        "Keep replies short and warm, like spoken conversation."
    )
    greeting = greeting if greeting is not None else f"Hi, I'm {name}. What shall we talk about?"
    text = f"""# koe character: see characters/default.toml for what every key means.
name = {quote(name)}
language = {quote(language)}
greeting = {quote(greeting)}
persona = {quote(persona)}
default_emotion = "neutral"

[voice]
gpt_weights = {quote(gpt_weights)}
sovits_weights = {quote(sovits_weights)}
ref_audio = {quote(ref_audio)}
ref_text = {quote(ref_text)}

# Tag -> avatar expression; add ref_audio/ref_text to an emotion to change the voice with it.
[emotions.neutral]
expression = "neutral"

[emotions.happy]
expression = "smile"

[emotions.sad]
expression = "sad"

[emotions.angry]
expression = "angry"

[emotions.surprised]
expression = "surprised"
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return load_character(path)
