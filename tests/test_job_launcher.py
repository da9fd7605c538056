"""The job launcher against a Kubernetes API stand-in, with the real client through a kubeconfig.

The test plays the operator (status conditions through the real client) and the kubelet
(the Master pod, its container state and its log).
"""

from __future__ import annotations

import re
import threading
import time

import pytest
from kubernetes import client, config

from pipelines.cluster_profile import ClusterProfile
from pipelines.job_launcher import TrainingJobFailed, TrainingJobTimeout, job_state, run_training_job
from pipelines.training_job import JobInputs, render_job
from tests.kube_api_server import KubeApiServer

NAMESPACE = "searchtune"
INPUTS = JobInputs(run_id="run-7", task_name="fine-tune-embedder", train_data="s3://b/rows",
                   model_output="s3://b/run-7/model", train_arguments={"max_steps": "10"})
GROUPS = {"pytorchjob": ("kubeflow.org", "v1", "pytorchjobs"), "trainjob": ("trainer.kubeflow.org", "v1alpha1",
                                                                           "trainjobs")}


@pytest.fixture()
def kube(tmp_path):
    server = KubeApiServer().start()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    yield server, api_client
    server.stop()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Operator:
    """What the Training Operator / Trainer and the kubelet do, through the real client."""

    def __init__(self, server: KubeApiServer, api_client, kind: str, name: str) -> None:
        self.server, self.kind, self.name = server, kind, name
        self.group, self.version, self.plural = GROUPS[kind]
        self.custom, self.core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
        self.conditions: list[dict] = []
        self.container = "pytorch" if kind == "pytorchjob" else "node"
        self.pod = f"{name}-master-0" if kind == "pytorchjob" else f"{name}-node-0-0-abcde"

    def wait_for_job(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while (job := self.server.get(self.plural, NAMESPACE, self.name)) is None:
            assert time.monotonic() < deadline, "the launcher did not create the job"
            time.sleep(0.05)
        return job

    def condition(self, kind: str, reason: str = "", message: str = "") -> None:
        # Like the operators: earlier conditions stay, set to False; the new one is True.
        for condition in self.conditions:
            condition["status"] = "False"
        self.conditions.append({"type": kind, "status": "True", "reason": reason or f"Job{kind}",
                                "message": message or f"job is {kind.lower()}", "lastTransitionTime": _now()})
        self.custom.patch_namespaced_custom_object_status(self.group, self.version, NAMESPACE, self.plural,
                                                          self.name, {"status": {"conditions": self.conditions}})

    def start_master(self) -> None:
        labels = ({"training.kubeflow.org/job-name": self.name, "training.kubeflow.org/replica-type": "master"}
                  if self.kind == "pytorchjob" else
                  {"jobset.sigs.k8s.io/jobset-name": self.name, "jobset.sigs.k8s.io/replicatedjob-name": "node",
                   "batch.kubernetes.io/job-completion-index": "0"})
        self.core.create_namespaced_pod(NAMESPACE, {"apiVersion": "v1", "kind": "Pod",
                                                    "metadata": {"name": self.pod, "labels": labels},
                                                    "spec": {"containers": [{"name": self.container,
                                                                             "image": "train"}]}})
        self.container_state(0, {"running": {"startedAt": _now()}})

    def container_state(self, restarts: int, state: dict, last_state: dict | None = None) -> None:
        self.core.patch_namespaced_pod_status(self.pod, NAMESPACE, {"status": {"containerStatuses": [
            {"name": self.container, "ready": "running" in state, "restartCount": restarts, "image": "train",
             "imageID": "", "state": state, "lastState": last_state or {}}]}})

    def log(self, *lines: str) -> None:
        self.server.append_log(NAMESPACE, self.pod, self.container, *lines)


def _launch(job: dict, kind: str, api_client, **options) -> tuple[threading.Thread, dict, list[str]]:
    result: dict = {}
    lines: list[str] = []

    def run():
        try:
            result["outcome"] = run_training_job(job, kind, api_client=api_client, log_sink=lines.append,
                                                 **{"timeout_s": 60, **options})
        except Exception as error:  # handed to the test thread
            result["error"] = error
    thread = threading.Thread(target=run)
    thread.start()
    return thread, result, lines


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_pytorchjob_followed_through_a_restart_to_success_with_the_master_log_streamed(kube):
    server, api_client = kube
    job = render_job(ClusterProfile(), INPUTS, "pytorchjob")
    thread, result, lines = _launch(job, "pytorchjob", api_client)
    operator = Operator(server, api_client, "pytorchjob", job["metadata"]["name"])
    created = operator.wait_for_job()
    assert created["spec"] == job["spec"] and created["metadata"]["labels"] == job["metadata"]["labels"]
    create = next(r for r in server.requests if r["method"] == "POST")
    assert create["path"] == "/apis/kubeflow.org/v1/namespaces/searchtune/pytorchjobs" and create["body"] == job

    operator.condition("Created")
    operator.start_master()
    operator.condition("Running")
    operator.log("resuming from nothing: starting from the base model", "{'loss': 3.1}")
    _wait_for(lambda: len(lines) == 2, "the first lines were not streamed")
    # The Master's container dies (a lost GPU); the kubelet restarts it, it resumes.
    operator.condition("Restarting", "PyTorchJobRestarting", "PyTorchJob is restarting because 1 Master replica(s) "
                                                             "failed.")
    operator.container_state(1, {"running": {"startedAt": _now()}},
                             {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    server.restart_container_log(NAMESPACE, operator.pod, "pytorch")
    operator.log("resuming from s3://b/checkpoints/checkpoint-4 (step 4)", "{'loss': 2.0}")
    operator.condition("Running")
    _wait_for(lambda: len(lines) == 4, "the restarted container's lines were not streamed")
    operator.log("model: s3://b/run-7/model")
    server.finish_log(NAMESPACE, operator.pod, "pytorch")
    operator.condition("Succeeded", "PyTorchJobSucceeded", "PyTorchJob is successfully completed.")
    thread.join(timeout=60)

    outcome = result["outcome"]
    assert outcome.transitions == ["Created", "Running", "Restarting", "Running", "Succeeded"]
    assert outcome.restarts == 1 and outcome.state == "Succeeded"
    assert lines == ["resuming from nothing: starting from the base model", "{'loss': 3.1}",
                     "resuming from s3://b/checkpoints/checkpoint-4 (step 4)", "{'loss': 2.0}",
                     "model: s3://b/run-7/model"], "every line once, in order, across the restart"
    assert outcome.deleted and server.get("pytorchjobs", NAMESPACE, operator.name) is None
    delete = next(r for r in server.requests if r["method"] == "DELETE")
    assert delete["body"]["propagationPolicy"] == "Background"
    watches = [r for r in server.requests if r["query"].get("watch") in ("True", "true")]
    assert watches and all(r["query"]["fieldSelector"] == f"metadata.name={operator.name}" for r in watches)


@pytest.mark.parametrize("cleanup", ["on_success", "always"])
def test_a_failed_job_raises_the_operators_reason_the_exit_code_and_the_last_log_lines(kube, cleanup):
    server, api_client = kube
    job = render_job(ClusterProfile(), INPUTS, "pytorchjob")
    thread, result, lines = _launch(job, "pytorchjob", api_client, cleanup=cleanup)
    operator = Operator(server, api_client, "pytorchjob", job["metadata"]["name"])
    operator.wait_for_job()
    operator.condition("Created")
    operator.start_master()
    operator.condition("Running")
    operator.log("{'loss': 3.1}", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    _wait_for(lambda: len(lines) == 2, "the lines were not streamed")
    operator.container_state(3, {"terminated": {"exitCode": 1, "reason": "Error", "message": "CUDA out of memory"}})
    server.finish_log(NAMESPACE, operator.pod, "pytorch")
    operator.condition("Failed", "PyTorchJobFailed", "PyTorchJob searchtune-x is failed because 1 Master replica(s) "
                                                     "failed.")
    thread.join(timeout=60)

    error = result["error"]
    assert isinstance(error, TrainingJobFailed) and not isinstance(error, TrainingJobTimeout)
    message = str(error)
    assert message.startswith(f"PyTorchJob searchtune/{operator.name} failed: PyTorchJobFailed: PyTorchJob "
                              "searchtune-x is failed because 1 Master replica(s) failed.")
    assert "Master container: exit code 1 (Error): CUDA out of memory" in message
    assert message.endswith("  torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    kept = server.get("pytorchjobs", NAMESPACE, operator.name) is not None
    assert kept == (cleanup == "on_success"), "on_success keeps a failed job for inspection; always deletes it"


def test_the_deadline_fails_the_step_and_deletes_the_abandoned_job(kube):
    server, api_client = kube
    job = render_job(ClusterProfile(), INPUTS, "pytorchjob")
    # Long enough for the two conditions below to land first on a loaded machine.
    thread, result, _ = _launch(job, "pytorchjob", api_client, timeout_s=6)
    operator = Operator(server, api_client, "pytorchjob", job["metadata"]["name"])
    operator.wait_for_job()
    operator.condition("Created")
    operator.condition("Running")
    thread.join(timeout=60)
    error = result["error"]
    assert isinstance(error, TrainingJobTimeout)
    assert str(error) == f"PyTorchJob searchtune/{operator.name} did not finish within 6 s (last state: Running)"
    assert server.get("pytorchjobs", NAMESPACE, operator.name) is None, "a job given up on holds no GPUs"
    watches = [r for r in server.requests if r["query"].get("watch") in ("True", "true")]
    assert all(int(r["query"]["timeoutSeconds"]) <= 6 for r in watches)


def test_a_trainjob_completes_and_is_kept_when_cleanup_is_never(kube):
    server, api_client = kube
    job = render_job(ClusterProfile(), INPUTS, "trainjob")
    thread, result, lines = _launch(job, "trainjob", api_client, cleanup="never")
    operator = Operator(server, api_client, "trainjob", job["metadata"]["name"])
    assert operator.wait_for_job()["spec"]["runtimeRef"]["name"] == "torch-distributed"
    operator.condition("Created", "JobsCreationSucceeded", "Succeeded to create Jobs")
    operator.start_master()
    operator.log("training on 2 nodes")
    server.finish_log(NAMESPACE, operator.pod, "node")
    operator.condition("Complete", "JobsCompleted", "TrainJob is completed")
    thread.join(timeout=60)
    outcome = result["outcome"]
    assert outcome.transitions == ["Created", "Complete"] and lines == ["training on 2 nodes"]
    assert not outcome.deleted and server.get("trainjobs", NAMESPACE, operator.name) is not None


def test_a_retried_step_reattaches_to_its_own_job_and_refuses_another_runs(kube):
    server, api_client = kube
    job = render_job(ClusterProfile(), INPUTS, "pytorchjob")
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE, "pytorchjobs", job)
    operator = Operator(server, api_client, "pytorchjob", job["metadata"]["name"])
    operator.condition("Succeeded", "PyTorchJobSucceeded", "done while the step was being retried")
    outcome = run_training_job(job, "pytorchjob", 60, api_client=api_client, log_sink=lambda line: None)
    assert outcome.state == "Succeeded" and outcome.deleted
    assert len([r for r in server.requests if r["method"] == "POST"]) == 2, "one create refused with 409"

    # An earlier attempt's job failed: a retried step replaces it (same name, same checkpoints).
    custom.create_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE, "pytorchjobs", job)
    failed = Operator(server, api_client, "pytorchjob", job["metadata"]["name"])
    failed.condition("Failed", "PyTorchJobFailed", "backoff limit reached")
    old_uid = server.get("pytorchjobs", NAMESPACE, failed.name)["metadata"]["uid"]
    thread, result, _ = _launch(job, "pytorchjob", api_client)
    _wait_for(lambda: (server.get("pytorchjobs", NAMESPACE, failed.name) or {"metadata": {"uid": old_uid}})[
        "metadata"]["uid"] != old_uid, "the failed job was not replaced")
    replacement = Operator(server, api_client, "pytorchjob", failed.name)
    replacement.condition("Succeeded")
    thread.join(timeout=60)
    assert result["outcome"].transitions == ["Succeeded"]
    calls = [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in server.requests if r["method"] != "GET"][-5:]
    assert calls[:3] == [("POST", "pytorchjobs"), ("DELETE", failed.name), ("POST", "pytorchjobs")], calls

    theirs = render_job(ClusterProfile(), INPUTS, "pytorchjob")
    theirs["metadata"]["labels"]["searchtune.io/pipeline-run-id"] = "someone-else"
    custom.create_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE, "pytorchjobs", theirs)
    with pytest.raises(TrainingJobFailed, match="already exists and belongs to another run "
                                                r"\(searchtune.io/pipeline-run-id=someone-else"):
        run_training_job(job, "pytorchjob", 60, api_client=api_client)
    assert server.get("pytorchjobs", NAMESPACE, job["metadata"]["name"]) is not None, "not ours to delete"


def test_a_job_the_api_server_refuses_or_someone_deletes_fails_the_step(kube):
    server, api_client = kube
    job = render_job(ClusterProfile(), INPUTS, "pytorchjob")
    broken = render_job(ClusterProfile(), INPUTS, "pytorchjob")
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] = "two"
    with pytest.raises(TrainingJobFailed, match=r"creating PyTorchJob searchtune/\S+ failed: 422 .*is invalid: .*"
                                                r"nvidia.com/gpu: 'two' does not match"):
        run_training_job(broken, "pytorchjob", 60, api_client=api_client)

    thread, result, _ = _launch(job, "pytorchjob", api_client)
    operator = Operator(server, api_client, "pytorchjob", job["metadata"]["name"])
    operator.wait_for_job()
    operator.condition("Created")
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE,
                                                                        "pytorchjobs", operator.name)
    thread.join(timeout=60)
    assert str(result["error"]) == f"PyTorchJob searchtune/{operator.name} was deleted before it finished " \
                                   "(last state: Created)"


