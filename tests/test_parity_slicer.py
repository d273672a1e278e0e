"""Slicer parity against golden data from the official `tools/slice_audio.py`.

Every `*.json` case in the fixture folder names its input signal, the slicer settings and what the
official tool wrote: cut points, file names, lengths, peaks and SHA-256 of the int16 samples. We
reproduce them through our decoder, our slicer and the real `koe voice slice` command. The folder comes
from `KOE_SLICER_FIXTURES` (default `../shared/fixtures/slicer`); with the variable set, a missing
folder or a broken case fails.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

from agent.cli import main
from training.audio import load_audio_32k
from training.slicer import SlicerParams, clip_name, loudness_mix, slice_points

pytestmark = pytest.mark.parity

ROOT = Path(__file__).resolve().parent.parent
ENV = "KOE_SLICER_FIXTURES"
FOLDER = Path(os.environ.get(ENV, ROOT.parent / "shared" / "fixtures" / "slicer"))


def _cases() -> list[Path]:
    return sorted(FOLDER.glob("*.json")) if FOLDER.is_dir() else []


CASES = _cases()


def test_fixture_folder_present():
    if CASES:
        return
    if ENV in os.environ:
        pytest.fail(f"{ENV}={FOLDER} has no slicer cases (missing folder or no *.json files)")
    pytest.skip(f"slicer fixtures not found at {FOLDER}; they come from the shared/ folder beside the repo")


def _load(case_path: Path) -> tuple[dict, np.ndarray]:
    case = json.loads(case_path.read_text(encoding="utf-8"))
    audio = load_audio_32k(case_path.parent / case["input_file"])
    return case, audio


def _params(params: dict) -> SlicerParams:
    assert params.get("slicer_sample_rate", 32000) == 32000, (
        "the official slice_audio always slices at 32 kHz"
    )
    return SlicerParams(
        threshold_db=params["threshold_db"],
        min_length_ms=params["min_length_ms"],
        min_interval_ms=params["min_interval_ms"],
        hop_size_ms=params["hop_size_ms"],
        max_sil_kept_ms=params["max_sil_kept_ms"],
        max_clip_s=0,  # the official tool has no maximum clip length
    )


def _sha256_int16(samples: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(samples, dtype="<i2").tobytes()).hexdigest()


@pytest.fixture(params=CASES, ids=[p.stem for p in CASES])
def case(request):
    return _load(request.param) + (request.param,)


def test_decoded_input_matches_official_decode(case):
    spec, audio, _ = case
    assert len(audio) == spec["resampled_32k_num_samples"]
    if "resampled_32k_sha256_f32le" in spec:
        digest = hashlib.sha256(audio.astype("<f4").tobytes()).hexdigest()
        assert digest == spec["resampled_32k_sha256_f32le"], "32 kHz decode differs from ffmpeg's"


def test_cut_points(case):
    spec, audio, _ = case
    expected = [(c["start_sample"], c["end_sample"]) for c in spec["chunks"]]
    assert slice_points(audio, _params(spec["params_ui"])) == expected


def test_cut_points_with_slicer_class_defaults(case):
    spec, audio, _ = case
    extra = spec.get("extra_run_slicer_class_defaults")
    if extra is None:
        pytest.skip("case has no run with the slicer class defaults")
    expected = [tuple(pair) for pair in extra["pairs"]]
    assert slice_points(audio, _params(extra["params"])) == expected


def test_clip_contents(case):
    spec, audio, case_path = case
    params = spec["params_ui"]
    for chunk in spec["chunks"]:
        start, end = chunk["start_sample"], chunk["end_sample"]
        assert clip_name(spec["input_file"], start, end) == chunk["output_name"]
        data = audio[start:end]
        if "input_peak_32k" in chunk:
            assert float(np.abs(data).max()) == chunk["input_peak_32k"], chunk["output_name"]
        mixed = loudness_mix(data, params["normalize_max"], params["alpha_mix"])
        assert len(mixed) == chunk["output_num_samples"], chunk["output_name"]
        assert int(np.abs(mixed.astype(np.int32)).max()) == chunk["output_peak_int16"], chunk["output_name"]
        assert _sha256_int16(mixed) == chunk["output_sha256_int16le"], chunk["output_name"]


def test_slice_command_writes_the_official_files(case, tmp_path):
    spec, _, case_path = case
    p = spec["params_ui"]
    out = tmp_path / "clips"
    status = main(
        [
            "voice",
            "slice",
            str(case_path.parent / spec["input_file"]),
            "-o",
            str(out),
            "--threshold",
            str(p["threshold_db"]),
            "--min-length",
            str(p["min_length_ms"]),
            "--min-interval",
            str(p["min_interval_ms"]),
            "--hop-size",
            str(p["hop_size_ms"]),
            "--max-sil-kept",
            str(p["max_sil_kept_ms"]),
            "--normalize-max",
            str(p["normalize_max"]),
            "--alpha",
            str(p["alpha_mix"]),
            "--max-clip-seconds",
            "0",
        ]
    )
    assert status == 0
    assert sorted(f.name for f in out.glob("*.wav")) == sorted(c["output_name"] for c in spec["chunks"])
    for chunk in spec["chunks"]:
        samples, rate = soundfile.read(out / chunk["output_name"], dtype="int16")
        info = soundfile.info(out / chunk["output_name"])
        assert (rate, info.channels, info.subtype) == (32000, 1, "PCM_16")
        assert len(samples) == chunk["output_num_samples"]
        assert int(np.abs(samples.astype(np.int32)).max()) == chunk["output_peak_int16"]
        assert _sha256_int16(samples) == chunk["output_sha256_int16le"], chunk["output_name"]
