"""Submit the pipeline to a Kubeflow Pipelines 2.x backend, and follow a run to its end.

``searchtune submit`` compiles the pipeline for the cluster profile, uploads it (a new
pipeline, or a version of the existing one, named by the compiled YAML's digest so an
unchanged pipeline is not uploaded twice), creates the run in an experiment under the
profile's service account, prints the run's link in the KFP UI, and with ``--wait``
follows it, printing each step's state as it changes, until it ends.

Authentication goes through ``kfp.Client``'s own routes, first match wins:

1. a bearer token read from ``--token-file`` or ``$SEARCHTUNE_KFP_TOKEN_FILE``
   (``existing_token``; never on the command line, where ``ps`` would show it);
2. a projected ServiceAccount token: ``$KF_PIPELINES_SA_TOKEN_PATH``, or the in-pod
   default ``/var/run/secrets/kubeflow/pipelines/token`` when it exists;
3. session cookies from ``$SEARCHTUNE_KFP_COOKIES`` (a Kubeflow behind Dex/oauth2-proxy);
4. nothing (a port-forwarded or open endpoint); without ``--host``, ``kfp.Client`` finds
   the API itself, in a pod or through the kubeconfig's API server proxy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipelines.cluster_profile import ClusterProfile

logger = logging.getLogger(__name__)

TOKEN_FILE_ENV = "SEARCHTUNE_KFP_TOKEN_FILE"
COOKIES_ENV = "SEARCHTUNE_KFP_COOKIES"
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
DEFAULT_EXPERIMENT = "searchtune"
FINISHED_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
# Argo's bookkeeping nodes in a run's task list; a failure is reported on the step they serve.
_HELPER_TASK_NAMES = ("executor", "root", "root-driver")


class SubmitError(RuntimeError):
    """The KFP API refused or could not be reached; one line, never a token."""


@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    link: str
    pipeline_id: str
    version_id: str
    experiment_id: str


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    state: str
    failed_steps: tuple[str, ...]
    message: str


def _quiet_kfp():
    """kfp.Client prints links and warns about versions; our own output says what matters."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", FutureWarning)
    buffer = io.StringIO()
    stack.enter_context(contextlib.redirect_stdout(buffer))
    stack.callback(lambda: [logger.debug("kfp: %s", line) for line in buffer.getvalue().splitlines()])
    return stack


def _api_error(error: BaseException, host: str | None, what: str) -> SubmitError:
    import kfp_server_api

    where = host or "the KFP API (kubeconfig)"
    if isinstance(error, kfp_server_api.ApiException):
        detail = ""
        try:
            body = json.loads(error.body or "{}")
            detail = body.get("message") or body.get("error") or ""
        except (ValueError, AttributeError):
            detail = (error.body or "").strip()
        detail = " ".join(str(detail).split())[:300]
        hint = " (check the token, or the namespace's access)" if error.status in (401, 403) else ""
        return SubmitError(f"{where}: {what} failed: HTTP {error.status} {error.reason or ''}".rstrip()
                           + (f": {detail}" if detail else "") + hint)
    reason = " ".join(str(error).split())[:300]
    return SubmitError(f"{where}: {what} failed: cannot reach the KFP API ({type(error).__name__}: {reason})")


def call_api(what: str, host: str | None, action: Callable):
    try:
        with _quiet_kfp():
            return action()
    except SubmitError:
        raise
    except Exception as error:  # kfp_server_api.ApiException, urllib3 and socket errors alike
        raise _api_error(error, host, what) from None


@dataclass(frozen=True)
class KfpConnection:
    """A ``kfp.Client`` and the namespace its calls carry (none on a single-user backend)."""

    client: object
    host: str | None
    namespace: str | None
    multi_user: bool


def _healthz(client, host: str | None):
    # One plain call: Client.get_kfp_healthz retries five times, logs a traceback for each and
    # turns a 401 into a timeout; the generated API it wraps says what went wrong.
    return call_api("checking the API's health", host, lambda: client._healthz_api.healthz_service_get_healthz())


