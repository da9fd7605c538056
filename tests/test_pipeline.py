"""The KFP pipeline: compiles with the recipe's defaults; runs end to end on kfp.local, over
an s3:// object, and its cache follows what the object holds, not its name."""

from __future__ import annotations

import json

import pytest
import yaml

from components.metric_names import flat_metric_names
from components.sample_data import SampleDataConfig, generate_sample_data
from pipelines.cli import main
from pipelines.parameters import LOCAL, RECIPE

pytestmark = pytest.mark.slow

STEPS = ["evaluate-models", "fine-tune-embedder", "mine-negatives", "prepare-data", "score-pairs"]


def test_compiled_pipeline_has_cached_steps_an_uncached_fingerprint_and_the_recipe_defaults(tmp_path):
    output = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(output)]) == 0
    # The pipeline spec, then the Kubernetes platform spec the cluster profile adds.
    spec, _ = yaml.safe_load_all(output.read_text(encoding="utf-8"))
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(STEPS + ["condition-1", "fingerprint-inputs", "gate-promotion"])
    assert all(tasks[name]["cachingOptions"].get("enableCache") for name in STEPS + ["gate-promotion"])
    assert not tasks["fingerprint-inputs"]["cachingOptions"].get("enableCache")
    # prepare's cache key holds what the inputs hold, through the fingerprint's output.
    fingerprint = tasks["prepare-data"]["inputs"]["parameters"]["input_fingerprint"]["taskOutputParameter"]
    assert fingerprint["producerTask"] == "fingerprint-inputs"
    # Promotion and parity run only when the gate passes.
    assert tasks["condition-1"]["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--gate-promotion-Output'] == true"
    assert sorted(spec["components"]["comp-condition-1"]["dag"]["tasks"]) == ["parity-check", "promote-model"]
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert set(parameters) == set(RECIPE.as_arguments())
    for name, value in RECIPE.as_arguments().items():
        assert parameters[name]["defaultValue"] == value, name
    outputs = spec["components"]["comp-evaluate-models"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert spec["components"]["comp-fine-tune-embedder"]["outputDefinitions"]["artifacts"]["finetuned_model"][
        "artifactType"]["schemaTitle"] == "system.Model"


def _task_outputs(run_dir) -> set[str]:
    """The steps that ran (wrote outputs) in this run, not taken from the cache."""
    return {path.parent.name for path in run_dir.glob("artifacts/*/*/*")}


def test_local_run_over_s3_and_the_cache_follows_the_object(tmp_path, s3_environment, capsys):
    sample = generate_sample_data(tmp_path / "sample", SampleDataConfig(num_queries=60))
    client = s3_environment.client()
    client.upload_file(str(sample.rows), "data", "weekly/rows.jsonl")
    client.upload_file(str(sample.corpus), "data", "weekly/corpus.jsonl")
    run = ["run", "--local", "--cache-dir", str(tmp_path / "cache"), "--train-data", "s3://data/weekly/rows.jsonl",
           "--corpus", "s3://data/weekly/corpus.jsonl", "--set", "max_steps=3", "--set", "negative_number=4"]

    first = tmp_path / "first"
    assert main(run + ["--output-dir", str(first)]) == 0
    printed = capsys.readouterr().out
    assert "Improvement per pool" in printed and "Before / after" in printed
    assert "Test pool" in printed and "Global pool" in printed
    metrics = json.loads((first / "metrics.json").read_text(encoding="utf-8"))
    expected = {name for name in flat_metric_names((1, 5, 10)) if not name.startswith("separation")}
    assert expected <= set(metrics)
    # Differences and their intervals may be negative; every other figure is a share or a p-value.
    assert all(0.0 <= metrics[name] <= 1.0 for name in expected if "_delta" not in name)
    parameters = json.loads((first / "parameters.json").read_text(encoding="utf-8"))
    assert parameters["student_model"] == LOCAL.student_model and parameters["max_steps"] == 3
    models = list(first.glob("artifacts/*/fine-tune-embedder/finetuned_model/model.safetensors"))
    assert len(models) == 1
    html = list(first.glob("artifacts/*/evaluate-models/report_html"))
    assert html and "<img" in html[0].read_text(encoding="utf-8")
    assert set(STEPS) <= _task_outputs(first)
    # The gate's decision ends the output and is in the run's metrics; a refused model is not promoted.
    assert "# Quality gate: " in printed and metrics["gate_promote"] in (0.0, 1.0)
    last = printed.rstrip("\n").splitlines()[-1]
    if metrics["gate_promote"] == 1.0:
        assert last.strip().startswith("searchtune serve --model ") and " --ui " in last
    else:
        assert last.startswith("quality gate: do not promote ("), last
    assert (metrics["gate_promote"] == 1.0) == bool(list(first.glob("artifacts/**/promote-model/promoted_model")))
    assert (first / "gate.md").read_text(encoding="utf-8").startswith("# Quality gate: ")

    # The same object again: every step comes from the cache.
    second = tmp_path / "second"
    assert main(run + ["--output-dir", str(second)]) == 0
    assert not set(STEPS) & _task_outputs(second), _task_outputs(second)
    capsys.readouterr()

    # Same URI, new content: prepare runs again and reads it (here, a bad row it reports).
    client.put_object(Bucket="data", Key="weekly/rows.jsonl",
                      Body=sample.rows.read_bytes() + b'{"query": "new this week", "pos": []}\n')
    assert main(run + ["--output-dir", str(tmp_path / "third")]) == 1
    captured = capsys.readouterr()
    assert ":61: pos: must hold at least one passage" in captured.out + captured.err


def test_local_run_reports_bad_training_data_by_file_and_line(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"query": "a", "pos": ["b"]}\n{"query": "c", "pos": []}\n', encoding="utf-8")
    code = main(["run", "--local", "--output-dir", str(tmp_path / "run"), "--train-data", str(rows)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{rows}:2: pos: must hold at least one passage" in captured.out + captured.err
