"""train: flags parse with FlagEmbedding's own dataclasses; real torchrun runs on CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from components.jsonl_files import DataError
from components.encoding_profiles import read_model_profile
from components.model_profiles import (
    BGE_ZH_PROFILE,
    BGE_ZH_QUERY_INSTRUCTION,
    ProfileOverrides,
    ResolvedModel,
    resolve_model,
)
from components.train import TrainConfig, build_flag_arguments, build_torchrun_command, fine_tune
from tests.conftest import TINY_DISTRACTORS, TINY_ROWS

pytestmark = pytest.mark.slow

SMALL = dict(train_group_size=4, query_max_len=32, passage_max_len=32, num_train_epochs=1,
             per_device_train_batch_size=2, precision="auto", gradient_checkpointing=False,
             logging_steps=1, deepspeed=False)


def _scored_rows(path: Path, with_scores: bool = True) -> Path:
    rows = []
    for i, row in enumerate(TINY_ROWS):
        negatives = [TINY_DISTRACTORS[(i + k) % 12] for k in range(4)]
        out = {**row, "neg": negatives}
        if with_scores:
            out["pos_scores"] = [40.0]
            out["neg_scores"] = [30.0 - k for k in range(4)]
        rows.append(out)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def restore_environment():
    """TrainingArguments with DeepSpeed/bf16 sets ACCELERATE_* variables in this process;
    they must not leak into the torchrun children of later tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _parse_with_flagembedding(arguments: list[str]):
    from FlagEmbedding.finetune.embedder.encoder_only.base import (
        EncoderOnlyEmbedderDataArguments,
        EncoderOnlyEmbedderModelArguments,
        EncoderOnlyEmbedderTrainingArguments,
    )
    from transformers import HfArgumentParser

    parser = HfArgumentParser((EncoderOnlyEmbedderModelArguments, EncoderOnlyEmbedderDataArguments,
                               EncoderOnlyEmbedderTrainingArguments))
    return parser.parse_args_into_dataclasses(args=arguments, return_remaining_strings=True)


def test_recipe_flags_parse_with_flagembedding_argument_dataclasses(tmp_path, tiny_bert):
    data = _scored_rows(tmp_path / "train.jsonl")
    model = ResolvedModel("BAAI/bge-large-zh-v1.5", str(tiny_bert), BGE_ZH_PROFILE)
    # The recipe trains in fp16 on GPUs; this CPU can't build fp16 TrainingArguments, so
    # the same flags are parsed with bf16 and fp16 is checked on the flag list itself.
    recipe = TrainConfig()
    flags = build_flag_arguments(recipe, model, data, tmp_path / "out", knowledge_distillation=True,
                                 deepspeed_config=tmp_path / "ds.json")
    assert flags[flags.index("--fp16") + 1] == "True"
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 0}, "train_batch_size": "auto",
                                                  "train_micro_batch_size_per_gpu": "auto"}))
    flags = build_flag_arguments(TrainConfig(precision="bf16"), model, data, tmp_path / "out",
                                 knowledge_distillation=True, deepspeed_config=tmp_path / "ds.json")
    model_args, data_args, training_args, remaining = _parse_with_flagembedding(flags)

    assert remaining == []
    assert model_args.model_name_or_path == str(tiny_bert)
    assert data_args.train_group_size == 8
    assert data_args.query_max_len == data_args.passage_max_len == 512
    assert data_args.pad_to_multiple_of == 8
    assert data_args.knowledge_distillation is True
    assert data_args.query_instruction_for_retrieval == BGE_ZH_QUERY_INSTRUCTION
    assert data_args.query_instruction_format == "{}{}"
    assert data_args.passage_instruction_for_retrieval is None, "the instruction goes on queries only"
    assert training_args.learning_rate == 1e-5
    assert training_args.temperature == 0.02
    assert training_args.sentence_pooling_method == "cls"
    assert training_args.normalize_embeddings is True
    assert training_args.negatives_cross_device is True, "world size 2 shares negatives across devices"
    assert training_args.kd_loss_type == "kl_div"
    assert training_args.num_train_epochs == 5
    assert training_args.per_device_train_batch_size == 64
    assert training_args.warmup_ratio == 0.1
    assert training_args.gradient_checkpointing is True
    assert training_args.deepspeed == str(tmp_path / "ds.json")


