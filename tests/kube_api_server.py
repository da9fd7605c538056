"""A Kubernetes API server stand-in on 127.0.0.1, for the job launcher's tests.

The real ``kubernetes`` client talks to it over HTTP through a kubeconfig (bearer token
checked). It keeps objects and serves what the launcher uses, the way the API server does:

- custom resources from the real CRDs (PyTorchJob, TrainJob): create (validated against
  the CRD schema, strictly: unknown fields are refused; 409 on a duplicate), get, list,
  **watch** (``resourceVersion``, ``timeoutSeconds``, ``fieldSelector``,
  ``labelSelector``; chunked JSON lines), merge or JSON patch, the ``status``
  subresource (a status patch changes only the status, a main-resource patch never the
  status), delete;
- pods: create, get, list by label selector, status patch, delete, and ``log``
  (``follow`` streams lines as the test appends them, until the container ends);
- errors as ``Status`` objects (401, 404, 409, 410, 415, 422).

Why not ``kmock`` (the PyPI Kubernetes mock, 0.8): it keeps objects and streams watches,
but it recognizes a watch only by ``watch=true`` in lower case, and the Python client
sends ``watch=True``, so every watch came back as a plain list; it also ignores
``timeoutSeconds``, field and label selectors and resource versions, and has no pod logs.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.crd_schemas import CustomResource, load_crd, schema_errors

TOKEN = "searchtune-test-token"
_CORE = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>pods)(?:/(?P<name>[^/]+)(?:/(?P<sub>log|status))?)?$")
_CUSTOM = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                     r"(?:/(?P<name>[^/]+)(?:/(?P<sub>status))?)?$")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "code": self.code}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _label_matches(selector: str, labels: dict) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field_matches(selector: str, obj: dict) -> bool:
    values = {"metadata.name": obj["metadata"]["name"], "metadata.namespace": obj["metadata"].get("namespace")}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        key, value = term.replace("!=", "=").replace("==", "=").split("=", 1)
        if key not in values:
            raise ApiError(400, "BadRequest", f'field label not supported: {key}')
        if (values[key] == value) == negate:
            return False
    return True


@dataclass
class _Log:
    lines: list[str] = field(default_factory=list)
    finished: bool = False


class KubeApiServer:
    """The stand-in; ``start()`` it, point a kubeconfig at it (:meth:`write_kubeconfig`).

    Attributes:
        requests: every request: ``{"method", "path", "query", "body"}``, in order.
    """

    def __init__(self, kinds: tuple[str, ...] = ("PyTorchJob", "TrainJob"), token: str = TOKEN) -> None:
        self.token = token
        self.resources: dict[tuple[str, str, str], CustomResource] = {}
        for kind in kinds:
            resource = load_crd(kind)
            self.resources[(resource.group, resource.version, resource.plural)] = resource
        self.objects: dict[tuple, dict] = {}
        self.events: list[tuple[int, str, tuple, dict]] = []
        self.logs: dict[tuple[str, str, str], _Log] = {}
        self.requests: list[dict] = []
        self._version = 0
        self._changed = threading.Condition()
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "KubeApiServer":
        server = self

        class Handler(_Handler):
            api = server

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="kube-api", daemon=True).start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def write_kubeconfig(self, path: Path, namespace: str) -> Path:
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
                  "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
                  "users": [{"name": "launcher", "user": {"token": self.token}}],
                  "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "launcher",
                                                                "namespace": namespace}}]}
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    # ------------------------------------------------------------------ the kubelet's part

    def append_log(self, namespace: str, pod: str, container: str, *lines: str) -> None:
        with self._changed:
            self.logs.setdefault((namespace, pod, container), _Log()).lines.extend(lines)
            self._changed.notify_all()

    def finish_log(self, namespace: str, pod: str, container: str) -> None:
        """The container ended: following readers see the end of the stream."""
        with self._changed:
            self.logs.setdefault((namespace, pod, container), _Log()).finished = True
            self._changed.notify_all()

    def restart_container_log(self, namespace: str, pod: str, container: str) -> None:
        """A new run of the container: its log starts empty."""
        with self._changed:
            self.logs[(namespace, pod, container)] = _Log()
            self._changed.notify_all()

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        with self._changed:
            for key, obj in self.objects.items():
                if key[2:] == (plural, namespace, name):
                    return copy.deepcopy(obj)
        return None

    # ------------------------------------------------------------------ storage

    def _record(self, kind: str, key: tuple, obj: dict) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        self.events.append((self._version, kind, key, copy.deepcopy(obj)))
        self._changed.notify_all()

    def _resource(self, group: str, version: str, plural: str) -> CustomResource | None:
        if group == "" and plural == "pods":
            return None
        resource = self.resources.get((group, version, plural))
        if resource is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({group}/{version} "
                                            f"{plural})")
        return resource

    def _validate(self, resource: CustomResource | None, obj: dict) -> None:
        if resource is None:
            return
        errors = schema_errors(obj)
        if errors:
            raise ApiError(422, "Invalid", f'{resource.kind}.{resource.group} "{obj["metadata"].get("name")}" is '
                                           f"invalid: {'; '.join(errors)}")

    def create(self, group, version, plural, namespace, body: dict) -> dict:
        resource = self._resource(group, version, plural)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the namespace on the "
                                              "request")
        if resource is not None and resource.status_subresource:
            obj.pop("status", None)
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._validate(resource, obj)
        key = (group, version, plural, namespace, name)
        with self._changed:
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{plural} "{name}" already exists')
            self.objects[key] = obj
            self._record("ADDED", key, obj)
            return copy.deepcopy(obj)

    def _existing(self, key: tuple) -> dict:
        if key not in self.objects:
            raise ApiError(404, "NotFound", f'{key[2]} "{key[4]}" not found')
        return self.objects[key]

    def patch(self, group, version, plural, namespace, name, subresource, content_type: str, patch) -> dict:
        resource = self._resource(group, version, plural)
        key = (group, version, plural, namespace, name)
        with self._changed:
            current = self._existing(key)
            if content_type.startswith("application/json-patch+json"):
                import jsonpatch

                updated = jsonpatch.apply_patch(current, patch)
            elif content_type.startswith("application/merge-patch+json") or (
                    resource is None and content_type.startswith("application/strategic-merge-patch+json")):
                updated = _merge_patch(current, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                                                            f"accepted media types include: application/json-patch+json,"
                                                            f" application/merge-patch+json ({content_type})")
            status_split = resource is None or resource.status_subresource
            if status_split and subresource == "status":
                updated = {**copy.deepcopy(current), "status": updated.get("status")}
            elif status_split:
                updated["status"] = copy.deepcopy(current.get("status"))
                if updated.get("spec") != current.get("spec"):
                    updated["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
            if updated.get("status") is None:
                updated.pop("status", None)
            self._validate(resource, updated)
            self.objects[key] = updated
            self._record("MODIFIED", key, updated)
            return copy.deepcopy(updated)

    def delete(self, group, version, plural, namespace, name) -> dict:
        self._resource(group, version, plural)
        key = (group, version, plural, namespace, name)
        with self._changed:
            obj = self._existing(key)
            del self.objects[key]
            self._record("DELETED", key, obj)
            return copy.deepcopy(obj)

    def matching(self, group, version, plural, namespace, query: dict) -> list[tuple[tuple, dict]]:
        labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
        found = []
        for key, obj in self.objects.items():
            if key[:4] == (group, version, plural, namespace) and _label_matches(
                    labels, obj["metadata"].get("labels") or {}) and _field_matches(fields, obj):
                found.append((key, obj))
        return found


def _first(query: dict, name: str, default: str = "") -> str:
    return query.get(name, [default])[0]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: KubeApiServer

    def log_message(self, format, *args):  # quiet: the tests assert on requests instead
        pass

    # ------------------------------------------------------------------ plumbing

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body = self._body() if method in ("POST", "PATCH", "PUT", "DELETE") else None
        self.api.requests.append({"method": method, "path": parts.path,
                                  "query": {k: v[0] for k, v in query.items()}, "body": body,
                                  "content_type": self.headers.get("Content-Type", "")})
        try:
            if self.headers.get("Authorization") != f"Bearer {self.api.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if parts.path == "/version":
                return self._send(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-searchtune-stand-in"})
            match = _CORE.match(parts.path)
            group, version = "", "v1"
            if match is None:
                match = _CUSTOM.match(parts.path)
                if match is None:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                group, version = match["group"], match["version"]
            self._route(method, group, version, match["plural"], match["ns"], match["name"], match["sub"], query,
                        body)
        except ApiError as error:
            self._send(error.code, error.status())
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self, method, group, version, plural, namespace, name, sub, query, body) -> None:
        api = self.api
        if name is None:
            if method == "POST":
                return self._send(201, api.create(group, version, plural, namespace, body or {}))
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
            api._resource(group, version, plural)
            if _first(query, "watch").lower() in ("true", "1"):
                return self._watch(group, version, plural, namespace, query)
            with api._changed:
                items = [copy.deepcopy(obj) for _, obj in api.matching(group, version, plural, namespace,
                                                                       {k: v[0] for k, v in query.items()})]
                return self._send(200, {"kind": "List", "apiVersion": f"{group}/{version}".lstrip("/"),
                                        "metadata": {"resourceVersion": str(api._version)}, "items": items})
        if sub == "log":
            return self._log(namespace, name, query)
        if method == "GET":
            with api._changed:
                api._resource(group, version, plural)
                return self._send(200, copy.deepcopy(api._existing((group, version, plural, namespace, name))))
        if method == "PATCH":
            return self._send(200, api.patch(group, version, plural, namespace, name, sub,
                                             self.headers.get("Content-Type", ""), body))
        if method == "DELETE" and sub is None:
            return self._send(200, api.delete(group, version, plural, namespace, name))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    def _watch(self, group, version, plural, namespace, query) -> None:
        api = self.api
        flat = {k: v[0] for k, v in query.items()}
        deadline = time.monotonic() + float(flat.get("timeoutSeconds") or 1800)
        since = flat.get("resourceVersion", "")
        with api._changed:
            if since and since != "0":
                position = next((i for i, (rv, *_) in enumerate(api.events) if rv > int(since)), len(api.events))
                initial = []
            else:
                position = len(api.events)
                initial = [{"type": "ADDED", "object": copy.deepcopy(obj)}
                           for _, obj in api.matching(group, version, plural, namespace, flat)]
        self._start_stream("application/json")
        try:
            for event in initial:
                self._chunk(json.dumps(event).encode("utf-8") + b"\n")
            while True:
                with api._changed:
                    while position >= len(api.events) and not api._stopping and time.monotonic() < deadline:
                        api._changed.wait(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                    if api._stopping or (position >= len(api.events) and time.monotonic() >= deadline):
                        break
                    pending = api.events[position:]
                    position = len(api.events)
                for _, kind, key, obj in pending:
                    if key[:4] == (group, version, plural, namespace) and _label_matches(
                            flat.get("labelSelector", ""), obj["metadata"].get("labels") or {}) and _field_matches(
                            flat.get("fieldSelector", ""), obj):
                        self._chunk(json.dumps({"type": kind, "object": obj}).encode("utf-8") + b"\n")
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError):
            return

    def _log(self, namespace, name, query) -> None:
        api = self.api
        flat = {k: v[0] for k, v in query.items()}
        with api._changed:
            pod = api._existing(("", "v1", "pods", namespace, name))
            containers = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
            container = flat.get("container") or (containers[0] if len(containers) == 1 else "")
            if container not in containers:
                raise ApiError(400, "BadRequest", f"container {container!r} is not valid for pod {name}")
            statuses = {s["name"]: s for s in (pod.get("status") or {}).get("containerStatuses") or []}
            state = statuses.get(container, {}).get("state", {"waiting": {"reason": "ContainerCreating"}})
            if "waiting" in state:
                raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: '
                                                  f'{state["waiting"].get("reason", "")}')
            log = api.logs.setdefault((namespace, name, container), _Log())
        follow = flat.get("follow", "").lower() in ("true", "1")
        self._start_stream("text/plain")
        sent = 0
        try:
            while True:
                with api._changed:
                    while (follow and sent >= len(log.lines) and not log.finished and not api._stopping
                           and api.logs.get((namespace, name, container)) is log):
                        api._changed.wait(timeout=0.5)
                    pending = log.lines[sent:]
                    sent = len(log.lines)
                    done = (not follow or log.finished or api._stopping
                            or api.logs.get((namespace, name, container)) is not log)
                if pending:
                    self._chunk("".join(line + "\n" for line in pending).encode("utf-8"))
                if done:
                    break
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError):
            return

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")
