"""The fine-tune step on a cluster: create the training job, follow it to the end, clean up.

:func:`run_training_job` is what the pipeline's fine-tune step runs (a small CPU pod in
the launcher image) when ``train_executor`` is ``pytorchjob`` or ``trainjob``:

1. creates the PyTorchJob / TrainJob with the ``kubernetes`` client (a job of the same
   name that belongs to the same run and task is adopted: a retried step re-attaches);
2. watches it until its ``Succeeded``/``Complete`` or ``Failed`` condition, within a
   deadline, logging every transition (Created, Running, Restarting...);
3. streams the Master pod's log into the step's log as it is written, following the pod
   across restarts;
4. raises :class:`TrainingJobFailed` with the operator's reason and message, the Master
   container's exit code and the last lines of its log;
5. deletes the job per ``cleanup``: ``on_success`` keeps a failed job for inspection
   (``ttlSecondsAfterFinished`` removes it later), ``always`` and ``never`` say what they
   mean; a job the launcher gives up on (deadline, step cancelled) is deleted unless
   ``never``, so it does not hold GPUs for nothing.

:func:`launch_fine_tune` wraps it for the KFP component: it renders the job from the
cluster profile, runs it, and checks that the model's folder is sealed in S3.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

from pipelines.cluster_profile import ClusterProfile
from pipelines.training_job import JobInputs, JobKind, job_name, render_job

logger = logging.getLogger(__name__)
master_log = logging.getLogger("searchtune.job.master")

Cleanup = Literal["on_success", "always", "never"]
CLEANUP_POLICIES: tuple[str, ...] = ("on_success", "always", "never")


@dataclass(frozen=True)
class JobType:
    """How to address one kind of training job and read its state."""

    group: str
    version: str
    plural: str
    kind: str
    succeeded: str
    failed: str
    master_selector: str  # label selector of the Master pod; {name} is the job's name
    container: str

    def describe(self, namespace: str, name: str) -> str:
        return f"{self.kind} {namespace}/{name}"


JOB_TYPES: dict[str, JobType] = {
    "pytorchjob": JobType("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob", "Succeeded", "Failed",
                          "training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master",
                          "pytorch"),
    "trainjob": JobType("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", "Complete", "Failed",
                        "jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=node,"
                        "batch.kubernetes.io/job-completion-index=0",
                        "node"),
}


class TrainingJobFailed(RuntimeError):
    """The job failed, or could not be followed to its end; the message says why, in full."""


class TrainingJobTimeout(TrainingJobFailed):
    """The job did not finish within the launcher's deadline."""


@dataclass
class JobOutcome:
    """How a job ended.

    Attributes:
        name: the job's name.
        state: its last condition (``Succeeded``, ``Complete`` ...).
        transitions: every condition type seen, in order (Created, Running, ...).
        restarts: ``Restarting`` transitions seen.
        log_lines: lines of the Master's log streamed into this step's log.
        deleted: whether the launcher deleted the job.
    """

    name: str
    state: str = ""
    transitions: list[str] = field(default_factory=list)
    restarts: int = 0
    log_lines: int = 0
    deleted: bool = False


def job_state(job: dict) -> tuple[str, str, str]:
    """The job's newest true condition: ``(type, reason, message)``, or empty strings."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    if not conditions:
        return "", "", ""
    # Operators keep old conditions (set to False) and append the current one.
    newest = max(enumerate(conditions), key=lambda item: (item[1].get("lastTransitionTime") or "", item[0]))[1]
    return newest.get("type", ""), newest.get("reason", ""), newest.get("message", "")


def _api(api_client):
    from kubernetes import client

    return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)


def load_api_client(kubeconfig: str | None = None):
    """A client for this pod's service account, else ``kubeconfig`` / ``$KUBECONFIG``."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)
    return client.ApiClient()


