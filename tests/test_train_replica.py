"""The training job's replica: topology from the operators' variables, CPU limits from cgroups,
FlagEmbedding's resume, checkpoints in S3, and two "nodes" killed mid-training and resumed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from components.checkpoint_store import CheckpointStore
from components.object_store import COMPLETION_MARKER, download_file, upload_file, upload_folder
from components.replica_environment import ReplicaTopology, TopologyError, cpu_limit, thread_environment
from components.resumable_embedder_entry import RESTORED_MESSAGE, STARTED_MESSAGE, weights_fingerprint
from components.train import TrainConfig, build_torchrun_command
from tests.conftest import REPO_ROOT, build_tiny_bert
from tests.replica_nodes import SEARCHTUNE, operator_variables, scored_rows, start_run, write_rows
from tests.s3_server import free_port

# --------------------------------------------------------------------------- topology


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_each_operators_variables_alone_give_the_same_topology(kind):
    environ = operator_variables(kind, rank=1, nnodes=2, port=29500, nproc=2)
    topology = ReplicaTopology.from_environment(environ, nproc_per_node=8)
    assert topology == ReplicaTopology(nnodes=2, node_rank=1, nproc_per_node=2, master_addr="127.0.0.1",
                                       master_port=29500)
    assert topology.world_size == 4
    assert topology.torchrun_arguments() == ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "2",
                                             "--master_addr", "127.0.0.1", "--master_port", "29500"]


def test_torchrun_command_takes_the_world_from_the_job_not_the_config():
    # Trainer v2 sets only PET_*: this raised KeyError('MASTER_ADDR') before.
    environ = operator_variables("trainjob", rank=0, nnodes=4, port=29400, nproc=2)
    command = build_torchrun_command(TrainConfig(nnodes=1, nproc_per_node=1), ["--x", "y"], pytorchjob=True,
                                     environ=environ)
    assert command[command.index("--nnodes") + 1] == "4"
    assert command[command.index("--nproc_per_node") + 1] == "2"
    assert command[command.index("--master_addr") + 1] == "127.0.0.1"


def test_older_operator_variables_and_no_job_at_all():
    # Training Operator before v1.7: MASTER_*, WORLD_SIZE counting pods, RANK the pod's index.
    old = {"MASTER_ADDR": "master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "3", "RANK": "2"}
    assert ReplicaTopology.from_environment(old) == ReplicaTopology(3, 2, 1, "master-0", 23456)
    assert ReplicaTopology.from_environment({}, nproc_per_node=2) == ReplicaTopology(nproc_per_node=2)
    assert ReplicaTopology.from_environment({}).torchrun_arguments()[0] == "--standalone"


@pytest.mark.parametrize("environ, message", [
    ({"PET_NNODES": "2", "PET_NODE_RANK": "0"}, "needs MASTER_ADDR and MASTER_PORT"),
    ({"PET_NNODES": "two", "PET_MASTER_ADDR": "h", "PET_MASTER_PORT": "1"}, "PET_NNODES='two': expected an integer"),
    ({"PET_NNODES": "2", "PET_NODE_RANK": "2", "PET_MASTER_ADDR": "h", "PET_MASTER_PORT": "1"},
     "node rank 2 is outside 0..1"),
])
def test_contradicting_variables_are_refused_in_one_line(environ, message):
    with pytest.raises(TopologyError, match=re.escape(message)):
        ReplicaTopology.from_environment(environ)


# --------------------------------------------------------------------------- CPU limits


def test_cpu_limit_reads_cgroup_v2_and_v1_quotas(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cpu_limit(v2) == 1, "1.5 CPUs run one thread at full speed"
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_limit(tmp_path / "v1") == len(os.sched_getaffinity(0)), "no quota: the CPUs it may run on"
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_limit(v2) == len(os.sched_getaffinity(0))
    (v2 / "cpu.max").write_text("100000 100000\n")
    threads = thread_environment(2, {"MKL_NUM_THREADS": "3"}, cgroup_root=v2)
    assert threads == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "3", "RAYON_NUM_THREADS": "1"}, \
        "the pod's own setting wins; the rest is the quota shared by the processes"


# --------------------------------------------------------------------------- FlagEmbedding's resume


def test_flagembedding_resume_without_deepspeed_restores_no_weights_and_the_fix_does(tmp_path, tiny_bert):
    from FlagEmbedding.finetune.embedder.encoder_only.base import EncoderOnlyEmbedderTrainer
    from FlagEmbedding.finetune.embedder.encoder_only.base.modeling import BiEncoderOnlyEmbedderModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer, TrainingArguments

    from components.resumable_embedder_entry import _load_from_checkpoint, restore_embedder_weights

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)

    def embedder():
        return BiEncoderOnlyEmbedderModel(AutoModel.from_pretrained(tiny_bert), tokenizer=tokenizer)

    trained = embedder()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.5)
    checkpoint = tmp_path / "checkpoint-4"
    trained.save(str(checkpoint))  # what FlagEmbedding's trainer writes into every checkpoint
    saved = load_file(checkpoint / "model.safetensors")
    fresh = embedder()
    base = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    assert all(not key.startswith("model.") for key in saved), "the checkpoint holds the inner model only"
    assert set(fresh.load_state_dict(saved, strict=False).missing_keys) == set(fresh.state_dict()), \
        "no key of the checkpoint matches the wrapper's"

    arguments = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    trainer = EncoderOnlyEmbedderTrainer(model=fresh, args=arguments, tokenizer=tokenizer)
    with pytest.raises(AttributeError, match="_keys_to_ignore_on_save"):
        trainer._load_from_checkpoint(str(checkpoint))  # the stock resume
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(fresh.model.state_dict()[key], base[key]), "and nothing was restored"

    _load_from_checkpoint(trainer, str(checkpoint))  # the fixed resume, as torchrun runs it
    restored = fresh.model.state_dict()
    assert all(torch.equal(restored[name], saved[name]) for name in saved)
    assert restore_embedder_weights(embedder(), checkpoint) == weights_fingerprint(saved)

    del saved[key]
    from safetensors.torch import save_file

    save_file(saved, checkpoint / "model.safetensors")
    with pytest.raises(RuntimeError, match=r"does not match the model: missing \['encoder.layer.0"):
        restore_embedder_weights(embedder(), checkpoint)


# --------------------------------------------------------------------------- the checkpoint store


_AGREEMENT_SCRIPT = """
import sys, torch.distributed as dist
from components.resumable_embedder_entry import ResumeMismatchError, agree_on_start_step
rank, port, steps = int(sys.argv[1]), sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(steps))
try:
    agree_on_start_step(steps[rank])
    print("agreed")
