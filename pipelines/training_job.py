"""The fine-tuning job as Kubernetes sees it: a PyTorchJob or a TrainJob, from the cluster profile.

Both renderers take the same :class:`JobInputs` (what to train on, where the model goes,
which KFP run it belongs to) and the cluster profile's ``training`` section, and give a
manifest whose every replica runs ``searchtune train-replica`` in the train image:

- ``kubeflow.org/v1`` **PyTorchJob** (Training Operator v1.x): a Master and
  ``nodes - 1`` Workers, ``nprocPerNode`` = GPUs per node, one container named
  ``pytorch`` asking for the GPUs, CPU and memory of ``training.resources``, a
  memory-backed ``/dev/shm``, the GPU node selector and tolerations, the S3 credentials
  from the profile's Secret, ``runPolicy`` from ``training.run_policy``, ``OnFailure``
  restarts, the Istio sidecar off, and labels naming the KFP run and task.
- ``trainer.kubeflow.org/v1alpha1`` **TrainJob** (Kubeflow Trainer v2): the same replica
  on the ``torch-distributed`` ClusterTrainingRuntime, the pod settings applied through
  ``runtimePatches``. A TrainJob cannot set ``backoffLimit``, ``cleanPodPolicy``,
  ``ttlSecondsAfterFinished``, the image pull policy or a priority class: those come
  from the runtime (a profile that sets ``priority_class`` is refused for a TrainJob).

The job's name and checkpoint prefix derive from the run id and task name, so a retried
KFP step finds (and re-attaches to) the job it created before.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal

from components.object_store import join_uri
from pipelines.cluster_profile import ClusterProfile

JobKind = Literal["pytorchjob", "trainjob"]
JOB_KINDS: tuple[str, ...] = ("pytorchjob", "trainjob")

PYTORCHJOB_CONTAINER = "pytorch"
TRAINJOB_CONTAINER = "node"  # the torch-distributed runtime's replicated job and container
PYTORCHJOB_PORT = 23456  # the Training Operator's default pytorchjob-port
WORK_DIR = "/var/tmp/searchtune"
RUN_ID_LABEL = "searchtune.io/pipeline-run-id"
TASK_LABEL = "searchtune.io/pipeline-task"
MANAGER = "searchtune.io/job-launcher"
PLACEHOLDER_RUN_ID = "example-run"

_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class JobInputs:
    """What one training job works on and whom it belongs to.

    Attributes:
        run_id: the KFP run's id: in labels, the job's name and the checkpoint prefix.
        task_name: the KFP task that launches the job.
        train_data: the scored rows (an ``s3://`` object).
        model_output: the Model artifact's URI (an ``s3://`` prefix): the Master seals the
            fine-tuned model there.
        train_arguments: the replica's training flags by ``TrainConfig`` field name
            (``{"learning_rate": "1e-05", ...}``); the job decides nodes and processes.
        keep_store_checkpoints: complete checkpoints kept in the store.
    """

    run_id: str
    task_name: str
    train_data: str
    model_output: str
    train_arguments: dict[str, str] = field(default_factory=dict)
    keep_store_checkpoints: int = 2

    def __post_init__(self) -> None:
        for name in ("train_data", "model_output"):
            value = getattr(self, name)
            if not value.startswith("s3://"):
                raise ValueError(f"{name}: the training job reads and writes S3; got {value!r} (run the pipeline "
                                 "with an s3:// pipeline_root, or use train_executor=local)")
        for name in ("nnodes", "nproc_per_node"):
            if name in self.train_arguments:
                raise ValueError(f"{name}: the cluster profile decides the job's layout (training.nodes, "
                                 "training.gpus_per_node), not a training flag")


def label_value(text: str) -> str:
    """``text`` as a valid label value (63 characters of ``[A-Za-z0-9_.-]``, alphanumeric ends)."""
    return _LABEL_VALUE.sub("-", text)[:63].strip("-_.") or "none"


def job_name(inputs: JobInputs) -> str:
    """A DNS-1035 name, stable for one run and task: ``searchtune-<task>-<hash>``."""
    digest = hashlib.sha256(f"{inputs.run_id}/{inputs.task_name}".encode("utf-8")).hexdigest()[:10]
    task = re.sub(r"[^a-z0-9-]+", "-", inputs.task_name.lower()).strip("-")[:20].strip("-")
    return f"searchtune-{task}-{digest}" if task else f"searchtune-{digest}"


def checkpoint_uri(profile: ClusterProfile, inputs: JobInputs) -> str:
    """Where this run's checkpoints go: ``<checkpoint_root>/<run id>/<task>``."""
    return join_uri(profile.checkpoint_root, label_value(inputs.run_id), label_value(inputs.task_name))


def job_labels(inputs: JobInputs) -> dict[str, str]:
    return {"app.kubernetes.io/name": "searchtune", "app.kubernetes.io/component": "fine-tune",
            "app.kubernetes.io/managed-by": "searchtune-job-launcher",
            RUN_ID_LABEL: label_value(inputs.run_id), TASK_LABEL: label_value(inputs.task_name)}


def replica_command(profile: ClusterProfile, inputs: JobInputs) -> list[str]:
    """The command every replica runs."""
    command = ["searchtune", "train-replica", "--train-data", inputs.train_data, "--output", inputs.model_output,
               "--checkpoint-uri", checkpoint_uri(profile, inputs),
               "--keep-store-checkpoints", str(inputs.keep_store_checkpoints)]
    for name, value in inputs.train_arguments.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def _environment(profile: ClusterProfile) -> list[dict]:
    s3 = profile.s3
    env = [
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": s3.secret_name, "key": s3.access_key_key}}},
        {"name": "AWS_SECRET_ACCESS_KEY",
         "valueFrom": {"secretKeyRef": {"name": s3.secret_name, "key": s3.secret_key_key}}},
        {"name": "AWS_DEFAULT_REGION", "value": s3.region},
    ]
    if s3.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint})
    # Nothing is downloaded at run time: models come from S3 or the image's own cache.
    env += [{"name": name, "value": "1"} for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                       "PYTHONUNBUFFERED")]
    env.append({"name": "SEARCHTUNE_WORK_DIR", "value": WORK_DIR})
    return env


