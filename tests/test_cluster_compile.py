"""The compiled pipeline carries the cluster profile, field by field, and never a credential."""

# No ``from __future__ import annotations``: KFP reads the components' annotations as types.
import yaml
from kfp import dsl

import pytest

from pipelines.cli import main
from pipelines.cluster_compile import compile_for_profile, profile_step_name
from pipelines.cluster_profile import ClusterProfile, parse_cluster_profile
from tests.s3_server import ACCESS_KEY, SECRET_KEY

PROFILE = """\
namespace: team-search
service_account: search-runner
pipeline_root: s3://ml-artifacts/searchtune
image_pull_secrets: [registry-creds]
s3: {secret_name: ml-s3, access_key_key: accesskey, secret_key_key: secretkey,
     endpoint: "https://s3.internal:9000", region: eu-west-1}
images: {steps: "registry.local/st:2@sha256:0123", launcher: "registry.local/st-launcher:2",
         train: "registry.local/st-train:2", pull_policy: Always}
steps:
  prepare: {cpu_request: 3, cpu_limit: 6, memory_request: 12Gi, memory_limit: 24Gi}
  mine:
    cpu_request: 4
    cpu_limit: 4
    memory_request: 16Gi
    memory_limit: 16Gi
    accelerator_type: nvidia.com/gpu
    accelerator_count: 2
    node_selector: {gpu-type: h100, pool: search}
    tolerations: [{key: dedicated, operator: Equal, value: ml, effect: NoSchedule},
                  {key: nvidia.com/gpu, operator: Exists}]
  evaluate: {accelerator_type: nvidia.com/gpu, accelerator_count: 1, node_selector: {gpu-type: l4}}
"""


def _compile(tmp_path, text):
    output = tmp_path / "pipeline.yaml"
    arguments = ["compile", "--output", str(output)]
    if text is not None:
        (tmp_path / "cluster.yaml").write_text(text, encoding="utf-8")
        arguments += ["--profile", str(tmp_path / "cluster.yaml")]
    assert main(arguments) == 0
    raw = output.read_text(encoding="utf-8")
    spec, platform = yaml.safe_load_all(raw)
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], raw


