"""Pure helpers of benchmarks/speed.py: foreign-load math, pooling of clean runs, floors, the table.

No engine runs, no timing assertions: the benchmark itself is run by hand (docs/performance.md).
"""

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "speed_workers")]

import workload  # noqa: E402

from benchmarks import machine, speed_report  # noqa: E402


def test_foreign_cores_subtracts_own_ticks():
    hz = workload._HZ
    # 2 s wall, the machine busy for 3 core-seconds, this process for 1: others kept 1 core busy
    assert math.isclose(workload.foreign_cores(3 * hz, 1 * hz, 2.0), 1.0)
    assert workload.foreign_cores(1 * hz, 2 * hz, 1.0) == 0.0  # never negative


def test_wait_quiet_gives_up_after_max_wait():
    waited = workload.wait_quiet(threshold=-1.0, max_wait=0.2, window=0.05)  # never quiet
    assert 0.2 <= waited < 1.0


def test_pool_drops_disturbed_runs_and_flags_all_disturbed_groups():
    result = {
        "runs": {
            "engine": [
                {"prefill_ms": 100.0, "step_ms": 10.0, "t2s_ms": 1000.0, "sovits_ms": 1000.0, "foreign": 0.0},
                {"prefill_ms": 900.0, "step_ms": 90.0, "t2s_ms": 9000.0, "sovits_ms": 9000.0, "foreign": 1.0},
                {"prefill_ms": 120.0, "step_ms": 12.0, "t2s_ms": 1400.0, "sovits_ms": 1000.0, "foreign": 0.1},
            ],
            "stream": [{"first_audio_ms": 900.0, "foreign": 0.9}, {"first_audio_ms": 500.0, "foreign": 0.5}],
        },
        "rss_engine_peak_mb": 1000.0,
        "notes": ["n"],
    }
    pooled = speed_report.pool([result], drop=0.25)
    assert pooled["prefill_ms"] == 110.0 and pooled["step_ms"] == 11.0
    assert pooled["rtf"] == (1.2 + 1.0) / 4  # (median T2S + median SoVITS) / 4 s of speech
    assert pooled["runs"]["engine"]["clean"] == 2 and pooled["runs"]["engine"]["total"] == 3
    # no clean stream run: the least disturbed one is shown, and flagged
    assert pooled["disturbed"] == ["stream"] and pooled["first_audio_ms"] == 500.0
    assert pooled["memory_mb"] == 1000.0 and pooled["notes"] == ["n"]


def test_floors_follow_bandwidth_and_weight_bytes():
    rates = {"dram_read_gbps": 20.0, "gemm_fp32_gflops": 200.0, "gemm_bf16_gflops": None}
    floor = machine.floors(rates, sovits_gflop=160.0)
    weights = machine.t2s_decode_weights()
    assert 75e6 < weights < 77e6  # 24 layers x 3.1 M + the output layer
    kv = machine.t2s_kv_bytes(185 + 50)
    assert math.isclose(floor["step_ms_fp32"], (4 * weights + kv) / 20e9 * 1000)
    assert math.isclose(floor["step_ms_int8"], (weights + kv) / 20e9 * 1000)
    assert math.isclose(floor["sovits_ms_fp32"], 800.0)
    mode = machine.derived(floor, "int8")
    assert math.isclose(mode["rtf"], (floor["prefill_ms"] + 99 * mode["step_ms"] + 800.0) / 4000)


def test_table_ratios_against_official_best_peer_and_floor():
    rows = {
        "koe-int8": {"step_ms": 5.0, "runs": {"engine": {"clean": 3, "total": 3}}, "disturbed": []},
        "cpufast": {"step_ms": 20.0, "runs": {"engine": {"clean": 2, "total": 3}}, "disturbed": []},
        "genie": {"step_ms": 16.0, "runs": {"engine": {"clean": 0, "total": 3}}, "disturbed": ["engine"]},
    }
    text = speed_report.table(
        rows, {"koe-int8": {"step_ms": 4.0}}, {"floor (int8 T2S)": {"step_ms": 4.0}}, {}
    )
    koe_row = next(line for line in text.splitlines() if line.startswith("| koe-int8"))
    assert "5.0 (o4.00 p3.20 f1.25)" in koe_row
    assert "engine 0/3*" in text  # all-disturbed groups are marked
    assert "| floor (int8 T2S) | — | 4.0 |" in text
    assert speed_report.cell(math.nan, "{:.0f}", 1.0, 1.0, 1.0) == "—"


QUALITY = {
    "logit_cosine_mean": 0.99991,
    "logit_cosine_min": 0.9998,
    "token_agreement": 0.99,
    "sovits_same": True,
}


def test_quality_text():
    text = speed_report.quality_text(QUALITY)
    assert text == "cos 0.99991 (min 0.99980), tokens 99%, SoVITS same"
    bert = {"bert_cosine_mean": 0.99741, "bert_cosine_min": 0.99712}
    text = speed_report.quality_text({**QUALITY, "sovits_same": False, "sovits_snr_db": 31.26, **bert})
    assert text == "cos 0.99991 (min 0.99980), tokens 99%, SoVITS SNR 31.3 dB, BERT cos 0.9974 (min 0.9971)"
    same = {"bert_cosine_mean": 1.0, "bert_cosine_min": 1.0}
    assert speed_report.quality_text({**QUALITY, **same}).endswith("SoVITS same, BERT same")
    assert speed_report.quality_text({"skipped": "unknown precision"}).startswith("not measured")


def test_pipeline_table_compares_with_the_official_whole_run_when_it_ran():
    koe = {"run_rtf": 0.8, "run_first_audio_ms": 700.0, "run_first_audio_koe_ms": 500.0}
    koe["run_first_audio_zh_ms"] = 600.0
    engine_only = {"rtf": 2.0, "first_audio_ms": 1500.0}
    text = speed_report.pipeline_table({"koe-int4": koe, "cpufast": engine_only})
    assert "| koe-int4 | 0.80 (o2.50) | 700 (o2.14) | 500 (o3.00) | 600 (x1.20) |" in text
    assert "| cpufast |" not in text  # no whole-run figures: no row of its own
    whole = {**engine_only, "run_rtf": 2.4, "run_first_audio_ms": 2000.0}
    text = speed_report.pipeline_table({"koe-int4": koe, "cpufast": whole})
    assert "| koe-int4 | 0.80 (o3.00) | 700 (o2.86) | 500 (o4.00) |" in text
    assert "| cpufast | 2.40 (o1.00) | 2000 (o1.00) | — | — |" in text