def kfp_client(host: str | None = None, namespace: str | None = None, token_file: str | None = None,
               kube_context: str | None = None) -> KfpConnection:
    """A ``kfp.Client`` authenticated by the first route that applies (see the module doc).

    A multi-user backend (Kubeflow profiles) gets ``namespace`` on every call; a
    single-user one refuses any namespace, so there it gets none.
    """
    import kfp
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    host = host or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not host and not (os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("KUBECONFIG")
                         or Path("~/.kube/config").expanduser().is_file()):
        raise ValueError("no KFP API to talk to: give --host URL, set KF_PIPELINES_ENDPOINT, "
                         "or provide a kubeconfig (or run on this machine with --local)")
    options: dict = {"host": host, "kube_context": kube_context}
    token_file = token_file or os.environ.get(TOKEN_FILE_ENV)
    sa_token = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or (
        KF_PIPELINES_SA_TOKEN_PATH if Path(KF_PIPELINES_SA_TOKEN_PATH).is_file() else None)
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: token file not found")
        options["existing_token"] = path.read_text(encoding="utf-8").strip()
    elif sa_token:
        if not Path(sa_token).is_file():
            raise FileNotFoundError(f"{sa_token}: ServiceAccount token file not found ({KF_PIPELINES_SA_TOKEN_ENV})")
        options["credentials"] = ServiceAccountTokenVolumeCredentials(path=sa_token)
    elif os.environ.get(COOKIES_ENV):
        options["cookies"] = os.environ[COOKIES_ENV]
    # A namespace other than "kubeflow" keeps the constructor from probing the API itself
    # (five slow, noisy retries when it is down); the probe below fails in one line.
    client = call_api("connecting", host, lambda: kfp.Client(namespace=namespace or "searchtune", **options))
    multi_user = bool(_healthz(client, host).multi_user)
    if not multi_user:
        # A client made without a namespace sends none, as a single-user backend requires.
        client = call_api("connecting", host, lambda: kfp.Client(**options))
    return KfpConnection(client=client, host=host, namespace=namespace if multi_user else None,
                         multi_user=multi_user)


def ui_link(host: str | None, run_id: str) -> str:
    base = os.environ.get(UI_ENDPOINT_ENV) or host or os.environ.get("KF_PIPELINES_ENDPOINT") or ""
    base = base.rstrip("/") if base else "/pipeline"
    return f"{base}/#/runs/details/{run_id}"


def run_arguments(parameters: dict, explicit: set[str] | frozenset[str] = frozenset()) -> dict:
    """The run's arguments: every parameter, except those the profile decides at compile time.

    ``train_executor`` and ``cluster_profile`` default to the profile in the compiled
    pipeline; passing the presets' values would override it, so they go only when set
    explicitly (``--set``).
    """
    from pipelines.cluster_compile import PROFILE_PIPELINE_PARAMETERS

    return {name: value for name, value in parameters.items()
            if name not in PROFILE_PIPELINE_PARAMETERS or name in explicit}


def check_models_reach_the_pods(parameters: dict) -> None:
    """Refuse a cluster run whose models the step pods could not load.

    The images run with ``HF_HUB_OFFLINE`` and no Hugging Face cache: a hub name fails in the
    first step that loads it, after the run has started. A model the pods can read is a
    sealed ``s3://`` folder (``searchtune push-model``) or a builtin one.

    Raises:
        ValueError: naming the parameter and the command that puts the model in S3.
    """
    names = ["student_model"] + (["teacher_model"] if parameters.get("teacher_model") else [])
    for name in names:
        model = str(parameters.get(name, ""))
        if model.startswith(("s3://", "builtin:")):
            continue
        raise ValueError(f"{name}={model!r}: a cluster run's pods have no model hub and no local folders; put the "
                         f"model in S3 with `searchtune push-model --model {model} --uri s3://<bucket>/models/"
                         f"{model.rstrip('/').rsplit('/', 1)[-1]}/` and pass --set {name}=<that URI> (or "
                         "--models-in-image when your images carry it in their Hugging Face cache)")


def _pipeline_version(api: KfpConnection, package: Path, pipeline_name: str) -> tuple[str, str]:
    """``(pipeline_id, version_id)`` of this exact YAML, uploading it only when new."""
    client, host = api.client, api.host
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
    version_name = f"{pipeline_name}-{digest}"

    def named(value: str) -> str:
        return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": value}]})
    pipelines = call_api("looking up the pipeline", host, lambda: client.list_pipelines(
        filter=named(pipeline_name), namespace=api.namespace)).pipelines or []
    if not pipelines:
        pipeline = call_api("uploading the pipeline", host, lambda: client.upload_pipeline(
            str(package), pipeline_name=pipeline_name, description=f"searchtune ({version_name})",
            namespace=api.namespace))
        pipeline_id = pipeline.pipeline_id
        # Uploading a pipeline makes its first version from the same file.
        versions = call_api("listing the pipeline's versions", host,
                            lambda: client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1))
        return pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    pipeline_id = pipelines[0].pipeline_id
    versions = call_api("listing the pipeline's versions", host, lambda: client.list_pipeline_versions(
        pipeline_id=pipeline_id, filter=named(version_name), page_size=1)).pipeline_versions or []
    if versions:
        logger.info("pipeline version %s is already uploaded", version_name)
        return pipeline_id, versions[0].pipeline_version_id
    version = call_api("uploading the pipeline version", host, lambda: client.upload_pipeline_version(
        str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id))
    return pipeline_id, version.pipeline_version_id


