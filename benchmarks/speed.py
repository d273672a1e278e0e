"""koe against the published GPT-SoVITS engines, side by side on this machine, with its floors.

    .venv/bin/python benchmarks/speed.py [--rounds N] [--peers cpufast,genie] [--quick]

1. Writes full-size random-weight v2 files (GPT .ckpt, SoVITS .pth, HuBERT, a 5 s reference) with
   koe's own exporters into the cache folder (kept between runs).
2. Creates each peer's virtual environment in the cache folder (torch==2.13.0 first, then the
   peer's package) and runs the peer's own converter where it needs one. A peer that cannot be
   installed or driven is reported with the reason and left out.
3. Measures how far koe's reduced-precision modes are from fp32 (logits, tokens, waveform).
4. Runs interleaved rounds (koe-fp32, koe-int8, koe-int4, cpufast, genie, koe-fp32, ...): each engine in its
   own process with 2 threads, after waiting for an idle machine; each round also re-measures the
   machine's floors. Runs that other processes disturbed are dropped.
5. Prints one table and writes it, with every raw result, to the results folder.

Columns and ratios are explained in docs/performance.md and `speed_report.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKERS = HERE / "speed_workers"
sys.path[:0] = [str(ROOT), str(WORKERS)]

import workload as W  # noqa: E402

from benchmarks import machine, speed_report  # noqa: E402

TORCH_PIN = "torch==2.13.0"
KOE_MODES = ("fp32", "int8", "int4", "bf16")  # exact first; the fast ones where from_paths accepts them


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]  # installed after torch
    worker: str
    prepare: bool = False  # the worker has a --prepare step (a model converter)


PEER_ENGINES = {
    "cpufast": Peer("cpufast", ("gpt-sovits-cpufast", "numpy<2"), "cpufast_worker.py"),
    "genie": Peer("genie", ("genie-tts",), "genie_worker.py", prepare=True),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------ models and venvs
def prepare_models(folder: Path) -> Path:
    """The random-weight voice files, written once with koe's exporters."""
    from benchmarks import common

    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "rand-v2-e1.ckpt": lambda p: common.write_gpt(p),
        "rand-v2_e1_s1.pth": lambda p: common.write_sovits(p),
        "chinese-hubert-base": lambda p: common.write_hubert(p),
        "chinese-roberta-wwm-ext-large": lambda p: common.write_bert(p),
        "ref5s.wav": lambda p: common.write_reference(p, W.inputs()["reference"]),
    }
    for name, write in files.items():
        path = folder / name
        if not path.exists():
            log(f"writing {path}")
            write(path)
    return folder


def ensure_venv(peer: Peer, cache: Path) -> tuple[Path | None, str]:
    """The peer's venv python (created and installed when missing or outdated), or None and why."""
    venv = cache / "venvs" / peer.name
    python = venv / "bin" / "python"
    spec = " ".join((TORCH_PIN, *peer.packages))
    marker = venv / ".koe-bench-installed"
    if marker.exists() and marker.read_text().splitlines()[0] == spec:
        return python, ""
    install_log = cache / "logs" / f"install-{peer.name}.log"
    install_log.parent.mkdir(parents=True, exist_ok=True)
    log(f"installing {peer.name} into {venv} ({spec}); log: {install_log}")
    started = time.perf_counter()
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", TORCH_PIN],  # first: the CPU wheel, never another torch
        [str(python), "-m", "pip", "install", TORCH_PIN, *peer.packages],
    ]
    with open(install_log, "a") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                return None, f"`{' '.join(step[2:])}` failed (see {install_log})"
    seconds = time.perf_counter() - started
    marker.write_text(f"{spec}\ninstalled in {seconds:.0f} s\n")
    log(f"{peer.name} installed in {seconds:.0f} s")
    return python, ""


