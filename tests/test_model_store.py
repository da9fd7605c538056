"""Base models in S3 for a cluster run: `searchtune push-model` seals them, every step takes
their s3:// URI wherever it takes a model name, against the suite's SeaweedFS server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.embedding import EncodeConfig, TextEncoder
from components.encoding_profiles import PROFILE_FILENAME
from components.mine import MineConfig, mine_hard_negatives
from components.model_profiles import ModelNotFoundError, resolve_model
from components.object_store import COMPLETION_MARKER, IncompleteFolderError, sealed_manifest
from pipelines.cli import main
from tests.conftest import build_tiny_bert

URI = "s3://data/models/shop-bert/"


def _encode(model: str, texts: list[str]) -> np.ndarray:
    return TextEncoder(resolve_model(model), EncodeConfig(precision="fp32", show_progress=False)).encode_queries(texts)


def test_a_pushed_model_is_resolved_from_s3_with_its_profile_and_vectors(tmp_path, s3_environment, tiny_texts,
                                                                         monkeypatch, capsys):
    monkeypatch.setenv("SEARCHTUNE_CACHE", str(tmp_path / "cache"))
    local = build_tiny_bert(tmp_path / "shop-bert", tiny_texts, pooling="mean", query_instruction="查询：")
    assert main(["push-model", "--model", str(local), "--uri", URI]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"{URI} (embedding model: ")
    files = sealed_manifest(URI)["files"]
    assert PROFILE_FILENAME in files and "model.safetensors" in files

    resolved = resolve_model(URI)
    assert resolved.name == URI and resolved.profile == resolve_model(str(local)).profile
    np.testing.assert_allclose(_encode(URI, tiny_texts[:4]), _encode(str(local), tiny_texts[:4]), atol=1e-6)
    # Downloaded once: while the store holds the same files, the cached copy is used.
    cached = resolve_model(URI).path
    before = (next(p for p in (tmp_path / "cache").rglob(COMPLETION_MARKER))).stat().st_mtime_ns
    assert resolve_model(URI).path == cached
    assert next(p for p in (tmp_path / "cache").rglob(COMPLETION_MARKER)).stat().st_mtime_ns == before

    # Another model under the same URI (next week's base): downloaded again, its own vectors.
    other = build_tiny_bert(tmp_path / "other" / "shop-bert", tiny_texts, pooling="mean", seed=7)
    assert main(["push-model", "--model", str(other), "--uri", URI]) == 0
    np.testing.assert_allclose(_encode(URI, tiny_texts[:4]), _encode(str(other), tiny_texts[:4]), atol=1e-6)


def test_a_step_takes_an_s3_model_and_refuses_an_unsealed_one(tmp_path, s3_environment, tiny_bert, tiny_dataset,
                                                              monkeypatch):
    monkeypatch.setenv("SEARCHTUNE_CACHE", str(tmp_path / "cache"))
    assert main(["push-model", "--model", str(tiny_bert), "--uri", "s3://data/models/tiny/"]) == 0
    result = mine_hard_negatives(tiny_dataset["rows"], tmp_path / "mined",
                                 MineConfig(model="s3://data/models/tiny/", range_for_sampling=(1, 20),
                                            negative_number=3, query_max_len=16, passage_max_len=16),
                                 corpus_path=tiny_dataset["corpus"])
    rows = [json.loads(line) for line in result.train.read_text(encoding="utf-8").splitlines()]
    assert rows and all(len(row["neg"]) == 3 for row in rows)

    # A folder whose upload never finished (no marker) is refused before anything is read.
    client = s3_environment.client()
    client.upload_file(str(tiny_bert / "config.json"), "data", "models/half/config.json")
    with pytest.raises(IncompleteFolderError, match=r"s3://data/models/half/: no completion marker"):
        resolve_model("s3://data/models/half/")


def test_push_model_refuses_a_local_target_and_a_missing_model(tmp_path, s3_environment, tiny_bert, capsys):
    assert main(["push-model", "--model", str(tiny_bert), "--uri", str(tmp_path / "out")]) == 2
    assert "give an s3:// URI" in capsys.readouterr().err
    assert main(["push-model", "--model", "no-such-org/no-such-model", "--uri", URI]) == 2
    error = capsys.readouterr().err.strip()
    assert "no-such-org/no-such-model" in error and "HF_HUB_OFFLINE" in error and "\n" not in error
    with pytest.raises(ModelNotFoundError):
        resolve_model("no-such-org/no-such-model")
