"""Folders handed from step to step through S3, as the KFP launcher does, with the steps' own code.

On a cluster the launcher uploads each output artifact to the pipeline root after the step
body ends, in an order of its own, and downloads the inputs of the next step before that
one starts. The embedding cache and the model are sealed by the step that wrote them
(completion marker = manifest written last); the evaluate step refuses a folder that does
not match its marker. Here the launcher's part is played by a small uploader/downloader
over the SeaweedFS server, the worst case included (the marker uploaded first, then the
uploader killed), and the reading step is the real evaluate component under ``kfp.local``.
"""

# No ``from __future__ import annotations``: KFP reads the pipeline's annotations as types.
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from kfp import dsl, local
from kfp.dsl import Artifact, Dataset, Model

from components.object_store import (
    COMPLETION_MARKER,
    IncompleteFolderError,
    download_folder,
    is_complete_folder,
    seal_folder,
    split_s3_uri,
)
from pipelines.kfp_components import evaluate_models, score_pairs
from pipelines.parameters import RECIPE
from tests.conftest import REPO_ROOT
from tests.s3_server import ACCESS_KEY, SECRET_KEY

pytestmark = [pytest.mark.slow,
              # The components name the cluster image; kfp.local runs them in this Python on purpose.
              pytest.mark.filterwarnings("ignore:.*non-Python base image:RuntimeWarning")]

BIG_MB = 40
# The model-profile parameters as the pipeline passes them by default: the model's own.
PROFILE_AS_THE_MODEL_SAYS = {name: getattr(RECIPE, name)
                             for name in ("pooling", "normalize", "query_instruction", "passage_instruction")}


def _model_folder(folder: Path, big_mb: int = 0) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(os.urandom(big_mb * 1024 * 1024 or 4096))
    return folder


def _cache_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "passages.npy").write_bytes(os.urandom(2048))
    (folder / "meta.json").write_text("{}", encoding="utf-8")
    return folder


def launcher_download(server, uri: str, destination: Path) -> Path:
    """What the launcher does for an input: every object under the prefix, as it is."""
    bucket, key = split_s3_uri(uri)
    prefix = key.rstrip("/") + "/"
    client = server.client()
    for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        target = destination / item["Key"][len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, item["Key"], str(target))
    destination.mkdir(parents=True, exist_ok=True)
    return destination


# The launcher's upload in a process of its own, marker first (the worst order), so the
# test can kill it in the middle as a node loss would; small parts make it slow enough.
_UPLOADER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import boto3
    from boto3.s3.transfer import TransferConfig
    source, bucket, prefix = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    client = boto3.session.Session().client("s3")
    files = sorted((p for p in source.rglob("*") if p.is_file()), key=lambda p: (p.name != "{marker}", p.stat().st_size))
    config = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=5 << 20, max_concurrency=1)
    for path in files:
        client.upload_file(str(path), bucket, prefix + path.relative_to(source).as_posix(), Config=config)
        print("uploaded", path.name, flush=True)
""").replace("{marker}", COMPLETION_MARKER)

# The storage layer's own folder upload (as the training job's rank 0 uses it), killed alike.
_FOLDER_UPLOADER = textwrap.dedent("""
    import sys
    from components.object_store import StorageSettings, upload_folder
    settings = StorageSettings(multipart_threshold_mb=8, multipart_chunk_mb=5, max_concurrency=1)
    upload_folder(sys.argv[1], sys.argv[2], settings)
