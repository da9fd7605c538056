"""The launcher image holds kfp, kubernetes, boto3, pyyaml, rich and helm-python-sdk, and no
numeric stack: the steps compiled onto it (fine-tune's job launcher, the gate, promote) must
run without torch or numpy. Each runs here in a fresh interpreter where importing any of
those fails, as it would in that image."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from pipelines.cluster_compile import LAUNCHER_STEPS

REPO = Path(__file__).resolve().parents[1]
# What the steps image has and the launcher image lacks.
ABSENT = ("torch", "numpy", "scipy", "sklearn", "transformers", "sentence_transformers", "FlagEmbedding", "faiss",
          "matplotlib", "bm25s", "deepspeed", "fastapi", "uvicorn")
BLOCK = textwrap.dedent(f"""
    import importlib.abc, sys
    ABSENT = {ABSENT!r}

    class NotInTheLauncherImage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ABSENT:
                raise ImportError(f"{{name}} is not in the launcher image")
            return None

    sys.meta_path.insert(0, NotInTheLauncherImage())
""")


def _run_without_the_numeric_stack(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(body)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_the_block_itself_refuses_torch():
    result = _run_without_the_numeric_stack("import torch")
    assert result.returncode != 0 and "torch is not in the launcher image" in result.stderr


def test_the_launcher_steps_are_the_ones_checked_here():
    assert LAUNCHER_STEPS == {"fine_tune", "gate", "promote"}


def test_gate_decides_without_the_numeric_stack(tmp_path):
    from components.metric_names import flat_metric_name

    metrics = {}
    for pool in ("test", "global"):
        for metric in ("recall", "mrr"):
            for k in (1, 5, 10):
                metrics[flat_metric_name(pool, metric, k, "base")] = 0.60
                metrics[flat_metric_name(pool, metric, k, "finetuned")] = 0.70
                metrics[flat_metric_name(pool, metric, k, "delta")] = 0.10
                metrics[flat_metric_name(pool, metric, k, "p_value")] = 0.001
    (tmp_path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    result = _run_without_the_numeric_stack(f"""
        import json
        from components.gate import GateConfig, decide_promotion
        metrics = json.load(open({str(tmp_path / 'metrics.json')!r}))
        decision = decide_promotion(metrics, {str(tmp_path / 'gate')!r}, GateConfig())
        print("PROMOTE" if decision.promote else "REFUSE")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("PROMOTE")


def test_promote_and_the_job_launcher_import_without_the_numeric_stack():
    result = _run_without_the_numeric_stack("""
        import components.promote, pipelines.job_launcher, pipelines.training_job, pipelines.cluster_profile
        import helm_python, kubernetes, boto3
        from pipelines.cluster_profile import parse_cluster_profile
        from pipelines.training_job import render_job, placeholder_inputs, train_arguments
        profile = parse_cluster_profile("", "the cluster_profile parameter")
        flags = train_arguments({"model": "BAAI/bge-large-zh-v1.5", "nproc_per_node": 2}, profile)
        job = render_job(profile, placeholder_inputs(profile, flags), "pytorchjob")
        print(job["kind"])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("PyTorchJob")


def test_a_local_executor_in_the_launcher_image_says_what_to_recompile(tmp_path):
    """A pipeline compiled for a job puts fine-tune in this image; `train_executor=local` then
    cannot train here, and the step says so instead of failing on a missing torch."""
    result = _run_without_the_numeric_stack(f"""
        import inspect
        from kfp import dsl
        from pipelines.kfp_components import fine_tune_embedder
        body = fine_tune_embedder.python_func
        # Any value of each parameter's type: the step must stop before it reads one.
        arguments = {{name: parameter.annotation() for name, parameter in inspect.signature(body).parameters.items()
                     if parameter.annotation in (str, int, float, bool)}}
        arguments.update(scored_train=dsl.Dataset(uri={str(tmp_path / 'rows')!r}),
                         finetuned_model=dsl.Model(uri={str(tmp_path / 'model')!r}),
                         training_metrics=dsl.Metrics(uri={str(tmp_path / 'metrics')!r}), train_executor="local")
        try:
            body(**arguments)
        except RuntimeError as error:
            print("REFUSED", error)
    """)
    assert result.returncode == 0, result.stderr
    assert "REFUSED train_executor=local trains with torchrun in this step's own pod, but its image has no torch" \
        in result.stdout
    assert "recompile with training.executor: local" in result.stdout