def run_worker(python: Path, script: Path, args: list[str], cache: Path, timeout: float) -> dict:
    """Run one worker process; its result dict, or {'skipped': why} when it gave none."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    worker_log = cache / "logs" / f"{script.stem}.log"
    worker_log.parent.mkdir(parents=True, exist_ok=True)
    with open(worker_log, "a") as err:
        err.write(f"\n=== {time.strftime('%F %T')} {script.name} {' '.join(args)}\n")
        err.flush()
        try:
            done = subprocess.run(
                [str(python), str(script), *args], stdout=subprocess.PIPE, stderr=err, text=True,
                timeout=timeout, cwd=cache, env=env,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"skipped": f"{script.name} ran past {timeout:.0f} s (see {worker_log})"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(W.RESULT_PREFIX):
            return json.loads(line[len(W.RESULT_PREFIX) :])
    return {"skipped": f"{script.name} exited {done.returncode} without a result (see {worker_log})"}


# ------------------------------------------------------------------------------------------ run
@dataclass
class Engine:
    label: str  # table row: koe-fp32, cpufast, ...
    python: Path
    script: Path
    args: list[str]
    precision: str  # the floors it is held to


def plan_engines(args, cache: Path, models: Path, notes: list[str], bf16_hardware: bool) -> list[Engine]:
    """koe's modes and every peer that could be installed and prepared, in round order."""
    koe_python = Path(sys.executable)
    engines = []
    for mode in args.koe_modes.split(","):
        if mode == "bf16" and not bf16_hardware:
            notes.append("koe-bf16 not run: this CPU has no bf16 instructions (avx512_bf16 / amx_bf16)")
            continue
        extra = ["--mode", mode] + (["--no-pipeline"] if args.quick else [])
        engines.append(Engine(f"koe-{mode}", koe_python, WORKERS / "koe_worker.py", extra, mode))
    for name in [p for p in args.peers.split(",") if p]:
        peer = PEER_ENGINES.get(name)
        if peer is None:
            notes.append(f"unknown peer {name!r} (known: {', '.join(PEER_ENGINES)})")
            continue
        python, why = ensure_venv(peer, cache)
        if python is None:
            notes.append(f"{name} left out: {why}")
            log(notes[-1])
            continue
        script = WORKERS / peer.worker
        if peer.prepare:
            prepared = subprocess.run(
                [str(python), str(script), "--prepare", "--models", str(models)], cwd=cache,
                capture_output=True, text=True,
            )  # fmt: skip
            if prepared.returncode != 0:
                notes.append(
                    f"{name} left out: its model conversion failed: {prepared.stderr.strip()[-300:]}"
                )
                log(notes[-1])
                continue
        engines.append(Engine(name, python, script, [], "fp32"))
    return engines


def wait_for_idle(args) -> float:
    """Before each worker: others below `--quiet` cores for 3 s in a row, at most `--max-wait` s."""
    waited = W.wait_quiet(args.quiet, args.max_wait, window=1.0, quiet_windows=3)
    if waited >= args.max_wait:
        log(f"machine still busy after {waited:.0f} s: running anyway (disturbed runs are dropped)")
    return waited


def measure_quality(engines: list[Engine], models: Path, args, notes: list[str]) -> dict:
    """Deviation of koe's reduced-precision modes from fp32 (mode -> figures), not timed."""
    fast_modes = [e.precision for e in engines if e.label.startswith("koe-") and e.precision != "fp32"]
    if not fast_modes:
        return {}
    log(f"quality of {', '.join(fast_modes)} against fp32")
    result = run_worker(
        Path(sys.executable), WORKERS / "koe_quality.py",
        ["--models", str(models), "--modes", ",".join(fast_modes)], args.cache, args.timeout,
    )  # fmt: skip
    if "skipped" in result:
        notes.append(f"quality not measured: {result['skipped']}")
    return result.get("modes", {})


