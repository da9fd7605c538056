"""The cluster-facing files rendered once and scanned once by checkov (it takes ~20 s a run).

``checkov_scan`` (a session fixture, imported by conftest) renders the serving chart for
every value set in ``CHART_VALUE_SETS``, builds ``manifests/`` with kustomize, copies every
Dockerfile, and runs checkov 3.3.30 (``--skip-download``, from ``.venv-checkov``) over all
of them in one run. Each test file then asserts on its own part of the report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

CHART = REPO_ROOT / "helm" / "searchtune-serving"
MANIFESTS = REPO_ROOT / "manifests"
CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
MODEL_URI = "s3://searchtune/models/bge-ft-20261129/model/"
DIGEST = "sha256:" + "0123456789abcdef" * 4

# The chart's value sets the tests render (always with the one required value).
CHART_VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "two-gpus": {"sglang": {"tp": 2, "dtype": "float16", "memFractionStatic": 0.85, "contextLength": 512,
                            "attentionBackend": "flashinfer", "extraArgs": ["--max-running-requests", "128"]},
                 "resources": {"gpu": 2}, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
    "ingress": {"ingress": {"enabled": True, "className": "nginx", "host": "embeddings.search.example.com",
                            "tls": {"enabled": True, "secretName": "embeddings-tls"}}},
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "api-key": {"apiKey": {"enabled": True, "secretName": "embeddings-api-key"}},
    "autoscaling": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}},
    "pinned": {"image": {"digest": DIGEST, "pullPolicy": "Always"}, "sglang": {"contextLength": None}},
}


def chart_values(name: str) -> dict:
    values = json.loads(json.dumps(CHART_VALUE_SETS[name]))
    values.setdefault("model", {})["uri"] = MODEL_URI
    return values


def render_chart(values: dict, release: str = "embeddings", namespace: str = "search") -> dict[str, str]:
    """Template path → rendered text, as ``helm template`` gives (NOTES.txt included)."""
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        return chart.render(values, name=release, namespace=namespace)


def checkov_binary() -> Path:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: `make setup` creates .venv-checkov with checkov==3.3.30 "
                    "(tests/requirements/checkov.txt)")
    return CHECKOV


def kustomize_build(folder: Path = MANIFESTS) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing (it builds manifests/ with kustomize): apt-get install kubectl, or put "
                    "any kubectl >= 1.27 on PATH")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed: {result.stderr}"
    return result.stdout


def _write_inputs(root: Path) -> None:
    for name in CHART_VALUE_SETS:
        folder = root / "chart" / name
        folder.mkdir(parents=True)
        for template, text in render_chart(chart_values(name)).items():
            if template.endswith(".yaml") and text.strip():
                (folder / Path(template).name).write_text(text, encoding="utf-8")
    (root / "manifests").mkdir()
    (root / "manifests" / "all.yaml").write_text(kustomize_build(), encoding="utf-8")
    shutil.copy(MANIFESTS / "base" / "s3-secret.template.yaml", root / "manifests" / "s3-secret.template.yaml")
    for dockerfile in (REPO_ROOT / "images").glob("*/Dockerfile"):
        target = root / "images" / dockerfile.parent.name / "Dockerfile"
        target.parent.mkdir(parents=True)
        shutil.copy(dockerfile, target)


@pytest.fixture(scope="session")
def checkov_scan(tmp_path_factory) -> dict[str, list[dict]]:
    """Area (``chart``, ``manifests``, ``images``) → checkov's check results in it.

    Each result is checkov's own record (``check_id``, ``file_path``, ``resource``,
    ``check_result`` with ``result`` PASSED / FAILED / SKIPPED and the skip's
    ``suppress_comment``).
    """
    root = tmp_path_factory.mktemp("checkov")
    _write_inputs(root)
    result = subprocess.run([str(checkov_binary()), "--directory", str(root), "--framework", "kubernetes",
                             "dockerfile", "--skip-download", "--output", "json"],
                            capture_output=True, text=True)
    # checkov exits 1 when a check fails; the report says which, so the tests judge it.
    assert result.returncode in (0, 1), f"checkov failed to run: {result.stderr[-2000:]}"
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_area: dict[str, list[dict]] = {"chart": [], "manifests": [], "images": []}
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, f"checkov could not parse some {report['check_type']} files"
        results = report.get("results", {})
        for outcome, records in (("passed", "passed_checks"), ("failed", "failed_checks"),
                                 ("skipped", "skipped_checks")):
            for record in results.get(records, []):
                area = record["file_path"].strip("/").split("/")[0]
                by_area[area].append({**record, "outcome": outcome})
    assert all(by_area.values()), f"checkov scanned nothing in some area: { {k: len(v) for k, v in by_area.items()} }"
    return by_area


def unexplained_findings(records: list[dict]) -> list[str]:
    """Failures, and skips without a reason, as one line each."""
    lines = []
    for record in records:
        where = f"{record['file_path']} {record.get('resource', '')}"
        if record["outcome"] == "failed":
            lines.append(f"FAILED {record['check_id']} {record['check_name']} at {where}")
        elif record["outcome"] == "skipped" and len((record["check_result"].get("suppress_comment") or "").strip()) < 15:
            lines.append(f"SKIPPED without a reason {record['check_id']} at {where}")
    return lines
