"""`koe voice label`: espeak-ng clips through real faster-whisper models into a `.list`."""

from __future__ import annotations

import pytest

from agent.cli import main
from agent.errors import KoeError
from asr_helpers import random_whisper_dir, require_espeak, speak, tiny_en_dir, write_wav
from training.dataset import ListEntry, clean_field, list_code, parse_list, read_list
from training.label import label_clips, skipped_path, whisper_language


def test_language_codes_are_the_official_spellings():
    assert [list_code(c) for c in ("en", "ja", "ko", "zh", "yue")] == ["EN", "JA", "KO", "ZH", "YUE"]
    assert whisper_language("auto") is None
    assert [whisper_language(c) for c in ("EN", "JP", "jp", "Yue", "zh")] == ["en", "ja", "ja", "yue", "zh"]
    with pytest.raises(KoeError, match="trains only zh, ja, en, ko, yue"):
        whisper_language("de")


def test_fields_that_would_break_the_format_are_cleaned_or_refused():
    assert clean_field(" a | b\nc\td\u2028e ") == "a b c d e"
    line = ListEntry("/x/a.wav", "aria", "EN", "Hello there.").to_line()
    assert line == "/x/a.wav|aria|EN|Hello there."
    assert parse_list(line + "\n")[0][0][1].text == "Hello there."
    with pytest.raises(KoeError, match=r"contains \['\|'\]"):
        ListEntry("/x/a|b.wav", "aria", "EN", "text").to_line()


@pytest.fixture
def clips(tmp_path):
    require_espeak()
    folder = tmp_path / "aria"
    folder.mkdir()
    write_wav(folder / "one.wav", speak("I like playing chess with my friends.", "en-us", 150))
    write_wav(folder / "two.wav", speak("Please open the window before you leave the room.", "en", 150))
    return folder


def test_label_command_writes_list_and_resumes(clips, capsys):
    model = str(tiny_en_dir())
    assert (
        main(["voice", "label", str(clips), "--model", model, "--language", "auto", "--beam-size", "1"]) == 0
    )
    list_path = clips.with_name("aria.list")
    entries, bad = read_list(list_path)
    assert not bad and len(entries) == 2
    one, two = (entry for _, entry in entries)
    assert (one.audio_path, one.speaker, one.language) == (str(clips / "one.wav"), "aria", "EN")
    assert "chess" in one.text.lower() and "window" in two.text.lower()
    assert one.text == one.text.strip()

    write_wav(clips / "three.wav", speak("Good morning.", "en-us", 150))
    assert main(["voice", "label", str(clips), "--model", model, "--language", "EN", "--beam-size", "1"]) == 0
    assert "1 clips labelled" in capsys.readouterr().out
    names = [entry.name for _, entry in read_list(list_path)[0]]
    assert names == ["one.wav", "two.wav", "three.wav"]  # nothing transcribed twice


def test_untrainable_clips_are_skipped_with_a_reason(clips, tmp_path):
    from asr.transcriber import Transcriber

    (clips / "two.wav").rename(clips / "bad|name.wav")
    list_path = tmp_path / "out.list"
    transcriber = Transcriber(random_whisper_dir(), device="cpu", language="de", cpu_threads=1)
    summary = label_clips(sorted(clips.iterdir()), list_path, transcriber, speaker="aria")
    reasons = dict(summary.skipped)
    assert "breaks the .list format" in reasons["bad|name.wav"]
    assert "detected language 'de' cannot be trained" in reasons["one.wav"]
    assert not list_path.exists() or read_list(list_path)[0] == []
    assert skipped_path(list_path).read_text(encoding="utf-8").count("\n") == 2
    again = label_clips(sorted(clips.iterdir()), list_path, transcriber, speaker="aria")
    assert again.already_done == 2 and not again.skipped  # skipped clips are not retried


def test_label_command_user_mistakes(tmp_path, capsys):
    assert main(["voice", "label", str(tmp_path / "nope")]) == 2
    assert "clip folder not found" in capsys.readouterr().err
    assert main(["voice", "label", str(tmp_path), "--language", "de"]) == 2
    assert "trains only zh, ja, en, ko, yue" in capsys.readouterr().err
    assert main(["voice", "label", str(tmp_path)]) == 2
    assert "no audio clips" in capsys.readouterr().err
