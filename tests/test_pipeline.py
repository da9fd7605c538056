"""The KFP pipeline: compiles with the recipe's defaults; runs end to end on kfp.local."""

from __future__ import annotations

import json

import pytest
import yaml

from components.evaluate import flat_metric_names
from pipelines.cli import main
from pipelines.parameters import LOCAL, RECIPE

pytestmark = pytest.mark.slow


def test_compiled_pipeline_has_five_cached_steps_and_the_recipe_defaults(tmp_path):
    output = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(output)]) == 0
    spec = yaml.safe_load(output.read_text(encoding="utf-8"))
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == ["evaluate-models", "fine-tune-embedder", "mine-negatives", "prepare-data",
                             "score-pairs"]
    assert all(task["cachingOptions"].get("enableCache") for task in tasks.values())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    for name, value in RECIPE.as_arguments().items():
        assert parameters[name]["defaultValue"] == value, name
    outputs = spec["components"]["comp-evaluate-models"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert spec["components"]["comp-fine-tune-embedder"]["outputDefinitions"]["artifacts"]["finetuned_model"][
        "artifactType"]["schemaTitle"] == "system.Model"


def test_local_run_of_the_whole_pipeline_on_a_small_sample(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["run", "--local", "--output-dir", str(run_dir), "--set", "sample_queries=60",
                 "--set", "max_steps=3", "--set", "negative_number=4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Improvement per pool" in printed and "Before / after" in printed
    assert "Test pool" in printed and "Global pool" in printed

    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    expected = {name for name in flat_metric_names((1, 5, 10)) if not name.startswith("separation")}
    assert expected <= set(metrics)
    # Differences and their intervals may be negative; every other figure is a share or a p-value.
    assert all(0.0 <= metrics[name] <= 1.0 for name in expected if "_delta" not in name)
    parameters = json.loads((run_dir / "parameters.json").read_text(encoding="utf-8"))
    assert parameters["student_model"] == LOCAL.student_model and parameters["max_steps"] == 3
    models = list(run_dir.glob("artifacts/*/fine-tune-embedder/finetuned_model/model.safetensors"))
    assert len(models) == 1
    html = list(run_dir.glob("artifacts/*/evaluate-models/report_html"))
    assert html and "<img" in html[0].read_text(encoding="utf-8")


def test_local_run_reports_bad_training_data_by_file_and_line(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"query": "a", "pos": ["b"]}\n{"query": "c", "pos": []}\n', encoding="utf-8")
    code = main(["run", "--local", "--output-dir", str(tmp_path / "run"), "--train-data", str(rows)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{rows}:2: pos: must hold at least one passage" in captured.out + captured.err
