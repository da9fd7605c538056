"""``searchtune compare``: local run folders, s3:// run roots and KFP run ids, side by side."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import uuid

import pytest
from kfp_server_api import models

from components.metric_names import flat_metric_names
from pipelines.cli import main
from pipelines.parameters import LOCAL
from tests.kfp_api_server import KfpApiServer


def _metrics(shift: float, extra: dict | None = None) -> dict:
    values = {}
    headline = [name for name in flat_metric_names(lexical_baselines=False)
                if name.endswith(("_base", "_finetuned", "_delta"))]
    for index, name in enumerate(headline):
        base = 0.3 + 0.01 * (index % 7)
        if name.endswith("_base"):
            values[name] = base
        elif name.endswith("_finetuned"):
            values[name] = base + shift
        else:
            values[name] = shift
    return {**values, **(extra or {})}


def _run_folder(folder, metrics: dict, **overrides):
    folder.mkdir(parents=True)
    parameters = LOCAL.with_overrides(**overrides).as_arguments()
    (folder / "parameters.json").write_text(json.dumps(parameters), encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return folder


def test_local_runs_side_by_side_in_text_markdown_and_html(tmp_path, capsys):
    a = _run_folder(tmp_path / "runs" / "lr-5e-5", _metrics(0.05))
    b = _run_folder(tmp_path / "runs" / "lr-1e-4", _metrics(0.12, {"global_recall_at_1_p_value": 0.003,
                                                                   "global_mrr_at_10_bm25": 0.176,
                                                                   "final_train_loss": 0.42,
                                                                   "gate_decision": "promote"}),
                    learning_rate=1e-4)
    c = _run_folder(tmp_path / "runs" / "kd-on", _metrics(0.08), knowledge_distillation="on")
    code = main(["compare", str(a), str(b), str(c), "--markdown", str(tmp_path / "c.md"),
                 "--html", str(tmp_path / "c.html")])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["lr-5e-5", "lr-1e-4", "(best)", "kd-on"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:] if line.startswith("  ")}
    assert rows["learning_rate"] == ["5e-05", "0.0001", "5e-05"]
    assert rows["knowledge_distillation"] == ["off", "off", "on"]
    assert "seed" not in rows and "student_model" not in rows, "only the parameters that differ"
    best = f"{_metrics(0.12)['global_mrr_at_10_finetuned']:.4f}"
    assert rows["global_mrr_at_10_finetuned"][1:3] == [best, "*"], "the best run of a ranked metric"
    assert "*" not in rows["global_mrr_at_10_base"], "base rows do not rank runs"
    assert rows["global_recall_at_1_p_value"] == ["—", "0.0030", "—"], "extra metrics shown, unmarked"
    assert rows["global_mrr_at_10_bm25"] == ["—", "0.1760", "—"]
    assert "gate_decision" not in rows, "a non-number is not a metric row"
    names = [line.split()[0] for line in lines if line.startswith("  ")]
    assert names.index("global_mrr_at_10_bm25") < names.index("final_train_loss"), "known metrics first"
    assert rows["final_train_loss"] == ["—", "0.4200", "—"]
    assert lines[-3] == "* best of the runs; best run overall by global_mrr_at_10_finetuned: lr-1e-4"
    assert lines[-2:] == [f"markdown: {tmp_path / 'c.md'}", f"html: {tmp_path / 'c.html'}"]

    markdown = (tmp_path / "c.md").read_text(encoding="utf-8")
    assert "| `learning_rate` | 5e-05 | 0.0001 | 5e-05 |" in markdown
    assert f"| `global_mrr_at_10_finetuned` | {_metrics(0.05)['global_mrr_at_10_finetuned']:.4f} | **{best}** |" \
        in markdown
    page = (tmp_path / "c.html").read_text(encoding="utf-8")
    assert page.count('<img alt="') == 4 and f'<td class="best">{best}</td>' in page
    from PIL import Image

    for encoded in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size[0] > 300


def test_s3_run_roots_folder_and_kfp_layout(tmp_path, s3_environment, capsys):
    client = s3_environment.client()
    client.put_object(Bucket="data", Key="runs/weekly-47/parameters.json",
                      Body=json.dumps(LOCAL.as_arguments()).encode())
    client.put_object(Bucket="data", Key="runs/weekly-47/metrics.json", Body=json.dumps(_metrics(0.02)).encode())
    run_id = str(uuid.uuid4())
    # Where KFP 2.x launchers put the evaluate step's metrics artifact (a salt folder in newer ones).
    # A retried evaluate step: the second attempt (the newer object) holds the run's metrics,
    # though its folder sorts first.
    client.put_object(Bucket="data", Key=f"pr/searchtune-finetune-embedder/{run_id}/evaluate-models/9173/metrics",
                      Body=json.dumps(_metrics(0.01)).encode())
    time.sleep(1.1)  # S3 keeps LastModified in whole seconds
    client.put_object(Bucket="data", Key=f"pr/searchtune-finetune-embedder/{run_id}/evaluate-models/8841/metrics",
                      Body=json.dumps(_metrics(0.07)).encode())
    code = main(["compare", "s3://data/runs/weekly-47", f"s3://data/pr/searchtune-finetune-embedder/{run_id}"])
    out = capsys.readouterr().out
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("  test_recall_at_1_delta"))
    assert row.split()[1:] == ["0.0200", "0.0700", "*"]
    assert out.splitlines()[-1].endswith(f": {run_id}")


def test_kfp_run_ids_through_the_api_and_the_artifact_store(tmp_path, s3_environment, capsys):
    server = KfpApiServer().start()
    try:
        runs = []
        for name, shift, rate in (("weekly-48", 0.04, 1e-5), ("weekly-49", 0.09, 2e-5)):
            run_id = str(uuid.uuid4())
            server.add_run(models.V2beta1Run(
                run_id=run_id, display_name=name, experiment_id="e", state="SUCCEEDED",
                runtime_config=models.V2beta1RuntimeConfig(pipeline_root="s3://data/kfp-root",
                                                           parameters={"learning_rate": rate, "seed": 42})))
            s3_environment.client().put_object(
                Bucket="data", Key=f"kfp-root/searchtune-finetune-embedder/{run_id}/evaluate-models/metrics",
                Body=json.dumps(_metrics(shift)).encode())
            runs.append(run_id)
        local_run = _run_folder(tmp_path / "local", _metrics(0.01))
        code = main(["compare", *runs, str(local_run), "--host", server.host, "--best-by", "test_mrr_at_10_delta"])
        out = capsys.readouterr().out
        assert code == 0
        assert out.splitlines()[0].split() == ["weekly-48", "weekly-49", "(best)", "local"]
        rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
        assert rows["learning_rate"][:2] == ["1e-05", "2e-05"]
        assert [r for r in server.state.requests if r[1].startswith("/apis/v2beta1/runs/")]
    finally:
        server.stop()


@pytest.mark.parametrize("arguments, message", [
    (["compare", "runs/nowhere"], "runs/nowhere: not a run folder, an s3:// run root, or a KFP run id"),
    (["compare", "0f8fad5b-d9cb-469f-a165-70867728950e"], "looks like a KFP run id; give --host"),
])
def test_runs_that_cannot_be_found_are_named(arguments, message, capsys, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_a_root_without_metrics_is_refused(s3_environment, tmp_path, capsys):
    s3_environment.client().put_object(Bucket="data", Key="empty-run/readme.txt", Body=b"x")
    assert main(["compare", "s3://data/empty-run"]) == 2
    assert "s3://data/empty-run: no metrics.json and no evaluate-models metrics artifact" in capsys.readouterr().err
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "parameters.json").write_text("{}", encoding="utf-8")
    assert main(["compare", str(folder)]) == 2
    assert f"{folder / 'metrics.json'}: not found" in capsys.readouterr().err
