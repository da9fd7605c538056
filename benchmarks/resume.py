"""Benchmark: training time lost when a node of the two-node job dies halfway, and S3 traffic per checkpoint.

Runs the training job's very entrypoint (``searchtune train-replica``) as two "nodes" on
this machine (gloo over 127.0.0.1, the Training Operator's variables, a SeaweedFS S3
store), three times over the same inputs:

1. **uninterrupted** (the peer): start to sealed model;
2. **interrupted**: when the newest complete checkpoint reaches ``--kill-at`` of the
   steps, node 1 is killed (the whole process tree, as a lost pod); the Master fails;
3. **resumed**: both nodes restart and resume from the newest complete checkpoint.

Time lost = (attempt 2 until the kill + attempt 3) - uninterrupted. The target is at
most one checkpoint interval (``--save-steps`` steps at the measured step time) plus one
start-up (process start to the first training step, measured in the uninterrupted run).
For comparison, a job without checkpoints in S3 would lose everything done before the
kill. S3 bytes per checkpoint are what the store holds for one complete checkpoint (all
nodes' parts); upload times come from the nodes' logs.

Prints a table and writes ``benchmarks/results/resume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.local_pipeline import machine  # noqa: E402
from components.checkpoint_store import CheckpointStore  # noqa: E402
from components.object_store import download_file, upload_file, upload_folder  # noqa: E402
from tests.replica_nodes import scored_rows, start_run, write_rows  # noqa: E402
from tests.s3_server import SeaweedServer, free_port  # noqa: E402

# Not anchored: the line can follow tqdm's progress bar on the same line.
_TRAINING_START = re.compile(r"(\d\d/\d\d/\d{4} \d\d:\d\d:\d\d) - WARNING - __main__ -\s+training starts at step")
_UPLOAD = re.compile(r"uploaded checkpoint (\d+) \(node (\d+) of \d+\): (\d+) bytes in ([0-9.]+) s")


def _training_started(log: str) -> float:
    match = _TRAINING_START.search(log)
    if not match:
        raise RuntimeError("no training start in the Master's log:\n" + log[-3000:])
    return datetime.strptime(match.group(1), "%m/%d/%Y %H:%M:%S").timestamp()


def _e5_shaped_bert(folder: Path, rows: list[dict]) -> Path:
    """A random BERT with multilingual-e5-small's encoder (12 layers, 384 wide) over a
    character vocabulary: e5-small's training cost without its 96 M-parameter vocabulary
    (whose compressible 4-bit-rounded weights the local SeaweedFS stores slowly)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from components.model_profiles import ModelProfile, write_model_profile

    folder.mkdir(parents=True)
    texts = [row["query"] for row in rows] + [text for row in rows for text in row["pos"] + row["neg"]]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({c for t in texts for c in t if not c.isspace()})
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=False).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=128)).save_pretrained(folder)
    write_model_profile(folder, ModelProfile(pooling="cls", query_max_len=32, passage_max_len=32))
    return folder


