"""`koe voice slice`: decoding like ffmpeg, the maximum clip length, resuming and bad inputs.

The official cut points themselves are checked against golden data in test_parity_slicer.py.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile

from agent.cli import main
from agent.errors import KoeError
from training.audio import load_audio_32k
from training.slice_audio import MixParams, collect_inputs, slice_inputs
from training.slicer import SlicerParams, loudness_mix, slice_points

RATE = 32_000


def talk(seconds: float, rng: np.random.Generator, level: float = 0.3) -> np.ndarray:
    """Speech-like noise: loud, with a syllable-rate envelope that never falls below -34 dBFS."""
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    return (rng.standard_normal(len(t)) * level * envelope).astype(np.float32)


def hush(seconds: float, rng: np.random.Generator, level: float = 1e-4) -> np.ndarray:
    return (rng.standard_normal(int(seconds * RATE)) * level).astype(np.float32)


def test_decode_matches_ffmpeg_for_resampled_stereo(tmp_path):
    """The official tools decode with `ffmpeg -ac 1 -ar 32000 -f f32le`; our decoder gives the same samples."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt install ffmpeg)")
    rng = np.random.default_rng(1)
    left = np.concatenate([talk(1.0, rng, 0.5), hush(0.5, rng)])
    stereo = np.stack([left, np.roll(left, 37) * 0.7], axis=1)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.clip(stereo, -1, 1), 44_100, subtype="PCM_16")
    ours = load_audio_32k(path)
    command = [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(path),
        "-f",
        "f32le",
        "-ac",
        "1",
        "-ar",
        "32000",
        "-",
    ]
    theirs = np.frombuffer(subprocess.run(command, check=True, capture_output=True).stdout, dtype="<f4")
    assert len(ours) == len(theirs)
    np.testing.assert_array_equal(ours, theirs)


def test_max_clip_length_cuts_long_speech_at_its_quietest_points():
    rng = np.random.default_rng(2)
    dips = []  # 120 ms dips below the threshold, too short for the official slicer to cut at
    parts, position = [hush(0.3, rng)], int(0.3 * RATE)
    for seconds in (6.0, 5.0, 7.0, 4.0, 6.0, 5.0, 6.5):
        parts.append(talk(seconds, rng))
        position += int(seconds * RATE)
        parts.append(hush(0.12, rng, level=0.004))
        dips.append((position, position + int(0.12 * RATE)))
        position += int(0.12 * RATE)
    audio = np.concatenate(parts)

    official = slice_points(audio, SlicerParams(max_clip_s=0))
    assert len(official) == 1 and official[0][1] - official[0][0] > 35 * RATE  # no maximum upstream

    clips = slice_points(audio, SlicerParams(max_clip_s=15.0))
    assert len(clips) >= 3
    assert clips[0][0] == official[0][0] and clips[-1][1] == official[0][1]
    for (_, end), (start, _) in zip(clips, clips[1:]):
        assert end == start  # pieces are contiguous, nothing is lost
        assert any(a <= start <= b for a, b in dips), f"cut at sample {start} is not in a pause"
    assert all(end - start <= 15 * RATE for start, end in clips)


def test_loudness_mix_peak_and_silence():
    chunk = np.array([0.5, -0.25, 0.1], dtype=np.float32)
    mixed = loudness_mix(chunk, 0.9, 0.25)
    assert mixed[0] == int((0.225 + 0.75 * 0.5) * 32767)  # output peak 0.225 + 0.75 * peak
    with pytest.raises(ValueError, match="digital silence"):
        loudness_mix(np.zeros(10, np.float32))


def test_digital_silence_gives_no_clips():
    assert slice_points(np.zeros(5 * RATE, np.float32), SlicerParams()) == []


def _recording(path, rng, layout):
    audio = np.concatenate([talk(s, rng) if kind == "talk" else hush(s, rng) for kind, s in layout])
    soundfile.write(path, audio, RATE, subtype="PCM_16")


def test_slice_resumes_and_redoes_changed_settings(tmp_path):
    rng = np.random.default_rng(3)
    raw = tmp_path / "raw"
    raw.mkdir()
    layout = [
        ("hush", 0.8),
        ("talk", 4.5),
        ("hush", 0.6),
        ("talk", 4.2),
        ("hush", 0.6),
        ("talk", 3.0),
        ("hush", 1),
    ]
    _recording(raw / "b.wav", rng, layout)
    _recording(raw / "a.flac", rng, layout[::-1])
    out = tmp_path / "clips"
    inputs = collect_inputs([raw])
    assert [p.name for p in inputs] == ["a.flac", "b.wav"]  # sorted name order, like the official tool

    first = slice_inputs(inputs, out, SlicerParams(), MixParams())
    assert len(first.written) >= 4 and not first.reused and not first.failed
    assert all(p.name.startswith(("a.flac_", "b.wav_")) for p in first.written)
    stamps = {p: p.stat().st_mtime_ns for p in first.written}

    again = slice_inputs(inputs, out, SlicerParams(), MixParams())
    assert not again.written and sorted(again.reused) == sorted(first.written)
    assert {p: p.stat().st_mtime_ns for p in first.written} == stamps

    changed = slice_inputs(inputs, out, SlicerParams(min_length_ms=8000), MixParams())
    assert len(changed.written) < len(first.written)
    assert sorted(out.glob("*.wav")) == sorted(changed.written)  # clips of the old settings are gone


def test_slice_command_reports_bad_files_and_goes_on(tmp_path, capsys):
    rng = np.random.default_rng(4)
    raw = tmp_path / "raw"
    raw.mkdir()
    _recording(raw / "good.wav", rng, [("hush", 0.5), ("talk", 5.0), ("hush", 0.5)])
    (raw / "notes.wav").write_text("not audio")
    status = main(["voice", "slice", str(raw), "-o", str(tmp_path / "clips")])
    out = capsys.readouterr().out
    assert status == 1
    assert "notes.wav" in out and "cannot decode" in out
    assert [p.name.split("_")[0] for p in (tmp_path / "clips").glob("*.wav")] == ["good.wav"]


def test_slice_command_user_mistakes(tmp_path, capsys):
    assert main(["voice", "slice", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o")]) == 2
    assert "slice input not found" in capsys.readouterr().err
    wav = tmp_path / "x.wav"
    soundfile.write(wav, np.zeros(RATE, np.float32), RATE)
    assert main(["voice", "slice", str(wav), "-o", str(tmp_path / "o"), "--min-interval", "5000"]) == 2
    assert "min_length (4000 ms) >= min_interval (5000 ms)" in capsys.readouterr().err
    with pytest.raises(KoeError, match="share basenames"):
        (tmp_path / "other").mkdir()
        shutil.copy(wav, tmp_path / "other" / "x.wav")
        collect_inputs([wav, tmp_path / "other"])