def _resources(profile: ClusterProfile) -> dict:
    training = profile.training
    gpus = str(training.gpus_per_node)
    return {"requests": {"cpu": training.resources.cpu_request, "memory": training.resources.memory_request,
                         training.gpu_resource: gpus},
            "limits": {"cpu": training.resources.cpu_limit, "memory": training.resources.memory_limit,
                       training.gpu_resource: gpus}}


def _volumes(profile: ClusterProfile) -> list[dict]:
    # NCCL and the data loaders share memory through /dev/shm; the container default is 64 MB.
    return [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": profile.training.shm_size}},
            {"name": "scratch", "emptyDir": {}}]


VOLUME_MOUNTS = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": WORK_DIR}]


def _pod_metadata(inputs: JobInputs) -> dict:
    # The launcher drives the job and the replicas talk to each other directly: an Istio
    # sidecar would only delay start-up and break the rendezvous before it is ready.
    return {"labels": {**job_labels(inputs), "sidecar.istio.io/inject": "false"},
            "annotations": {"sidecar.istio.io/inject": "false"}}


def _pod_placement(profile: ClusterProfile) -> dict:
    spec: dict = {"serviceAccountName": profile.service_account}
    if profile.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in profile.image_pull_secrets]
    if profile.training.node_selector:
        spec["nodeSelector"] = dict(profile.training.node_selector)
    if profile.training.tolerations:
        spec["tolerations"] = [t.to_kubernetes() for t in profile.training.tolerations]
    return spec


def _metadata(profile: ClusterProfile, inputs: JobInputs) -> dict:
    return {"name": job_name(inputs), "namespace": profile.namespace, "labels": job_labels(inputs),
            "annotations": {"searchtune.io/model-uri": inputs.model_output,
                            "searchtune.io/checkpoint-uri": checkpoint_uri(profile, inputs)}}


def render_pytorchjob(profile: ClusterProfile, inputs: JobInputs) -> dict:
    """A ``kubeflow.org/v1`` PyTorchJob: Master + ``nodes - 1`` Workers."""
    training = profile.training
    container = {
        "name": PYTORCHJOB_CONTAINER,
        "image": profile.images.train,
        "imagePullPolicy": profile.images.pull_policy,
        "command": replica_command(profile, inputs),
        "env": _environment(profile),
        "resources": _resources(profile),
        "volumeMounts": [dict(mount) for mount in VOLUME_MOUNTS],
        "ports": [{"name": "pytorchjob-port", "containerPort": PYTORCHJOB_PORT, "protocol": "TCP"}],
    }
    pod_spec = {**_pod_placement(profile), "volumes": _volumes(profile), "containers": [container]}
    if training.priority_class:
        pod_spec["priorityClassName"] = training.priority_class

    def replica(count: int) -> dict:
        # Copies, not shared objects: the YAML reads the same for every replica type.
        return {"replicas": count, "restartPolicy": "OnFailure",
                "template": {"metadata": _pod_metadata(inputs), "spec": copy.deepcopy(pod_spec)}}

    replicas = {"Master": replica(1)}
    if training.nodes > 1:
        replicas["Worker"] = replica(training.nodes - 1)
    policy = training.run_policy
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(profile, inputs),
        "spec": {
            "nprocPerNode": str(training.gpus_per_node),
            "runPolicy": {"cleanPodPolicy": policy.clean_pod_policy, "backoffLimit": policy.backoff_limit,
                          "ttlSecondsAfterFinished": policy.ttl_seconds_after_finished,
                          "activeDeadlineSeconds": policy.active_deadline_seconds},
            "pytorchReplicaSpecs": replicas,
        },
    }


