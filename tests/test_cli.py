"""Each step runs alone from the command line, chained on files as the README shows."""

from __future__ import annotations

import json

import pytest

from components.jsonl_files import read_jsonl_objects
from pipelines.cli import main

pytestmark = pytest.mark.slow


def test_steps_chain_from_the_command_line(tmp_path, tiny_bert, tiny_dataset, capsys):
    out = tmp_path / "out"
    model = str(tiny_bert)
    assert main(["prepare", "--train-data", str(tiny_dataset["rows"]), "--corpus", str(tiny_dataset["corpus"]),
                 "--output-dir", str(out / "prepared"), "--test-fraction", "0.2", "--model", model]) == 0
    assert "# Data report" in capsys.readouterr().out
    assert main(["mine", "--train-data", str(out / "prepared/train.jsonl"), "--test-data",
                 str(out / "prepared/test.jsonl"), "--corpus", str(out / "prepared/corpus.jsonl"),
                 "--model", model, "--range-for-sampling", "0", "20", "--negative-number", "3",
                 "--encode-precision", "fp32", "--output-dir", str(out / "mined")]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["queries"] > 0
    assert main(["score", "--train-data", str(out / "mined/train.jsonl"), "--teacher", "embedding",
                 "--teacher-model", model, "--encode-precision", "fp32", "--output-dir", str(out / "scored")]) == 0
    assert all(len(r["neg_scores"]) == 3 for r in read_jsonl_objects(out / "scored/train.jsonl"))
    assert main(["train", "--train-data", str(out / "scored/train.jsonl"), "--model", model,
                 "--train-group-size", "4", "--query-max-len", "32", "--passage-max-len", "32",
                 "--precision", "auto", "--deepspeed", "false", "--gradient-checkpointing", "false",
                 "--nproc-per-node", "1", "--max-steps", "2", "--per-device-train-batch-size", "2",
                 "--output-dir", str(out / "model")]) == 0
    assert "final loss" in capsys.readouterr().out
    assert main(["evaluate", "--test-data", str(out / "mined/test.jsonl"), "--corpus",
                 str(out / "prepared/corpus.jsonl"), "--base-model", model, "--finetuned-model", str(out / "model"),
                 "--base-embeddings", str(out / "mined/base_embeddings"), "--encode-precision", "fp32",
                 "--output-dir", str(out / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "Improvement per pool" in printed and "Before / after" in printed
    assert (out / "eval" / "report.html").is_file()


def test_run_without_local_or_a_cluster_says_what_to_do(capsys, monkeypatch, tmp_path):
    for name in ("KUBECONFIG", "KF_PIPELINES_ENDPOINT", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["run"]) == 2
    assert "--local" in capsys.readouterr().err


def test_unknown_pipeline_parameter_is_refused(tmp_path, capsys):
    assert main(["run", "--local", "--output-dir", str(tmp_path), "--set", "no_such_thing=1"]) == 2
    assert "no_such_thing" in capsys.readouterr().err
