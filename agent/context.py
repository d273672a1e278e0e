"""What the LLM is sent each turn: the character's system prompt, recent history within a budget, the input.

The system prompt is the character's persona plus what every spoken character needs: reply language,
short spoken sentences without markdown, the emotion tags it may use, the current date, and a summary
of the turns that no longer fit. History is trimmed to `[llm] history_turns` turns and about
`[llm] history_tokens` tokens, newest kept. Token counts are estimated (no tokenizer of the remote
model is available): one per CJK character, one per four other characters, four per message.
"""

from __future__ import annotations

from datetime import datetime

import regex

from agent.character import LANGUAGE_NAMES, Character
from agent.history import Message

CJK = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]")
INTERRUPTED = " [interrupted]"  # appended to a reply the user cut off (unknown tags are never spoken)
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    cjk = len(CJK.findall(text))
    return cjk + (len(text) - cjk + 3) // 4 + MESSAGE_OVERHEAD_TOKENS


def system_prompt(character: Character, now: datetime, summary: str = "") -> str:
    parts = [character.persona.strip(), f"Your name is {character.name}."]
    if character.language in LANGUAGE_NAMES:
        parts.append(f"Always reply in {LANGUAGE_NAMES[character.language]}.")
    parts.append(
        "Everything you write is spoken aloud by your voice: answer in short, natural spoken sentences; "
        "no markdown, lists, code, URLs or emoji."
    )
    if character.tags:
        tags = ", ".join(f"[{tag}]" for tag in character.tags)
        parts.append(
            f"Show your feelings with these emotion tags, placed at the start of a sentence when your mood "
            f"changes: {tags}. Use no other tags; they are not read aloud."
        )
    parts.append(f"Current date and time: {now:%A, %Y-%m-%d %H:%M}.")
    if summary:
        parts.append(f"Summary of the earlier conversation: {summary.strip()}")
    return "\n\n".join(parts)


def as_chat_message(message: Message) -> dict:
    text = message.text + (INTERRUPTED if message.interrupted else "")
    return {"role": message.role, "content": text}


def history_window(messages: list[Message], max_turns: int, max_tokens: int) -> list[Message]:
    """The newest messages that fit `max_turns` user turns and `max_tokens` estimated tokens.

    Failed turns (a user message whose reply is empty) are left out, so roles keep alternating.
    """
    usable: list[Message] = []
    for i, message in enumerate(messages):
        reply = messages[i + 1] if i + 1 < len(messages) else None
        if message.role == "user" and (reply is None or reply.role != "assistant" or not reply.text):
            continue
        if message.role == "assistant" and not message.text:
            continue
        usable.append(message)
    window: list[Message] = []
    tokens = turns = 0
    for message in reversed(usable):
        cost = estimate_tokens(message.text)
        if tokens + cost > max_tokens or (message.role == "user" and turns >= max_turns):
            break
        window.append(message)
        tokens += cost
        turns += message.role == "user"
    window.reverse()
    while window and window[0].role == "assistant" and len(window) < len(usable):
        window.pop(0)  # a trimmed window starts with the user, like the conversation did
    return window


def build_messages(
    character: Character,
    history: list[Message],
    user_text: str,
    *,
    now: datetime,
    max_turns: int,
    max_tokens: int,
    summary: str = "",
) -> list[dict]:
    """The chat-completions `messages` for one turn."""
    budget = max(0, max_tokens - estimate_tokens(user_text))
    window = history_window(history, max_turns, budget)
    return [
        {"role": "system", "content": system_prompt(character, now, summary)},
        *(as_chat_message(m) for m in window),
        {"role": "user", "content": user_text},
    ]
