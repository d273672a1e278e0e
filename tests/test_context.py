"""The messages sent to the LLM: system prompt, the history window within its budgets, the input."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from agent.character import find_character
from agent.context import build_messages, estimate_tokens, history_window
from agent.history import Message

CHARACTER = find_character(Path(__file__).resolve().parent.parent / "characters", "default")
NOW = datetime(2026, 12, 1, 9, 30)


def turns(n: int) -> list[Message]:
    out = []
    for i in range(n):
        out += [Message("user", f"q{i}"), Message("assistant", f"a{i}")]
    return out


def test_system_prompt_has_persona_language_tags_date_and_summary():
    messages = build_messages(
        CHARACTER, [], "hello", now=NOW, max_turns=5, max_tokens=1000, summary="They like tea."
    )
    system = messages[0]["content"]
    assert messages[0]["role"] == "system" and messages[-1] == {"role": "user", "content": "hello"}
    assert CHARACTER.persona.strip() in system and "Always reply in English." in system
    assert "[happy]" in system and "Tuesday, 2026-12-01 09:30" in system
    assert "Summary of the earlier conversation: They like tea." in system
    assert "no markdown" in system


def test_history_is_trimmed_to_the_turn_budget():
    window = history_window(turns(5), max_turns=2, max_tokens=10_000)
    assert [m.text for m in window] == ["q3", "a3", "q4", "a4"]
    assert history_window(turns(5), max_turns=0, max_tokens=10_000) == []


def test_history_is_trimmed_to_the_token_budget_newest_first():
    history = [Message("user", "x" * 400), Message("assistant", "y" * 400)] + turns(2)
    window = history_window(history, max_turns=10, max_tokens=4 * estimate_tokens("q0"))
    assert [m.text for m in window] == ["q0", "a0", "q1", "a1"]
    # the input's own size counts against the budget too
    messages = build_messages(CHARACTER, turns(2), "z" * 40, now=NOW, max_turns=10, max_tokens=30)
    assert [m["content"] for m in messages[1:]] == ["q1", "a1", "z" * 40]


def test_cjk_text_costs_about_one_token_per_character():
    assert estimate_tokens("你好世界") - estimate_tokens("") == 4
    assert estimate_tokens("hello world!") - estimate_tokens("") == 3


def test_failed_turns_are_left_out_and_interruptions_are_marked():
    history = [
        Message("user", "first"),
        Message("assistant", "", error="the LLM failed"),
        Message("user", "second"),
        Message("assistant", "Sure, let me", interrupted=True),
    ]
    messages = build_messages(CHARACTER, history, "third", now=NOW, max_turns=10, max_tokens=1000)
    assert messages[1:] == [
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "Sure, let me [interrupted]"},
        {"role": "user", "content": "third"},
    ]


def test_a_greeting_may_open_the_history_but_a_trimmed_window_starts_with_the_user():
    history = [Message("assistant", "Hi, I'm Koe.")] + turns(2)
    assert history_window(history, max_turns=5, max_tokens=1000)[0].text == "Hi, I'm Koe."
    assert history_window(history, max_turns=1, max_tokens=1000)[0].text == "q1"
