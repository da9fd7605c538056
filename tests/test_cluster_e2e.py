"""End to end on a real cluster: a small PyTorchJob through the launcher, model sealed in S3.

Runs only where a cluster is at hand, and says why it is skipped otherwise:

- ``KUBECONFIG`` points at a cluster with the Kubeflow Training Operator (the PyTorchJob CRD);
- ``SEARCHTUNE_E2E_PROFILE`` names a cluster profile whose train image, namespace, service
  account and S3 Secret exist there;
- ``AWS_*`` variables reach, from here, the S3 store the profile's ``pipeline_root`` is in.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from components.object_store import download_file, is_complete_folder, join_uri, upload_file, upload_folder
from pipelines.cluster_profile import load_cluster_profile
from pipelines.job_launcher import run_training_job
from pipelines.training_job import JobInputs, render_job, train_arguments
from tests.conftest import build_tiny_bert
from tests.replica_nodes import scored_rows, write_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.skip("KUBECONFIG is not set: no cluster with the Training Operator to run a PyTorchJob on")
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        api_client = config.new_client_from_config(config_file=kubeconfig)
        client.ApiextensionsV1Api(api_client).read_custom_resource_definition("pytorchjobs.kubeflow.org")
    except ApiException as error:
        if error.status == 404:
            pytest.skip("the cluster in KUBECONFIG has no PyTorchJob CRD: the Training Operator is not installed")
        pytest.skip(f"the cluster in KUBECONFIG refused the CRD lookup: {error.status} {error.reason}")
    except Exception as error:  # unreachable, bad credentials, a broken file
        pytest.skip(f"the cluster in KUBECONFIG is not reachable: {type(error).__name__}: {error}")
    if not os.environ.get("SEARCHTUNE_E2E_PROFILE"):
        pytest.skip("SEARCHTUNE_E2E_PROFILE is not set: a cluster profile with the train image and S3 Secret "
                    "the cluster has")
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        pytest.skip("AWS_* variables are not set: the test stages its inputs in the profile's S3 store")
    return api_client, load_cluster_profile(os.environ["SEARCHTUNE_E2E_PROFILE"])


def test_a_small_pytorchjob_runs_on_the_cluster_and_seals_its_model(cluster, tmp_path, tiny_texts):
    api_client, profile = cluster
    root = join_uri(profile.pipeline_root, f"e2e-{uuid.uuid4().hex[:8]}")
    upload_folder(build_tiny_bert(tmp_path / "tiny-bert", tiny_texts), join_uri(root, "tiny-bert"))
    upload_file(write_rows(tmp_path / "rows.jsonl", scored_rows()), join_uri(root, "scored_train"))
    flags = {"model": join_uri(root, "tiny-bert"), "train_group_size": 4, "query_max_len": 32,
             "passage_max_len": 32, "per_device_train_batch_size": 2, "max_steps": 4, "precision": "auto",
             "deepspeed": False, "gradient_checkpointing": False, "nproc_per_node": profile.training.gpus_per_node}
    inputs = JobInputs(run_id=root.rsplit("/", 1)[-1], task_name="fine-tune-embedder",
                       train_data=join_uri(root, "scored_train"), model_output=join_uri(root, "model"),
                       train_arguments={**train_arguments(flags, profile), "save_steps": "2"})
    outcome = run_training_job(render_job(profile, inputs, "pytorchjob"), "pytorchjob", timeout_s=3600,
                               cleanup="on_success", api_client=api_client)
    assert outcome.state == "Succeeded" and outcome.log_lines > 0
    assert is_complete_folder(inputs.model_output)
    summary = json.loads(download_file(join_uri(inputs.model_output, "training_summary.json"),
                                       tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["global_step"] == 4 and summary["nodes"] == profile.training.nodes
