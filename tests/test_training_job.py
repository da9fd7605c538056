"""The training job manifests: the recipe's layout, the profile's values, and the CRD schemas."""

from __future__ import annotations

import copy

import pytest
import yaml

from components.train import TrainConfig
from pipelines.cli import build_parser, main
from pipelines.cluster_profile import ClusterProfile, parse_cluster_profile
from pipelines.config_flags import config_from_flags
from pipelines.training_job import (
    JobInputs,
    checkpoint_uri,
    job_name,
    placeholder_inputs,
    render_pytorchjob,
    render_trainjob,
    train_arguments,
)
from tests.crd_schemas import schema_errors

RECIPE_FLAGS = {"model": "BAAI/bge-large-zh-v1.5", "learning_rate": 1e-5, "deepspeed": True, "max_steps": -1,
                "nproc_per_node": 2, "num_train_epochs": 5.0}
INPUTS = JobInputs(run_id="6f1c0a52-8d0e-4a39-9d43-2a4f7f5f1b2e", task_name="fine-tune-embedder",
                   train_data="s3://ml/root/run/score-pairs/scored_train",
                   model_output="s3://ml/root/run/fine-tune-embedder/finetuned_model",
                   train_arguments=train_arguments(RECIPE_FLAGS, ClusterProfile()))


def _env(container: dict) -> dict:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_the_recipe_pytorchjob_validates_against_the_crd_with_every_setting_in_place():
    profile = ClusterProfile()
    job = render_pytorchjob(profile, INPUTS)
    assert schema_errors(job) == []
    spec = job["spec"]
    assert spec["nprocPerNode"] == "2"
    assert spec["runPolicy"] == {"cleanPodPolicy": "None", "backoffLimit": 3, "ttlSecondsAfterFinished": 604800,
                                 "activeDeadlineSeconds": 172800}
    replicas = spec["pytorchReplicaSpecs"]
    assert {name: r["replicas"] for name, r in replicas.items()} == {"Master": 1, "Worker": 1}
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
        template = replica["template"]
        assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        assert template["metadata"]["labels"]["searchtune.io/pipeline-run-id"] == INPUTS.run_id
        assert template["metadata"]["labels"]["searchtune.io/pipeline-task"] == "fine-tune-embedder"
        pod = template["spec"]
        assert pod["serviceAccountName"] == "searchtune-pipeline-runner"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
        [container] = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == profile.images.train
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert container["resources"] == {
            "requests": {"cpu": "16", "memory": "96Gi", "nvidia.com/gpu": "2"},
            "limits": {"cpu": "16", "memory": "96Gi", "nvidia.com/gpu": "2"}}
        env = _env(container)
        assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "searchtune-s3", "key": "AWS_ACCESS_KEY_ID"}}
        assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "searchtune-s3",
                                                                 "key": "AWS_SECRET_ACCESS_KEY"}}
        assert env["AWS_ENDPOINT_URL"] == profile.s3.endpoint and env["AWS_DEFAULT_REGION"] == "us-east-1"
        assert container["command"][:2] == ["searchtune", "train-replica"]
    assert job["metadata"]["labels"]["searchtune.io/pipeline-run-id"] == INPUTS.run_id
    assert job["metadata"]["namespace"] == "searchtune"


def test_the_command_every_replica_runs_parses_with_train_replica_and_means_the_step_values():
    command = render_pytorchjob(ClusterProfile(), INPUTS)["spec"]["pytorchReplicaSpecs"]["Worker"]["template"][
        "spec"]["containers"][0]["command"]
    args = build_parser().parse_args(command[1:])
    assert args.handler.__name__ == "_command_train_replica"
    assert (args.train_data, args.output) == (INPUTS.train_data, INPUTS.model_output)
    assert args.checkpoint_uri == checkpoint_uri(ClusterProfile(), INPUTS) == \
        f"s3://searchtune/pipeline-root/checkpoints/{INPUTS.run_id}/fine-tune-embedder"
    config = config_from_flags(TrainConfig, args)
    assert config.model == "BAAI/bge-large-zh-v1.5" and config.learning_rate == 1e-5
    assert config.deepspeed is True and config.num_train_epochs == 5.0 and config.max_steps == -1