def test_e5_profile_gives_mean_pooling_and_both_prefixes(tmp_path, tiny_bert):
    e5 = resolve_model("builtin:multilingual-e5-small")
    flags = build_flag_arguments(TrainConfig(precision="bf16", nproc_per_node=1), e5,
                                 _scored_rows(tmp_path / "t.jsonl"), tmp_path / "out", knowledge_distillation=False)
    _, data_args, training_args, _ = _parse_with_flagembedding(flags)
    assert training_args.sentence_pooling_method == "mean"
    assert data_args.query_instruction_for_retrieval == "query: "
    assert data_args.passage_instruction_for_retrieval == "passage: "
    assert training_args.negatives_cross_device is False


def test_two_processes_with_distillation_and_every_loader_agrees(tmp_path, tiny_bert):
    data = _scored_rows(tmp_path / "train.jsonl")
    result = fine_tune(data, tmp_path / "model",
                       TrainConfig(model=str(tiny_bert), nproc_per_node=2, freeze_word_embeddings=True, **SMALL))
    summary = result.summary
    assert summary["knowledge_distillation"] is True and summary["world_size"] == 2
    assert summary["losses"] and all(np.isfinite(summary["losses"]))
    assert not list(result.model_dir.glob("checkpoint-*"))

    import torch
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    before, after = load_file(tiny_bert / "model.safetensors"), load_file(result.model_dir / "model.safetensors")
    assert torch.equal(before["embeddings.word_embeddings.weight"], after["embeddings.word_embeddings.weight"])
    assert not torch.equal(before["encoder.layer.0.attention.self.query.weight"],
                           after["encoder.layer.0.attention.self.query.weight"])

    texts = ["夏天穿的轻薄连衣裙", "加厚羽绒服 男 冬季"]
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    model = AutoModel.from_pretrained(result.model_dir).eval()
    with torch.inference_mode():
        cls = model(**tokenizer(texts, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    reference = torch.nn.functional.normalize(cls, dim=-1).numpy()
    st = SentenceTransformer(str(result.model_dir), device="cpu").encode(texts)
    np.testing.assert_allclose(st, reference, atol=1e-5)

    from FlagEmbedding import FlagModel

    flag = FlagModel(str(result.model_dir), pooling_method="cls", normalize_embeddings=True, use_fp16=False,
                     devices="cpu").encode(texts)
    np.testing.assert_allclose(flag, reference, atol=1e-5)


def test_deepspeed_stage0_through_torchrun_on_cpu(tmp_path, tiny_bert):
    data = _scored_rows(tmp_path / "train.jsonl", with_scores=False)
    config = TrainConfig(model=str(tiny_bert), nproc_per_node=1, **{**SMALL, "deepspeed": True})
    result = fine_tune(data, tmp_path / "model", config)
    assert result.summary["knowledge_distillation"] is False
    assert "--deepspeed" in result.summary["command"]
    assert result.summary["losses"]
    assert (result.model_dir / "model.safetensors").is_file()
    log = (result.model_dir / "training.log").read_text(encoding="utf-8")
    # The Trainer got the stage-0 config and DeepSpeed's CPU communication op was loaded.
    assert "ds_stage0.json" in log and "deepspeed_shm_comm" in log, log[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_with_the_variables_a_pytorchjob_injects(tmp_path, tiny_bert):
    data = _scored_rows(tmp_path / "train.jsonl")
    config = TrainConfig(model=str(tiny_bert), nnodes=2, nproc_per_node=1, **SMALL)
    flags = build_flag_arguments(config, resolve_model(str(tiny_bert)), data, tmp_path / "out",
                                 knowledge_distillation=True)
    port = str(_free_port())
    processes = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
               "RANK": str(rank), "PET_NNODES": "2", "PET_NODE_RANK": str(rank), "PET_NPROC_PER_NODE": "1",
               "OMP_NUM_THREADS": "1"}
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        try:
            command = build_torchrun_command(config, flags, pytorchjob=True)
        finally:
            del os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
        log = (tmp_path / f"node{rank}.log").open("w")
        processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in processes:
        assert process.wait(timeout=600) == 0, (tmp_path / "node0.log").read_text()[-3000:]
        log.close()
    node0 = (tmp_path / "node0.log").read_text()
    assert "'loss'" in node0 and "negatives_cross_device=True" in node0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_rows_without_negatives_or_scores_are_rejected(tmp_path, tiny_bert):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"query": "a", "pos": ["b"]}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"plain.jsonl:1: neg:"):
        fine_tune(plain, tmp_path / "m1", TrainConfig(model=str(tiny_bert), **SMALL))
    unscored = _scored_rows(tmp_path / "unscored.jsonl", with_scores=False)
    with pytest.raises(DataError, match=r"unscored.jsonl:1: pos_scores:"):
        fine_tune(unscored, tmp_path / "m2", TrainConfig(model=str(tiny_bert), knowledge_distillation="on", **SMALL))


