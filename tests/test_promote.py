"""The promote step: a sealed, content-versioned copy in a folder or real S3 (SeaweedFS), served
from there as trained; the Helm upgrade rendered against the chart and called against a
Kubernetes API stand-in (kmock) through helm-python-sdk."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import yaml
from tests.conftest import REPO_ROOT
from tests.http_servers import ThreadedServer

from components.object_store import require_complete_folder
from components.parity import ParityConfig, check_serving_parity
from components.promote import PromoteConfig, promote_model
from components.serving import ServeConfig
from pipelines.cli import main

REAL_CHART = REPO_ROOT / "helm" / "searchtune-serving"


def test_promotion_to_a_folder_is_sealed_versioned_by_content_and_idempotent(tiny_bert, tmp_path):
    config = PromoteConfig(serving_uri=str(tmp_path / "serving"), served_model_name="shop-search")
    first = promote_model(tiny_bert, config)
    assert first.copied and Path(first.model_uri).parent == tmp_path / "serving"
    assert Path(first.model_uri).name == f"shop-search-{first.version}" and len(first.version) == 12
    manifest = require_complete_folder(first.model_uri, verify_checksums=True)
    assert "model.safetensors" in manifest["files"] and "searchtune_profile.json" in manifest["files"]
    assert first.serve_command == f"searchtune serve --model {first.model_uri} --served-model-name shop-search"

    again = promote_model(tiny_bert, config)
    assert again.model_uri == first.model_uri and not again.copied


def test_promotion_to_s3_is_served_from_s3_as_trained(tiny_bert, tmp_path, s3_environment, monkeypatch):
    monkeypatch.setenv("SEARCHTUNE_CACHE", str(tmp_path / "cache"))
    result = promote_model(tiny_bert, PromoteConfig(serving_uri="s3://data/serving", served_model_name="shop"))
    assert result.model_uri == f"s3://data/serving/shop-{result.version}"
    with ThreadedServer(ServeConfig(model=result.model_uri, served_model_name="shop", port=0, precision="fp32",
                                    device="cpu")) as server:
        parity = check_serving_parity(str(tiny_bert), server.base_url, tmp_path / "parity", ParityConfig(device="cpu"))
    assert parity.passed


def test_an_s3_folder_without_its_completion_marker_is_not_served(tiny_bert, tmp_path, s3_environment, monkeypatch,
                                                                  capsys):
    from components.object_store import COMPLETION_MARKER, s3_client

    monkeypatch.setenv("SEARCHTUNE_CACHE", str(tmp_path / "cache"))
    result = promote_model(tiny_bert, PromoteConfig(serving_uri="s3://data/half", served_model_name="shop"))
    key = result.model_uri[len("s3://data/"):] + "/" + COMPLETION_MARKER
    s3_client().delete_object(Bucket="data", Key=key)
    assert main(["serve", "--model", result.model_uri]) == 2
    assert f"{result.model_uri}: no completion marker" in capsys.readouterr().err


def _small_chart(folder: Path) -> Path:
    """The serving chart's contract in miniature: model.uri and model.name drive the Deployment."""
    (folder / "templates").mkdir(parents=True)
    (folder / "Chart.yaml").write_text("apiVersion: v2\nname: searchtune-serving\nversion: 0.1.0\n", encoding="utf-8")
    (folder / "values.yaml").write_text("model:\n  uri: s3://models/bge-large-zh-v1.5/\n  name: bge-large-zh-v1.5\n"
                                        "replicas: 1\n", encoding="utf-8")
    (folder / "templates" / "deployment.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n"
        "  replicas: {{ .Values.replicas }}\n  selector:\n    matchLabels: {app: serving}\n  template:\n"
        "    metadata:\n      labels: {app: serving}\n    spec:\n      initContainers:\n"
        "        - name: pull-model\n          image: searchtune\n"
        "          args: [pull, {{ .Values.model.uri | quote }}, /models/{{ .Values.model.name }}]\n"
        "      containers:\n        - name: server\n          image: sglang\n"
        "          args: [--model-path, /models/{{ .Values.model.name }}, --served-model-name, "
        "{{ .Values.model.name | quote }}]\n", encoding="utf-8")
    return folder


@pytest.fixture()
def chart(tmp_path) -> Path:
    """The real chart once it is in the repository, else the miniature."""
    return REAL_CHART if (REAL_CHART / "Chart.yaml").is_file() else _small_chart(tmp_path / "chart")


def test_helm_dry_run_renders_the_release_with_the_new_model_path(tiny_bert, tmp_path, s3_environment, chart):
    config = PromoteConfig(serving_uri="s3://data/serving", served_model_name="shop-search", helm_release="search",
                           helm_namespace="serving", helm_chart=str(chart), helm_dry_run=True)
    result = promote_model(tiny_bert, config)
    documents = [d for d in yaml.safe_load_all(result.helm_manifest) if d]
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    assert deployments, result.helm_manifest
    rendered = yaml.safe_dump(deployments)
    assert f"{result.model_uri}/" in rendered and "shop-search" in rendered
    assert "bge-large-zh-v1.5" not in rendered


def test_promote_command_prints_the_rendered_upgrade(tiny_bert, tmp_path, s3_environment, chart, capsys):
    assert main(["promote", "--model", str(tiny_bert), "--serving-uri", "s3://data/cli", "--helm-release", "search",
                 "--helm-chart", str(chart), "--helm-dry-run", "true"]) == 0
    printed = capsys.readouterr().out
    assert "model:  s3://data/cli/searchtune-embedder-" in printed and "kind: Deployment" in printed


@pytest.fixture()
def kubernetes_api(tmp_path, monkeypatch):
    """kmock's Kubernetes emulator on 127.0.0.1 and a kubeconfig that points at it."""
    import kmock

    ready, state = threading.Event(), {}

    async def run() -> None:
        emulator = kmock.KubernetesEmulator()
        emulator.resources["v1/secrets"] = {}  # where Helm keeps its releases
        async with emulator, kmock.Server(emulator) as server:
            state.update(url=str(server.url).rstrip("/"), emulator=emulator)
            ready.set()
            while not state.get("stop"):
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    assert ready.wait(30)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": state["url"]}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}]}), encoding="utf-8")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    yield state["emulator"]
    state["stop"] = True
    thread.join(timeout=10)


def test_helm_upgrade_goes_to_the_cluster_and_a_missing_release_is_one_clear_error(tiny_bert, s3_environment, chart,
                                                                                 kubernetes_api):
    config = PromoteConfig(serving_uri="s3://data/serving", served_model_name="shop-search", helm_release="search",
                           helm_namespace="serving", helm_chart=str(chart))
    with pytest.raises(RuntimeError) as caught:
        promote_model(tiny_bert, config)
    message = str(caught.value)
    assert message.startswith("helm upgrade of release 'search' in namespace 'serving' to model.uri=s3://data/serving/")
    assert message.endswith('"search" has no deployed releases')
    # helm-python-sdk asked the API server (the stand-in) for the release's history.
    paths = [str(request.url) for request in kubernetes_api._requests]
    assert any("/api/v1/namespaces/serving/secrets" in path and "owner%3Dhelm" in path for path in paths)


def test_helm_needs_an_s3_serving_location_and_a_model_folder():
    with pytest.raises(ValueError, match="helm_release needs an s3:// serving_uri"):
        PromoteConfig(serving_uri="/srv/models", helm_release="search")
    with pytest.raises(ValueError, match="serving_uri is required"):
        PromoteConfig()
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        promote_model("/nonexistent", PromoteConfig(serving_uri="/tmp/x"))
