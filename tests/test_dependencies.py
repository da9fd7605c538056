"""Every module the steps and the CLI import at run time comes with ``pip install .``: each
third-party top-level module imported anywhere in components/ and pipelines/ (function
bodies included: KFP components import inside them) belongs to a distribution that
pyproject.toml declares as a runtime dependency, not only in an extra."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "pipelines")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def imported_modules(folder: Path) -> dict[str, str]:
    """Top-level module → the first ``file:line`` importing it, over every .py under ``folder``."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def test_every_third_party_import_is_a_declared_runtime_dependency():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for group in project.get("optional-dependencies", {}).values() for r in group}
    distributions = importlib.metadata.packages_distributions()
    imports: dict[str, str] = {}
    for package in PACKAGES:
        imports.update(imported_modules(REPO_ROOT / package))
    assert {"torch", "kfp", "boto3", "matplotlib"} <= set(imports), "the scan sees the steps' imports"

    problems = []
    for module, where in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in PACKAGES or module == "__future__":
            continue
        owners = {_canonical(d) for d in distributions.get(module, [])}
        if not owners:
            problems.append(f"{where}: {module}: no installed distribution provides it")
        elif not owners & runtime:
            kind = "only in an extra" if owners & extras else "not declared"
            problems.append(f"{where}: {module} ({', '.join(sorted(owners))}): {kind}")
    assert not problems, "imports that `pip install .` does not bring:\n" + "\n".join(problems)


def test_the_wheel_ships_the_data_files_the_steps_read(tmp_path):
    """`pip install .` installs what a wheel holds: the sample vocabulary must be in it."""
    import shutil
    import subprocess
    import zipfile

    # A copy of the sources: setuptools writes build/ and *.egg-info beside what it builds.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path / "wheel"), str(source)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("searchtune-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    data_files = {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "components" / "sample_vocabulary").glob("*.json")}
    assert data_files and data_files <= shipped, sorted(data_files - shipped)
