"""Step 4: fine-tune with FlagEmbedding's encoder-only embedder under torchrun.

:class:`TrainConfig` holds every flag of the recipe; :func:`build_flag_arguments` turns
it into FlagEmbedding's command-line flags (a test parses them with FlagEmbedding's own
argument dataclasses), :func:`build_torchrun_command` wraps them for torchrun (a local
run, or a Kubeflow PyTorchJob replica that gets its rendezvous from the PET_* variables),
and :func:`fine_tune` runs it and turns FlagEmbedding's output into a model that
FlagEmbedding, transformers and sentence-transformers load with the same pooling.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from components.config_values import check_config
from components.embedding import cpu_has_native_bf16
from components.encoding_profiles import ModelProfile, write_model_profile
from components.jsonl_files import DataError, atomic_path, read_jsonl_objects, write_json, write_jsonl
from components.model_profiles import ProfileOverrides, ResolvedModel, resolve_model

logger = logging.getLogger(__name__)

FLAG_EMBEDDER_MODULE = "FlagEmbedding.finetune.embedder.encoder_only.base"
# Runs FlagEmbedding's own entry point, after freezing the word embeddings.
FROZEN_EMBEDDINGS_MODULE = "components.flag_embedder_entry"
SUMMARY_FILENAME = "training_summary.json"
TRAINING_LOG_FILENAME = "training.log"

Precision = Literal["auto", "fp16", "bf16", "fp32"]
Switch = Literal["auto", "on", "off"]

# FlagEmbedding's examples/finetune/ds_stage0.json: DeepSpeed as a plain DDP engine whose
# "auto" values come from the Trainer's flags.
DEEPSPEED_STAGE0_CONFIG: dict = {
    "zero_optimization": {"stage": 0},
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000,
             "initial_scale_power": 12, "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                              "weight_decay": "auto", "torch_adam": True}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                      "warmup_num_steps": "auto", "total_num_steps": "auto"}},
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "steps_per_print": 100,
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}


@dataclass(frozen=True)
class TrainConfig:
    """Every flag of the recipe, with the recipe's values as defaults.

    Attributes:
        model: the student to fine-tune (name resolved by ``resolve_model``); its profile
            gives pooling and instructions.
        train_group_size: 1 positive + (n-1) negatives per query.
        query_max_len: query tokens.
        passage_max_len: passage tokens.
        pad_to_multiple_of: pad batches to a multiple of this (tensor-core friendly).
        knowledge_distillation: ``auto`` turns it on when every row has teacher scores.
        kd_loss_type: FlagEmbedding's distillation loss.
        learning_rate: peak learning rate.
        precision: ``auto`` = fp16 on GPU, bf16 on a CPU with native bf16, else fp32.
        num_train_epochs: passes over the data.
        max_steps: stop after this many optimizer steps (-1: run the epochs).
        per_device_train_batch_size: queries per device per step.
        warmup_ratio: share of steps warming up.
        weight_decay: AdamW weight decay.
        gradient_checkpointing: recompute activations to save memory.
        deepspeed: run under DeepSpeed with the stage-0 config.
        negatives_cross_device: ``auto`` = on when the world size is above 1.
        temperature: similarity temperature of the contrastive loss.
        freeze_word_embeddings: keep the word-embedding matrix fixed (on CPU most of a step
            is AdamW over it; e5-small's is 96 M of 118 M parameters).
        fix_position_embedding: FlagEmbedding's flag to freeze position embeddings.
        logging_steps: log the loss every n steps.
        save_steps: checkpoint every n steps.
        keep_checkpoints: keep ``checkpoint-*`` folders in the output.
        seed: seeds data order and initialization.
        nnodes: nodes (PyTorchJob replicas).
        nproc_per_node: processes per node (GPUs per node on a cluster).
        dataloader_num_workers: data-loading workers per process.
        profile: pooling / normalize / instruction overrides for ``model``; the profile's
            ``normalize`` is FlagEmbedding's ``normalize_embeddings``, and the saved model's
            profile records what it was trained with.
    """

    model: str = "BAAI/bge-large-zh-v1.5"
    train_group_size: int = 8
    query_max_len: int = 512
    passage_max_len: int = 512
    pad_to_multiple_of: int = 8
    knowledge_distillation: Switch = "auto"
    kd_loss_type: Literal["kl_div", "m3_kd_loss"] = "kl_div"
    learning_rate: float = 1e-5
    precision: Precision = "fp16"
    num_train_epochs: float = 5
    max_steps: int = -1
    per_device_train_batch_size: int = 64
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    gradient_checkpointing: bool = True
    deepspeed: bool = True
    negatives_cross_device: Switch = "auto"
    temperature: float = 0.02
    freeze_word_embeddings: bool = False
    fix_position_embedding: bool = False
    logging_steps: int = 10
    save_steps: int = 1000
    keep_checkpoints: bool = False
    seed: int = 42
    nnodes: int = 1
    nproc_per_node: int = 2
    dataloader_num_workers: int = 0
    profile: ProfileOverrides = field(default_factory=ProfileOverrides, metadata={"flag_prefix": ""})

    def __post_init__(self) -> None:
        check_config(self)
        if self.per_device_train_batch_size < 1:
            raise ValueError("per_device_train_batch_size must be at least 1")
        if self.train_group_size < 2:
            raise ValueError("train_group_size must be at least 2 (a positive and a negative)")
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise ValueError("nnodes and nproc_per_node must be at least 1")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


@dataclass(frozen=True)
class TrainResult:
    """What :func:`fine_tune` produced."""

    model_dir: Path
    summary: dict


def resolve_precision(precision: Precision) -> Literal["fp16", "bf16", "fp32"]:
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def _switch(value: Switch, automatic: bool) -> bool:
    return automatic if value == "auto" else value == "on"


def build_flag_arguments(
    config: TrainConfig,
    model: ResolvedModel,
    train_data: str | os.PathLike,
    output_dir: str | os.PathLike,
    knowledge_distillation: bool,
    deepspeed_config: str | os.PathLike | None = None,
    cache_path: str | os.PathLike | None = None,
    row_prompts: bool = False,
) -> list[str]:
    """FlagEmbedding ``encoder_only.base`` flags for this config and model.

    ``row_prompts``: some rows carry a ``prompt``; FlagEmbedding reads it only when a query
    instruction is set, so one is set (empty) for a model that has none.
    """
    profile: ModelProfile = model.profile
    precision = resolve_precision(config.precision)
    cross_device = _switch(config.negatives_cross_device, config.world_size > 1)
    flags: dict[str, object] = {
        "model_name_or_path": model.path,
        "train_data": str(train_data),
        "train_group_size": config.train_group_size,
        "query_max_len": config.query_max_len,
        "passage_max_len": config.passage_max_len,
        "pad_to_multiple_of": config.pad_to_multiple_of,
        "knowledge_distillation": knowledge_distillation,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "learning_rate": config.learning_rate,
        "fp16": precision == "fp16",
        "bf16": precision == "bf16",
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "dataloader_drop_last": True,
        "dataloader_num_workers": config.dataloader_num_workers,
        "warmup_ratio": config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "gradient_checkpointing": config.gradient_checkpointing,
        "logging_steps": config.logging_steps,
        "save_steps": config.save_steps,
        "negatives_cross_device": cross_device,
        "temperature": config.temperature,
        "sentence_pooling_method": profile.pooling,
        "normalize_embeddings": profile.normalize,
        "kd_loss_type": config.kd_loss_type,
        "fix_position_embedding": config.fix_position_embedding,
        "seed": config.seed,
        "report_to": "none",
    }
    if profile.query_instruction or row_prompts:
        flags["query_instruction_for_retrieval"] = profile.query_instruction
        flags["query_instruction_format"] = profile.query_instruction_format
    if profile.passage_instruction:
        flags["passage_instruction_for_retrieval"] = profile.passage_instruction
        flags["passage_instruction_format"] = profile.passage_instruction_format
    if deepspeed_config is not None:
        flags["deepspeed"] = str(deepspeed_config)
    if cache_path is not None:
        flags["cache_path"] = str(cache_path)
    if not torch.cuda.is_available():
        flags["use_cpu"] = True

    arguments: list[str] = []
    for name, value in flags.items():
        arguments += [f"--{name}", str(value)]
    return arguments


def build_torchrun_command(config: TrainConfig, flag_arguments: list[str], pytorchjob: bool = False) -> list[str]:
    """The torchrun command line.

    Args:
        config: gives nodes and processes per node.
        flag_arguments: from :func:`build_flag_arguments`.
        pytorchjob: leave rendezvous to the PET_* and MASTER_* variables a Kubeflow
            PyTorchJob injects (torchrun reads them), instead of a local standalone run.
    """
    module = FROZEN_EMBEDDINGS_MODULE if config.freeze_word_embeddings else FLAG_EMBEDDER_MODULE
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    if pytorchjob:
        # torchrun reads PET_NNODES, PET_NODE_RANK and PET_NPROC_PER_NODE itself, but
        # takes the master only from PET_MASTER_*, which the operator does not set.
        rendezvous = ["--master_addr", os.environ["MASTER_ADDR"], "--master_port", os.environ["MASTER_PORT"]]
    elif config.nnodes == 1:
        rendezvous = ["--standalone", "--nnodes", "1", "--nproc_per_node", str(config.nproc_per_node)]
    else:
        rendezvous = ["--nnodes", str(config.nnodes), "--nproc_per_node", str(config.nproc_per_node)]
    return launcher + rendezvous + ["-m", module] + flag_arguments


def _training_rows(rows: list[dict], path: Path, config: TrainConfig, profile: ModelProfile) -> tuple[list[dict], bool]:
    """Rows as FlagEmbedding reads them, and whether distillation is on."""
    has_scores = all(row.get("pos_scores") is not None and row.get("neg_scores") is not None for row in rows)
    distill = _switch(config.knowledge_distillation, has_scores)
    if distill and not has_scores:
        line = next(i for i, row in enumerate(rows, 1) if row.get("pos_scores") is None or row.get("neg_scores") is None)
        raise DataError(path, line, "pos_scores", "knowledge distillation is on but this row has no teacher scores")
    any_prompt = any(row.get("prompt") for row in rows)
    prepared = []
    for line, row in enumerate(rows, 1):
        if not row.get("neg"):
            raise DataError(path, line, "neg", "no negatives: run the mine step first")
        out = {"query": row["query"], "pos": row["pos"], "neg": row["neg"]}
        if distill:
            out["pos_scores"], out["neg_scores"] = row["pos_scores"], row["neg_scores"]
        # datasets gives rows without a prompt None, which FlagEmbedding would format
        # into the query as "None"; give them the model's own instruction instead.
        if any_prompt:
            out["prompt"] = row.get("prompt") or profile.query_instruction
        prepared.append(out)
    return prepared, distill


_LOG_LINE = re.compile(r"\{'(?:loss|train_runtime)'.*\}")


def _parse_trainer_logs(lines: list[str]) -> list[dict]:
    records = []
    for line in lines:
        match = _LOG_LINE.search(line)
        if match:
            try:
                records.append(ast.literal_eval(match.group(0)))
            except (ValueError, SyntaxError):
                continue
    return records


def _run_streaming(command: list[str], env: dict[str, str], log_path: Path) -> list[str]:
    """Run, echoing output live (the trainer's tqdm bar is the progress), and keep it."""
    lines: list[str] = []
    with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            lines.append(line)
            sys.stderr.write(line)
        code = process.wait()
    if code != 0:
        tail = "".join(lines[-30:])
        raise RuntimeError(f"FlagEmbedding training failed with exit code {code}; last lines:\n{tail}")
    return lines


def _check_optimizer_steps(rows: int, config: TrainConfig) -> int:
    """Optimizer steps per epoch; zero steps is an error that says what to change."""
    per_step = config.per_device_train_batch_size * config.world_size
    steps = rows // per_step  # FlagEmbedding's loader drops the last incomplete batch
    if steps == 0:
        raise ValueError(
            f"{rows} training rows give no optimizer step: a step takes per_device_train_batch_size "
            f"({config.per_device_train_batch_size}) x world size ({config.world_size}) = {per_step} rows and "
            f"the last incomplete batch is dropped; lower per_device_train_batch_size or nproc_per_node/nnodes, "
            f"or give at least {per_step} rows")
    return steps


def fine_tune(
    train_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: TrainConfig = TrainConfig(),
) -> TrainResult:
    """Fine-tune ``config.model`` on scored rows and save a model every loader agrees on.

    Args:
        train_path: rows with ``neg`` (and ``pos_scores``/``neg_scores`` for distillation).
        output_dir: receives the fine-tuned model (written as a whole at the end).
        config: the recipe's flags.

    Raises:
        ValueError: the rows give no optimizer step, or training logged no loss (nothing
            was learned: no model is written).
    """
    train_path = Path(train_path)
    output_dir = Path(output_dir)
    base = resolve_model(config.model, config.profile)
    profile = base.profile.with_max_lengths(config.query_max_len, config.passage_max_len)
    base = replace(base, profile=profile)
    rows, distill = _training_rows(read_jsonl_objects(train_path), train_path, config, profile)
    steps_per_epoch = _check_optimizer_steps(len(rows), config)
    # FlagEmbedding fills a short group by drawing negatives again, with replacement.
    short = sum(len(row["neg"]) < config.train_group_size - 1 for row in rows)
    if short:
        logger.warning("%d of %d rows have fewer than train_group_size - 1 = %d negatives; FlagEmbedding "
                       "repeats negatives to fill their groups", short, len(rows), config.train_group_size - 1)

    work = output_dir.parent / f".{output_dir.name}.training"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        return _train_in(work, rows, distill, base, output_dir, config,
                         {"rows_short_of_negatives": short, "steps_per_epoch": steps_per_epoch})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _train_in(work: Path, rows: list[dict], distill: bool, base: ResolvedModel, output_dir: Path,
              config: TrainConfig, data_summary: dict) -> TrainResult:
    """Run FlagEmbedding in the scratch folder ``work`` and save the model to ``output_dir``."""
    profile = base.profile
    data_file = work / "train_data.jsonl"
    write_jsonl(data_file, rows)
    deepspeed_file = None
    if config.deepspeed:
        deepspeed_file = work / "ds_stage0.json"
        write_json(deepspeed_file, DEEPSPEED_STAGE0_CONFIG)

    trained = work / "model"
    flags = build_flag_arguments(config, base, data_file, trained, distill, deepspeed_file, work / "datasets_cache",
                                 row_prompts=any("prompt" in row for row in rows))
    # Inside a Kubeflow PyTorchJob replica the operator has set the rendezvous variables.
    command = build_torchrun_command(config, flags, pytorchjob="PET_NNODES" in os.environ)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.nproc_per_node)))
    if base.is_local:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    logger.info("training: %s", " ".join(command))
    lines = _run_streaming(command, env, work / "train.log")

    records = _parse_trainer_logs(lines)
    losses = [r["loss"] for r in records if "loss" in r]
    runtime = next((r for r in records if "train_runtime" in r), {})
    final_loss = losses[-1] if losses else runtime.get("train_loss")
    node_rank = int(os.environ.get("PET_NODE_RANK", "0"))
    # The Trainer logs on the first node only, and reports a train_loss of 0 when it took
    # no step at all.
    if node_rank == 0 and (final_loss is None or final_loss != final_loss or (not losses and final_loss == 0)):
        raise ValueError(
            f"training logged no loss, so nothing was learned and no model is written (optimizer steps per "
            f"epoch: {data_summary['steps_per_epoch']}, max_steps: {config.max_steps}); the trainer's output is above")
    summary = {
        "base_model": config.model,
        "knowledge_distillation": distill,
        "precision": resolve_precision(config.precision),
        "world_size": config.world_size,
        "train_rows": len(rows),
        **data_summary,
        "profile": profile.to_dict(),
        "losses": losses,
        "final_loss": final_loss,
        "train_runtime_s": runtime.get("train_runtime"),
        "train_samples_per_second": runtime.get("train_samples_per_second"),
        "config": asdict(config),
        "command": command,
    }
    if node_rank != 0:
        # Only the first node's main process saves the model (the Trainer's rule).
        logger.info("node %s done; node 0 writes the model", os.environ["PET_NODE_RANK"])
        return TrainResult(model_dir=output_dir, summary=summary)
    with atomic_path(output_dir) as staged:
        shutil.copytree(trained, staged, ignore=None if config.keep_checkpoints
                        else shutil.ignore_patterns("checkpoint-*"))
        # The saved profile is the one trained with: pooling, instructions, normalization.
        write_model_profile(staged, profile)
        shutil.copy2(work / "train.log", staged / TRAINING_LOG_FILENAME)
        (staged / SUMMARY_FILENAME).write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n",
                                               encoding="utf-8")
    logger.info("fine-tuned model in %s (final loss %s)", output_dir, summary["final_loss"])
    return TrainResult(model_dir=output_dir, summary=summary)
