"""Folders in S3 with a completion marker, against a real SeaweedFS server, faults included."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from components.object_store import (
    COMPLETION_MARKER,
    IncompleteFolderError,
    StorageError,
    StorageSettings,
    copy_folder,
    describe_object,
    download_file,
    download_folder,
    is_complete_folder,
    require_complete_folder,
    seal_folder,
    upload_file,
    upload_folder,
)
from tests.s3_server import SECRET_KEY, SeaweedServer

# Small parts and one part in flight: a 40 MB file takes long enough to be cut in the middle.
FAULT_SETTINGS = StorageSettings(multipart_threshold_mb=8, multipart_chunk_mb=5, max_concurrency=1,
                                 request_attempts=2, retry_seconds=90, connect_timeout_s=1, read_timeout_s=10)


def _model_folder(folder: Path, big_mb: int = 0) -> Path:
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}), encoding="utf-8")
    (folder / "1_Pooling" / "config.json").write_text("{}", encoding="utf-8")
    (folder / "model.safetensors").write_bytes(os.urandom(big_mb * 1024 * 1024 or 4096))
    return folder


def test_folder_round_trip_carries_a_marker_written_last(tmp_path, s3_environment):
    source = _model_folder(tmp_path / "model")
    manifest = upload_folder(source, "s3://data/runs/a/model/")
    assert set(manifest["files"]) == {"config.json", "1_Pooling/config.json", "model.safetensors"}
    keys = [o["Key"] for o in s3_environment.client().list_objects_v2(Bucket="data", Prefix="runs/a/model/")["Contents"]]
    assert f"runs/a/model/{COMPLETION_MARKER}" in keys
    copy = download_folder("s3://data/runs/a/model", tmp_path / "copy")
    assert (copy / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert require_complete_folder(copy, verify_checksums=True)["files"] == manifest["files"]
    assert is_complete_folder("s3://data/runs/a/model")


def test_a_folder_without_its_marker_is_refused_and_nothing_is_left(tmp_path, s3_environment):
    client = s3_environment.client()
    client.put_object(Bucket="data", Key="runs/b/model/config.json", Body=b"{}")
    with pytest.raises(IncompleteFolderError, match=r"s3://data/runs/b/model: no completion marker"):
        download_folder("s3://data/runs/b/model", tmp_path / "copy")
    assert not (tmp_path / "copy").exists() and not list(tmp_path.iterdir())
    assert not is_complete_folder("s3://data/runs/b/model")


def test_a_marker_that_lists_a_missing_file_is_refused(tmp_path, s3_environment):
    upload_folder(_model_folder(tmp_path / "model"), "s3://data/runs/c/model")
    s3_environment.client().delete_object(Bucket="data", Key="runs/c/model/model.safetensors")
    with pytest.raises(IncompleteFolderError, match="model.safetensors is listed in the completion marker but missing"):
        download_folder("s3://data/runs/c/model", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_uploading_over_an_older_folder_leaves_no_stale_file(tmp_path, s3_environment):
    old = _model_folder(tmp_path / "old")
    (old / "checkpoint-extra.bin").write_bytes(b"old")
    upload_folder(old, "s3://data/runs/d/model")
    upload_folder(_model_folder(tmp_path / "new"), "s3://data/runs/d/model")
    copy = download_folder("s3://data/runs/d/model", tmp_path / "copy")
    assert not (copy / "checkpoint-extra.bin").exists()
    keys = [o["Key"] for o in s3_environment.client().list_objects_v2(Bucket="data", Prefix="runs/d/")["Contents"]]
    assert "runs/d/model/checkpoint-extra.bin" not in keys


def test_local_folders_are_sealed_and_checked(tmp_path):
    folder = _model_folder(tmp_path / "model")
    with pytest.raises(IncompleteFolderError, match="no completion marker"):
        require_complete_folder(folder)
    seal_folder(folder)
    require_complete_folder(folder, verify_checksums=True)
    (folder / "config.json").write_text('{"hidden_size": 16}', encoding="utf-8")
    with pytest.raises(IncompleteFolderError, match="config.json has 19 bytes, the marker says 18"):
        require_complete_folder(folder)
    copied = copy_folder(_model_folder(tmp_path / "fresh"), tmp_path / "served")
    assert is_complete_folder(copied)


def test_wrong_credentials_fail_at_once_naming_the_uri_never_the_secret(tmp_path, s3_environment, monkeypatch):
    upload_file(_model_folder(tmp_path / "m") / "config.json", "s3://data/private/config.json")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-wrong-secret")
    started = time.monotonic()
    with pytest.raises(StorageError) as error:
        download_file("s3://data/private/config.json", tmp_path / "x.json")
    assert time.monotonic() - started < 20, "a permanent error must not be retried for the whole window"
    message = str(error.value)
    assert message.startswith("s3://data/private/config.json: ") and "access denied: check the credentials" in message
    assert "a-wrong-secret" not in message and SECRET_KEY not in message and "\n" not in message
    assert not (tmp_path / "x.json").exists()


def test_missing_object_and_folder_uri_are_named(tmp_path, s3_environment):
    with pytest.raises(StorageError, match=r"s3://data/nowhere.jsonl: reading its metadata failed: no such object"):
        download_file("s3://data/nowhere.jsonl", tmp_path / "x")
    with pytest.raises(StorageError, match="the bucket does not exist"):
        download_file("s3://no-such-bucket/x.jsonl", tmp_path / "x")


@pytest.fixture()
def fault_server(tmp_path, monkeypatch):
    """A server of the test's own, which the test may kill."""
    server = SeaweedServer(tmp_path / "weed").start()
    for key, value in server.environment.items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


