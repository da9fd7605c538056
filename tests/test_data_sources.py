"""Input data from s3:// URIs, against a real S3 server (SeaweedFS, as KFP bundles)."""

from __future__ import annotations

import pytest

from components.data_sources import resolve_training_inputs, split_s3_uri
from components.jsonl_files import DataError, read_jsonl_objects
from components.sample_data import SampleDataConfig


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


def test_wrong_credentials_are_refused(tmp_path, s3_endpoint, tiny_dataset, monkeypatch):
    s3_endpoint.upload_file(str(tiny_dataset["rows"]), "data", "private/rows.jsonl")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        resolve_training_inputs("s3://data/private/rows.jsonl", "", "", tmp_path / "work")
    assert not list((tmp_path / "work").rglob("rows.jsonl")), "nothing half-written is left behind"


def test_empty_training_data_means_the_builtin_sample(tmp_path):
    inputs = resolve_training_inputs("", "", "", tmp_path)
    rows = read_jsonl_objects(inputs.train)
    assert len(rows) == SampleDataConfig().num_queries and inputs.corpus is not None and inputs.test is None


def test_missing_local_file_and_bad_uri_are_named(tmp_path):
    with pytest.raises(DataError, match="nowhere.jsonl: file not found"):
        resolve_training_inputs(str(tmp_path / "nowhere.jsonl"), "", "", tmp_path)
    with pytest.raises(ValueError, match="s3://bucket/key"):
        split_s3_uri("s3://only-bucket")
