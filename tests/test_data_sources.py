"""Input data from s3:// URIs, against a real S3 server (SeaweedFS, as KFP bundles): fetches,
one-line errors that name the URI and the reason (never the secret), content fingerprints."""

from __future__ import annotations

import pytest

from components.data_sources import fingerprint_inputs, resolve_training_inputs, split_s3_uri
from components.jsonl_files import DataError, read_jsonl_objects
from components.sample_data import SampleDataConfig
from pipelines.cli import main
from tests.s3_server import SECRET_KEY, free_port


@pytest.fixture()
def s3_endpoint(s3_environment):
    return s3_environment.client()


def test_training_inputs_are_fetched_from_s3(tmp_path, s3_endpoint, tiny_dataset):
    s3_endpoint.upload_file(str(tiny_dataset["rows"]), "data", "sets/rows.jsonl")
    s3_endpoint.upload_file(str(tiny_dataset["corpus"]), "data", "sets/corpus.jsonl")
    inputs = resolve_training_inputs("s3://data/sets/rows.jsonl", "", "s3://data/sets/corpus.jsonl", tmp_path)
    assert inputs.train.read_bytes() == tiny_dataset["rows"].read_bytes()
    assert inputs.corpus.read_bytes() == tiny_dataset["corpus"].read_bytes()
    assert inputs.test is None


def test_wrong_credentials_are_refused_naming_the_uri_not_the_secret(tmp_path, s3_endpoint, tiny_dataset,
                                                                     monkeypatch):
    s3_endpoint.upload_file(str(tiny_dataset["rows"]), "data", "private/rows.jsonl")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(DataError, match=r"^s3://data/private/rows.jsonl: access denied") as error:
        resolve_training_inputs("s3://data/private/rows.jsonl", "", "", tmp_path / "work")
    assert "wrong-secret-value" not in str(error.value) and SECRET_KEY not in str(error.value)
    assert not list((tmp_path / "work").rglob("rows.jsonl")), "nothing half-written is left behind"


def test_missing_object_bucket_and_unreachable_endpoint_are_named(tmp_path, s3_endpoint, monkeypatch):
    with pytest.raises(DataError, match=r"^s3://data/nowhere.jsonl: no such object$"):
        resolve_training_inputs("s3://data/nowhere.jsonl", "", "", tmp_path)
    with pytest.raises(DataError, match=r"^s3://no-such-bucket/rows.jsonl: no such (bucket|object)$"):
        resolve_training_inputs("s3://no-such-bucket/rows.jsonl", "", "", tmp_path)
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    with pytest.raises(DataError, match=rf"^s3://data/rows.jsonl: cannot reach the S3 endpoint {closed}"):
        resolve_training_inputs("s3://data/rows.jsonl", "", "", tmp_path)


def test_step_commands_take_s3_uris_and_report_failures_in_one_line(tmp_path, s3_endpoint, tiny_dataset,
                                                                    monkeypatch, capsys):
    s3_endpoint.upload_file(str(tiny_dataset["rows"]), "data", "cli/rows.jsonl")
    assert main(["prepare", "--train-data", "s3://data/cli/rows.jsonl", "--output-dir", str(tmp_path / "out"),
                 "--test-fraction", "0.2"]) == 0
    assert len(read_jsonl_objects(tmp_path / "out" / "train.jsonl")) + len(
        read_jsonl_objects(tmp_path / "out" / "test.jsonl")) == len(read_jsonl_objects(tiny_dataset["rows"]))
    capsys.readouterr()

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    for command in (["prepare", "--output-dir", str(tmp_path / "p")], ["mine", "--output-dir", str(tmp_path / "m")],
                    ["score", "--output-dir", str(tmp_path / "s")], ["train", "--output-dir", str(tmp_path / "t")]):
        assert main(command + ["--train-data", "s3://data/cli/rows.jsonl"]) == 2, command
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("searchtune: error: s3://data/cli/rows.jsonl: access denied"), lines
        assert "wrong-secret-value" not in lines[0]


def test_fingerprint_follows_the_object_not_its_name(tmp_path, s3_endpoint, tiny_dataset):
    s3_endpoint.upload_file(str(tiny_dataset["rows"]), "data", "weekly/rows.jsonl")
    first = fingerprint_inputs(["s3://data/weekly/rows.jsonl", "", ""])
    assert fingerprint_inputs(["s3://data/weekly/rows.jsonl", "", ""]) == first
    s3_endpoint.put_object(Bucket="data", Key="weekly/rows.jsonl",
                           Body=tiny_dataset["rows"].read_bytes() + b'{"query": "new", "pos": ["row"]}\n')
    assert fingerprint_inputs(["s3://data/weekly/rows.jsonl", "", ""]) != first

    local = tmp_path / "rows.jsonl"
    local.write_bytes(tiny_dataset["rows"].read_bytes())
    before = fingerprint_inputs([str(local), "", ""])
    local.write_bytes(tiny_dataset["rows"].read_bytes().replace("连衣裙".encode(), "半身裙".encode()))
    assert fingerprint_inputs([str(local), "", ""]) != before
    with pytest.raises(DataError, match="no such object"):
        fingerprint_inputs(["s3://data/weekly/gone.jsonl"])


def test_empty_training_data_means_the_builtin_sample(tmp_path):
    inputs = resolve_training_inputs("", "", "", tmp_path)
    rows = read_jsonl_objects(inputs.train)
    assert len(rows) == SampleDataConfig().num_queries and inputs.corpus is not None and inputs.test is None


def test_missing_local_file_and_bad_uri_are_named(tmp_path):
    with pytest.raises(DataError, match="nowhere.jsonl: file not found"):
        resolve_training_inputs(str(tmp_path / "nowhere.jsonl"), "", "", tmp_path)
    with pytest.raises(DataError, match="is a folder"):
        resolve_training_inputs(str(tmp_path), "", "", tmp_path)
    with pytest.raises(DataError, match="s3://only-bucket: not an s3://bucket/key URI"):
        resolve_training_inputs("s3://only-bucket", "", "", tmp_path)
    with pytest.raises(ValueError, match="s3://bucket/key"):
        split_s3_uri("s3://only-bucket")