""")


def _start(script: str, *arguments: str, environment: dict) -> subprocess.Popen:
    env = {**os.environ, **environment, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-c", script, *arguments], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_when_multipart_in_flight(process: subprocess.Popen, server, prefix: str) -> None:
    """SIGKILL the uploader once a multipart upload under ``prefix`` (in bucket data) is under way."""
    client = server.client()
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if client.list_multipart_uploads(Bucket="data", Prefix=prefix).get("Uploads"):
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            # What a bucket lifecycle rule would do later; other tests watch for uploads in flight.
            for upload in client.list_multipart_uploads(Bucket="data", Prefix=prefix).get("Uploads", []):
                client.abort_multipart_upload(Bucket="data", Key=upload["Key"], UploadId=upload["UploadId"])
            return
        time.sleep(0.02)
    raise AssertionError("the upload ended before it could be cut: " + (process.stdout.read() or ""))


def _run_evaluate_on(tmp_path: Path, base_embeddings: Path, model: Path) -> None:
    """The evaluate component under kfp.local with the handed-over folders as its inputs."""
    test_rows = tmp_path / "test.jsonl"
    test_rows.write_text('{"query": "q", "pos": ["p"]}\n', encoding="utf-8")
    pool = tmp_path / "corpus.jsonl"
    pool.write_text('{"id": "1", "text": "p"}\n', encoding="utf-8")

    @dsl.pipeline(name="handover")
    def handover():
        mined_test = dsl.importer(artifact_uri=str(test_rows), artifact_class=Dataset)
        global_pool = dsl.importer(artifact_uri=str(pool), artifact_class=Dataset)
        cache = dsl.importer(artifact_uri=str(base_embeddings), artifact_class=Artifact)
        finetuned = dsl.importer(artifact_uri=str(model), artifact_class=Model)
        evaluate_models(mined_test=mined_test.output, global_pool=global_pool.output,
                        base_embeddings=cache.output, finetuned_model=finetuned.output,
                        base_model=str(model), query_max_len=8, passage_max_len=8, encode_batch_size=8,
                        **PROFILE_AS_THE_MODEL_SAYS)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    handover()


def test_a_step_refuses_an_input_folder_without_its_marker(tmp_path, s3_environment, capfd):
    # A cache written without a marker (a step that died after its files, or foreign code).
    server = s3_environment
    client = server.client()
    for path in _cache_folder(tmp_path / "cache").iterdir():
        client.upload_file(str(path), "data", f"root/run-1/mine-negatives/base_embeddings/{path.name}")
    model = _model_folder(tmp_path / "model")
    seal_folder(model)
    cache = launcher_download(server, "s3://data/root/run-1/mine-negatives/base_embeddings",
                              tmp_path / "in" / "base_embeddings")
    with pytest.raises(RuntimeError, match="evaluate-models"):
        _run_evaluate_on(tmp_path, cache, model)
    log = capfd.readouterr()
    lines = [line for line in (log.out + log.err).splitlines() if "IncompleteFolderError:" in line]
    assert lines, log.out[-3000:] + log.err[-3000:]
    assert lines[-1].split("IncompleteFolderError: ", 1)[1] == (
        f"{cache}: no completion marker ({COMPLETION_MARKER}): the folder is incomplete or was not written "
        "by searchtune")
    assert ACCESS_KEY not in log.out + log.err and SECRET_KEY not in log.out + log.err


def test_score_refuses_mines_vectors_without_their_marker(tmp_path, capfd):
    """The score step reuses mine's pool vectors only from a sealed folder, as evaluate does."""
    cache = _cache_folder(tmp_path / "base_embeddings")
    rows = tmp_path / "mined.jsonl"
    rows.write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n', encoding="utf-8")

    @dsl.pipeline(name="score-handover")
    def handover():
        mined = dsl.importer(artifact_uri=str(rows), artifact_class=Dataset)
        vectors = dsl.importer(artifact_uri=str(cache), artifact_class=Artifact)
        score_pairs(mined_train=mined.output, base_embeddings=vectors.output, student_model="unused",
                    teacher="embedding", teacher_model="unused", teacher_temperature=0.0,
                    cross_encoder_scores="logits", temperature=0.02, query_max_len=8, passage_max_len=8,
                    encode_batch_size=8, **PROFILE_AS_THE_MODEL_SAYS)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    with pytest.raises(RuntimeError, match="score-pairs"):
        handover()
    log = capfd.readouterr()
    assert f"IncompleteFolderError: {cache}: no completion marker ({COMPLETION_MARKER})" in log.out + log.err


def test_a_launcher_killed_mid_upload_leaves_no_folder_a_step_takes_as_complete(tmp_path, s3_environment, capfd):
    server = s3_environment
    model = _model_folder(tmp_path / "model", big_mb=BIG_MB)
    seal_folder(model)
    uploader = _start(_UPLOADER, str(model), "data", "root/run-2/fine-tune-embedder/finetuned_model/",
                      environment=server.environment)
    _kill_when_multipart_in_flight(uploader, server, "root/run-2/")
    # The marker made it (it went first), the weights did not: the reader sees a partial folder.
    handed = launcher_download(server, "s3://data/root/run-2/fine-tune-embedder/finetuned_model",
                               tmp_path / "in" / "finetuned_model")
    assert (handed / COMPLETION_MARKER).is_file() and not (handed / "model.safetensors").exists()
    cache = _cache_folder(tmp_path / "cache")
    seal_folder(cache)
    with pytest.raises(RuntimeError, match="evaluate-models"):
        _run_evaluate_on(tmp_path, cache, handed)
    log = capfd.readouterr()
    assert (f"IncompleteFolderError: {handed}: model.safetensors is listed in the completion marker but missing"
            in log.out + log.err), log.out[-3000:] + log.err[-3000:]


def test_a_step_killed_mid_upload_through_the_storage_layer_leaves_nothing_complete(tmp_path, s3_environment):
    server = s3_environment
    uri = "s3://data/root/run-3/model"
    # A finished model already there from an earlier attempt: it must not pass for the new one.
    old = _model_folder(tmp_path / "old")
    uploader = _start(_FOLDER_UPLOADER, str(old), uri, environment=server.environment)
    assert uploader.wait(timeout=120) == 0, uploader.stdout.read()
    assert is_complete_folder(uri)
    uploader = _start(_FOLDER_UPLOADER, str(_model_folder(tmp_path / "new", big_mb=BIG_MB)), uri,
                      environment=server.environment)
    _kill_when_multipart_in_flight(uploader, server, "root/run-3/")
    assert not is_complete_folder(uri)
    with pytest.raises(IncompleteFolderError, match=rf"{uri}: no completion marker"):
        download_folder(uri, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_a_local_step_reads_s3_data_and_logs_no_credential(tmp_path, s3_environment, capfd):
    """The prepare step alone under kfp.local, its data in S3: the keys never reach its log."""
    from pipelines.kfp_components import prepare_data

    rows = "".join(json.dumps({"query": f"查询{i}", "pos": [f"商品{i} 描述"]}, ensure_ascii=False) + "\n"
                   for i in range(20))
    s3_environment.client().put_object(Bucket="data", Key="inputs/rows.jsonl", Body=rows.encode("utf-8"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = prepare_data(train_data="s3://data/inputs/rows.jsonl", test_data="", corpus="", sample_queries=10,
                        sample_seed=1, test_fraction=0.2, seed=1, skip_invalid=False, student_model="",
                        query_max_len=64, passage_max_len=64, input_fingerprint="", **PROFILE_AS_THE_MODEL_SAYS)
    assert task.outputs["train_set"].metadata["rows"] + task.outputs["test_set"].metadata["rows"] == 20
    log = capfd.readouterr()
    assert "s3://data/inputs/rows.jsonl" in log.out + log.err, "the step's log was captured"
    assert ACCESS_KEY not in log.out + log.err and SECRET_KEY not in log.out + log.err
