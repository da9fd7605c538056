"""The serving chart (helm/searchtune-serving), without a cluster or a GPU.

Rendered by Helm's own Go SDK (helm-python-sdk), checked by kubernetes-validate (strict) for
core kinds, by a schema of the prometheus-operator fields for the ServiceMonitor, by checkov,
and its SGLang command line by SGLang's own argument parser at the serving image's version.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.scanners import CHART, CHART_VALUE_SETS, DIGEST, MODEL_URI, chart_values, render_chart, \
    unexplained_findings
from tests.conftest import REPO_ROOT

KUBERNETES_VERSION = "1.30.0"
SGLANG_PYTHON = REPO_ROOT / ".venv-sglang" / "bin" / "python"
SERVING_SITE = REPO_ROOT / ".venv-sglang" / "searchtune-site"
SGLANG_VERSION = "0.5.20"

# The monitoring.coreos.com/v1 ServiceMonitor fields the chart uses, from the
# prometheus-operator API reference (its CRD is not in this repository; kubernetes-validate
# passes custom resources without a look).
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object",
                                                                              "additionalProperties": {"type": "string"}}},
                             "additionalProperties": False},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "scrapeTimeout": {"type": "string",
                                          "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                    }}},
            },
        },
    },
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML forbids a key twice in one mapping; PyYAML would keep the last one silently."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        if duplicated:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {duplicated}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _objects(rendered: dict[str, str]) -> list[dict]:
    return [doc for name, text in rendered.items() if name.endswith(".yaml")
            for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc]


def _kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def _deployment(values: dict) -> dict:
    (deployment,) = _kind(_objects(render_chart(values)), "Deployment")
    return deployment


def _container(deployment: dict, name: str) -> dict:
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    return {name: _objects(render_chart(chart_values(name))) for name in CHART_VALUE_SETS}


# --------------------------------------------------------------------------- lint, schema, Kubernetes


@pytest.mark.parametrize("name", CHART_VALUE_SETS)
def test_lint_is_clean(name):
    report = helm_python.lint(CHART, chart_values(name), strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems


def test_the_helm_test_pod_is_no_server_to_the_service_or_the_budget(renders):
    objects = renders["defaults"]
    [pod] = _kind(objects, "Pod")
    labels = pod["metadata"]["labels"]
    for selector in ([d["spec"]["selector"]["matchLabels"] for d in _kind(objects, "Deployment")]
                     + [b["spec"]["selector"]["matchLabels"] for b in _kind(objects, "PodDisruptionBudget")]
                     + [s["spec"]["selector"] for s in _kind(objects, "Service")]):
        assert not all(labels.get(key) == value for key, value in selector.items()), selector
    assert labels["app.kubernetes.io/component"] == "helm-test"


@pytest.mark.parametrize("name", CHART_VALUE_SETS)
def test_every_object_passes_kubernetes_validate_strict(renders, name):
    custom = []
    for obj in renders[name]:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom.append(obj["kind"])
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")
    # Only the ServiceMonitor is a custom resource; it is checked below.
    assert set(custom) <= {"ServiceMonitor"}


def test_the_value_sets_render_what_they_turn_on(renders):
    kinds = {name: sorted({o["kind"] for o in objects}) for name, objects in renders.items()}
    base = ["Deployment", "NetworkPolicy", "Pod", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert kinds["defaults"] == base
    assert kinds["ingress"] == sorted(base + ["Ingress"])
    assert kinds["servicemonitor"] == sorted(base + ["ServiceMonitor"])
    assert kinds["autoscaling"] == sorted(base + ["HorizontalPodAutoscaler"])
    assert "replicas" not in _kind(renders["autoscaling"], "Deployment")[0]["spec"]
    (ingress,) = _kind(renders["ingress"], "Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["embeddings.search.example.com"], "secretName": "embeddings-tls"}]
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] == {"name": "http"}


def test_servicemonitor_scrapes_sglang_metrics(renders):
    (monitor,) = _kind(renders["servicemonitor"], "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (service,) = _kind(renders["servicemonitor"], "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # Prometheus' namespace gets through the NetworkPolicy.
    (policy,) = _kind(renders["servicemonitor"], "NetworkPolicy")
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in sources


def test_the_service_monitor_schema_refuses_what_prometheus_operator_would():
    broken = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
              "metadata": {"name": "x", "namespace": "y"},
              "spec": {"selector": {}, "endpoints": [{"port": "http", "interval": "30 seconds"}]}}
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.validate(broken, SERVICE_MONITOR_SCHEMA)


@pytest.mark.parametrize("values, expected", [
    ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
    ({"sglang": {"dtype": "int4"}}, "at '/sglang/dtype': value must be one of 'auto', 'half', 'float16'"),
    ({"sglang": {"memFractionStatic": -0.1}}, "at '/sglang/memFractionStatic'"),
    ({"sglang": {"memFractionStatic": 1.5}}, "at '/sglang/memFractionStatic'"),
    ({"sglang": {"attentionBackend": "flash"}}, "at '/sglang/attentionBackend': value must be one of"),
    ({"model": {"uri": "https://bucket/model/"}}, "at '/model/uri': 'https://bucket/model/' does not match"),
    ({"model": {"name": "../etc"}}, "at '/model/name'"),
    ({"sglang": {"memfractionstatic": 0.8}}, "at '/sglang': additional properties 'memfractionstatic' not allowed"),
    ({"resources": {"gpu": -1}}, "at '/resources/gpu'"),
    ({"resources": {"limits": {"memory": "16m"}}}, "at '/resources/limits/memory'"),
    ({"securityContext": {"privileged": True}}, "at '/securityContext/privileged'"),
    ({"securityContext": {"runAsUser": 0}}, "at '/securityContext/runAsUser'"),
    ({"securityContext": {"readOnlyRootFilesystem": False}}, "at '/securityContext/readOnlyRootFilesystem'"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "at '/podSecurityContext/runAsNonRoot'"),
    ({"tolerations": [{"key": "gpu", "operator": "Maybe"}]}, "at '/tolerations/0/operator'"),
])
def test_schema_refuses_bad_values_naming_the_value(values, expected):
    merged = chart_values("defaults")
    for key, value in values.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(helm_python.HelmValuesError) as refused:
        render_chart(merged)
    assert expected in str(refused.value)
    if "memFractionStatic" in expected:
        assert "exclusive" in str(refused.value)


@pytest.mark.parametrize("values, expected", [
    ({}, "model.uri is required: the s3://bucket/prefix/model/ folder the pipeline wrote"),
    ({"model": {"uri": MODEL_URI}, "sglang": {"tp": 2}}, "sglang.tp=2 needs at least 2 GPUs per pod, but resources.gpu=1"),
    ({"model": {"uri": MODEL_URI, "pooling": "mean"}},
     "model.pooling=mean: SGLang's BERT/XLM-R embedding path pools the CLS token only"),
    ({"model": {"uri": MODEL_URI, "normalize": False}}, "model.normalize=false: SGLang's BERT/XLM-R embedding path"),
    ({"model": {"uri": MODEL_URI}, "sglang": {"extraArgs": ["--api-key", "plain"]}},
     "sglang.extraArgs: --api-key is the chart's own"),
    ({"model": {"uri": MODEL_URI}, "sglang": {"extraArgs": ["--port=8080"]}}, "sglang.extraArgs: --port is the chart's own"),
    ({"model": {"uri": MODEL_URI}, "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
     "autoscaling.minReplicas=5 is above autoscaling.maxReplicas=2"),
    ({"model": {"uri": MODEL_URI}, "ingress": {"enabled": True, "host": "a.example.com", "tls": {"enabled": True}}},
     "ingress.tls.enabled=true needs ingress.tls.secretName"),
    ({"model": {"uri": MODEL_URI}, "apiKey": {"enabled": True}}, "apiKey.enabled=true needs apiKey.secretName"),
    ({"model": {"uri": MODEL_URI}, "networkPolicy": {"allowedPodLabels": None, "allowedNamespaceLabels": None}},
     "networkPolicy.enabled=true needs networkPolicy.allowedPodLabels or networkPolicy.allowedNamespaceLabels"),
])
def test_values_that_cannot_work_together_are_refused_in_one_line(values, expected):
    with pytest.raises(helm_python.HelmRenderError) as refused:
        render_chart(values)
    assert expected in str(refused.value)


def test_an_incompatible_model_can_be_served_on_purpose_with_a_warning():
    values = {"model": {"uri": MODEL_URI, "pooling": "mean", "allowIncompatibleProfile": True}}
    rendered = render_chart(values)
    pull = _container(next(o for o in _objects(rendered) if o["kind"] == "Deployment"), "pull-model")
    assert pull["args"][-1] == "--allow-incompatible-profile"
    assert "WARNING: model.allowIncompatibleProfile=true" in rendered["searchtune-serving/templates/NOTES.txt"]


# --------------------------------------------------------------------------- the pod


def test_the_pod_pulls_the_model_then_serves_it_locked_down():
    deployment = _deployment(chart_values("defaults"))
    pod = deployment["spec"]["template"]["spec"]
    pull, server = _container(deployment, "pull-model"), _container(deployment, "sglang")
    assert pull["command"] == ["searchtune", "pull-model"]
    assert pull["args"] == ["--uri", MODEL_URI, "--output", "/models/bge-large-zh-v1.5", "--serving-engine", "sglang"]
    credentials = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pull["env"] if "valueFrom" in e}
    assert credentials == {"AWS_ACCESS_KEY_ID": {"name": "searchtune-s3", "key": "AWS_ACCESS_KEY_ID"},
                           "AWS_SECRET_ACCESS_KEY": {"name": "searchtune-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert pull["image"] == server["image"] == "ghcr.io/searchtune/searchtune-serving:0.1.0"
    assert server["command"] == ["python3", "-m", "sglang.launch_server"]
    for container in (pull, server):
        context = container["securityContext"]
        assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"]
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True and {"/cache", "/tmp", "/dev/shm"} <= set(mounts)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"]: e.get("value") for e in server["env"]}["HOME"] == "/cache"
    assert server["startupProbe"]["httpGet"]["path"] == "/health"
    assert server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] >= 1800
    assert server["readinessProbe"]["httpGet"]["path"] == "/health_generate"
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_gpu_count_and_image_digest_reach_the_pod():
    deployment = _deployment(chart_values("two-gpus"))
    server = _container(deployment, "sglang")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == server["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    pinned = _deployment(chart_values("pinned"))
    assert _container(pinned, "sglang")["image"] == f"ghcr.io/searchtune/searchtune-serving@{DIGEST}"
    # Pinned by digest and pulled Always: checkov has nothing left to skip but the env Secrets.
    assert [v for k, v in pinned["metadata"]["annotations"].items() if k.startswith("checkov.io/skip")] == \
        [v for v in pinned["metadata"]["annotations"].values() if v.startswith("CKV_K8S_35=")]


def test_the_api_key_comes_from_a_secret_never_the_values():
    deployment = _deployment(chart_values("api-key"))
    server = _container(deployment, "sglang")
    position = server["args"].index("--api-key")
    assert server["args"][position + 1] == "$(SGLANG_API_KEY)"
    (env,) = [e for e in server["env"] if e["name"] == "SGLANG_API_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "embeddings-api-key", "key": "api-key"}


def test_network_policy_admits_labelled_pods_and_namespaces_only(renders):
    (policy,) = _kind(renders["defaults"], "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"searchtune.io/embeddings-client": "true"}}},
                            {"namespaceSelector": {"matchLabels": {"searchtune.io/embeddings-access": "true"}}}]
    (test_pod,) = _kind(renders["defaults"], "Pod")
    assert test_pod["metadata"]["labels"]["searchtune.io/embeddings-client"] == "true"


# --------------------------------------------------------------------------- SGLang's own parser


def _sglang_parse(command_lines: list[list[str]]) -> dict:
    if not SGLANG_PYTHON.exists():
        pytest.fail(f"{SGLANG_PYTHON} is missing: `make setup` creates .venv-sglang with SGLang {SGLANG_VERSION}'s "
                    "argument parser (tests/requirements/sglang-args.txt)")
    result = subprocess.run([str(SGLANG_PYTHON), str(REPO_ROOT / "tests" / "sglang_parse_args.py")],
                            input=json.dumps(command_lines), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sglang_parsed(renders) -> dict:
    command_lines = []
    for name in CHART_VALUE_SETS:
        server = _container(_kind(renders[name], "Deployment")[0], "sglang")
        assert server["command"] == ["python3", "-m", "sglang.launch_server"]
        command_lines.append([a.replace("$(SGLANG_API_KEY)", "key-from-secret") for a in server["args"]])
    # A command line SGLang must refuse: the check can fail.
    command_lines.append(["--model-path", "/models/x", "--is-embedding", "--tp", "two"])
    parsed = _sglang_parse(command_lines)
    assert parsed["version"] == SGLANG_VERSION
    return {"by_set": dict(zip(CHART_VALUE_SETS, parsed["results"])), "refused": parsed["results"][-1],
            "choices": parsed["choices"]}


def test_sglang_parses_the_default_command_line(sglang_parsed):
    parsed = sglang_parsed["by_set"]["defaults"]
    assert parsed == {"model_path": "/models/bge-large-zh-v1.5", "is_embedding": True,
                      "served_model_name": "bge-large-zh-v1.5", "host": "0.0.0.0", "port": 30000,
                      "enable_metrics": True, "tp_size": 1, "dtype": "auto", "mem_fraction_static": None,
                      "context_length": 512, "attention_backend": None, "api_key": None,
                      "max_running_requests": None}


def test_sglang_parses_every_knob_the_chart_sets(sglang_parsed):
    gpus = sglang_parsed["by_set"]["two-gpus"]
    assert (gpus["tp_size"], gpus["dtype"], gpus["mem_fraction_static"], gpus["context_length"],
            gpus["attention_backend"], gpus["max_running_requests"]) == (2, "float16", 0.85, 512, "flashinfer", 128)
    assert sglang_parsed["by_set"]["api-key"]["api_key"] == "key-from-secret"
    assert sglang_parsed["by_set"]["pinned"]["context_length"] is None
    assert all("error" not in parsed for parsed in sglang_parsed["by_set"].values())
    assert "argument --tp" in sglang_parsed["refused"]["error"]


def test_the_schema_offers_only_choices_sglang_accepts(sglang_parsed):
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))["properties"]["sglang"]["properties"]
    assert schema["dtype"]["enum"] == sglang_parsed["choices"]["dtype"]
    offered = set(schema["attentionBackend"]["enum"]) - {""}
    assert offered <= set(sglang_parsed["choices"]["attention_backend"])


def test_pull_model_runs_in_sglangs_python_with_what_the_image_adds(tmp_path, s3_environment):
    """The serving image runs `searchtune pull-model` with SGLang 0.5.20's packages plus
    images/requirements/serving.txt only (images/serving/searchtune); so does this test."""
    from components.object_store import upload_folder
    from tests.conftest import build_tiny_bert

    if not (SGLANG_PYTHON.exists() and SERVING_SITE.is_dir()):
        pytest.fail(f"{SGLANG_PYTHON} or {SERVING_SITE} is missing: `make setup` creates both")
    upload_folder(build_tiny_bert(tmp_path / "bge", ["夏天的裙子"]), "s3://data/serving-image/bge/model/")
    environment = {**os.environ, "PYTHONPATH": f"{SERVING_SITE}:{REPO_ROOT}"}
    result = subprocess.run([str(SGLANG_PYTHON), "-m", "pipelines.cli", "pull-model", "--uri",
                             "s3://data/serving-image/bge/model/", "--output", str(tmp_path / "models" / "bge"),
                             "--serving-engine", "sglang"], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "bge" / "config.json").is_file()


# --------------------------------------------------------------------------- checkov, NOTES, helm test


def test_checkov_reports_no_unexplained_failure_on_the_rendered_chart(checkov_scan):
    records = checkov_scan["chart"]
    assert len({r["file_path"].split("/")[2] for r in records}) == len(CHART_VALUE_SETS)
    assert unexplained_findings(records) == []


def test_notes_show_the_first_request_with_the_instruction(renders):
    notes = render_chart(chart_values("api-key"))["searchtune-serving/templates/NOTES.txt"]
    assert "curl -s http://127.0.0.1:8080/v1/embeddings" in notes
    assert '-H "Authorization: Bearer $API_KEY"' in notes
    assert "from openai import OpenAI" in notes and 'model="bge-large-zh-v1.5"' in notes
    assert "为这个句子生成表示以用于检索相关文章：适合夏天穿的轻薄连衣裙" in notes


class _Embeddings(http.server.BaseHTTPRequestHandler):
    """Answers /v1/embeddings as an OpenAI-compatible server would, with a set vector."""

    vector: list[float] = []
    api_key = ""

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.api_key and self.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.send_response(401)
            self.end_headers()
            return
        payload = json.dumps({"object": "list", "model": body["model"],
                              "data": [{"object": "embedding", "index": 0, "embedding": self.vector}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("dimension, api_key, passes", [(1024, "", True), (768, "", False), (1024, "s3cret", True)])
def test_the_helm_test_pod_checks_the_vector_length(dimension, api_key, passes):
    values = chart_values("api-key" if api_key else "defaults")
    (pod,) = _kind(_objects(render_chart(values)), "Pod")
    (container,) = pod["spec"]["containers"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = container["args"][0]
    handler = type("Handler", (_Embeddings,), {"vector": [1 / dimension ** 0.5] * dimension, "api_key": api_key})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = re.search(r'url = "(http://[^"]+)"', script).group(1)
        script = script.replace(url.split("/v1/")[0], f"http://127.0.0.1:{server.server_address[1]}")
        env = {e["name"]: e.get("value", api_key) for e in container["env"]}
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                env={**os.environ, **env}, timeout=60)
    finally:
        server.shutdown()
    assert (result.returncode == 0) is passes, result.stdout + result.stderr
    if not passes:
        assert "expected 1024 dimensions, got 768" in result.stderr
