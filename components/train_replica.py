"""What every pod of the training job runs: ``searchtune train-replica``.

One replica of a Kubeflow PyTorchJob (or TrainJob):

1. reads the job's topology from the operator's variables (``PET_*`` or ``MASTER_*``)
   and sizes its thread pools from the pod's CPU limit (``components.replica_environment``);
2. fetches the scored rows (an ``s3://`` object) and the base model (a sealed ``s3://``
   folder, refused when incomplete, or a name the image resolves offline);
3. fetches the newest *complete* checkpoint of this run, if any, from the checkpoint
   store (``components.checkpoint_store``) and resumes from it: weights, optimizer,
   scheduler, trainer state and each process's random state;
4. trains with FlagEmbedding under torchrun (``components.resumable_embedder_entry``),
   every node uploading its part of each checkpoint as it is saved;
5. on the Master, writes the fine-tuned model (the same folder ``components.train``
   writes) and uploads it with its completion marker last.

A replica restarted after the model was sealed finds it complete and exits at once, so
a restart is always safe.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

from components.checkpoint_store import CheckpointStore
from components.jsonl_files import DataError, atomic_path, read_jsonl_objects, write_json, write_jsonl
from components.model_profiles import ProfileOverrides, resolve_model, write_model_profile
from components.object_store import copy_folder, download_file, download_folder, is_complete_folder, is_s3_uri
from components.replica_environment import ReplicaTopology, thread_environment
from components.train import (
    DEEPSPEED_STAGE0_CONFIG,
    SUMMARY_FILENAME,
    TRAINING_LOG_FILENAME,
    TrainConfig,
    _parse_trainer_logs,
    _run_streaming,
    _training_rows,
    build_flag_arguments,
    resolve_precision,
)

logger = logging.getLogger(__name__)

ENTRY_MODULE = "components.resumable_embedder_entry"
WORK_DIR_VARIABLE = "SEARCHTUNE_WORK_DIR"
# How the replica configures ENTRY_MODULE in its torchrun processes (FlagEmbedding's
# argument parser refuses flags it does not know).
CHECKPOINT_URI_VARIABLE = "SEARCHTUNE_CHECKPOINT_URI"
KEEP_CHECKPOINTS_VARIABLE = "SEARCHTUNE_KEEP_STORE_CHECKPOINTS"
FREEZE_VARIABLE = "SEARCHTUNE_FREEZE_WORD_EMBEDDINGS"
STAGING_FOLDER = ".store-upload"  # checkpoints hard-linked aside while they upload


@dataclass(frozen=True)
class ReplicaConfig:
    """One replica's inputs and outputs.

    Attributes:
        train_data: the scored rows: an ``s3://`` object or a local JSONL file.
        output: where the Master writes the fine-tuned model: an ``s3://`` prefix or a
            local folder, sealed with a completion marker either way.
        checkpoint_uri: ``s3://`` prefix for this run's checkpoints (empty: checkpoints
            stay in the pod, and a restarted job starts over).
        keep_store_checkpoints: complete checkpoints kept in the store (older ones are
            deleted as new ones complete).
        work_dir: local scratch (default: ``$SEARCHTUNE_WORK_DIR``, else the temporary folder).
        train: the recipe's flags; ``train.model`` may also be a sealed ``s3://`` folder.
            The job, not this config, decides nodes and processes per node.
    """

    train_data: str
    output: str
    checkpoint_uri: str = ""
    keep_store_checkpoints: int = 2
    work_dir: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.checkpoint_uri and not is_s3_uri(self.checkpoint_uri):
            raise ValueError(f"checkpoint_uri: must be an s3:// prefix, got {self.checkpoint_uri!r}")
        if self.keep_store_checkpoints < 1:
            raise ValueError("keep_store_checkpoints: must be at least 1")


@dataclass(frozen=True)
class ReplicaResult:
    """What one replica did.

    Attributes:
        topology: where it sat in the job.
        resumed_from_step: the checkpoint step it resumed from (None: from the base model).
        global_step: optimizer steps done when training ended (None on a non-Master node).
        output: the model's location (the Master only).
        summary: what the Master wrote as ``training_summary.json``.
    """

    topology: ReplicaTopology
    resumed_from_step: int | None
    global_step: int | None
    output: str | None
    summary: dict


def _fetch_rows(location: str, work: Path) -> tuple[list[dict], Path]:
    if not is_s3_uri(location):
        return read_jsonl_objects(location), Path(location)
    local = download_file(location, work / "scored_train.jsonl")
    try:
        return read_jsonl_objects(local), local
    except DataError as error:
        raise DataError(location, error.line, error.field, error.problem) from None


def _fetch_model(name: str, work: Path, overrides: ProfileOverrides):
    if is_s3_uri(name):
        # The folder keeps the model's own name, which is how a profile is recognized.
        local = download_folder(name, work / "base" / name.rstrip("/").rsplit("/", 1)[-1])
        return replace(resolve_model(local, overrides), name=name)
    return resolve_model(name, overrides)


def _global_step(model_dir: Path) -> int | None:
    """The step of the newest checkpoint (the Trainer saves one when training ends)."""
    steps = [int(path.name.split("-", 1)[1]) for path in model_dir.glob("checkpoint-*")
             if path.name.split("-", 1)[1].isdigit()]
    return max(steps) if steps else None


def run_replica(config: ReplicaConfig, environ: Mapping[str, str] | None = None) -> ReplicaResult:
    """Run this pod's share of the training job (see the module docstring).

    Args:
        config: inputs, outputs and the recipe's flags.
        environ: the pod's variables (default: this process's).

    Raises:
        DataError: bad rows, named by their URI and line.
        IncompleteFolderError: the base model's folder has no completion marker.
        TopologyError: the operator's variables are missing or contradict each other.
        RuntimeError: training failed (its last log lines say why).
    """
    environ = dict(os.environ if environ is None else environ)
    topology = ReplicaTopology.from_environment(environ, config.train.nproc_per_node)
    train = replace(config.train, nnodes=topology.nnodes, nproc_per_node=topology.nproc_per_node)
    logger.info("replica %d of %d, %d process(es) each (world size %d)", topology.node_rank, topology.nnodes,
                topology.nproc_per_node, topology.world_size)
    if is_complete_folder(config.output):
        logger.info("%s is already complete: nothing to do", config.output)
        return ReplicaResult(topology, None, None, config.output if topology.is_master else None, {})

    work = Path(config.work_dir or environ.get(WORK_DIR_VARIABLE) or tempfile.gettempdir()) / "searchtune-replica"
    # A container restarted in place finds its previous files; the store is the truth.
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows, rows_path = _fetch_rows(config.train_data, work)
    base = _fetch_model(train.model, work, train.profile)
    profile = base.profile.with_max_lengths(train.query_max_len, train.passage_max_len)
    base = replace(base, profile=profile)
    prepared, distill = _training_rows(rows, config.train_data if is_s3_uri(config.train_data) else rows_path,
                                       train, profile)
    data_file = work / "train_data.jsonl"
    write_jsonl(data_file, prepared)
    deepspeed_file = None
    if train.deepspeed:
        deepspeed_file = work / "ds_stage0.json"
        write_json(deepspeed_file, DEEPSPEED_STAGE0_CONFIG)

    trained = work / "model"
    trained.mkdir()
    resumed_from = None
    store = CheckpointStore(config.checkpoint_uri) if config.checkpoint_uri else None
    if store is not None:
        newest = store.newest_complete()
        if newest is not None:
            local = store.download(newest, topology.node_rank, trained / newest.name)
            resumed_from = newest.step
            logger.info("resuming from %s/%s (step %d)", store.uri, newest.name, newest.step)
        else:
            logger.info("no complete checkpoint in %s: starting from %s", store.uri, train.model)

    flags = build_flag_arguments(train, base, data_file, trained, distill, deepspeed_file, work / "datasets_cache")
    # One local checkpoint is enough: the store keeps the history.
    flags += ["--save_total_limit", "1"]
    if resumed_from is not None:
        flags += ["--resume_from_checkpoint", str(local)]
    command = [sys.executable, "-m", "torch.distributed.run", *topology.torchrun_arguments(), "-m", ENTRY_MODULE,
               *flags]
    env = {**environ, **thread_environment(topology.nproc_per_node, environ),
           CHECKPOINT_URI_VARIABLE: config.checkpoint_uri,
           KEEP_CHECKPOINTS_VARIABLE: str(config.keep_store_checkpoints),
           FREEZE_VARIABLE: "1" if train.freeze_word_embeddings else "0"}
    if base.is_local:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    logger.info("training: %s", " ".join(command))
    lines = _run_streaming(command, env, work / "train.log")

    global_step = _global_step(trained)
    if not topology.is_master:
        logger.info("node %d done at step %s; the Master writes the model", topology.node_rank, global_step)
        shutil.rmtree(work, ignore_errors=True)
        return ReplicaResult(topology, resumed_from, global_step, None, {})

    records = _parse_trainer_logs(lines)
    losses = [r["loss"] for r in records if "loss" in r]
    runtime = next((r for r in records if "train_runtime" in r), {})
    summary = {
        "base_model": train.model,
        "knowledge_distillation": distill,
        "precision": resolve_precision(train.precision),
        "world_size": topology.world_size,
        "nodes": topology.nnodes,
        "train_rows": len(prepared),
        "global_step": global_step,
        "resumed_from_step": resumed_from,
        "checkpoint_uri": config.checkpoint_uri,
        "losses": losses,
        "final_loss": losses[-1] if losses else runtime.get("train_loss"),
        "train_runtime_s": runtime.get("train_runtime"),
        "train_samples_per_second": runtime.get("train_samples_per_second"),
        "config": asdict(train),
        "command": command,
    }
    with atomic_path(work / "final") as staged:
        skipped = (STAGING_FOLDER,) if train.keep_checkpoints else ("checkpoint-*", STAGING_FOLDER)
        shutil.copytree(trained, staged, ignore=shutil.ignore_patterns(*skipped))
        write_model_profile(staged, profile)
        shutil.copy2(work / "train.log", staged / TRAINING_LOG_FILENAME)
        (staged / SUMMARY_FILENAME).write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n",
                                               encoding="utf-8")
    copy_folder(work / "final", config.output)
    shutil.rmtree(work, ignore_errors=True)
    logger.info("fine-tuned model in %s (step %s, final loss %s)", config.output, global_step, summary["final_loss"])
    return ReplicaResult(topology, resumed_from, global_step, config.output, summary)
