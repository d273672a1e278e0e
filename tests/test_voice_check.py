"""`koe voice check`: every way a dataset goes wrong shows up in the report, never as a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from agent.cli import main
from training.check import check_dataset, gpt_steps_per_epoch, semantic_tokens

RATE = 32_000
SENTENCE = "こんにちは、きょうはいいてんきですね。"  # 36 phones: 3 to 25 per second for clips of 1.5 to 12 s


def _talk(seconds: float, rng, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (rng.standard_normal(len(t)) * level * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2)).astype(
        np.float32
    )


def _hush(seconds: float, rng) -> np.ndarray:
    return (rng.standard_normal(int(seconds * RATE)) * 1e-4).astype(np.float32)


def _wav(path, audio, subtype="PCM_16"):
    soundfile.write(path, audio, RATE, subtype=subtype)
    return path


@pytest.fixture
def dataset(tmp_path):
    """A .list with one clip per problem, plus two good ones."""
    rng = np.random.default_rng(0)
    clips = tmp_path / "clips"
    clips.mkdir()
    good = np.concatenate([_hush(0.3, rng), _talk(4.4, rng), _hush(0.3, rng)])
    _wav(clips / "good1.wav", good)
    _wav(clips / "good2.wav", good[: 4 * RATE])
    _wav(clips / "good3.wav", good)
    _wav(clips / "short.wav", _talk(0.5, rng))
    _wav(clips / "long.wav", _talk(40.0, rng))
    _wav(clips / "silent.wav", np.zeros(2 * RATE, np.float32))
    _wav(clips / "clipped.wav", np.clip(_talk(4.0, rng, level=0.8), -0.5, 0.5))
    _wav(clips / "quiet.wav", np.concatenate([_talk(0.4, rng), _hush(3.0, rng)]))
    loud = _talk(4.0, rng)
    _wav(clips / "loud.wav", loud / np.abs(loud).max() * 1.5, subtype="FLOAT")
    _wav(clips / "louder.wav", np.full(4 * RATE, 3.0, np.float32) * np.sign(_talk(4.0, rng)), subtype="FLOAT")
    (clips / "broken.wav").write_text("this is not audio")
    (tmp_path / "other").mkdir()
    _wav(tmp_path / "other" / "good1.wav", good)
    lines = [
        f"{clips}/good1.wav|aria|JA|{SENTENCE}",
        f"{clips}/good2.wav|aria|JA|{SENTENCE}",
        f"{clips}/short.wav|aria|JA|{SENTENCE}",
        f"{clips}/long.wav|aria|JA|{SENTENCE}",
        f"{clips}/silent.wav|aria|JA|{SENTENCE}",
        f"{clips}/clipped.wav|aria|JA|{SENTENCE}",
        f"{clips}/quiet.wav|aria|JA|{SENTENCE}",
        f"{clips}/loud.wav|aria|JA|{SENTENCE}",
        f"{clips}/louder.wav|aria|JA|{SENTENCE}",
        f"{clips}/broken.wav|aria|JA|{SENTENCE}",
        f"{clips}/missing.wav|aria|JA|{SENTENCE}",
        f"{tmp_path}/other/good1.wav|aria|JA|{SENTENCE}",
        f"{clips}/good3.wav|aria|AUTO|{SENTENCE}",
        f"{clips}/good1.wav|aria|Zh|{SENTENCE}",
        f"{clips}/good1.wav|aria|JA|a | in the text",
    ]
    list_path = tmp_path / "aria.list"
    list_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list_path


def _categories(report) -> dict[int | None, set[str]]:
    found: dict[int | None, set[str]] = {}
    for finding in report.findings:
        found.setdefault(finding.line, set()).add(finding.category)
    return found


def test_every_problem_is_reported_per_line(dataset):
    report = check_dataset(dataset)
    found = _categories(report)
    assert found[1] == {"duplicate-name"}  # good1.wav is used on lines 1, 12 and 14
    assert "duplicate-name" in found[12] and "duplicate-name" in found[14]
    assert "too-short" in found[3]
    assert "too-long" in found[4]
    assert "digital-silence" in found[5]
    assert "clipping" in found[6]
    assert "silence" in found[7]
    assert "int16-wrap" in found[8]
    assert "peak-filtered" in found[9]
    assert "unreadable-audio" in found[10]
    assert "missing-audio" in found[11]
    assert "unknown-language" in found[13] and "unknown-language" in found[14]
    assert "bad-line" in found[15]
    messages = {f.line: f.message for f in report.findings if f.category == "unknown-language"}
    assert "AUTO" in messages[13] and "'ZH' is the accepted spelling" in messages[14]
    too_short = next(f for f in report.findings if f.line == 3 and f.category == "too-short")
    assert too_short.severity == "dropped" and "SoVITS drops clips <= 0.6 s" in too_short.message
    assert not report.ok
    # Only the clips that reach both trainers count towards the totals.
    usable = {c.name for c in report.clips if c.usable}
    assert usable == {"good2.wav", "clipped.wav", "quiet.wav", "loud.wav"}
    totals = report.seconds_by_language()
    assert totals == {"ja": pytest.approx(3 * 4.0 + 3.4)}


def test_check_command_prints_report_and_writes_json(dataset, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["voice", "check", str(dataset), "--json", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "digital silence" in printed and "15 clips" not in printed  # the bad line is not a clip
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["ok"] is False and data["clips"] == 14 and data["phones_checked"] is True
    assert data["counts"]["error"] >= 8


def test_audio_dir_reads_clips_by_basename(dataset, tmp_path):
    """Like the WebUI's "training audio folder": only the basename of each path is used."""
    first = dataset.read_text(encoding="utf-8").splitlines()[0]
    list_path = tmp_path / "moved.list"
    list_path.write_text(first.replace(str(tmp_path / "clips"), "/somewhere/else") + "\n", encoding="utf-8")
    report = check_dataset(list_path, audio_dir=tmp_path / "clips")
    assert [c.usable for c in report.clips] == [True]
    assert report.clips[0].path == str(tmp_path / "clips" / "good1.wav")
    assert report.ok
    assert main(["voice", "check", str(list_path), "--audio-dir", str(tmp_path / "clips")]) == 0
    assert main(["voice", "check", str(list_path)]) == 1  # without it the written path does not exist


