"""The cluster profile: everything about *where* the pipeline runs, in one typed YAML file.

The pipeline's parameters say what to compute; the profile says which images, which
namespace and service account, which S3 store and Secret, how much CPU, memory and GPU
each step gets, and how the fine-tuning job is laid out over GPU nodes. ``searchtune
compile --profile``, ``submit``, ``render-job`` and the train step's job launcher all read
the same file; every field has the recipe's value as its default, so an empty file is a
valid profile for a cluster laid out the usual way (Kubeflow Pipelines 2.x, the Training
Operator, GPU nodes labelled and tainted as the NVIDIA GPU Operator does).

A bad file stops with one line naming the file, the line and the field::

    cluster.yaml:14: training.gpus_per_node: expected an integer, got 'two'
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

# Kubernetes resource quantities: 500m, 2, 1.5, 16Gi, 64G, 1e3 ...
_QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[kMGTPE]i?|m|k)?$")
# DNS-1123 labels (namespaces, Secrets, service accounts).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ProfileError(ValueError):
    """A bad cluster profile, located: ``file:line: field.path: problem``."""


def _check_quantity(value: str, name: str) -> None:
    if not _QUANTITY.match(str(value)):
        raise ValueError(f"{name}: {value!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)")


def _check_name(value: str, name: str, allow_empty: bool = False) -> None:
    if (value or not allow_empty) and (not _DNS_LABEL.match(value) or len(value) > 63):
        raise ValueError(f"{name}: {value!r} is not a valid Kubernetes name (lower-case letters, digits, '-')")


@dataclass(frozen=True)
class Toleration:
    """A pod toleration, as in ``spec.tolerations``.

    Attributes:
        key: the taint key (``nvidia.com/gpu``).
        operator: ``Exists`` or ``Equal``.
        value: the taint value (with ``Equal``).
        effect: ``NoSchedule``, ``PreferNoSchedule``, ``NoExecute``, or empty for all.
    """

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""

    def __post_init__(self) -> None:
        if self.operator == "Exists" and self.value:
            raise ValueError("value: must be empty when operator is Exists")

    def to_kubernetes(self) -> dict:
        out = {"key": self.key, "operator": self.operator}
        if self.value:
            out["value"] = self.value
        if self.effect:
            out["effect"] = self.effect
        return out


GPU_TOLERATIONS = (Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"),)
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}


@dataclass(frozen=True)
class StepResources:
    """What one pipeline step's pod asks for.

    Attributes:
        cpu_request: CPU request (Kubernetes quantity).
        cpu_limit: CPU limit.
        memory_request: memory request (e.g. ``8Gi``).
        memory_limit: memory limit.
        accelerator_type: e.g. ``nvidia.com/gpu``; empty for a CPU-only step.
        accelerator_count: accelerators per pod (0 with no accelerator type).
        node_selector: node labels the pod must match.
        tolerations: taints the pod tolerates.
    """

    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "4Gi"
    memory_limit: str = "8Gi"
    accelerator_type: str = ""
    accelerator_count: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()

    def __post_init__(self) -> None:
        for name in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
            _check_quantity(getattr(self, name), name)
        if self.accelerator_count < 0:
            raise ValueError("accelerator_count: must not be negative")
        if self.accelerator_count > 0 and not self.accelerator_type:
            raise ValueError("accelerator_type: required when accelerator_count is above 0 (e.g. nvidia.com/gpu)")
        if self.accelerator_type and self.accelerator_count == 0:
            raise ValueError("accelerator_count: must be at least 1 when accelerator_type is set")


def _gpu_step(cpu: str, memory: str) -> StepResources:
    return StepResources(cpu_request=cpu, cpu_limit=cpu, memory_request=memory, memory_limit=memory,
                         accelerator_type="nvidia.com/gpu", accelerator_count=1,
                         node_selector=dict(GPU_NODE_SELECTOR), tolerations=GPU_TOLERATIONS)


@dataclass(frozen=True)
class StepsProfile:
    """Resources per pipeline step.

    Attributes:
        fingerprint: what the data locations hold now, for the cache key (CPU, S3 HEAD
            requests or a file hash).
        prepare: validate and split (CPU).
        mine: encode the pool and search (one GPU).
        score: the cross-encoder teacher (one GPU).
        fine_tune: the pod that drives the training job (small, CPU); the job's own pods
            are sized under ``training``.
        evaluate: encode and score both models (one GPU).
        gate: the promotion decision (CPU).
        promote: copies the model and upgrades the serving release (CPU).
        parity: compares served and trained vectors (CPU).
    """

    fingerprint: StepResources = field(default_factory=lambda: StepResources(cpu_request="250m", cpu_limit="1",
                                                                              memory_request="512Mi",
                                                                              memory_limit="1Gi"))
    prepare: StepResources = field(default_factory=lambda: StepResources(cpu_request="2", cpu_limit="4",
                                                                          memory_request="8Gi",
                                                                          memory_limit="16Gi"))
    mine: StepResources = field(default_factory=lambda: _gpu_step("8", "32Gi"))
    score: StepResources = field(default_factory=lambda: _gpu_step("8", "32Gi"))
    fine_tune: StepResources = field(default_factory=lambda: StepResources(cpu_request="500m", cpu_limit="1",
                                                                            memory_request="1Gi",
                                                                            memory_limit="2Gi"))
    evaluate: StepResources = field(default_factory=lambda: _gpu_step("8", "32Gi"))
    gate: StepResources = field(default_factory=lambda: StepResources(cpu_request="250m", cpu_limit="1",
                                                                       memory_request="512Mi",
                                                                       memory_limit="1Gi"))
    promote: StepResources = field(default_factory=lambda: StepResources(cpu_request="500m", cpu_limit="2",
                                                                          memory_request="2Gi",
                                                                          memory_limit="4Gi"))
    parity: StepResources = field(default_factory=lambda: StepResources(cpu_request="2", cpu_limit="4",
                                                                         memory_request="8Gi",
                                                                         memory_limit="16Gi"))


@dataclass(frozen=True)
class ImagesProfile:
    """Container images (pin them by digest in production).

    Attributes:
        steps: prepare, mine, score, evaluate and parity (torch, FAISS, FlagEmbedding, this package).
        launcher: the steps that only drive the cluster: the fine-tune driver, gate, promote
            (kfp, kubernetes, boto3, this package; no torch).
        train: the training job's replicas (torch with CUDA, DeepSpeed, FlagEmbedding).
        pull_policy: ``IfNotPresent``, ``Always`` or ``Never``.
    """

    steps: str = "ghcr.io/searchtune/searchtune:0.1.0"
    launcher: str = "ghcr.io/searchtune/searchtune-launcher:0.1.0"
    train: str = "ghcr.io/searchtune/searchtune-train:0.1.0"
    pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"


@dataclass(frozen=True)
class S3Profile:
    """The S3-compatible store the artifacts, checkpoints and models live in.

    Attributes:
        secret_name: the Secret holding the credentials (``manifests/`` has a template).
        access_key_key: the Secret's key for the access key id.
        secret_key_key: the Secret's key for the secret access key.
        endpoint: the store's URL as pods reach it (empty: AWS S3 itself).
        region: the store's region.
    """

    secret_name: str = "searchtune-s3"
    access_key_key: str = "AWS_ACCESS_KEY_ID"
    secret_key_key: str = "AWS_SECRET_ACCESS_KEY"
    endpoint: str = "http://minio-service.kubeflow:9000"
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        _check_name(self.secret_name, "secret_name")
        if self.endpoint and not re.match(r"^https?://[^\s/]+", self.endpoint):
            raise ValueError(f"endpoint: {self.endpoint!r} is not an http(s) URL")


@dataclass(frozen=True)
class RunPolicy:
    """The training job's ``runPolicy``.

    Attributes:
        clean_pod_policy: which pods to delete when the job ends: ``None`` keeps them for
            their logs, ``Running`` stops stragglers, ``All`` removes every pod.
        backoff_limit: restarts of failed replicas before the job fails (each resumes from
            the newest complete checkpoint).
        ttl_seconds_after_finished: the finished job is garbage-collected after this long.
        active_deadline_seconds: the job fails if it runs longer than this.
    """

    clean_pod_policy: Literal["None", "Running", "All"] = "None"
    backoff_limit: int = 3
    ttl_seconds_after_finished: int = 7 * 24 * 3600
    active_deadline_seconds: int = 2 * 24 * 3600

    def __post_init__(self) -> None:
        for name in ("backoff_limit", "ttl_seconds_after_finished", "active_deadline_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")


@dataclass(frozen=True)
class TrainingProfile:
    """How the fine-tuning job is laid out over GPU nodes.

    Attributes:
        executor: ``pytorchjob`` (Kubeflow Training Operator v1), ``trainjob`` (Kubeflow
            Trainer v2), or ``local`` (torchrun inside the step's own pod).
        nodes: replicas (pods, one per node): a Master and ``nodes - 1`` Workers.
        gpus_per_node: GPUs per pod, and torchrun processes per pod (``nprocPerNode``).
        gpu_resource: the extended resource name of a GPU.
        resources: CPU and memory of one replica pod (GPUs come from ``gpus_per_node``).
        shm_size: size of the memory-backed ``/dev/shm`` (NCCL and data loaders need more
            than the container default of 64 MB).
        node_selector: node labels a replica must match.
        tolerations: taints a replica tolerates.
        run_policy: the job's ``runPolicy``.
        checkpoint_root: ``s3://`` prefix under which each run's checkpoints go (empty:
            ``<pipeline_root>/checkpoints``).
        trainjob_runtime: the ClusterTrainingRuntime a TrainJob refers to.
        watch_timeout_s: the launcher gives up (and fails the step) after this long.
        priority_class: the replicas' PriorityClass (empty: the cluster default).
        job_cleanup: when the launcher deletes the finished job: ``on_success`` keeps a
            failed one for inspection (``ttl_seconds_after_finished`` removes it later),
            ``always`` or ``never``; a job the launcher gives up on (deadline, cancelled
            step) is deleted unless ``never``.
    """

    executor: Literal["pytorchjob", "trainjob", "local"] = "pytorchjob"
    nodes: int = 2
    gpus_per_node: int = 2
    gpu_resource: str = "nvidia.com/gpu"
    resources: StepResources = field(default_factory=lambda: StepResources(
        cpu_request="16", cpu_limit="16", memory_request="96Gi", memory_limit="96Gi"))
    shm_size: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=lambda: dict(GPU_NODE_SELECTOR))
    tolerations: tuple[Toleration, ...] = GPU_TOLERATIONS
    run_policy: RunPolicy = field(default_factory=RunPolicy)
    checkpoint_root: str = ""
    trainjob_runtime: str = "torch-distributed"
    watch_timeout_s: int = 3 * 24 * 3600
    priority_class: str = ""
    job_cleanup: Literal["on_success", "always", "never"] = "on_success"

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("nodes: must be at least 1 (the Master)")
        if self.gpus_per_node < 1:
            raise ValueError("gpus_per_node: must be at least 1")
        _check_quantity(self.shm_size, "shm_size")
        if self.resources.accelerator_count:
            raise ValueError("resources: give GPUs as gpus_per_node, not accelerator_count")
        if self.checkpoint_root and not self.checkpoint_root.startswith("s3://"):
            raise ValueError(f"checkpoint_root: must be an s3:// URI, got {self.checkpoint_root!r}")
        if self.watch_timeout_s < 60:
            raise ValueError("watch_timeout_s: must be at least 60")


@dataclass(frozen=True)
class ClusterProfile:
    """Where and how the pipeline runs on a Kubeflow cluster.

    Attributes:
        namespace: the KFP profile namespace runs and jobs live in.
        service_account: the pipeline runner's ServiceAccount (``manifests/`` creates it
            with the Role the job launcher needs).
        pipeline_root: ``s3://bucket/prefix`` where every artifact of a run lands.
        image_pull_secrets: Secrets for a private registry.
        s3: the object store and its credentials' Secret.
        images: the images per kind of step.
        steps: resources per pipeline step.
        training: the distributed fine-tuning job.
    """

    namespace: str = "searchtune"
    service_account: str = "searchtune-pipeline-runner"
    pipeline_root: str = "s3://searchtune/pipeline-root"
    image_pull_secrets: tuple[str, ...] = ()
    s3: S3Profile = field(default_factory=S3Profile)
    images: ImagesProfile = field(default_factory=ImagesProfile)
    steps: StepsProfile = field(default_factory=StepsProfile)
    training: TrainingProfile = field(default_factory=TrainingProfile)

    def __post_init__(self) -> None:
        _check_name(self.namespace, "namespace")
        _check_name(self.service_account, "service_account")
        if not self.pipeline_root.startswith("s3://") or len(self.pipeline_root) <= len("s3://"):
            raise ValueError(f"pipeline_root: must be an s3://bucket/prefix URI, got {self.pipeline_root!r}")
        for secret in self.image_pull_secrets:
            _check_name(secret, "image_pull_secrets")

    @property
    def checkpoint_root(self) -> str:
        return self.training.checkpoint_root or self.pipeline_root.rstrip("/") + "/checkpoints"


# --------------------------------------------------------------------------- YAML ⇄ dataclasses


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    if origin in (tuple, list):
        return "a list"
    if origin is dict or (dataclasses.is_dataclass(annotation)):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(annotation,
                                                                                            str(annotation))


def _node_value(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


def _convert(annotation: Any, node: yaml.Node, where: str, fail, base: Any = None) -> Any:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return None
        return _convert(inner[0], node, where, fail)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(node, yaml.MappingNode):
            fail(node, where, f"expected {_type_name(annotation)}, got {_node_value(node)!r}")
        return _dataclass_from_node(annotation, node, where, fail, base)
    if origin is tuple or origin is list:
        if not isinstance(node, yaml.SequenceNode):
            fail(node, where, f"expected a list, got {_node_value(node)!r}")
        item = args[0]
        values = [_convert(item, child, f"{where}[{i}]", fail) for i, child in enumerate(node.value)]
        return tuple(values) if origin is tuple else values
    if origin is dict:
        if not isinstance(node, yaml.MappingNode):
            fail(node, where, f"expected a mapping, got {_node_value(node)!r}")
        out = {}
        for key_node, value_node in node.value:
            key = _node_value(key_node)
            value = _node_value(value_node)
            if not isinstance(value, str) or not isinstance(key, str):
                fail(value_node, f"{where}.{key}", f"expected a string (quote it), got {value!r}")
            out[key] = value
        return out
    value = _node_value(node)
    if origin is Literal:
        if value not in args:
            fail(node, where, f"expected {_type_name(annotation)}, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            fail(node, where, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(node, where, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(node, where, f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        # Quantities such as 2 or 0.5 are written unquoted; keep them as Kubernetes does.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            fail(node, where, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported profile field type {annotation!r}")


def _dataclass_from_node(cls: type, node: yaml.MappingNode, where: str, fail, base: Any = None) -> Any:
    """``cls`` from a mapping; fields it leaves out keep ``base``'s values (the parent's default).

    So ``steps: {mine: {node_selector: ...}}`` changes mine's node selector and keeps its
    GPU, CPU and memory, rather than falling back to a CPU step's values.
    """
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = _node_value(key_node)
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            fail(key_node, path, f"unknown field; allowed: {', '.join(sorted(names))}")
        values[key] = _convert(hints[key], value_node, path, fail,
                               getattr(base, key) if base is not None else _field_default(cls, key))
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except TypeError as error:  # a required field left out
        fail(node, where or cls.__name__, str(error))
    except ValueError as error:
        # __post_init__ names the field; point at its line when it was given.
        message = str(error)
        field_name = message.split(":", 1)[0]
        line_node = next((v for k, v in node.value if _node_value(k) == field_name), node)
        prefix = f"{where}." if where else ""
        fail(line_node, f"{prefix}{field_name}" if ":" in message else (where or cls.__name__),
             message.split(": ", 1)[1] if ":" in message else message)


def _field_default(cls: type, name: str) -> Any:
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
    return None


def parse_cluster_profile(text: str, source: str = "<profile>") -> ClusterProfile:
    """A profile from YAML text; ``source`` names it in errors."""
    def fail(node: yaml.Node, where: str, problem: str):
        raise ProfileError(f"{source}:{node.start_mark.line + 1}: {where}: {problem}")

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ProfileError(f"{source}{line}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if root is None:
        return ClusterProfile()
    if not isinstance(root, yaml.MappingNode):
        raise ProfileError(f"{source}:1: expected a mapping of profile fields")
    return _dataclass_from_node(ClusterProfile, root, "", fail)


def load_cluster_profile(path: str | os.PathLike | None) -> ClusterProfile:
    """The profile in ``path``, or the defaults when ``path`` is None.

    Raises:
        ProfileError: with ``file:line: field: problem``.
        FileNotFoundError: when the file does not exist.
    """
    if path is None:
        return ClusterProfile()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: cluster profile not found")
    return parse_cluster_profile(path.read_text(encoding="utf-8"), str(path))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def profile_to_yaml(profile: ClusterProfile) -> str:
    """The profile as YAML (every field, defaults included), for review and as a template."""
    return yaml.safe_dump(_plain(profile), sort_keys=False, allow_unicode=True)
