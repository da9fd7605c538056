"""The cluster profile: recipe defaults, a full file round trip, one-line located errors."""

from __future__ import annotations

import pytest

from pipelines.cluster_profile import (
    ClusterProfile,
    ProfileError,
    load_cluster_profile,
    parse_cluster_profile,
    profile_to_yaml,
)


def test_an_empty_file_is_the_recipe_layout():
    profile = parse_cluster_profile("")
    assert profile == ClusterProfile()
    assert profile.training.nodes == 2 and profile.training.gpus_per_node == 2
    assert profile.steps.mine.accelerator_type == "nvidia.com/gpu" and profile.steps.mine.accelerator_count == 1
    assert profile.steps.fine_tune.accelerator_count == 0, "the train step only drives the job"
    assert profile.checkpoint_root == "s3://searchtune/pipeline-root/checkpoints"


def test_every_field_round_trips_through_yaml(tmp_path):
    text = """
namespace: team-search
pipeline_root: s3://ml-artifacts/searchtune
image_pull_secrets: [registry]
s3: {secret_name: ml-s3, endpoint: "https://s3.internal:443", region: eu-west-1}
images: {steps: "registry.local/st:1@sha256:abc", pull_policy: Always}
steps:
  mine: {cpu_request: 4, cpu_limit: 4, memory_request: 16Gi, memory_limit: 16Gi,
         accelerator_type: nvidia.com/gpu, accelerator_count: 2,
         node_selector: {gpu-type: h100}, tolerations: [{key: dedicated, operator: Equal, value: ml, effect: NoSchedule}]}
training:
  executor: trainjob
  nodes: 4
  gpus_per_node: 8
  run_policy: {clean_pod_policy: Running, backoff_limit: 5}
"""
    profile = parse_cluster_profile(text, "cluster.yaml")
    assert profile.steps.mine.cpu_request == "4" and profile.steps.mine.tolerations[0].value == "ml"
    assert profile.training.run_policy.backoff_limit == 5 and profile.training.executor == "trainjob"
    assert profile.steps.score == ClusterProfile().steps.score, "unnamed steps keep their defaults"
    assert profile.training.gpus_per_node == 8 and profile.training.resources == ClusterProfile().training.resources
    path = tmp_path / "again.yaml"
    path.write_text(profile_to_yaml(profile), encoding="utf-8")
    assert load_cluster_profile(path) == profile


def test_a_step_given_in_part_keeps_its_other_defaults():
    profile = parse_cluster_profile("steps:\n  mine: {node_selector: {gpu-type: h100}}\n")
    mine, default = profile.steps.mine, ClusterProfile().steps.mine
    assert mine.node_selector == {"gpu-type": "h100"}
    assert (mine.accelerator_count, mine.cpu_request, mine.tolerations) == \
        (default.accelerator_count, default.cpu_request, default.tolerations)


@pytest.mark.parametrize("text, message", [
    ("training:\n  gpus_per_node: two\n", "cluster.yaml:2: training.gpus_per_node: expected an integer, got 'two'"),
    ("training:\n  nodes: 0\n", "cluster.yaml:2: training.nodes: must be at least 1 (the Master)"),
    ("training:\n  executor: mpijob\n",
     "cluster.yaml:2: training.executor: expected one of 'pytorchjob', 'trainjob', 'local', got 'mpijob'"),
    ("steps:\n  mine:\n    memory_limit: lots\n",
     "cluster.yaml:3: steps.mine.memory_limit: 'lots' is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)"),
    ("namespace: Team_A\n", "cluster.yaml:1: namespace: 'Team_A' is not a valid Kubernetes name"),
    ("pipeline_root: /tmp/x\n", "cluster.yaml:1: pipeline_root: must be an s3://bucket/prefix URI"),
    ("s3:\n  secret: x\n", "cluster.yaml:2: s3.secret: unknown field; allowed: access_key_key, endpoint,"),
    ("steps:\n  prepare: {accelerator_count: 1}\n",
     "cluster.yaml:2: steps.prepare.accelerator_type: required when accelerator_count is above 0"),
    ("steps:\n  mine: {accelerator_count: 0}\n",
     "cluster.yaml:2: steps.mine.accelerator_count: must be at least 1 when accelerator_type is set"),
    ("training: [1, 2]\n", "cluster.yaml:1: training: expected a mapping, got [1, 2]"),
    ("training: {nodes: 2\n", "cluster.yaml:2: not valid YAML"),
])
def test_bad_profiles_are_refused_with_file_line_and_field(text, message):
    with pytest.raises(ProfileError) as error:
        parse_cluster_profile(text, "cluster.yaml")
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_profile_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml: cluster profile not found"):
        load_cluster_profile(tmp_path / "nope.yaml")
