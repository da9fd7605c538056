"""Benchmark: which levers pay for FlagEmbedding training speed on this CPU.

Trains the builtin multilingual-e5-small for a fixed number of steps on mined, scored
rows from ``../shared/data/cmrc_drcd_zh`` under each setting, through the same
``components.train.fine_tune`` the pipeline uses, and reads the Trainer's own
``train_samples_per_second``. The peer is the issue's reference setting (group 8, batch 4,
passages up to 128 tokens, nothing frozen, the CPU's best precision: bf16 where it is
native, else fp32), measured in the same run. Each setting trains on about ``--samples``
queries (steps = samples / batch), so a large batch is not measured on fewer samples.
bf16 is measured only where the CPU has it natively: elsewhere torch emulates it, slowly.

Prints a table and writes ``benchmarks/results/training_throughput.json``, with the 1-minute
load average before and after each setting (on a shared machine, other work competes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.local_pipeline import machine  # noqa: E402
from components.embedding import cpu_has_native_bf16  # noqa: E402
from components.train import TrainConfig, fine_tune, resolve_precision  # noqa: E402

MODEL = "builtin:multilingual-e5-small"
REFERENCE = dict(train_group_size=8, per_device_train_batch_size=4, query_max_len=64, passage_max_len=128,
                 precision="auto", freeze_word_embeddings=False)
SETTINGS: dict[str, dict] = {
    "reference (group 8, batch 4)": {},
    "fp32": {"precision": "fp32"},
    "freeze word embeddings": {"freeze_word_embeddings": True},
    "freeze + group 4, batch 8": {"freeze_word_embeddings": True, "train_group_size": 4,
                                  "per_device_train_batch_size": 8},
    "freeze + group 4, batch 8, fp32": {"freeze_word_embeddings": True, "train_group_size": 4,
                                        "per_device_train_batch_size": 8, "precision": "fp32"},
    "freeze + passages 64": {"freeze_word_embeddings": True, "passage_max_len": 64},
    "freeze + 2 processes (gloo)": {"freeze_word_embeddings": True, "nproc_per_node": 2,
                                    "per_device_train_batch_size": 2},
    "freeze + group 4, batch 32": {"freeze_word_embeddings": True, "train_group_size": 4,
                                   "per_device_train_batch_size": 32},
    "freeze + group 8, batch 16": {"freeze_word_embeddings": True, "per_device_train_batch_size": 16},
}


def _training_rows(data_dir: Path, count: int, work: Path) -> Path:
    """Rows with 10 negatives and scores; negatives are other rows' positives (the
    throughput does not depend on how they were chosen)."""
    rows = [json.loads(line) for line in (data_dir / "train.jsonl").open(encoding="utf-8")][: count + 10]
    out = work / "rows.jsonl"
    with out.open("w", encoding="utf-8") as handle:
        for i, row in enumerate(rows[:count]):
            negatives = [rows[(i + k) % len(rows)]["pos"][0] for k in range(1, 11)]
            handle.write(json.dumps({"query": row["query"], "pos": row["pos"][:1], "neg": negatives,
                                     "pos_scores": [1.0], "neg_scores": [0.5] * 10}, ensure_ascii=False) + "\n")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "cmrc_drcd_zh")
    parser.add_argument("--samples", type=int, default=160, help="training queries per setting")
    parser.add_argument("--settings", nargs="*", help="only these settings (names as in the table)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "training_throughput.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    results = []
    with tempfile.TemporaryDirectory(prefix="throughput-") as folder:
        work = Path(folder)
        data = _training_rows(args.data_dir, 400, work)
        for name, overrides in SETTINGS.items():
            if args.settings and name not in args.settings and name != next(iter(SETTINGS)):
                continue
            settings = {**REFERENCE, **overrides}
            if settings["precision"] == "fp32" and resolve_precision("auto") == "fp32":
                continue  # the reference already is fp32 on this CPU
            nproc = settings.pop("nproc_per_node", 1)
            steps = max(5, args.samples // (settings["per_device_train_batch_size"] * nproc))
            config = TrainConfig(model=MODEL, max_steps=steps, deepspeed=False, gradient_checkpointing=False,
                                 nproc_per_node=nproc, logging_steps=steps, save_steps=10**6, **settings)
            started, load_before = time.time(), os.getloadavg()[0]
            summary = fine_tune(data, work / name.replace(" ", "_").replace(",", ""), config).summary
            # The machine may be shared: the load average before and after tells a reader
            # whether a setting ran against other work.
            results.append({"setting": name, "overrides": overrides, "steps": steps,
                            "precision": resolve_precision(settings["precision"]), "samples_per_second":
                            summary["train_samples_per_second"], "train_runtime_s": summary["train_runtime_s"],
                            "wall_s": round(time.time() - started, 1),
                            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]})

    reference = results[0]["samples_per_second"]
    table = Table(title=f"FlagEmbedding training throughput, e5-small, about {args.samples} queries per setting")
    for column in ("setting", "samples/s", "vs reference"):
        table.add_column(column, justify="right" if column != "setting" else "left")
    for row in results:
        row["speedup"] = round(row["samples_per_second"] / reference, 2)
        table.add_row(row["setting"], f"{row['samples_per_second']:.2f}", f"{row['speedup']:.2f}x")
    Console().print(table)
    payload = {"benchmark": "training_throughput", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
               "samples": args.samples, "native_bf16": cpu_has_native_bf16(), "reference": REFERENCE,
               "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".json.partial")
    temporary.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