def render_trainjob(profile: ClusterProfile, inputs: JobInputs) -> dict:
    """A ``trainer.kubeflow.org/v1alpha1`` TrainJob on the profile's ClusterTrainingRuntime."""
    training = profile.training
    if training.priority_class:
        raise ValueError("training.priority_class: a TrainJob cannot set it (runtimePatches do not allow "
                         "priorityClassName); set it in the ClusterTrainingRuntime or use a PyTorchJob")
    pod_spec = {**_pod_placement(profile), "volumes": _volumes(profile),
                "containers": [{"name": TRAINJOB_CONTAINER, "volumeMounts": [dict(m) for m in VOLUME_MOUNTS]}]}
    patch = {"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": TRAINJOB_CONTAINER, "template": {"spec": {"template": {"metadata": _pod_metadata(inputs),
                                                                        "spec": pod_spec}}}}]}}}}
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _metadata(profile, inputs),
        "spec": {
            "runtimeRef": {"name": training.trainjob_runtime, "apiGroup": "trainer.kubeflow.org",
                           "kind": "ClusterTrainingRuntime"},
            "activeDeadlineSeconds": training.run_policy.active_deadline_seconds,
            "trainer": {
                "image": profile.images.train,
                "command": replica_command(profile, inputs),
                "env": _environment(profile),
                "numNodes": training.nodes,
                "numProcPerNode": training.gpus_per_node,
                "resourcesPerNode": _resources(profile),
            },
            "runtimePatches": [patch],
        },
    }


def render_job(profile: ClusterProfile, inputs: JobInputs, kind: JobKind) -> dict:
    """The job ``kind`` (``pytorchjob`` or ``trainjob``) for these inputs."""
    if kind == "pytorchjob":
        return render_pytorchjob(profile, inputs)
    if kind == "trainjob":
        return render_trainjob(profile, inputs)
    raise ValueError(f"kind: expected one of {', '.join(JOB_KINDS)}, got {kind!r}")


# The fine-tune step's parameters the replica takes as ``TrainConfig`` flags (the job's
# layout, nodes and processes per node, comes from the cluster profile instead).
TRAIN_FLAGS: tuple[str, ...] = (
    "model", "train_group_size", "query_max_len", "passage_max_len", "knowledge_distillation", "learning_rate",
    "temperature", "num_train_epochs", "max_steps", "save_steps", "per_device_train_batch_size", "precision",
    "deepspeed", "gradient_checkpointing", "freeze_word_embeddings", "seed",
    "pooling", "normalize", "query_instruction", "passage_instruction",
)


def _flag_text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def train_arguments(parameters: dict, profile: ClusterProfile) -> dict[str, str]:
    """The replica's training flags from the step's ``TrainConfig`` values.

    Raises:
        ValueError: ``nproc_per_node`` disagrees with the profile's ``training.gpus_per_node``
            (on a cluster one process drives one GPU).
    """
    nproc = parameters.get("nproc_per_node")
    if nproc is not None and int(nproc) != profile.training.gpus_per_node:
        raise ValueError(f"nproc_per_node={nproc} but the cluster profile gives training.gpus_per_node="
                         f"{profile.training.gpus_per_node}: on a cluster each process drives one GPU; make them "
                         "agree")
    return {name: _flag_text(parameters[name]) for name in TRAIN_FLAGS if name in parameters}


def placeholder_inputs(profile: ClusterProfile, train_arguments: dict[str, str],
                       train_data: str = "", model_output: str = "", run_id: str = PLACEHOLDER_RUN_ID,
                       task_name: str = "fine-tune-embedder") -> JobInputs:
    """Inputs for reviewing a job outside a run: URIs under the pipeline root unless given."""
    root = join_uri(profile.pipeline_root, run_id)
    return JobInputs(run_id=run_id, task_name=task_name,
                     train_data=train_data or join_uri(root, "score-pairs", "scored_train"),
                     model_output=model_output or join_uri(root, task_name, "finetuned_model"),
                     train_arguments=train_arguments)