def test_the_profile_decides_layout_placement_and_policy():
    profile = parse_cluster_profile("""
namespace: team-search
image_pull_secrets: [registry-creds]
s3: {secret_name: team-s3, access_key_key: id, secret_key_key: secret, endpoint: "", region: eu-west-1}
images: {train: "registry.local/train@sha256:abc", pull_policy: Always}
training:
  nodes: 4
  gpus_per_node: 8
  shm_size: 32Gi
  priority_class: training-high
  node_selector: {gpu-type: h100}
  tolerations: [{key: dedicated, operator: Equal, value: ml, effect: NoSchedule}]
  resources: {cpu_request: "60", cpu_limit: "64", memory_request: 400Gi, memory_limit: 480Gi}
  run_policy: {clean_pod_policy: Running, backoff_limit: 5}
""", "cluster.yaml")
    inputs = JobInputs(**{**INPUTS.__dict__, "train_arguments": train_arguments({"nproc_per_node": 8}, profile)})
    job = render_pytorchjob(profile, inputs)
    assert schema_errors(job) == []
    assert job["spec"]["nprocPerNode"] == "8"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    assert job["spec"]["runPolicy"]["cleanPodPolicy"] == "Running" and job["spec"]["runPolicy"]["backoffLimit"] == 5
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}] and pod["priorityClassName"] == "training-high"
    assert pod["nodeSelector"] == {"gpu-type": "h100"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    container = pod["containers"][0]
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"]["limits"] == {"cpu": "64", "memory": "480Gi", "nvidia.com/gpu": "8"}
    env = _env(container)
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "team-s3", "key": "id"}}
    assert "AWS_ENDPOINT_URL" not in env, "no endpoint: AWS S3 itself"
    single = parse_cluster_profile("training: {nodes: 1}\n")
    assert list(render_pytorchjob(single, INPUTS)["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    with pytest.raises(ValueError, match="training.priority_class: a TrainJob cannot set it"):
        render_trainjob(profile, inputs)
    with pytest.raises(ValueError, match="nproc_per_node=2 but the cluster profile gives training.gpus_per_node=8"):
        train_arguments({"nproc_per_node": 2}, profile)


def test_the_trainjob_uses_the_torch_distributed_runtime_and_validates():
    profile = ClusterProfile()
    job = render_trainjob(profile, INPUTS)
    assert schema_errors(job) == []
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                  "kind": "ClusterTrainingRuntime"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 2
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    assert not any(item["name"].startswith("PET_") for item in trainer["env"]), "Trainer v2 reserves PET_*"
    [patch] = spec["runtimePatches"]
    [node] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert node["name"] == "node" and pod["spec"]["containers"][0]["name"] == "node"
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["spec"]["tolerations"] and pod["spec"]["nodeSelector"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["spec"]["volumes"]


def _pytorchjob_container(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("break_it, complaint", [
    (lambda job: _pytorchjob_container(job)["resources"]["limits"].update({"nvidia.com/gpu": "two"}),
     "limits.nvidia.com/gpu: 'two' does not match"),
    (lambda job: job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"].pop("containers"),
     "Worker.template.spec: 'containers' is a required property"),
    (lambda job: job["spec"].update({"nprocPerNode": 2}), "spec.nprocPerNode: 2 is not of type 'string'"),
    (lambda job: job["spec"]["pytorchReplicaSpecs"]["Master"].update({"replicas": "1"}),
     "Master.replicas: '1' is not of type 'integer'"),
    (lambda job: _pytorchjob_container(job).update({"volumeMount": []}),
     "Additional properties are not allowed ('volumeMount' was unexpected)"),
])
def test_a_wrong_pytorchjob_value_is_rejected_by_the_schema(break_it, complaint):
    job = copy.deepcopy(render_pytorchjob(ClusterProfile(), INPUTS))
    break_it(job)
    errors = schema_errors(job)
    assert any(complaint in error for error in errors), errors


@pytest.mark.parametrize("break_it, complaint", [
    (lambda job: job["spec"]["trainer"]["resourcesPerNode"]["limits"].update({"nvidia.com/gpu": "two"}),
     "nvidia.com/gpu: 'two' does not match"),
    (lambda job: job["spec"]["trainer"].update({"numProcPerNode": "2"}), "'2' is not of type 'integer'"),
    (lambda job: job["spec"].pop("runtimeRef"), "'runtimeRef' is a required property"),
    (lambda job: job["metadata"].update({"name": "9-starts-with-a-digit"}), "must be an RFC 1035 label"),
])
def test_a_wrong_trainjob_value_is_rejected_by_the_schema(break_it, complaint):
    job = copy.deepcopy(render_trainjob(ClusterProfile(), INPUTS))
    break_it(job)
    errors = schema_errors(job)
    assert any(complaint in error for error in errors), errors


def test_job_names_are_stable_per_run_and_task_and_valid_everywhere():
    other_run = JobInputs(**{**INPUTS.__dict__, "run_id": "another-run"})
    assert job_name(INPUTS) == job_name(JobInputs(**INPUTS.__dict__))
    assert job_name(INPUTS) != job_name(other_run)
    assert job_name(INPUTS).startswith("searchtune-fine-tune-embedder-") and len(job_name(INPUTS)) <= 40
    odd = JobInputs(**{**INPUTS.__dict__, "run_id": "{{$.pipeline_job_uuid}}", "task_name": "4. Fine_Tune!"})
    assert schema_errors(render_trainjob(ClusterProfile(), odd)) == []
    assert schema_errors(render_pytorchjob(ClusterProfile(), odd)) == []


def test_inputs_outside_s3_and_layout_flags_are_refused():
    with pytest.raises(ValueError, match="model_output: the training job reads and writes S3; got '/tmp/model'"):
        JobInputs(run_id="r", task_name="t", train_data="s3://b/rows", model_output="/tmp/model")
    with pytest.raises(ValueError, match="nnodes: the cluster profile decides the job's layout"):
        JobInputs(run_id="r", task_name="t", train_data="s3://b/rows", model_output="s3://b/m",
                  train_arguments={"nnodes": "2"})


def test_render_job_writes_a_valid_job_for_each_kind(tmp_path, capsys):
    output = tmp_path / "job.yaml"
    assert main(["render-job", "--output", str(output)]) == 0
    job = yaml.safe_load(output.read_text(encoding="utf-8"))
    assert job["kind"] == "PyTorchJob" and schema_errors(job) == []
    command = _pytorchjob_container(job)["command"]
    assert command[command.index("--train-data") + 1] == placeholder_inputs(ClusterProfile(), {}).train_data
    profile = tmp_path / "cluster.yaml"
    profile.write_text("training:\n  executor: trainjob\n  nodes: 3\n", encoding="utf-8")
    assert main(["render-job", "--profile", str(profile), "--output", str(output), "--set", "max_steps=100",
                 "--model-output", "s3://b/models/x", "--run-id", "nightly-42"]) == 0
    job = yaml.safe_load(output.read_text(encoding="utf-8"))
    assert job["kind"] == "TrainJob" and schema_errors(job) == [] and job["spec"]["trainer"]["numNodes"] == 3
    command = job["spec"]["trainer"]["command"]
    assert command[command.index("--max-steps") + 1] == "100"
    assert command[command.index("--output") + 1] == "s3://b/models/x"
    assert job["metadata"]["labels"]["searchtune.io/pipeline-run-id"] == "nightly-42"


@pytest.mark.parametrize("profile_text, arguments, message", [
    ("training:\n  gpus_per_node: two\n", [],
     "cluster.yaml:2: training.gpus_per_node: expected an integer, got 'two'"),
    ("training:\n  executor: local\n", [], "--kind: the profile's training.executor is local"),
    ("", ["--preset", "local"], "nproc_per_node=1 but the cluster profile gives training.gpus_per_node=2"),
    ("", ["--set", "no_such=1"], "unknown pipeline parameter 'no_such'"),
])
def test_render_job_refuses_bad_input_in_one_line(tmp_path, capsys, profile_text, arguments, message):
    profile = tmp_path / "cluster.yaml"
    profile.write_text(profile_text, encoding="utf-8")
    output = tmp_path / "job.yaml"
    assert main(["render-job", "--profile", str(profile), "--output", str(output), *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("searchtune: error: ") and message in error and "\n" not in error
    assert not output.exists()


def test_the_launcher_side_imports_no_torch_so_it_runs_in_the_small_launcher_image():
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    probe = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
             "sys.modules['FlagEmbedding'] = None\n"
             "import pipelines.job_launcher, pipelines.training_job, pipelines.cluster_profile\n"
             "from pipelines.job_launcher import fine_tune_on_cluster\n"
             "print('ok')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_profile_compile_passes_as_a_parameter_is_the_profile_the_step_reads():
    from pipelines.cluster_compile import profile_parameter
    from pipelines.cluster_profile import parse_cluster_profile

    profile = parse_cluster_profile("training: {executor: trainjob, nodes: 3, tolerations: []}\n"
                                    "image_pull_secrets: [registry]\n")
    assert parse_cluster_profile(profile_parameter(profile), "the cluster_profile parameter") == profile