def _kill_and_restart_when(server: SeaweedServer, condition, pause_s: float = 2.0) -> threading.Thread:
    def run() -> None:
        deadline = time.time() + 60
        while not condition() and time.time() < deadline:
            time.sleep(0.02)
        server.kill()
        time.sleep(pause_s)
        server.start()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _multipart_in_flight(server: SeaweedServer) -> bool:
    try:
        return bool(server.client().list_multipart_uploads(Bucket="data").get("Uploads"))
    except Exception:
        return False


@pytest.mark.slow
def test_an_upload_cut_by_a_server_crash_resumes_and_completes(tmp_path, fault_server, caplog):
    caplog.set_level("WARNING", logger="components.object_store")
    source = _model_folder(tmp_path / "model", big_mb=40)
    thread = _kill_and_restart_when(fault_server, lambda: _multipart_in_flight(fault_server))
    upload_folder(source, "s3://data/runs/fault/model", FAULT_SETTINGS)
    thread.join(timeout=120)
    assert fault_server.process.poll() is None, "the server was restarted"
    assert any("model.safetensors: upload failed" in r.getMessage() and "retry" in r.getMessage()
               for r in caplog.records), "the crash hit the upload in the middle"
    copy = download_folder("s3://data/runs/fault/model", tmp_path / "copy", FAULT_SETTINGS)
    assert (copy / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_a_download_cut_by_a_server_crash_resumes_and_completes(tmp_path, fault_server, caplog):
    caplog.set_level("WARNING", logger="components.object_store")
    source = _model_folder(tmp_path / "model", big_mb=40)
    upload_folder(source, "s3://data/runs/fault2/model", FAULT_SETTINGS)
    destination = tmp_path / "out" / "copy"
    destination.parent.mkdir()

    def partial_file_growing() -> bool:
        return any(p.stat().st_size > 0 for p in destination.parent.rglob("*model.safetensors*") if p.is_file())
    thread = _kill_and_restart_when(fault_server, partial_file_growing)
    download_folder("s3://data/runs/fault2/model", destination, FAULT_SETTINGS)
    thread.join(timeout=120)
    assert (destination / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert [p.name for p in destination.parent.iterdir()] == ["copy"], "no partial file is left beside it"
    assert any("model.safetensors: download failed" in r.getMessage() for r in caplog.records), \
        "the crash hit the download in the middle"


@pytest.mark.slow
def test_a_store_that_stays_down_fails_clearly_and_leaves_no_complete_folder(tmp_path, fault_server):
    source = _model_folder(tmp_path / "model", big_mb=40)
    upload_folder(_model_folder(tmp_path / "old"), "s3://data/runs/down/model", FAULT_SETTINGS)
    settings = StorageSettings(multipart_threshold_mb=8, multipart_chunk_mb=5, max_concurrency=1,
                               request_attempts=1, retry_seconds=3, connect_timeout_s=1, read_timeout_s=5)
    killer = threading.Thread(target=lambda: (_wait_for(lambda: _multipart_in_flight(fault_server)),
                                              fault_server.kill()), daemon=True)
    killer.start()
    with pytest.raises(StorageError, match=r"s3://data/runs/down/model/model.safetensors: upload failed: "):
        upload_folder(source, "s3://data/runs/down/model", settings)
    killer.join(timeout=60)
    fault_server.start()
    # The old folder lost its marker before the new upload began: neither is taken as complete.
    assert not is_complete_folder("s3://data/runs/down/model", FAULT_SETTINGS)
    with pytest.raises(IncompleteFolderError):
        download_folder("s3://data/runs/down/model", tmp_path / "copy", FAULT_SETTINGS)


def _wait_for(condition, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.02)


def test_object_description_changes_with_content(tmp_path, s3_environment):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"query": "a", "pos": ["b"]}\n', encoding="utf-8")
    upload_file(path, "s3://data/weekly/rows.jsonl")
    first = describe_object("s3://data/weekly/rows.jsonl")
    path.write_text('{"query": "a", "pos": ["c"]}\n', encoding="utf-8")
    upload_file(path, "s3://data/weekly/rows.jsonl")
    assert describe_object("s3://data/weekly/rows.jsonl")["etag"] != first["etag"]
