"""Pooling and the table of `benchmarks/speed.py` (pure functions: no engine, no torch).

Each worker run reports its figures together with the foreign load during it; `pool` keeps the runs
that other processes left alone (fewer than `drop` foreign cores), across all rounds, and takes
medians. `table` prints one row per engine mode with, for each figure, three ratios:

* o: the official code's figure divided by this one (gpt-sovits-cpufast stands in for it; above 1 is
  better than the official code),
* p: the best peer engine's figure divided by this one (above 1 is better than every peer),
* f: this figure divided by the machine's floor for the mode's precision (1.00 is at the floor).
"""

from __future__ import annotations

import math
import statistics

OFFICIAL = "cpufast"
PEERS = ("cpufast", "genie")

# column -> (header, unit format, which run group it comes from)
COLUMNS = {
    "prefill_ms": ("T2S prefill ms", "{:.0f}"),
    "step_ms": ("per token ms", "{:.1f}"),
    "sovits_ms": ("SoVITS 4 s ms", "{:.0f}"),
    "rtf": ("engine RTF", "{:.2f}"),
    "first_audio_ms": ("first audio ms", "{:.0f}"),
    "resident_mb": ("resident MB", "{:.0f}"),
    "memory_mb": ("peak RSS MB", "{:.0f}"),
}
SPEECH_S = 4.0  # 100 tokens at 25 tokens/s


def median(xs) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def clean_runs(runs: list[dict], drop: float) -> tuple[list[dict], bool]:
    """Runs with less than `drop` foreign cores; when none is clean, the least disturbed run (flagged)."""
    kept = [r for r in runs if r.get("foreign", 0.0) < drop]
    if kept or not runs:
        return kept, False
    return [min(runs, key=lambda r: r.get("foreign", 0.0))], True


def pool(results: list[dict], drop: float) -> dict:
    """Medians of one engine mode's clean runs over all rounds, with run counts and foreign load."""
    groups: dict[str, list[dict]] = {}
    for result in results:
        for name, runs in result.get("runs", {}).items():
            groups.setdefault(name, []).extend(runs)
    out: dict = {
        "runs": {},
        "disturbed": [],
        "notes": sorted({n for r in results for n in r.get("notes", [])}),
    }
    figures: dict[str, list[float]] = {}
    for name, runs in groups.items():
        kept, disturbed = clean_runs(runs, drop)
        out["runs"][name] = {
            "clean": 0 if disturbed else len(kept),
            "total": len(runs),
            "foreign_mean": median([r.get("foreign") for r in runs]),
        }
        if disturbed:
            out["disturbed"].append(name)
        for run in kept:
            for key, value in run.items():
                if key not in ("foreign", "waited") and isinstance(value, int | float):
                    figures.setdefault(key, []).append(value)
    out.update({key: median(values) for key, values in figures.items()})
    if "t2s_ms" in out and "sovits_ms" in out:  # T2S and SoVITS are timed in separate runs
        out["rtf"] = (out["t2s_ms"] + out["sovits_ms"]) / 1000 / SPEECH_S
    out["resident_mb"] = median([r.get("rss_engine_mb") for r in results])  # loaded voice, after the runs
    out["memory_mb"] = median([r.get("rss_engine_peak_mb") for r in results])
    return out


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator if denominator else None


def best_peer(rows: dict[str, dict], key: str) -> float | None:
    """Lowest (best) value of one figure among the peer engines."""
    values = [rows[p][key] for p in PEERS if p in rows and not math.isnan(rows[p].get(key, math.nan))]
    return min(values) if values else None


def cell(value: float | None, fmt: str, o: float | None, p: float | None, f: float | None) -> str:
    """'16.2 (o1.52 p1.30 f1.10)'; missing parts are left out, a missing value is '—'."""
    if value is None or math.isnan(value):
        return "—"
    parts = [f"{tag}{x:.2f}" for tag, x in (("o", o), ("p", p), ("f", f)) if x is not None]
    return fmt.format(value) + (f" ({' '.join(parts)})" if parts else "")


