"""Benchmark: the full local pipeline on a public Chinese retrieval set, KD on and off.

Runs ``searchtune run --local`` (the real KFP pipeline on ``kfp.local``) on
``../shared/data/cmrc_drcd_zh`` (train, test and corpus files) once with knowledge
distillation on and once off. Both runs share a KFP cache, so the second reuses prepare,
mine and score, exactly as a user comparing the two would. While a run goes, the process
tree is sampled every half second: each KFP step is a subprocess whose command line names
its component, so wall time and peak resident memory (the step's whole tree, torchrun
workers included) are attributed per step.

Prints a table and writes ``benchmarks/results/local_pipeline.json``. Targets (issue 2):
whole pipeline under 60 minutes and under 6 GB on 2 cores; fine-tuned global-pool
recall@1 at least base + 0.10, and MRR@10 above BM25's 0.771 on the same test split.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STEPS = ("prepare_data", "mine_negatives", "score_pairs", "fine_tune_embedder", "evaluate_models")
BM25_GLOBAL_MRR_AT_10 = 0.771
logger = logging.getLogger("benchmarks.local_pipeline")


class StepMonitor(threading.Thread):
    """Samples the process tree under ``root_pid`` and attributes it to KFP steps."""

    def __init__(self, root_pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.steps: dict[str, dict] = {}
        self.peak_total_rss = 0
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def _tree_rss(self, process: psutil.Process) -> int:
        total = 0
        for member in [process] + process.children(recursive=True):
            try:
                total += member.memory_info().rss
            except psutil.Error:
                continue
        return total

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.time()
            try:
                self.peak_total_rss = max(self.peak_total_rss, self._tree_rss(self.root))
                children = self.root.children(recursive=True)
            except psutil.Error:
                break
            for child in children:
                try:
                    command = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                match = re.search(r"--function_to_execute\s+(\w+)", command)
                if not match or "executor_main" not in command:
                    continue
                step = self.steps.setdefault(match.group(1), {"first_seen": now, "peak_rss_bytes": 0})
                step["last_seen"] = now
                step["peak_rss_bytes"] = max(step["peak_rss_bytes"], self._tree_rss(child))
            self._halt.wait(self.interval)


_TASK_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (Executing task|Task) \S*'([\w-]+)'")


def step_times_from_log(log_path: Path) -> dict[str, float]:
    """Each step's wall time from the KFP local runner's own start/finish log lines."""
    started: dict[str, float] = {}
    durations: dict[str, float] = {}
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _TASK_LINE.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if not match:
            continue
        hours, minutes, seconds = match.group(1).split(":")
        stamp = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        step = match.group(3).replace("-", "_")
        if match.group(2) == "Executing task":
            started[step] = stamp
        elif step in started:
            durations[step] = round((stamp - started[step]) % 86400, 1)
    return durations


def machine() -> dict:
    flags = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", flags)
    import torch

    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def run_pipeline(name: str, data_dir: Path, work: Path, overrides: list[str]) -> dict:
    run_dir = work / name
    command = [sys.executable, "-m", "pipelines.cli", "run", "--local",
               "--train-data", str(data_dir / "train.jsonl"), "--test-data", str(data_dir / "test.jsonl"),
               "--corpus", str(data_dir / "corpus.jsonl"), "--output-dir", str(run_dir),
               "--cache-dir", str(work / "kfp_cache")]
    for item in overrides:
        command += ["--set", item]
    logger.info("run %s: %s", name, " ".join(command))
    started = time.time()
    log_path = work / f"{name}.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        monitor = StepMonitor(process.pid)
        monitor.start()
        code = process.wait()
        monitor.stop()
    wall = time.time() - started
    if code != 0:
        raise RuntimeError(f"run {name} failed ({code}); see {log_path}")
    return run_record(name, overrides, run_dir, log_path, wall, monitor)


def run_record(name: str, overrides: list[str], run_dir: Path, log_path: Path, wall: float,
               monitor: StepMonitor | None) -> dict:
    """One run's figures; without a monitor (a run recorded after the fact) memory is unknown."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    times = step_times_from_log(log_path)
    steps = {}
    for step in STEPS:
        seen = monitor.steps.get(step) if monitor else None
        steps[step] = {"wall_s": times.get(step, 0.0), "cached": step not in times,
                       "peak_rss_gb": round(seen["peak_rss_bytes"] / 2**30, 2) if seen else None}
    return {"name": name, "overrides": overrides, "wall_s": round(wall, 1),
            "peak_rss_gb": round(monitor.peak_total_rss / 2**30, 2) if monitor else None, "steps": steps,
            "metrics": metrics,
            "run_dir": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "cmrc_drcd_zh")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / "work" / "local_pipeline")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra pipeline parameters for both runs")
    parser.add_argument("--kd", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--output", type=Path, default=RESULTS / "local_pipeline.json")
    parser.add_argument("--record", metavar="WALL_S", type=float,
                        help="do not run: record the finished runs in --work-dir (named by --kd) whose "
                             "whole wall time was WALL_S; step times come from their logs, memory is unknown")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.record is not None:
        runs = [run_record(f"kd_{kd}", [f"knowledge_distillation={kd}", f"num_train_epochs={args.epochs}"] + args.set,
                           args.work_dir / f"kd_{kd}", args.work_dir / f"kd_{kd}.log", args.record, None)
                for kd in args.kd]
        report(runs, args)
        return 0

    runs = []
    for kd in args.kd:
        overrides = [f"knowledge_distillation={kd}", f"num_train_epochs={args.epochs}"] + args.set
        runs.append(run_pipeline(f"kd_{kd}", args.data_dir, args.work_dir, overrides))
        # Written after every run, so a finished run survives a later one being cut short.
        report(runs, args)
    return 0


def report(runs: list[dict], args: argparse.Namespace) -> None:
    console = Console()
    table = Table(title="Local pipeline on cmrc_drcd_zh (kfp.local, 2 cores)")
    table.add_column("run")
    for step in STEPS:
        table.add_column(step.replace("_", " "), justify="right")
    for column in ("total", "peak GB", "global R@1 base→ft", "global MRR@10 base→ft", "test R@1 base→ft"):
        table.add_column(column, justify="right")
    verdicts = []
    for run in runs:
        m = run["metrics"]
        cells = ["cached" if s["cached"] else f"{s['wall_s']:.0f}s" + (
            f" / {s['peak_rss_gb']:.1f}G" if s["peak_rss_gb"] is not None else "") for s in run["steps"].values()]
        peak = run["peak_rss_gb"]
        table.add_row(run["name"], *cells, f"{run['wall_s'] / 60:.1f} min", "not sampled" if peak is None else f"{peak:.2f}",
                      f"{m['global_recall_at_1_base']:.4f}→{m['global_recall_at_1_finetuned']:.4f}",
                      f"{m['global_mrr_at_10_base']:.4f}→{m['global_mrr_at_10_finetuned']:.4f}",
                      f"{m['test_recall_at_1_base']:.4f}→{m['test_recall_at_1_finetuned']:.4f}")
        step_total = sum(s["wall_s"] for s in run["steps"].values())
        verdicts.append({
            "run": run["name"],
            "under_60_min": run["wall_s"] < 3600,
            "steps_wall_s": round(step_total, 1),
            "under_6_gb": None if run["peak_rss_gb"] is None else run["peak_rss_gb"] < 6.0,
            "global_recall_at_1_gain": round(m["global_recall_at_1_delta"], 4),
            "recall_gain_at_least_0.10": m["global_recall_at_1_delta"] >= 0.10,
            "global_mrr_at_10_above_bm25": m["global_mrr_at_10_finetuned"] > BM25_GLOBAL_MRR_AT_10,
        })
    console.print(table)
    console.print_json(data=verdicts)

    result = {"benchmark": "local_pipeline", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "data": str(args.data_dir.name), "epochs": args.epochs, "runs": runs, "targets": verdicts,
              "bm25_global_mrr_at_10": BM25_GLOBAL_MRR_AT_10}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".json.partial")
    temporary.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, args.output)
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