except ResumeMismatchError as error:
    print(f"refused: {error}")
"""


@pytest.mark.parametrize("steps, outcome", [("20,20", "agreed"), ("20,30", "refused")])
def test_processes_that_start_from_different_checkpoints_all_stop(steps, outcome):
    """Two processes over gloo, as two nodes that each picked a checkpoint from the store."""
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", _AGREEMENT_SCRIPT, str(rank), port, steps],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                 for rank in range(2)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    for output in outputs:
        assert output.strip().splitlines()[-1].startswith(outcome), output
    if outcome == "refused":
        assert "(rank 0: 20, rank 1: 30)" in outputs[0] and "resumes from one checkpoint" in outputs[1]


def test_a_checkpoint_is_complete_only_when_every_node_sealed_its_part(tmp_path, s3_environment):
    store = CheckpointStore("s3://data/store-test/run-1/fine-tune")
    part = tmp_path / "part"
    part.mkdir()
    (part / "rng_state_0.pth").write_bytes(b"r0")
    for step in (4, 8):
        for rank in (0, 1):
            store.upload(part, step, rank, 2)
    store.upload(part, 12, 0, 2)  # node 1 died before uploading its part of step 12
    client = s3_environment.client()
    client.put_object(Bucket="data", Key="store-test/run-1/fine-tune/checkpoint-16/node-0-of-2/model.safetensors",
                      Body=b"half")  # cut off before its marker
    assert [(c.step, c.complete) for c in store.checkpoints()] == [(4, True), (8, True), (12, False)]
    assert store.newest_complete().step == 8

    (part / "rng_state_0.pth").write_bytes(b"node 1's own")
    store.upload(part, 8, 1, 2)
    local = store.download(store.newest_complete(), 1, tmp_path / "resume" / "checkpoint-8")
    assert (local / "rng_state_0.pth").read_bytes() == b"node 1's own", "a node's own part overlays the Master's"
    assert not (local / COMPLETION_MARKER).exists()

    for rank in (0, 1):
        store.upload(part, 20, rank, 2)
    assert store.prune(keep=1) == [4, 8, 12, 16]
    assert [c.step for c in store.checkpoints()] == [20]
    assert store.bytes_of(20) > 0


# --------------------------------------------------------------------------- two nodes, killed and resumed

TRAINING = ["--train-group-size", "4", "--query-max-len", "32", "--passage-max-len", "32",
            "--per-device-train-batch-size", "2", "--num-train-epochs", "100", "--max-steps", "24",
            "--save-steps", "4", "--logging-steps", "1", "--precision", "fp32", "--deepspeed", "false",
            "--gradient-checkpointing", "false", "--learning-rate", "1e-3", "--knowledge-distillation", "on",
            "--seed", "7", "--keep-store-checkpoints", "2"]
_LOSS = re.compile(r"\{'loss': ([0-9.e+-]+), 'grad_norm': [^,]+, 'learning_rate': ([0-9.e+-]+)")


def _losses(log: str) -> list[tuple[float, float]]:
    return [(float(loss), float(rate)) for loss, rate in _LOSS.findall(log)]


def _summary(uri: str, folder) -> dict:
    return json.loads(download_file(f"{uri}/training_summary.json", folder / "summary.json").read_text())


@pytest.fixture()
def job_inputs(tmp_path, s3_environment, tiny_texts):
    bert = build_tiny_bert(tmp_path / "tiny-bert", tiny_texts)
    upload_folder(bert, "s3://data/resume/models/tiny-bert")
    upload_file(write_rows(tmp_path / "rows.jsonl", scored_rows()), "s3://data/resume/scored_train")
    return {"bert": bert, "rows": "s3://data/resume/scored_train", "model": "s3://data/resume/models/tiny-bert"}


def _arguments(inputs: dict, run: str) -> list[str]:
    return ["--train-data", inputs["rows"], "--model", inputs["model"], "--output", f"s3://data/resume/{run}/model",
            "--checkpoint-uri", f"s3://data/resume/{run}/checkpoints", *TRAINING]


@pytest.mark.slow
def test_two_nodes_killed_mid_training_resume_from_the_newest_complete_checkpoint(tmp_path, s3_environment,
                                                                                  job_inputs):
    from safetensors.torch import load_file

    environment = s3_environment.environment
    # An uninterrupted run, as Kubeflow Trainer v2 starts it (PET_* variables only).
    (tmp_path / "reference").mkdir()
    reference = start_run(tmp_path / "reference", "trainjob", 2, free_port(), _arguments(job_inputs, "reference"),
                          environment, "attempt1")
    assert reference.wait(600) == [0, 0], reference.nodes[0].log()[-3000:]
    expected = _summary("s3://data/resume/reference/model", tmp_path / "reference")
    reference_losses = _losses(reference.nodes[0].log())
    assert expected["global_step"] == 24 and expected["resumed_from_step"] is None and len(reference_losses) == 24

    # The same job as the Training Operator starts it; a node is lost halfway.
    (tmp_path / "job").mkdir()
    store = CheckpointStore("s3://data/resume/job/checkpoints")
    port = free_port()
    first = start_run(tmp_path / "job", "pytorchjob", 2, port, _arguments(job_inputs, "job"), environment, "attempt1")
    deadline = time.monotonic() + 600

    def newest_step() -> int:
        newest = store.newest_complete()
        return newest.step if newest else 0

    while newest_step() < 12:  # half of the 24 steps
        assert first.nodes[0].process.poll() is None, first.nodes[0].log()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint reached step 12"
        time.sleep(0.1)
    first.nodes[1].kill()
    assert first.nodes[0].process.wait(timeout=300) != 0, "the Master fails when its peer is lost"
    first.kill()
    newest = store.newest_complete()
    assert 12 <= newest.step < 24, "killed mid-training"
    assert len(_losses(first.nodes[0].log())) >= newest.step
    # An upload cut off in the middle (files, no marker) and a checkpoint only one node sealed: neither counts.
    client = s3_environment.client()
    client.put_object(Bucket="data", Key=f"resume/job/checkpoints/checkpoint-{newest.step + 1}/node-0-of-2/"
                                         "model.safetensors", Body=b"cut off")
    ghost = tmp_path / "ghost"
    ghost.mkdir()
    (ghost / "model.safetensors").write_bytes(b"only the Master's part")
    store.upload(ghost, newest.step + 2, 0, 2)
    assert store.newest_complete().step == newest.step
    held = load_file(download_file(f"{store.part_uri(newest.step, 0, 2)}/model.safetensors",
                                   tmp_path / "held.safetensors"))

    # The operator restarts both replicas.
    second = start_run(tmp_path / "job", "pytorchjob", 2, port, _arguments(job_inputs, "job"), environment,
                       "attempt2")
    assert second.wait(600) == [0, 0], second.nodes[0].log()[-3000:]
    for node in second.nodes:
        assert f"resuming from s3://data/resume/job/checkpoints/checkpoint-{newest.step} (step {newest.step})" \
            in node.log(), node.log()[-3000:]
    assert f"{STARTED_MESSAGE} {newest.step} of 24" in second.nodes[0].log(), "the trainer state was restored"
    restored = re.search(rf"{RESTORED_MESSAGE} \S+checkpoint-{newest.step}: \d+ tensors, sha256 (\w+)",
                         second.nodes[0].log())
    assert restored, second.nodes[0].log()[-3000:]
    assert restored.group(1) == weights_fingerprint(held), "the weights the checkpoint holds"
    assert restored.group(1) != weights_fingerprint(load_file(job_inputs["bert"] / "model.safetensors"))

    summary = _summary("s3://data/resume/job/model", tmp_path / "job")
    assert summary["global_step"] == expected["global_step"] == 24
    assert summary["resumed_from_step"] == newest.step
    resumed = _losses(second.nodes[0].log())
    assert len(resumed) == 24 - newest.step
    # Weights, optimizer, scheduler, data order and random state all continued: the
    # resumed steps repeat the uninterrupted run's losses and learning rates.
    for (loss, rate), (expected_loss, expected_rate) in zip(resumed, reference_losses[newest.step:]):
        assert rate == pytest.approx(expected_rate, rel=1e-6)
        assert loss == pytest.approx(expected_loss, rel=1e-3, abs=1e-3)
    final = load_file(download_file("s3://data/resume/job/model/model.safetensors", tmp_path / "final.safetensors"))
    uninterrupted = load_file(download_file("s3://data/resume/reference/model/model.safetensors",
                                            tmp_path / "reference.safetensors"))
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-3, atol=1e-4)
    kept = [c.step for c in store.checkpoints()]
    assert kept[-1] == 24 and len([c for c in store.checkpoints() if c.complete]) == 2, kept


def test_an_incomplete_base_model_is_refused_in_one_line(tmp_path, s3_environment):
    s3_environment.client().put_object(Bucket="data", Key="resume/broken-model/config.json", Body=b"{}")
    upload_file(write_rows(tmp_path / "rows.jsonl", scored_rows()), "s3://data/resume/rows-for-broken")
    result = subprocess.run([SEARCHTUNE, "train-replica", "--train-data", "s3://data/resume/rows-for-broken",
                             "--model", "s3://data/resume/broken-model", "--output", str(tmp_path / "out"),
                             "--work-dir", str(tmp_path / "work")],
                            env={**os.environ, **s3_environment.environment, "PYTHONPATH": str(REPO_ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("searchtune: error:")]
    assert errors == ["searchtune: error: s3://data/resume/broken-model: no completion marker "
                      f"({COMPLETION_MARKER}): the folder is incomplete, still being written, or not a searchtune "
                      "folder"]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