def test_no_optimizer_step_is_refused_before_training(tmp_path, tiny_bert):
    data = _scored_rows(tmp_path / "train.jsonl")  # 12 rows
    config = TrainConfig(model=str(tiny_bert), nproc_per_node=2, **{**SMALL, "per_device_train_batch_size": 8})
    with pytest.raises(ValueError, match=r"12 training rows give no optimizer step: .*per_device_train_batch_size "
                                         r"\(8\) x world size \(2\) = 16"):
        fine_tune(data, tmp_path / "model", config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"], "no model, no scratch folder"


def test_a_run_that_logs_no_loss_fails_and_leaves_nothing(tmp_path, tiny_bert):
    data = _scored_rows(tmp_path / "train.jsonl")
    config = TrainConfig(model=str(tiny_bert), nproc_per_node=1, **{**SMALL, "num_train_epochs": 0})
    with pytest.raises(ValueError, match="training logged no loss"):
        fine_tune(data, tmp_path / "model", config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"], "no model, no scratch folder"


def test_saved_profile_is_the_one_trained_with_and_short_rows_are_counted(tmp_path, tiny_bert):
    rows = [{**row, "neg": row["neg"][:2]} for row in map(json.loads, _scored_rows(tmp_path / "all.jsonl")
                                                            .read_text(encoding="utf-8").splitlines())]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({**r, "neg_scores": r["neg_scores"][:2]}, ensure_ascii=False) + "\n"
                            for r in rows), encoding="utf-8")
    config = TrainConfig(model=str(tiny_bert), nproc_per_node=1, profile=ProfileOverrides(normalize="off"),
                         **{**SMALL, "max_steps": 1})
    result = fine_tune(data, tmp_path / "model", config)
    assert result.summary["rows_short_of_negatives"] == len(rows), "2 negatives each, group 4 wants 3"
    command = result.summary["command"]
    assert command[command.index("--normalize_embeddings") + 1] == "False"
    saved = read_model_profile(result.model_dir)
    assert saved.normalize is False and saved.pooling == "cls"
    assert "Normalize" not in (result.model_dir / "modules.json").read_text(encoding="utf-8")


def test_row_prompts_reach_flagembedding_for_a_model_without_instruction(tmp_path, tiny_bert):
    model = resolve_model(str(tiny_bert))
    assert model.profile.query_instruction == ""
    flags = build_flag_arguments(TrainConfig(precision="bf16", nproc_per_node=1), model,
                                 _scored_rows(tmp_path / "t.jsonl"), tmp_path / "out", knowledge_distillation=False,
                                 row_prompts=True)
    _, data_args, _, _ = _parse_with_flagembedding(flags)
    # FlagEmbedding formats a row's prompt only when a query instruction is set.
    assert data_args.query_instruction_for_retrieval == ""


def test_switches_and_enums_are_strict():
    for field, value in (("knowledge_distillation", "true"), ("precision", "FP16"), ("deepspeed", "yes"),
                         ("negatives_cross_device", "ON"), ("num_train_epochs", "1")):
        with pytest.raises(ValueError, match=f"^{field}: {value!r} is not allowed; expected"):
            TrainConfig(**{field: value})