class _MasterLog:
    """Follows the Master pod's log in a thread, across container restarts and new pods."""

    def __init__(self, core, namespace: str, selector: str, container: str, sink: Callable[[str], None],
                 tail: int = 40) -> None:
        self.core, self.namespace, self.selector, self.container, self.sink = core, namespace, selector, container, sink
        self.tail: collections.deque[str] = collections.deque(maxlen=tail)
        self.lines = 0
        self.pod_name = ""
        self._seen: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self._response = None
        self._thread = threading.Thread(target=self._run, name="master-log", daemon=True)

    def start(self) -> "_MasterLog":
        self._thread.start()
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Let the current stream drain (a finished container closes it), read what is left, stop."""
        self._stop.set()
        if not self._thread.is_alive():
            return
        self._thread.join(timeout=grace_s)
        response = self._response
        if response is not None:
            response.close()
        self._thread.join(timeout=10.0)

    def _master(self):
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        if not pods:
            return None, None
        pod = max(pods, key=lambda p: p.metadata.creation_timestamp or 0)
        status = next((s for s in (pod.status.container_statuses or []) if s.name == self.container), None)
        if status is None or (status.state and status.state.waiting and not status.last_state.terminated):
            return pod, None  # not started yet: there is no log to read
        return pod, status

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while True:
            # Once stopping, one last read without follow: a container that ended before
            # this thread got to it still has its whole log shown.
            stopping = self._stop.is_set()
            try:
                pod, status = self._master()
                if status is not None:
                    self._read(pod, status, follow=not stopping)
            except ApiException as error:
                logger.debug("master log not readable yet: %s", error.reason)
            except Exception as error:  # a dropped stream: reconnect and skip what was shown
                logger.debug("master log stream ended: %s", error)
            finally:
                self._response = None
            if stopping:
                return
            self._stop.wait(1.0)

    def _read(self, pod, status, follow: bool) -> None:
        self.pod_name = pod.metadata.name
        key = (pod.metadata.uid or pod.metadata.name, status.restart_count or 0)
        self._response = self.core.read_namespaced_pod_log(pod.metadata.name, self.namespace,
                                                           container=self.container, follow=follow,
                                                           _preload_content=False)
        count, partial = 0, b""
        for chunk in self._response.stream(4096):
            partial += chunk
            *complete, partial = partial.split(b"\n")
            for raw in complete:
                count += 1
                if count > self._seen.get(key, 0):
                    self._emit(raw)
                    self._seen[key] = count
        if partial:
            count += 1
            if count > self._seen.get(key, 0):
                self._emit(partial)
                self._seen[key] = count

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.lines += 1
        self.tail.append(line)
        self.sink(line)


def _termination(core, namespace: str, pod_name: str, container: str) -> str:
    """``exit code 1 (Error)`` of the Master container's last run, if Kubernetes has it."""
    if not pod_name:
        return ""
    try:
        pod = core.read_namespaced_pod(pod_name, namespace)
    except Exception:
        return ""
    for status in pod.status.container_statuses or []:
        if status.name != container:
            continue
        terminated = (status.state and status.state.terminated) or (status.last_state and status.last_state.terminated)
        if terminated:
            text = f"exit code {terminated.exit_code} ({terminated.reason or 'terminated'})"
            return f"{text}: {terminated.message.strip()}" if terminated.message else text
    return ""