def submit_run(api: KfpConnection, arguments: dict, profile: ClusterProfile, profile_text: str = "",
               experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
               package: str | os.PathLike | None = None, enable_caching: bool = True) -> SubmittedRun:
    """Compile for ``profile``, upload, and create a run with ``arguments``.

    Args:
        api: the connection (:func:`kfp_client`).
        arguments: the pipeline's parameters for this run (never a credential).
        profile: the cluster profile (images, resources, Secret names, service account, root).
        profile_text: the profile file's text, the compiled default of ``cluster_profile``.
        experiment: the experiment the run goes into (created when missing).
        run_name: the run's name (default: ``searchtune <time>``).
        package: where to keep the compiled YAML (default: a temporary file).
        enable_caching: False runs every step again (the pipeline is compiled with its cache off).
    """
    from pipelines.cluster_compile import compile_for_profile
    from pipelines.pipeline import PIPELINE_NAME

    client, host = api.client, api.host
    with tempfile.TemporaryDirectory(prefix="searchtune-submit-") as scratch:
        path = compile_for_profile(Path(package) if package else Path(scratch) / "pipeline.yaml", profile,
                                   profile_text, enable_caching=enable_caching)
        pipeline_id, version_id = _pipeline_version(api, path, PIPELINE_NAME)
    experiment_id = call_api("creating the experiment", host, lambda: client.create_experiment(
        name=experiment, namespace=api.namespace)).experiment_id
    name = run_name or f"searchtune {time.strftime('%Y-%m-%d %H:%M:%S')}"
    run = call_api("creating the run", host, lambda: client.run_pipeline(
        experiment_id=experiment_id, job_name=name, params=arguments, pipeline_id=pipeline_id,
        version_id=version_id, pipeline_root=profile.pipeline_root, service_account=profile.service_account))
    logger.info("run %s created in experiment %s%s", run.run_id, experiment,
                f" (namespace {api.namespace})" if api.namespace else "")
    return SubmittedRun(run_id=run.run_id, link=ui_link(host, run.run_id), pipeline_id=pipeline_id,
                        version_id=version_id, experiment_id=experiment_id)


def _state(value) -> str:
    return str(value or "RUNTIME_STATE_UNSPECIFIED").upper()


def _step_names(run) -> dict[str, str]:
    """Task id → the step's name as the pipeline shows it (helper nodes take their parent's)."""
    tasks = (run.run_details.task_details if run.run_details else None) or []
    by_id = {task.task_id: task for task in tasks}

    def name(task) -> str:
        seen = set()
        while task is not None and task.task_id not in seen:
            seen.add(task.task_id)
            label = task.display_name or ""
            if label and label not in _HELPER_TASK_NAMES and not label.endswith("-driver"):
                return label
            if label.endswith("-driver") and label != "root-driver":
                return label[:-len("-driver")]
            task = by_id.get(task.parent_task_id)
        return ""
    return {task.task_id: name(task) for task in tasks}


def failed_steps(run) -> tuple[tuple[str, str], ...]:
    """``(step, error message)`` of every failed step of a run, each step once."""
    names = _step_names(run)
    tasks = (run.run_details.task_details if run.run_details else None) or []
    found: dict[str, str] = {}
    for task in tasks:
        if _state(task.state) != "FAILED" or not names.get(task.task_id):
            continue
        message = " ".join(((task.error.message if task.error else "") or "").split())
        step = names[task.task_id]
        if message or step not in found:
            found[step] = message
    return tuple(found.items())


def wait_for_run(api: KfpConnection, run_id: str, timeout_s: float = 3 * 24 * 3600, poll_s: float = 10.0,
                 out=None) -> FinishedRun:
    """Follow a run until it ends, printing every step whose state changes.

    Raises:
        SubmitError: the API failed, or the run did not end within ``timeout_s``.
    """
    out = out or sys.stdout
    client, host = api.client, api.host
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    last_state = ""
    while True:
        run = call_api(f"reading run {run_id}", host, lambda: client.get_run(run_id))
        names = _step_names(run)
        for task in (run.run_details.task_details if run.run_details else None) or []:
            step, state = names.get(task.task_id), _state(task.state)
            if step and seen.get(step) != state and not (state == "SUCCEEDED" and seen.get(step) == "FAILED"):
                seen[step] = state
                print(f"{time.strftime('%H:%M:%S')}  {step}: {state.lower()}", file=out, flush=True)
        state = _state(run.state)
        if state != last_state:
            last_state = state
            print(f"{time.strftime('%H:%M:%S')}  run {run_id}: {state.lower()}", file=out, flush=True)
        if state in FINISHED_STATES:
            failures = failed_steps(run)
            run_error = " ".join(((run.error.message if run.error else "") or "").split())
            message = "; ".join(f"step {step!r} failed" + (f": {error}" if error else "") for step, error in failures)
            return FinishedRun(run_id=run_id, state=state, failed_steps=tuple(step for step, _ in failures),
                               message=message or run_error)
        if time.monotonic() > deadline:
            raise SubmitError(f"run {run_id} did not finish within {timeout_s:.0f} s (last state {state.lower()})")
        time.sleep(poll_s)