def test_every_step_gets_its_image_resources_scheduling_and_s3_settings(tmp_path):
    spec, kubernetes, _ = _compile(tmp_path, PROFILE)
    executors = spec["deploymentSpec"]["executors"]
    assert spec["defaultPipelineRoot"] == "s3://ml-artifacts/searchtune"
    assert sorted(executors) == sorted(kubernetes) == [
        "exec-evaluate-models", "exec-fine-tune-embedder", "exec-fingerprint-inputs", "exec-gate-promotion",
        "exec-mine-negatives", "exec-parity-check", "exec-prepare-data", "exec-promote-model", "exec-score-pairs"]

    images = {name: e["container"]["image"] for name, e in executors.items()}
    assert images == {"exec-fingerprint-inputs": "registry.local/st:2@sha256:0123",
                      "exec-prepare-data": "registry.local/st:2@sha256:0123",
                      "exec-mine-negatives": "registry.local/st:2@sha256:0123",
                      "exec-score-pairs": "registry.local/st:2@sha256:0123",
                      "exec-evaluate-models": "registry.local/st:2@sha256:0123",
                      "exec-fine-tune-embedder": "registry.local/st-launcher:2",
                      "exec-gate-promotion": "registry.local/st-launcher:2",
                      "exec-promote-model": "registry.local/st-launcher:2",
                      "exec-parity-check": "registry.local/st:2@sha256:0123"}

    mine = executors["exec-mine-negatives"]["container"]["resources"]
    assert (mine["resourceCpuRequest"], mine["resourceCpuLimit"]) == ("4", "4")
    assert (mine["resourceMemoryRequest"], mine["resourceMemoryLimit"]) == ("16Gi", "16Gi")
    assert mine["accelerator"]["resourceType"] == "nvidia.com/gpu" and mine["accelerator"]["resourceCount"] == "2"
    prepare = executors["exec-prepare-data"]["container"]["resources"]
    assert (prepare["resourceCpuRequest"], prepare["resourceMemoryLimit"]) == ("3", "24Gi")
    assert "accelerator" not in prepare, "a CPU step asks for no accelerator"
    evaluate = executors["exec-evaluate-models"]["container"]["resources"]
    assert evaluate["accelerator"]["resourceCount"] == "1"
    assert evaluate["resourceCpuRequest"] == ClusterProfile().steps.evaluate.cpu_request, "unnamed fields keep defaults"
    fine_tune = executors["exec-fine-tune-embedder"]["container"]["resources"]
    assert "accelerator" not in fine_tune and fine_tune["resourceMemoryLimit"] == "2Gi"

    for name, executor in executors.items():
        env = {item["name"]: item["value"] for item in executor["container"]["env"]}
        assert env == {"AWS_ENDPOINT_URL": "https://s3.internal:9000", "AWS_DEFAULT_REGION": "eu-west-1"}, name
        platform = kubernetes[name]
        [secret] = platform["secretAsEnv"]
        assert secret["secretName"] == "ml-s3" and secret["optional"] is False
        assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == {
            ("accesskey", "AWS_ACCESS_KEY_ID"), ("secretkey", "AWS_SECRET_ACCESS_KEY")}
        assert [s["secretName"] for s in platform["imagePullSecret"]] == ["registry-creds"]
        assert platform["imagePullPolicy"] == "Always"
        assert platform["podMetadata"]["labels"]["app.kubernetes.io/part-of"] == "searchtune"

    assert kubernetes["exec-mine-negatives"]["nodeSelector"]["labels"] == {"gpu-type": "h100", "pool": "search"}
    assert kubernetes["exec-mine-negatives"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert kubernetes["exec-evaluate-models"]["nodeSelector"]["labels"] == {"gpu-type": "l4"}
    assert kubernetes["exec-evaluate-models"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], "evaluate keeps its default"
    assert "nodeSelector" not in kubernetes["exec-prepare-data"] and "tolerations" not in kubernetes["exec-prepare-data"]
    # The GPU defaults of a step the profile did not name.
    assert kubernetes["exec-score-pairs"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert kubernetes["exec-score-pairs"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_the_compiled_file_reloads_as_a_kfp_component(tmp_path):
    from kfp.components import load_component_from_file

    _compile(tmp_path, PROFILE)
    component = load_component_from_file(str(tmp_path / "pipeline.yaml"))
    assert component.name == "searchtune-finetune-embedder"
    assert {"train_data", "student_model", "learning_rate"} <= set(component.component_spec.inputs)
    assert component.pipeline_spec.default_pipeline_root == "s3://ml-artifacts/searchtune"
    kubernetes = component.platform_spec.platforms["kubernetes"].deployment_spec.executors
    assert kubernetes["exec-mine-negatives"]["nodeSelector"]["labels"]["gpu-type"] == "h100"


def test_without_a_profile_the_defaults_are_compiled(tmp_path):
    spec, kubernetes, _ = _compile(tmp_path, None)
    defaults = ClusterProfile()
    assert spec["defaultPipelineRoot"] == defaults.pipeline_root
    assert spec["deploymentSpec"]["executors"]["exec-mine-negatives"]["container"]["image"] == defaults.images.steps
    assert kubernetes["exec-mine-negatives"]["secretAsEnv"][0]["secretName"] == defaults.s3.secret_name


def test_no_credential_reaches_the_yaml_or_a_parameter(tmp_path, monkeypatch):
    # The compiling machine holds real keys in its environment: none may leak into the file.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    spec, _, raw = _compile(tmp_path, PROFILE)
    assert ACCESS_KEY not in raw and SECRET_KEY not in raw
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert not [name for name in parameters
                if any(word in name.lower() for word in ("secret", "password", "token", "access_key", "credential"))]


def test_the_train_executor_and_profile_text_become_parameter_defaults(tmp_path):
    # The training-job launcher's pipeline takes both; a stand-in pipeline shows the contract.
    @dsl.component(base_image="python:3.11")
    def fine_tune_driver(train_executor: str, cluster_profile: str) -> str:
        return train_executor + cluster_profile

    @dsl.pipeline(name="contract")
    def contract(train_executor: str = "local", cluster_profile: str = ""):
        fine_tune_driver(train_executor=train_executor, cluster_profile=cluster_profile)

    text = "training:\n  executor: trainjob\n"
    output = compile_for_profile(tmp_path / "p.yaml", parse_cluster_profile(text), text, pipeline=contract)
    spec = next(yaml.safe_load_all(output.read_text(encoding="utf-8")))
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["train_executor"]["defaultValue"] == "trainjob"
    # One line: the compiler copies defaults into the file's comment header.
    assert "\n" not in parameters["cluster_profile"]["defaultValue"]
    assert parse_cluster_profile(parameters["cluster_profile"]["defaultValue"]) == parse_cluster_profile(text)
    assert spec["deploymentSpec"]["executors"]["exec-fine-tune-driver"]["container"]["image"] == \
        ClusterProfile().images.launcher


def test_the_local_executor_trains_in_the_train_image(tmp_path):
    spec, _, _ = _compile(tmp_path, "training:\n  executor: local\nsteps:\n  fine_tune: "
                                    "{accelerator_type: nvidia.com/gpu, accelerator_count: 2}\n")
    container = spec["deploymentSpec"]["executors"]["exec-fine-tune-embedder"]["container"]
    assert container["image"] == ClusterProfile().images.train
    assert container["resources"]["accelerator"]["resourceCount"] == "2"


def test_steps_find_their_profile_entry_by_name():
    assert profile_step_name("mine-negatives") == "mine"
    assert profile_step_name("fine-tune-embedder") == "fine_tune"
    assert profile_step_name("gate-promotion") == "gate"
    with pytest.raises(ValueError, match="pipeline step 'export-onnx' has no entry in the cluster profile"):
        profile_step_name("export-onnx")


def test_a_bad_profile_stops_compile_with_file_line_and_field(tmp_path, capsys):
    profile = tmp_path / "cluster.yaml"
    profile.write_text("steps:\n  mine:\n    accelerator_count: two\n", encoding="utf-8")
    assert main(["compile", "--profile", str(profile), "--output", str(tmp_path / "p.yaml")]) == 2
    error = capsys.readouterr().err
    assert f"{profile}:3: steps.mine.accelerator_count: expected an integer, got 'two'" in error
    assert "Traceback" not in error and not (tmp_path / "p.yaml").exists()


def test_the_readme_profile_example_is_a_valid_profile():
    import re

    from tests.conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n# cluster.yaml\n(.*?)```", readme, re.S).group(1)
    profile = parse_cluster_profile(example, "README.md")
    assert profile.steps.mine.node_selector == {"gpu-type": "l40s"} and profile.steps.mine.accelerator_count == 1