def table(
    rows: dict[str, dict], row_floors: dict[str, dict], floor_rows: dict[str, dict], quality: dict[str, str]
) -> str:
    """The markdown table: one row per engine mode, then the floor rows.

    rows: label -> pooled figures (`pool`); row_floors: label -> the floors of that row's precision
    (prefill_ms, step_ms, sovits_ms, rtf, first_audio_ms); floor_rows: shown as rows of their own;
    quality: label -> deviation text.
    """
    official = rows.get(OFFICIAL, {})
    header = ["mode"] + [h for h, _ in COLUMNS.values()] + ["quality vs fp32", "clean runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in rows.items():
        cells = [label]
        for key, (_, fmt) in COLUMNS.items():
            value = row.get(key, math.nan)
            o = ratio(official.get(key), value)
            p = ratio(best_peer(rows, key), value)
            cells.append(cell(value, fmt, o, p, ratio(value, row_floors.get(label, {}).get(key))))
        cells.append(quality.get(label, ""))
        counts = ", ".join(
            f"{name} {c['clean']}/{c['total']}" + ("*" if name in row.get("disturbed", []) else "")
            for name, c in row.get("runs", {}).items()
        )
        lines.append("| " + " | ".join(cells + [counts]) + " |")
    for label, floor in floor_rows.items():
        cells = [label] + [cell(floor.get(k), fmt, None, None, None) for k, (_, fmt) in COLUMNS.items()]
        lines.append("| " + " | ".join(cells + ["", ""]) + " |")
    return "\n".join(lines)


def pipeline_table(rows: dict[str, dict]) -> str:
    """Whole runs, front end included, reference cached: koe's `TTSPipeline.run` and the official
    `TTS.run()` (o: the official whole-run figure / this one). Where the official whole run is
    missing, its engine-level figures stand in; they are faster than its whole run, so the ratios
    then understate koe's lead."""
    official = rows.get(OFFICIAL, {})
    official_rtf = official.get("run_rtf", official.get("rtf"))
    official_first = official.get("run_first_audio_ms", official.get("first_audio_ms"))
    lines = [
        "| mode | whole-run RTF | whole-run first audio ms (token streaming, 16-token chunks) "
        "| first audio ms, koe's default first chunk (8 tokens) | Chinese first audio ms (x English) |",
        "|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        if "run_rtf" not in row and "run_first_audio_ms" not in row:
            continue
        rtf, first = row.get("run_rtf", math.nan), row.get("run_first_audio_ms", math.nan)
        first_koe = row.get("run_first_audio_koe_ms", math.nan)
        first_zh = row.get("run_first_audio_zh_ms", math.nan)
        zh = cell(first_zh, "{:.0f}", None, None, None)
        if zh != "—" and not math.isnan(first_koe):
            zh += f" (x{first_zh / first_koe:.2f})"
        lines.append(
            f"| {label} | {cell(rtf, '{:.2f}', ratio(official_rtf, rtf), None, None)} "
            f"| {cell(first, '{:.0f}', ratio(official_first, first), None, None)} "
            f"| {cell(first_koe, '{:.0f}', ratio(official_first, first_koe), None, None)} | {zh} |"
        )
    return "\n".join(lines)


def quality_text(deviation: dict | None) -> str:
    """'cos 0.99991 (min 0.99989), tokens 100%, SoVITS same, BERT cos 0.9974' from the quality
    worker's figures (BERT: its Chinese features, when measured; "BERT same" when unchanged)."""
    if not deviation:
        return ""
    if "skipped" in deviation:
        return "not measured: " + deviation["skipped"]
    sovits = (
        "SoVITS same" if deviation.get("sovits_same") else f"SoVITS SNR {deviation['sovits_snr_db']:.1f} dB"
    )
    text = (
        f"cos {deviation['logit_cosine_mean']:.5f} (min {deviation['logit_cosine_min']:.5f}), "
        f"tokens {100 * deviation['token_agreement']:.0f}%, {sovits}"
    )
    bert = deviation.get("bert_cosine_min")
    if bert is None:
        return text
    if bert >= 1.0 - 1e-7:
        return text + ", BERT same"
    return text + f", BERT cos {deviation['bert_cosine_mean']:.4f} (min {bert:.4f})"