def test_the_newest_true_condition_is_the_state():
    job = {"status": {"conditions": [
        {"type": "Created", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"},
        {"type": "Running", "status": "False", "lastTransitionTime": "2025-01-01T00:01:00Z"},
        {"type": "Restarting", "status": "True", "reason": "R", "message": "m",
         "lastTransitionTime": "2025-01-01T00:02:00Z"}]}}
    assert job_state(job) == ("Restarting", "R", "m")
    assert job_state({}) == ("", "", "")


def test_the_fine_tune_step_on_a_cluster_checks_the_sealed_model_and_reads_its_summary(kube, s3_environment, tmp_path):
    from components.object_store import upload_folder
    from pipelines.job_launcher import fine_tune_on_cluster

    server, api_client = kube
    flags = {"model": "BAAI/bge-large-zh-v1.5", "learning_rate": 1e-5, "nproc_per_node": 2, "max_steps": 10}
    output = "s3://data/launcher/run-9/fine-tune-embedder/finetuned_model"

    def step(model_output: str) -> dict:
        result: dict = {}

        def run():
            try:
                result["value"] = fine_tune_on_cluster("trainjob", "training: {watch_timeout_s: 120}\n", flags,
                                                       "s3://data/launcher/run-9/scored_train", model_output,
                                                       "run-9", "fine-tune-embedder", api_client=api_client)
            except Exception as error:  # handed to the test thread
                result["error"] = error
        thread = threading.Thread(target=run)
        thread.start()
        _wait_for(lambda: server.requests and any(r["method"] == "POST" for r in server.requests),
                  "no job was created")
        created = next(r["body"] for r in reversed(server.requests) if r["method"] == "POST")
        command = created["spec"]["trainer"]["command"]
        assert command[command.index("--output") + 1] == model_output
        assert command[command.index("--max-steps") + 1] == "10"
        operator = Operator(server, api_client, "trainjob", created["metadata"]["name"])
        operator.condition("Complete")
        thread.join(timeout=60)
        return result

    # The job's Master sealed the model where the step's artifact points.
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "training_summary.json").write_text('{"global_step": 10, "final_loss": 0.5}', encoding="utf-8")
    upload_folder(model, output)
    result = step(output)["value"]
    assert result.model_uri == output and result.summary == {"global_step": 10, "final_loss": 0.5}

    s3_environment.client().put_object(Bucket="data", Key="launcher/run-10/model/model.safetensors", Body=b"w")
    server.requests.clear()
    error = step("s3://data/launcher/run-10/model")["error"]
    assert isinstance(error, TrainingJobFailed)
    assert "succeeded but s3://data/launcher/run-10/model has no completion marker" in str(error)


@pytest.mark.parametrize("executor, train_data, message", [
    ("mpijob", "s3://b/rows", "train_executor: expected one of local, pytorchjob, trainjob, got 'mpijob'"),
    ("pytorchjob", "/tmp/local-root/scored_train", "train_data: the training job reads and writes S3; got "
                                                   "'/tmp/local-root/scored_train'"),
])
def test_the_fine_tune_step_refuses_what_a_cluster_job_cannot_do(executor, train_data, message):
    from pipelines.job_launcher import fine_tune_on_cluster

    with pytest.raises(ValueError, match=re.escape(message)):
        fine_tune_on_cluster(executor, "", {"nproc_per_node": 2}, train_data, "s3://b/model", "r", "t",
                             api_client=object())
