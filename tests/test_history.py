"""Conversation history on disk (JSONL, flushed per turn, crash-tolerant) and `koe history list|export`."""

from __future__ import annotations

import json
import logging

import pytest

from agent import cli
from agent.errors import KoeError
from agent.history import ConversationLog, HistoryStore, Message, export


def a_turn(n: int, **reply) -> tuple[Message, Message]:
    return Message("user", f"question {n}"), Message("assistant", f"answer {n}.", **reply)


def test_every_turn_is_on_disk_as_soon_as_it_is_added(tmp_path):
    log = HistoryStore(tmp_path, "mika").new()
    log.add(*a_turn(1))
    log.add(*a_turn(2, interrupted=True, emotions=["happy"]))
    records = [json.loads(line) for line in log.path.read_text().splitlines()]  # no close, no flush needed
    assert [r["type"] for r in records] == ["start", "message", "message", "message", "message"]
    assert records[0]["character"] == "mika"
    assert records[-1] | {"time": None} == {
        "type": "message",
        "role": "assistant",
        "text": "answer 2.",
        "time": None,
        "interrupted": True,
        "emotions": ["happy"],
        "error": None,
    }
    again = ConversationLog(log.path)
    assert again.messages == log.messages and again.started == log.started and again.character == "mika"


def test_a_line_torn_by_a_crash_is_skipped_and_the_file_stays_appendable(tmp_path, caplog):
    log = HistoryStore(tmp_path, "mika").new()
    log.add(*a_turn(1))
    with open(log.path, "a") as f:
        f.write('{"type": "message", "role": "user", "te')  # the crash hit mid-write
    with caplog.at_level(logging.WARNING):
        resumed = HistoryStore(tmp_path, "mika").resume()
    assert resumed.id == log.id and [m.text for m in resumed.messages] == ["question 1", "answer 1."]
    assert f"{log.path.name}:4: skipping a damaged record" in caplog.text
    resumed.add(*a_turn(2))
    assert [m.text for m in ConversationLog(log.path).messages][-2:] == ["question 2", "answer 2."]


def test_resume_continues_the_last_conversation_and_new_starts_another(tmp_path):
    store = HistoryStore(tmp_path, "mika")
    assert store.resume().messages == []  # nothing yet: a fresh conversation
    first = store.open("last")
    first.add(*a_turn(1))
    assert store.resume().id == first.id
    second = store.resume(new=True)
    assert second.id != first.id and store.ids() == [first.id, second.id]  # same second: still ordered
    assert store.resume().id == second.id
    assert HistoryStore(tmp_path, "other").ids() == []


def test_summary_is_saved_and_restored(tmp_path):
    log = HistoryStore(tmp_path, "mika").new()
    log.add(*a_turn(1))
    log.set_summary("The user asked one question.", 2)
    again = ConversationLog(log.path)
    assert (again.summary, again.summary_covers) == ("The user asked one question.", 2)


def test_unknown_conversation_names_the_existing_ones(tmp_path):
    store = HistoryStore(tmp_path, "mika")
    with pytest.raises(KoeError, match=r"no conversation 'last' for character 'mika'.*none yet"):
        store.open("last")
    log = store.new()
    with pytest.raises(KoeError, match=rf"no conversation 'nope'.*conversations: {log.id}.*koe history list"):
        store.open("nope")


def test_export_formats(tmp_path):
    log = HistoryStore(tmp_path, "mika").new()
    log.add(*a_turn(1))
    log.add(*a_turn(2, interrupted=True))
    assert export(log, "md").splitlines() == [
        f"# mika: {log.id}",
        "",
        "**You**: question 1",
        "",
        "**mika**: answer 1.",
        "",
        "**You**: question 2",
        "",
        "**mika** (interrupted): answer 2.",
    ]
    data = json.loads(export(log, "json"))
    assert data["id"] == log.id and [m["text"] for m in data["messages"]][-1] == "answer 2."
    assert export(log, "jsonl") == log.path.read_text()
    assert export(log, "txt").splitlines()[-1].endswith("mika (interrupted): answer 2.")
    with pytest.raises(KoeError, match="unknown export format 'pdf'"):
        export(log, "pdf")


@pytest.fixture
def koe(monkeypatch, tmp_path):
    if "agent.character_cli" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("agent.character_cli",))
    config = tmp_path / "config.toml"
    config.write_text('[character]\nname = "mika"\ncharacters_dir = "chars"\n')
    return lambda *args: cli.main(["--config", str(config), *args])


def test_history_list_and_export_commands(koe, tmp_path, capsys):
    assert koe("history", "list") == 0
    assert "no conversations with 'mika' yet" in capsys.readouterr().out
    log = HistoryStore(tmp_path / "history", "mika").new()  # default: history/ beside the characters folder
    log.add(*a_turn(1))
    assert koe("history", "list") == 0
    out = capsys.readouterr().out
    assert log.id in out and "answer 1." in out
    assert koe("history", "export") == 0
    assert "**You**: question 1" in capsys.readouterr().out
    target = tmp_path / "out.json"
    assert koe("history", "export", log.id, "--format", "json", "-o", str(target)) == 0
    assert json.loads(target.read_text())["messages"][0]["text"] == "question 1"
    assert koe("history", "export", "nope") == 2
    assert "no conversation 'nope'" in capsys.readouterr().err