def run_rounds(
    engines: list[Engine], models: Path, args
) -> tuple[dict[str, list[dict]], list[dict], list[float]]:
    """Interleaved rounds: floors, then every engine once; returns raw results, floor runs, idle waits."""
    raw: dict[str, list[dict]] = {e.label: [] for e in engines}
    machine_runs: list[dict] = []
    waits: list[float] = []
    worker_args = ["--models", str(models), "--runs", str(args.runs), "--warm", str(args.warm)]
    worker_args += ["--quiet", str(args.quiet), "--max-wait", str(args.run_wait)]
    floors_args = ["--quiet", str(args.quiet), "--max-wait", str(min(args.run_wait, 15.0))]
    for round_no in range(1, args.rounds + 1):
        waits.append(wait_for_idle(args))
        log(f"round {round_no}/{args.rounds}: machine floors")
        floors_run = run_worker(
            Path(sys.executable), HERE / "machine.py", floors_args, args.cache, args.timeout
        )
        if "skipped" not in floors_run:
            machine_runs.append(floors_run)
        for engine in engines:
            waits.append(wait_for_idle(args))
            log(f"round {round_no}/{args.rounds}: {engine.label}")
            result = run_worker(
                engine.python, engine.script, worker_args + engine.args, args.cache, args.timeout
            )
            result["round"] = round_no
            raw[engine.label].append(result)
            if "skipped" in result:
                log(f"{engine.label}: skipped: {result['skipped']}")
                continue
            pooled = speed_report.pool([result], args.drop)
            log(
                f"{engine.label}: prefill {pooled.get('prefill_ms', float('nan')):.0f} ms, "
                f"token {pooled.get('step_ms', float('nan')):.1f} ms, "
                f"SoVITS {pooled.get('sovits_ms', float('nan')):.0f} ms"
            )
    return raw, machine_runs, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per engine per round")
    parser.add_argument("--warm", type=int, default=1, help="warm-up runs per engine per round")
    parser.add_argument("--peers", default="cpufast,genie", help="peer engines, comma separated")
    parser.add_argument("--koe-modes", default=",".join(KOE_MODES), help="koe T2S precisions")
    parser.add_argument("--quick", action="store_true", help="1 round, 1 run, no whole-pipeline runs")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "koe-bench")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--quiet", type=float, default=0.25, help="foreign cores that count as idle")
    parser.add_argument("--drop", type=float, default=0.25, help="drop runs with this many foreign cores")
    parser.add_argument("--max-wait", type=float, default=30.0, help="most seconds to wait for idle")
    parser.add_argument("--run-wait", type=float, default=30.0, help="most seconds a worker waits per run")
    parser.add_argument("--timeout", type=float, default=1200.0, help="most seconds per worker process")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.runs, args.warm = 1, 1, 1

    started = time.time()
    description = machine.describe()
    log(f"machine: {description}")
    models = prepare_models(args.cache / "models")
    notes: list[str] = []
    engines = plan_engines(args, args.cache, models, notes, machine.has_bf16_hardware(description["flags"]))

    quality = measure_quality(engines, models, args, notes)
    raw, machine_runs, waits = run_rounds(engines, models, args)
    report = build_report(args, description, engines, raw, machine_runs, quality, notes, waits, started)
    print("\n" + report["markdown"])
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.results / f"speed-{stamp}.json").write_text(json.dumps(report, indent=1))
    (args.results / f"speed-{stamp}.md").write_text(report["markdown"] + "\n")
    (args.results / "latest.md").write_text(report["markdown"] + "\n")
    log(f"results: {args.results / f'speed-{stamp}.json'} and .md ({(time.time() - started) / 60:.1f} min)")


def best_floors(machine_runs: list[dict]) -> tuple[dict, dict]:
    """The fastest rates seen over the rounds (a floor is the best the machine can do) and their floors."""
    if not machine_runs:
        return {}, {}
    rates = dict(machine_runs[0]["rates"])
    for run in machine_runs[1:]:
        for key in ("dram_read_gbps", "gemm_fp32_gflops", "gemm_bf16_gflops"):
            if run["rates"].get(key):
                rates[key] = max(rates.get(key) or 0, run["rates"][key])
    return rates, machine.floors(rates, machine_runs[0]["floors"]["sovits_gflop"])


