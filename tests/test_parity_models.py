"""Numerical parity of the TTS models against golden data from the official GPT-SoVITS code.

Every `<case>.json` manifest in the fixture folder is one case; it is dispatched on its `kind`, run
through our implementation, and every expected output and intermediate is compared within the
tolerance stored next to it. The folder comes from `KOE_PARITY_FIXTURES` (default
`../shared/fixtures/parity`). With the variable set, a missing folder or a broken case fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from parity_runners import RUNNERS

ROOT = Path(__file__).resolve().parent.parent
ENV = "KOE_PARITY_FIXTURES"
FOLDER = Path(os.environ.get(ENV, ROOT.parent / "shared" / "fixtures" / "parity"))
COMPARED_ROLES = {"expected_output", "expected_intermediate", "input+expected"}


def _manifests() -> list[Path]:
    if not FOLDER.is_dir():
        return []
    return sorted(p for p in FOLDER.glob("*.json") if p.name != "index.json")


def _case_id(path: Path) -> str:
    return path.stem


def test_fixture_folder_present():
    if FOLDER.is_dir() and _manifests():
        return
    if ENV in os.environ:
        pytest.fail(f"{ENV}={FOLDER} has no parity cases (missing folder or no *.json manifests)")
    pytest.skip(f"parity fixtures not found at {FOLDER}; they come from the shared/ folder beside the repo")


def assert_matches(name: str, got: np.ndarray, expected: np.ndarray, tolerance: dict) -> None:
    """Compare one array with the fixture's own tolerance rule."""
    got = np.asarray(got)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != expected {expected.shape}"
    if tolerance.get("compare") == "exact":
        mismatch = np.flatnonzero(got.reshape(-1) != expected.reshape(-1))
        assert mismatch.size == 0, (
            f"{name}: {mismatch.size} of {expected.size} values differ, first at flat index {mismatch[0]}: "
            f"got {got.reshape(-1)[mismatch[0]]}, expected {expected.reshape(-1)[mismatch[0]]}"
        )
        return
    atol = float(tolerance.get("atol", 0.0))
    rtol = float(tolerance.get("rtol", 0.0))
    got64 = got.astype(np.float64)
    exp64 = expected.astype(np.float64)
    err = np.abs(got64 - exp64)
    bad = err > atol + rtol * np.abs(exp64)
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} of {bad.size} values out of tolerance (atol={atol}, rtol={rtol}); "
        f"max abs error {err.max():.3e}"
    )


def _load_case(manifest_path: Path) -> tuple[dict, dict]:
    manifest = json.loads(manifest_path.read_text())
    with np.load(manifest_path.with_suffix(".npz"), allow_pickle=False) as npz:
        return manifest, {k: npz[k] for k in npz.files}


def _compare_case(manifest_path: Path, manifest: dict, arrays: dict, got: dict) -> None:
    compared = 0
    for name, spec in manifest["arrays"].items():
        if spec["role"] not in COMPARED_ROLES:
            continue
        assert name in got, f"{manifest_path.name}: runner for {manifest['kind']!r} did not produce {name!r}"
        assert_matches(name, got[name], arrays[name], spec["tolerance"])
        compared += 1
    assert compared > 0, f"{manifest_path.name}: nothing compared"


@pytest.mark.parity
@pytest.mark.parametrize("manifest_path", _manifests(), ids=_case_id)
def test_parity_case(manifest_path: Path):
    manifest, arrays = _load_case(manifest_path)
    kind = manifest["kind"]
    assert kind in RUNNERS, f"{manifest_path.name}: no runner for kind {kind!r} (known: {sorted(RUNNERS)})"
    _compare_case(manifest_path, manifest, arrays, RUNNERS[kind](manifest, arrays, manifest_path.parent))


def _onnx_runner(kind: str):
    """The runner that puts the model's ONNX Runtime graph in place of its torch path, for `kind`."""
    import parity_sovits
    import parity_t2s

    return {"t2s_decode": parity_t2s.run_decode, "sovits_decode": parity_sovits.run_sovits_decode}.get(kind)


def _onnx_manifests() -> list[Path]:
    return [p for p in _manifests() if _onnx_runner(json.loads(p.read_text())["kind"])]


@pytest.mark.parity
@pytest.mark.parametrize("manifest_path", _onnx_manifests(), ids=_case_id)
def test_parity_through_the_onnx_graphs(manifest_path: Path):
    """The exact (fp32) ONNX Runtime graphs (T2S stack, SoVITS generator) reproduce the official
    outputs at the same tolerances as the torch modules they replace."""
    manifest, arrays = _load_case(manifest_path)
    got = _onnx_runner(manifest["kind"])(manifest, arrays, manifest_path.parent, runtime="onnx")
    _compare_case(manifest_path, manifest, arrays, got)
