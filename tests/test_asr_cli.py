"""`koe transcribe` and `koe listen --input`: real words through the front doors, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from asr_helpers import (
    SPOKEN,
    make_corpus,
    random_whisper_dir,
    require_espeak,
    speak,
    tiny_en_dir,
    word_error_rate,
    write_wav,
)
from test_asr_transcriber import MAX_WORD_ERROR_RATE

KOE = Path(sys.executable).parent / "koe"
TOLERANCE_S = 0.100


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sentence_files(tmp_path_factory) -> list[Path]:
    require_espeak()
    folder = tmp_path_factory.mktemp("sentences")
    return [write_wav(folder / f"s{i}.wav", speak(*item)) for i, item in enumerate(SPOKEN)]


def test_transcribe_json_gives_words_and_the_documented_fields(sentence_files, tmp_path, capsys):
    missing = tmp_path / "missing.wav"
    files = [sentence_files[0], missing, *sentence_files[1:]]
    status = main(["transcribe", "--model", str(tiny_en_dir()), "--json", *map(str, files)])
    captured = capsys.readouterr()
    assert status != 0  # one file failed ...
    errors = [line for line in captured.err.splitlines() if line.startswith("koe: error:")]
    assert errors == [f"koe: error: audio file not found: {missing}"]
    results = json_lines(captured.out)  # ... the good ones are still transcribed
    assert [r["file"] for r in results] == [str(f) for f in sentence_files]
    for result in results:
        assert set(result) == {"file", "language", "duration", "text", "segments", "elapsed"}
        assert result["language"] == "en" and result["duration"] > 1 and result["elapsed"] > 0
        assert all(set(s) == {"start", "end", "text"} for s in result["segments"])
    wer = word_error_rate([text for text, _, _ in SPOKEN], [r["text"] for r in results])
    assert wer < MAX_WORD_ERROR_RATE, [r["text"] for r in results]


def test_transcribe_plain_output_has_timestamps(sentence_files, capsys):
    assert (
        main(["transcribe", "--model", str(tiny_en_dir()), "--beam-size", "2", str(sentence_files[1])]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{sentence_files[1]} (")
    assert lines[1].startswith("[   0.00 - ") and "window" in lines[1].lower()


def test_transcribe_on_a_multilingual_model(tmp_path, capsys):
    noise = tmp_path / "noise.wav"
    write_wav(noise, speak("Guten Tag.", "de", 160))
    model = str(random_whisper_dir())
    assert main(["transcribe", "--model", model, "--json", str(noise)]) == 0
    detected = json_lines(capsys.readouterr().out)[0]
    assert len(detected["language"]) in (2, 3) and detected["duration"] > 0.5
    assert main(["transcribe", "--model", model, "--language", "de", "--json", str(noise)]) == 0
    assert json_lines(capsys.readouterr().out)[0]["language"] == "de"


def test_listen_fast_on_a_file_gives_words_boundaries_and_latency(tmp_path, capsys):
    require_espeak()
    corpus = make_corpus()
    path = write_wav(tmp_path / "corpus.wav", corpus.audio)
    assert main(["listen", "--input", str(path), "--fast", "--model", str(tiny_en_dir()), "--json"]) == 0
    events = json_lines(capsys.readouterr().out)
    started = [e for e in events if e["event"] == "speech_started"]
    heard = [e for e in events if e["event"] == "utterance"]
    assert len(started) == len(heard) == len(corpus.truth)
    for event, (start, end), s in zip(heard, corpus.truth, started):
        assert {"event", "start", "end", "text", "latency_ms"} <= set(event)
        assert abs(event["start"] - start) <= TOLERANCE_S and abs(event["end"] - end) <= TOLERANCE_S
        assert s["t"] == event["start"]
        assert event["latency_ms"] >= 500  # the end-of-turn silence, then the transcription
    wer = word_error_rate(corpus.texts, [e["text"] for e in heard])
    assert wer < MAX_WORD_ERROR_RATE, [e["text"] for e in heard]


def test_listen_fast_needs_an_input(capsys):
    assert main(["listen", "--fast"]) == 2
    assert "--fast needs --input FILE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "huge-v9"], "unknown ASR model 'huge-v9'"),
        (["--model", "small"], "koe models download faster-whisper-small"),
        (["--language", "xx"], "unknown language code 'xx'"),
    ],
)
def test_bad_options_give_one_line_and_no_traceback(args, message, tmp_path):
    (tmp_path / "config.toml").write_text(f'[models]\ndir = "{tmp_path / "models"}"\n')
    wav = write_wav(tmp_path / "x.wav", speak("Hello.", "en-us", 160))
    result = subprocess.run(
        [str(KOE), "--config", str(tmp_path / "config.toml"), "transcribe", *args, str(wav)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("koe: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_unreadable_input_for_listen(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    assert main(["listen", "--input", str(bad), "--fast"]) == 2
    assert f"cannot read audio file {bad}" in capsys.readouterr().err
