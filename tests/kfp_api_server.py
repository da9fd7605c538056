"""A stand-in for the Kubeflow Pipelines API server (v2beta1 REST) on 127.0.0.1.

It answers the calls ``kfp.Client`` makes to submit and follow a run: healthz, list and
upload pipelines and versions, list and create experiments, create and get runs. Every
request body is parsed into the API's own model from ``kfp-server-api`` (the package
``kfp.Client`` itself is generated into) and must survive the round trip unchanged, so a
field the client sends that the API does not define fails the request; every response is
built from those models and serialized by the same package. A drift between what the
client sends or expects and the API's definition therefore fails the test that uses it.

Like the real server, it refuses a namespace on list calls in single-user mode, requires
a bearer token when given one, and keeps what it was sent. A run moves through the
states the test scripts (``script``), one step per ``GET``.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import kfp_server_api
import yaml
from kfp_server_api import models

API = "/apis/v2beta1"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _Response:
    """What ``ApiClient.deserialize`` reads: an object with ``data``."""

    def __init__(self, data: str) -> None:
        self.data = data


_API_CLIENT = kfp_server_api.ApiClient()


def to_json(model) -> object:
    return _API_CLIENT.sanitize_for_serialization(model)


def parse_model(payload: object, model_name: str):
    """``payload`` as the named model; refused when a field is not the model's or changes type."""
    model = _API_CLIENT.deserialize(_Response(json.dumps(payload)), model_name)
    again = to_json(model)
    if _normalized(again) != _normalized(payload):
        raise ApiError(400, f"request does not match {model_name}: sent {json.dumps(payload)[:400]}, "
                            f"the model keeps {json.dumps(again)[:400]}")
    return model


def _normalized(value):
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _snake_keys(value):
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): _snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_keys(v) for v in value]
    return value


def _display_name_filter(raw: str | None) -> str | None:
    """The name an EQUALS display_name filter asks for (the only filter the client sends)."""
    if not raw:
        return None
    # The server parses filters with protojson, which takes lowerCamelCase and proto names alike.
    parsed = parse_model(_snake_keys(json.loads(raw)), "V2beta1Filter")
    for predicate in parsed.predicates or []:
        if predicate.key == "display_name" and predicate.operation in ("EQUALS", 1, None):
            return predicate.string_value
    raise ApiError(400, f"unsupported filter {raw}")


@dataclass
class ScriptStep:
    """One state of a scripted run: the run's state and ``(task name, state, error)`` per task."""

    state: str
    tasks: tuple[tuple[str, str, str], ...] = ()


@dataclass
class KfpApiState:
    multi_user: bool = False
    token: str | None = None
    pipelines: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    experiments: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    uploads: list = field(default_factory=list)
    requests: list = field(default_factory=list)
    raw: list = field(default_factory=list)
    script: list[ScriptStep] = field(default_factory=list)
    positions: dict = field(default_factory=dict)
    run_roots: dict = field(default_factory=dict)