def _summary(uri: str, folder: Path) -> dict:
    return json.loads(download_file(f"{uri}/training_summary.json", folder / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="",
                        help="the student (a builtin name or a local folder; default: a random BERT of "
                             "e5-small's shape with a character vocabulary); uploaded to S3 as a sealed folder")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the steps")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "resume.json")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, S3 data) for inspection")
    args = parser.parse_args()

    from components.model_profiles import resolve_model

    work = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    print(f"work folder: {work}", flush=True)
    try:
        server = SeaweedServer(work / "s3").start()
        os.environ.update(server.environment)
        try:
            rows = scored_rows(copies=8)
            student = resolve_model(args.model).path if args.model else _e5_shaped_bert(work / "student", rows)
            upload_folder(student, "s3://data/bench/models/student")
            upload_file(write_rows(work / "rows.jsonl", rows), "s3://data/bench/scored_train")
            common = ["--train-data", "s3://data/bench/scored_train", "--model", "s3://data/bench/models/student",
                      "--train-group-size", "4", "--query-max-len", "32", "--passage-max-len", "32",
                      "--per-device-train-batch-size", "2", "--num-train-epochs", "100",
                      "--max-steps", str(args.max_steps), "--save-steps", str(args.save_steps), "--logging-steps",
                      "1", "--precision", "fp32", "--deepspeed", "false", "--gradient-checkpointing", "false",
                      "--learning-rate", "1e-5", "--seed", "7"]

            def arguments(run: str) -> list[str]:
                return [*common, "--output", f"s3://data/bench/{run}/model",
                        "--checkpoint-uri", f"s3://data/bench/{run}/checkpoints"]

            # 1. uninterrupted
            (work / "peer").mkdir()
            started = time.time()
            peer = start_run(work / "peer", "pytorchjob", 2, free_port(), arguments("peer"), server.environment, "run")
            if peer.wait(7200) != [0, 0]:
                raise RuntimeError(peer.nodes[0].log()[-3000:])
            uninterrupted_s = time.time() - started
            peer_summary = _summary("s3://data/bench/peer/model", work / "peer")
            startup_s = _training_started(peer.nodes[0].log()) - started
            step_s = peer_summary["train_runtime_s"] / args.max_steps
            uploads = [(int(s), int(n), int(b), float(t)) for s, n, b, t in _UPLOAD.findall(
                peer.nodes[0].log() + peer.nodes[1].log())]

            # 2. interrupted at kill_at
            (work / "job").mkdir()
            store = CheckpointStore("s3://data/bench/job/checkpoints")
            port = free_port()
            started = time.time()
            first = start_run(work / "job", "pytorchjob", 2, port, arguments("job"), server.environment, "attempt1")
            target_step = int(args.max_steps * args.kill_at)
            while (store.newest_complete().step if store.newest_complete() else 0) < target_step:
                if first.nodes[0].process.poll() is not None:
                    raise RuntimeError("the job ended before the kill:\n" + first.nodes[0].log()[-3000:])
                time.sleep(0.1)
            first.nodes[1].kill()
            killed_s = time.time() - started
            first.nodes[0].process.wait(timeout=600)
            first.kill()
            resumed_from = store.newest_complete().step
            steps_done = len(re.findall(r"\{'loss'", first.nodes[0].log()))
            checkpoint_bytes = store.bytes_of(resumed_from)

            # 3. resumed
            started = time.time()
            second = start_run(work / "job", "pytorchjob", 2, port, arguments("job"), server.environment, "attempt2")
            if second.wait(7200) != [0, 0]:
                raise RuntimeError(second.nodes[0].log()[-3000:])
            resumed_s = time.time() - started
            summary = _summary("s3://data/bench/job/model", work / "job")
        finally:
            server.stop()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    model_name = args.model or "random BERT, e5-small's encoder"
    lost_s = killed_s + resumed_s - uninterrupted_s
    target_s = args.save_steps * step_s + startup_s
    upload_by_step: dict[int, dict] = {}
    for step, node, size, seconds in uploads:
        entry = upload_by_step.setdefault(step, {"bytes": 0, "slowest_node_upload_s": 0.0})
        entry["bytes"] += size
        entry["slowest_node_upload_s"] = max(entry["slowest_node_upload_s"], seconds)
    result = {
        "benchmark": "resume", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "model": model_name, "nodes": 2, "processes_per_node": 1, "max_steps": args.max_steps,
        "save_steps": args.save_steps, "kill_at": args.kill_at,
        "uninterrupted_s": round(uninterrupted_s, 1), "startup_s": round(startup_s, 1), "step_s": round(step_s, 3),
        "killed_after_s": round(killed_s, 1), "steps_done_before_kill": steps_done,
        "resumed_from_step": resumed_from, "resumed_attempt_s": round(resumed_s, 1),
        "final_global_step": summary["global_step"], "peer_global_step": peer_summary["global_step"],
        "time_lost_s": round(lost_s, 1), "target_s": round(target_s, 1), "target_met": lost_s <= target_s,
        "lost_without_store_checkpoints_s": round(killed_s, 1),
        "checkpoint_bytes_in_store": checkpoint_bytes,
        "uploads_per_checkpoint": {str(k): v for k, v in sorted(upload_by_step.items())},
    }
    table = Table(title=f"Two-node job killed at {args.kill_at:.0%} and resumed ({model_name}, {args.max_steps} "
                        f"steps, checkpoint every {args.save_steps})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, value in [
        ("uninterrupted run (peer)", f"{uninterrupted_s:.1f} s"), ("start-up to first step", f"{startup_s:.1f} s"),
        ("step time", f"{step_s:.2f} s"), ("killed after / steps done", f"{killed_s:.1f} s / {steps_done}"),
        ("resumed from step", str(resumed_from)), ("resumed attempt", f"{resumed_s:.1f} s"),
        ("time lost", f"{lost_s:.1f} s"), ("target (interval + start-up)", f"{target_s:.1f} s"),
        ("lost without store checkpoints", f"{killed_s:.1f} s"),
        ("S3 bytes per checkpoint (all nodes)", f"{checkpoint_bytes / 1e6:.1f} MB"),
        ("final steps (resumed / uninterrupted)", f"{summary['global_step']} / {peer_summary['global_step']}"),
    ]:
        table.add_row(label, value)
    Console().print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".json.partial")
    temporary.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