@contextmanager
def _cancel_on_sigterm() -> Iterator[None]:
    """KFP stops a cancelled step with SIGTERM: turn it into an exception so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancelled(signum, frame):
        raise KeyboardInterrupt("the step was cancelled (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, cancelled)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _create_or_adopt(custom, job: dict, job_type: JobType, deadline: float) -> dict:
    """Create the job; or take over the one an earlier attempt of this step created.

    A job of this run and task that is still running (or succeeded) is followed; one that
    failed is replaced by a new one of the same name, which resumes from its checkpoints.
    """
    from kubernetes.client.exceptions import ApiException

    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    described = job_type.describe(namespace, name)
    address = (job_type.group, job_type.version, namespace, job_type.plural)
    while True:
        try:
            created = custom.create_namespaced_custom_object(*address, job)
            logger.info("created %s", described)
            return created
        except ApiException as error:
            if error.status != 409:
                raise TrainingJobFailed(f"creating {described} failed: {error.status} {_api_message(error)}") from None
        try:
            existing = custom.get_namespaced_custom_object(*address, name)
        except ApiException as error:
            if error.status == 404:  # deleted meanwhile: create again
                continue
            raise
        mine = job["metadata"].get("labels", {})
        theirs = existing.get("metadata", {}).get("labels") or {}
        owner = ("searchtune.io/pipeline-run-id", "searchtune.io/pipeline-task")
        if any(theirs.get(key) != mine.get(key) for key in owner):
            raise TrainingJobFailed(f"{described} already exists and belongs to another run "
                                    f"({', '.join(f'{k}={theirs.get(k)}' for k in owner)})")
        if job_state(existing)[0] != job_type.failed:
            logger.info("re-attached to %s, created by an earlier attempt of this step", described)
            return existing
        logger.info("%s failed in an earlier attempt of this step: replacing it (it resumes from its checkpoints)",
                    described)
        _delete(custom, job_type, namespace, name)
        while time.monotonic() < deadline:
            try:
                custom.get_namespaced_custom_object(*address, name)
            except ApiException as error:
                if error.status == 404:
                    break
                raise
            time.sleep(2.0)
        else:
            raise TrainingJobTimeout(f"{described} from an earlier attempt was not deleted in time")


def _api_message(error) -> str:
    import json

    try:
        return json.loads(error.body).get("message", "") or str(error.reason)
    except (TypeError, ValueError):
        return str(error.reason)


def run_training_job(
    job: dict,
    kind: JobKind,
    timeout_s: float,
    cleanup: Cleanup = "on_success",
    api_client=None,
    log_sink: Callable[[str], None] | None = None,
    watch_chunk_s: int = 300,
) -> JobOutcome:
    """Create ``job``, follow it to its end within ``timeout_s``, and clean up.

    Args:
        job: the rendered manifest (``pipelines.training_job.render_job``).
        kind: ``pytorchjob`` or ``trainjob``.
        timeout_s: the deadline for the whole job, from now.
        cleanup: when to delete the job: ``on_success``, ``always`` or ``never``.
        api_client: a ``kubernetes`` ApiClient (default: in-cluster, else kubeconfig).
        log_sink: receives the Master's log lines (default: this step's log).
        watch_chunk_s: longest single watch request (servers end watches on their own too).

    Raises:
        TrainingJobFailed: the job failed (the operator's reason and message, the Master's
            exit code and last log lines), was deleted by someone else, or could not be created.
        TrainingJobTimeout: the deadline passed first.
    """
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    if cleanup not in CLEANUP_POLICIES:
        raise ValueError(f"cleanup: expected one of {', '.join(CLEANUP_POLICIES)}, got {cleanup!r}")
    job_type = JOB_TYPES[kind]
    custom, core = _api(api_client if api_client is not None else load_api_client())
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    described = job_type.describe(namespace, name)
    outcome = JobOutcome(name=name)
    deadline = time.monotonic() + timeout_s
    sink = log_sink or (lambda line: master_log.info("%s", line))
    follower = _MasterLog(core, namespace, job_type.master_selector.format(name=name), job_type.container, sink)
    finished = owned = False

    def note(state: str, reason: str, message: str) -> None:
        if state and (not outcome.transitions or outcome.transitions[-1] != state):
            outcome.transitions.append(state)
            outcome.restarts += state == "Restarting"
            logger.info("%s: %s%s", described, state, f" ({reason}: {message})" if reason or message else "")
        outcome.state = state or outcome.state

    with _cancel_on_sigterm():
        try:
            current = _create_or_adopt(custom, job, job_type, deadline)
            owned = True  # created by this step or an earlier attempt of it: ours to clean up
            follower.start()
            while True:
                state, reason, message = job_state(current)
                note(state, reason, message)
                if state in (job_type.succeeded, job_type.failed):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TrainingJobTimeout(f"{described} did not finish within {timeout_s:.0f} s (last state: "
                                             f"{outcome.state or 'none'})")
                chunk = max(1, int(min(remaining, watch_chunk_s)))
                stream = watch.Watch()
                try:
                    for event in stream.stream(custom.list_namespaced_custom_object, job_type.group,
                                               job_type.version, namespace, job_type.plural,
                                               field_selector=f"metadata.name={name}",
                                               resource_version=current["metadata"].get("resourceVersion"),
                                               timeout_seconds=chunk, _request_timeout=(10, chunk + 5)):
                        if event["type"] == "DELETED":
                            raise TrainingJobFailed(f"{described} was deleted before it finished (last state: "
                                                    f"{outcome.state or 'none'})")
                        if event["type"] in ("ADDED", "MODIFIED"):
                            current = event["object"]
                            state, reason, message = job_state(current)
                            note(state, reason, message)
                            if state in (job_type.succeeded, job_type.failed):
                                stream.stop()
                except ApiException as error:
                    if error.status != 410:  # 410 Gone: the resource version is too old; get afresh
                        raise
                except TrainingJobFailed:
                    raise
                except Exception as error:  # a read timeout or a dropped connection: get afresh
                    logger.debug("watch of %s ended: %s", described, error)
                try:
                    current = custom.get_namespaced_custom_object(job_type.group, job_type.version, namespace,
                                                                  job_type.plural, name)
                except ApiException as error:
                    if error.status == 404:
                        raise TrainingJobFailed(f"{described} was deleted before it finished (last state: "
                                                f"{outcome.state or 'none'})") from None
                    raise
            finished = True
            follower.stop()
            outcome.log_lines = follower.lines
            if outcome.state == job_type.failed:
                _, reason, message = job_state(current)
                exit_code = _termination(core, namespace, follower.pod_name, job_type.container)
                tail = "\n".join(f"  {line}" for line in list(follower.tail)[-15:])
                raise TrainingJobFailed(
                    f"{described} failed: {reason or 'no reason given'}: {message or 'no message'}"
                    + (f"; Master container: {exit_code}" if exit_code else "")
                    + (f"\nlast lines of the Master's log:\n{tail}" if tail else ""))
            logger.info("%s %s after %d restart(s); %d log line(s) streamed", described, outcome.state,
                        outcome.restarts, outcome.log_lines)
            return outcome
        finally:
            follower.stop(grace_s=0 if not finished else 10.0)
            outcome.log_lines = follower.lines
            succeeded = finished and outcome.state == job_type.succeeded
            delete = cleanup == "always" or (cleanup == "on_success" and (succeeded or not finished))
            if delete and owned:
                outcome.deleted = _delete(custom, job_type, namespace, name)


def _delete(custom, job_type: JobType, namespace: str, name: str) -> bool:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        custom.delete_namespaced_custom_object(job_type.group, job_type.version, namespace, job_type.plural, name,
                                               body=client.V1DeleteOptions(propagation_policy="Background"))
        logger.info("deleted %s", job_type.describe(namespace, name))
        return True
    except ApiException as error:
        if error.status == 404:
            return False
        logger.error("could not delete %s: %s %s", job_type.describe(namespace, name), error.status,
                     _api_message(error))
        return False


@dataclass(frozen=True)
class FineTuneResult:
    """What the cluster fine-tune produced: the sealed model and its training summary."""

    model_uri: str
    summary: dict
    outcome: JobOutcome


def launch_fine_tune(profile: ClusterProfile, inputs: JobInputs, kind: JobKind, cleanup: Cleanup = "on_success",
                     api_client=None) -> FineTuneResult:
    """Render the training job, run it to its end, and check the model it sealed.

    Raises:
        TrainingJobFailed: the job failed or timed out, or ended without a sealed model.
    """
    import json
    import tempfile
    from pathlib import Path

    from components.object_store import IncompleteFolderError, download_file, is_complete_folder, join_uri

    job = render_job(profile, inputs, kind)
    logger.info("training job %s: %d node(s) x %d GPU(s), model -> %s", job_name(inputs), profile.training.nodes,
                profile.training.gpus_per_node, inputs.model_output)
    outcome = run_training_job(job, kind, profile.training.watch_timeout_s, cleanup, api_client)
    if not is_complete_folder(inputs.model_output):
        raise TrainingJobFailed(f"{job_name(inputs)} succeeded but {inputs.model_output} has no completion marker")
    with tempfile.TemporaryDirectory() as scratch:
        try:
            local = download_file(join_uri(inputs.model_output, "training_summary.json"),
                                  Path(scratch) / "summary.json")
            summary = json.loads(local.read_text(encoding="utf-8"))
        except (IncompleteFolderError, ValueError) as error:
            logger.warning("no training summary beside the model: %s", error)
            summary = {}
    return FineTuneResult(inputs.model_output, summary, outcome)


def fine_tune_on_cluster(executor: str, profile_text: str, flags: dict, train_data: str, model_output: str,
                         run_id: str, task_name: str, api_client=None) -> FineTuneResult:
    """The pipeline's fine-tune step with ``train_executor`` = ``pytorchjob`` or ``trainjob``.

    Args:
        executor: ``pytorchjob`` or ``trainjob``.
        profile_text: the ``cluster_profile`` parameter (YAML; empty: the recipe's layout).
        flags: the step's ``TrainConfig`` values.
        train_data: the ``scored_train`` artifact's URI.
        model_output: the ``finetuned_model`` artifact's URI (the job seals the model there).
        run_id: the KFP run's id.
        task_name: the KFP task's name.
    """
    from pipelines.cluster_profile import parse_cluster_profile
    from pipelines.training_job import JOB_KINDS, train_arguments

    if executor not in JOB_KINDS:
        raise ValueError(f"train_executor: expected one of local, {', '.join(JOB_KINDS)}, got {executor!r}")
    profile = parse_cluster_profile(profile_text, "the cluster_profile parameter")
    inputs = JobInputs(run_id=run_id, task_name=task_name, train_data=train_data, model_output=model_output,
                       train_arguments=train_arguments(flags, profile))
    return launch_fine_tune(profile, inputs, executor, cleanup=profile.training.job_cleanup, api_client=api_client)
