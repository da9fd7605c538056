"""Training-job "nodes" on 127.0.0.1: each runs ``searchtune train-replica`` in its own process group.

A node gets exactly the variables its operator injects (see
``components.replica_environment``), the S3 server's credentials, and a scratch folder
of its own, so nothing but the S3 store and the rendezvous port is shared, as between
pods. The resume test and ``benchmarks/resume.py`` both drive runs through this.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO_ROOT, TINY_DISTRACTORS, TINY_ROWS

SEARCHTUNE = str(Path(sys.executable).parent / "searchtune")


def operator_variables(kind: str, rank: int, nnodes: int, port: int, nproc: int = 1) -> dict[str, str]:
    """What the Training Operator (``pytorchjob``) or Trainer v2 (``trainjob``) sets in a replica."""
    if kind == "pytorchjob":  # Training Operator v1.9, non-elastic, nprocPerNode set
        return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nnodes * nproc),
                "RANK": str(rank), "PET_NNODES": str(nnodes), "PET_NODE_RANK": str(rank),
                "PET_NPROC_PER_NODE": str(nproc), "PYTHONUNBUFFERED": "1"}
    if kind == "trainjob":  # Trainer v2 torch plugin: PET_* only
        return {"PET_NNODES": str(nnodes), "PET_NODE_RANK": str(rank), "PET_NPROC_PER_NODE": str(nproc),
                "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
    raise ValueError(kind)


def scored_rows(copies: int = 1) -> list[dict]:
    """The tiny rows with negatives and teacher scores (``copies`` times, queries made unique)."""
    rows = []
    for copy in range(copies):
        for i, row in enumerate(TINY_ROWS):
            suffix = "" if copy == 0 else f" {copy}"
            rows.append({"query": row["query"] + suffix, "pos": row["pos"],
                         "neg": [TINY_DISTRACTORS[(i + k) % len(TINY_DISTRACTORS)] for k in range(4)],
                         "pos_scores": [40.0], "neg_scores": [30.0 - k for k in range(4)]})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@dataclass
class Node:
    rank: int
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole node, as a lost pod: the replica, torchrun's agent and its workers
        (torchrun starts each worker in a session of its own, so a process group is not enough)."""
        import psutil

        try:
            tree = psutil.Process(self.process.pid)
            processes = [tree, *tree.children(recursive=True)]
        except psutil.NoSuchProcess:
            processes = []
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.process.wait(timeout=60)
        psutil.wait_procs(processes, timeout=60)


@dataclass
class TrainingRun:
    """One attempt of a job: ``nnodes`` replicas started together."""

    nodes: list[Node] = field(default_factory=list)

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for node in self.nodes:
            try:
                codes.append(node.process.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"node {node.rank} did not finish in {timeout:.0f} s:\n{node.log()[-3000:]}")
        return codes

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


def start_run(folder: Path, kind: str, nnodes: int, port: int, arguments: list[str], s3_environment: dict,
              attempt: str) -> TrainingRun:
    """Start every replica of one attempt; logs go to ``folder/<attempt>-node<rank>.log``."""
    run = TrainingRun()
    for rank in range(nnodes):
        scratch = folder / f"node{rank}"
        environment = {**os.environ, **s3_environment, **operator_variables(kind, rank, nnodes, port),
                       "PYTHONPATH": str(REPO_ROOT), "SEARCHTUNE_WORK_DIR": str(scratch),
                       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       # two "nodes" share this machine's cores
                       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
        log_path = folder / f"{attempt}-node{rank}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen([SEARCHTUNE, "train-replica", *arguments], env=environment, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        run.nodes.append(Node(rank, process, log_path))
    return run