def test_bad_datasets_give_a_report_not_a_traceback(tmp_path, capsys):
    empty = tmp_path / "empty.list"
    empty.write_text("")
    assert main(["voice", "check", str(empty)]) == 1
    assert "nothing to train on" in capsys.readouterr().out
    assert main(["voice", "check", str(tmp_path / "nope.list")]) == 2
    assert ".list file not found" in capsys.readouterr().err
    latin = tmp_path / "latin.list"
    latin.write_bytes("x.wav|a|EN|caf\xe9".encode("latin-1"))
    assert main(["voice", "check", str(latin)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_semantic_token_count():
    # 16 kHz copy: 10 s = 160000 samples -> 499 HuBERT frames -> 249 tokens at 25 Hz.
    assert semantic_tokens(320_000) == 249
    assert semantic_tokens(700) == 0


def test_gpt_steps_per_epoch():
    # 50 clips are repeated to 100; batch 25 gives 4 batches: the trainer steps at batch index 4 only.
    assert gpt_steps_per_epoch(50, 25) == 0
    assert gpt_steps_per_epoch(50, 4) == 6  # 25 batches: steps at 4, 8, ..., 24
    assert gpt_steps_per_epoch(400, 40) == 2  # 10 batches


def test_check_warns_when_gpt_would_never_step(dataset):
    report = check_dataset(dataset, gpt_batch_size=40)
    assert "gpt-no-steps" in {f.category for f in report.findings}
    assert "gpt-no-steps" not in {f.category for f in check_dataset(dataset, gpt_batch_size=4).findings}


def test_phone_count_and_rate_with_the_real_frontend(tmp_path):
    pytest.importorskip("pyopenjtalk", reason="needs the Japanese frontend (koe[ja])")
    from tts.text.cleaner import clean_text

    rng = np.random.default_rng(5)
    clip = _talk(4.0, rng)
    texts = {"fine.wav": SENTENCE, "terse.wav": "あ", "verbose.wav": SENTENCE * 16}
    lines = []
    for name, text in texts.items():
        lines.append(f"{_wav(tmp_path / name, clip)}|aria|JA|{text}")
    list_path = tmp_path / "phones.list"
    list_path.write_text("\n".join(lines), encoding="utf-8")

    def phones(text: str, language: str) -> list[str]:
        return clean_text(text, language, "v2").phones

    report = check_dataset(list_path, phones_fn=phones)
    found = _categories(report)
    assert [c.phones for c in report.clips] == [len(phones(t, "ja")) for t in texts.values()]
    assert report.phones_checked and 1 not in found  # about 9 phones per second
    assert found[2] == {"phone-rate"}  # 1 phone in 4 s
    assert found[3] == {"phone-rate", "too-many-phones"}  # over 540 phones