def build_report(args, description, engines, raw, machine_runs, quality, notes, waits, started) -> dict:
    rows, row_floors, skipped = {}, {}, {}
    rates, floor = best_floors(machine_runs)
    for engine in engines:
        results = [r for r in raw[engine.label] if "skipped" not in r]
        if not results:
            skipped[engine.label] = raw[engine.label][0]["skipped"] if raw[engine.label] else "not run"
            continue
        rows[engine.label] = speed_report.pool(results, args.drop)
        if floor:
            row_floors[engine.label] = machine.derived(floor, engine.precision)
    floor_rows = {}
    if floor:
        for precision in ("fp32", "int8", "int4"):
            floor_rows[f"floor ({precision} T2S)"] = machine.derived(floor, precision)
    quality_cells = {label: "exact (parity mode)" for label in rows if label == "koe-fp32"}
    for label in rows:
        if label.startswith("koe-") and label != "koe-fp32":
            quality_cells[label] = speed_report.quality_text(quality.get(label.removeprefix("koe-")))
    text = [
        "## Speed, side by side (T2S + SoVITS v2, full size, random weights, 2 threads)",
        "",
        f"Machine: {description.get('cpu')}, {description['cores']} cores, flags: "
        f"{' '.join(description.get('flags', [])) or 'none of interest'}; "
        + (
            f"DRAM read {rates['dram_read_gbps']:.1f} GB/s, fp32 GEMM {rates['gemm_fp32_gflops']:.0f} GFLOP/s"
            + (
                f", bf16 GEMM {rates['gemm_bf16_gflops']:.0f} GFLOP/s"
                if rates.get("gemm_bf16_gflops")
                else ""
            )
            + f", torch fp32 GEMV over the T2S matrices {rates['torch_gemv_fp32_ms']:.1f} ms"
            if rates
            else "floors not measured"
        ),
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {args.rounds} rounds x "
        f"{args.runs} runs (+{args.warm} warm-up), {(time.time() - started) / 60:.0f} min; runs with "
        f">= {args.drop} foreign cores dropped.",
        "",
        speed_report.table(rows, row_floors, floor_rows, quality_cells),
        "",
        "Cells: value (o = official / this, p = best peer / this, f = this / floor); official = "
        "gpt-sovits-cpufast; floors from this run's measured bandwidth and GEMM rate.",
    ]
    pipeline = speed_report.pipeline_table(rows)
    if pipeline.count("\n") > 1:
        text += [
            "",
            "Whole runs (koe's `TTSPipeline.run`, the official `TTS.run()` through cpufast; 13-word "
            "English sentence, front end included, reference cached, every sentence 100 tokens; "
            "o = official whole run / this):",
            "",
            pipeline,
        ]
    foreign = [
        f"{label}: median foreign load "
        + ", ".join(f"{name} {c['foreign_mean']:.2f}" for name, c in row["runs"].items())
        + (
            f"; all runs disturbed in {', '.join(row['disturbed'])} (shown anyway)"
            if row["disturbed"]
            else ""
        )
        for label, row in rows.items()
    ]
    text += ["", "Foreign load (cores other processes kept busy during the runs):", ""]
    text += [f"- {line}" for line in foreign]
    text += [f"- waited for an idle machine {sum(waits):.0f} s in total (max {args.max_wait:.0f} s per wait)"]
    all_notes = notes + [f"{label}: {why}" for label, why in skipped.items()]
    all_notes += [f"{label}: {n}" for label, row in rows.items() for n in row["notes"]]
    if all_notes:
        text += ["", "Notes:", ""] + [f"- {n}" for n in all_notes]
    return {
        "machine": description, "rates": rates, "floors": floor, "rows": rows, "row_floors": row_floors,
        "quality": quality, "raw": raw, "machine_runs": machine_runs, "notes": all_notes,
        "markdown": "\n".join(text),
    }  # fmt: skip


if __name__ == "__main__":
    main()