class KfpApiServer:
    """Start with :meth:`start`; ``host`` is the URL to give ``kfp.Client`` / ``--host``."""

    def __init__(self, multi_user: bool = False, token: str | None = None) -> None:
        self.state = KfpApiState(multi_user=multi_user, token=token)
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "KfpApiServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # the test reads ``state.requests``
                pass

            def _handle(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server.lock:
                    server.state.requests.append((method, parts.path, query))
                    server.state.raw.append(self.path.encode("utf-8") + b"\n" + bytes(self.headers) + body)
                    try:
                        server._authorize(self.headers.get("Authorization"))
                        status, payload = server._route(method, parts.path, query, body,
                                                        self.headers.get("Content-Type", ""))
                    except ApiError as error:
                        status, payload = error.status, {"error": error.message, "code": error.status,
                                                         "message": error.message}
                    except Exception as error:  # a bug here must reach the test as an answer
                        status, payload = 500, {"error": repr(error), "code": 13, "message": repr(error)}
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------------ behaviour

    def _authorize(self, header: str | None) -> None:
        if self.state.token and header != f"Bearer {self.state.token}":
            raise ApiError(401, "Unauthenticated: a valid bearer token is required")

    def _namespace(self, query: dict) -> str | None:
        namespace = query.get("namespace")
        if namespace and not self.state.multi_user:
            raise ApiError(400, "Namespace should not be provided in single-user mode.")
        if self.state.multi_user and not namespace:
            raise ApiError(400, "In multi-user mode, a namespace is required.")
        return namespace

    def _route(self, method: str, path: str, query: dict, body: bytes, content_type: str):
        if not path.startswith(API):
            raise ApiError(404, f"no route {path}")
        route = path[len(API):]
        if method == "GET" and route == "/healthz":
            return 200, to_json(models.V2beta1GetHealthzResponse(multi_user=self.state.multi_user))
        if method == "GET" and route == "/pipelines":
            self._namespace(query)
            name = _display_name_filter(query.get("filter"))
            found = [p for p in self.state.pipelines.values() if name is None or p.display_name == name]
            return 200, to_json(models.V2beta1ListPipelinesResponse(pipelines=found, total_size=len(found)))
        if method == "POST" and route == "/pipelines/upload":
            return 200, to_json(self._upload_pipeline(query, body, content_type))
        if method == "POST" and route == "/pipelines/upload_version":
            return 200, to_json(self._upload_version(query, body, content_type))
        if method == "GET" and route.startswith("/pipelines/") and route.endswith("/versions"):
            pipeline_id = route[len("/pipelines/"):-len("/versions")]
            if pipeline_id not in self.state.pipelines:
                raise ApiError(404, f"pipeline {pipeline_id} not found")
            name = _display_name_filter(query.get("filter"))
            found = [v for v in self.state.versions.get(pipeline_id, []) if name is None or v.display_name == name]
            size = int(query.get("page_size") or 0) or len(found)
            return 200, to_json(models.V2beta1ListPipelineVersionsResponse(pipeline_versions=found[:size],
                                                                           total_size=len(found)))
        if method == "GET" and route == "/experiments":
            namespace = self._namespace(query)
            name = _display_name_filter(query.get("filter"))
            found = [e for e in self.state.experiments.values()
                     if (name is None or e.display_name == name) and (e.namespace or None) == namespace]
            return 200, to_json(models.V2beta1ListExperimentsResponse(experiments=found, total_size=len(found)))
        if method == "POST" and route == "/experiments":
            experiment = parse_model(json.loads(body), "V2beta1Experiment")
            if bool(experiment.namespace) != self.state.multi_user:
                raise ApiError(400, "experiment namespace does not match the deployment mode")
            experiment.experiment_id = str(uuid.uuid4())
            experiment.created_at = _now()
            experiment.storage_state = "AVAILABLE"
            self.state.experiments[experiment.experiment_id] = experiment
            return 200, to_json(experiment)
        if method == "POST" and route == "/runs":
            return 200, to_json(self._create_run(json.loads(body)))
        if method == "GET" and route.startswith("/runs/"):
            return 200, to_json(self._advance(route[len("/runs/"):]))
        raise ApiError(404, f"no route {method} {path}")

    def _uploaded_file(self, body: bytes, content_type: str) -> dict:
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                content = part.get_content()
                documents = list(yaml.safe_load_all(content if isinstance(content, str) else content.decode("utf-8")))
                spec = documents[0] if documents else None
                if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
                    raise ApiError(400, "uploadfile is not a compiled KFP pipeline")
                # The platform spec (Kubernetes settings) travels as a second document.
                return {"pipeline_spec": spec, "platform_spec": documents[1] if len(documents) > 1 else None}
        raise ApiError(400, "no uploadfile in the multipart body")

    def _new_version(self, pipeline_id: str, name: str, spec: dict, description: str | None):
        version = models.V2beta1PipelineVersion(
            pipeline_id=pipeline_id, pipeline_version_id=str(uuid.uuid4()), display_name=name, name=name,
            description=description, created_at=_now(), pipeline_spec=spec)
        self.state.versions.setdefault(pipeline_id, []).append(version)
        return version

    def _upload_pipeline(self, query: dict, body: bytes, content_type: str):
        spec = self._uploaded_file(body, content_type)
        namespace = query.get("namespace")
        if namespace and not self.state.multi_user:
            raise ApiError(400, "Namespace should not be provided in single-user mode.")
        name = query.get("name") or query.get("display_name") or spec["pipeline_spec"]["pipelineInfo"]["name"]
        if any(p.display_name == name for p in self.state.pipelines.values()):
            raise ApiError(409, f"pipeline {name} already exists")
        pipeline = models.V2beta1Pipeline(pipeline_id=str(uuid.uuid4()), display_name=name, name=name,
                                          description=query.get("description"), created_at=_now(),
                                          namespace=namespace)
        self.state.pipelines[pipeline.pipeline_id] = pipeline
        self._new_version(pipeline.pipeline_id, name, spec, query.get("description"))
        self.state.uploads.append(spec)
        return pipeline

    def _upload_version(self, query: dict, body: bytes, content_type: str):
        spec = self._uploaded_file(body, content_type)
        pipeline_id = query.get("pipelineid")
        if pipeline_id not in self.state.pipelines:
            raise ApiError(404, f"pipeline {pipeline_id} not found")
        name = query.get("name") or query.get("display_name")
        if any(v.display_name == name for v in self.state.versions.get(pipeline_id, [])):
            raise ApiError(409, f"version {name} already exists")
        self.state.uploads.append(spec)
        return self._new_version(pipeline_id, name, spec, query.get("description"))

    def _create_run(self, payload: dict):
        run = parse_model(payload, "V2beta1Run")
        if run.experiment_id not in self.state.experiments:
            raise ApiError(404, f"experiment {run.experiment_id} not found")
        reference = run.pipeline_version_reference
        if reference is None and run.pipeline_spec is None:
            raise ApiError(400, "a run needs a pipeline version reference or a pipeline spec")
        if reference is not None:
            versions = {v.pipeline_version_id for v in self.state.versions.get(reference.pipeline_id, [])}
            if reference.pipeline_version_id not in versions:
                raise ApiError(404, f"pipeline version {reference.pipeline_version_id} not found")
        run.run_id = str(uuid.uuid4())
        run.created_at = _now()
        run.state = "PENDING"
        run.storage_state = "AVAILABLE"
        self.state.runs[run.run_id] = run
        self.state.positions[run.run_id] = 0
        return run

    def add_run(self, run) -> None:
        """Put a run there as if created earlier (for compare)."""
        self.state.runs[run.run_id] = run
        self.state.positions[run.run_id] = len(self.state.script)

    def _advance(self, run_id: str):
        run = self.state.runs.get(run_id)
        if run is None:
            raise ApiError(404, f"run {run_id} not found")
        position = self.state.positions[run_id]
        if position < len(self.state.script):
            step = self.state.script[position]
            self.state.positions[run_id] = position + 1
            run.state = step.state
            tasks = []
            for index, (name, state, error) in enumerate(step.tasks):
                tasks.append(models.V2beta1PipelineTaskDetail(
                    run_id=run_id, task_id=f"{run_id[:8]}-{index}", display_name=name, state=state,
                    create_time=_now(), error=models.GoogleRpcStatus(code=2, message=error) if error else None))
            run.run_details = models.V2beta1RunDetails(task_details=tasks)
            if step.state in ("SUCCEEDED", "FAILED", "CANCELED"):
                run.finished_at = _now()
        return run
