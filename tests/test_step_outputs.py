"""Step outputs are all-or-nothing: a step's folder appears whole, replaces an earlier run's
folder without leaving its files behind, and a failed step leaves the earlier folder as it was."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from components.embedding import EncodeConfig
from components.jsonl_files import read_jsonl_objects
from components.mine import MineConfig, mine_hard_negatives
from components.prepare import prepare_training_data
from components.score import ScoreConfig, score_with_teacher

ENCODE = EncodeConfig(batch_size=8, show_progress=False, precision="fp32", device="cpu")


def _stale(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stale_from_last_week.jsonl").write_text("{}\n", encoding="utf-8")
    (folder / "base_embeddings").mkdir(exist_ok=True)
    (folder / "base_embeddings" / "old.npy").write_bytes(b"old")


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_reused_folders_hold_only_this_runs_files(tmp_path, tiny_bert, tiny_dataset):
    prepared_dir, mined_dir, scored_dir = tmp_path / "prepared", tmp_path / "mined", tmp_path / "scored"
    for folder in (prepared_dir, mined_dir, scored_dir):
        _stale(folder)
    prepared = prepare_training_data(tiny_dataset["rows"], prepared_dir, corpus_path=tiny_dataset["corpus"])
    assert sorted(p.name for p in prepared_dir.iterdir()) == sorted(
        ["train.jsonl", "test.jsonl", "corpus.jsonl", "data_report.json", "data_report.md"])
    mined = mine_hard_negatives(prepared.train, mined_dir,
                                MineConfig(model=str(tiny_bert), negative_number=2, encode=ENCODE),
                                test_path=prepared.test, corpus_path=prepared.corpus)
    assert sorted(p.name for p in mined_dir.iterdir()) == sorted(
        ["train.jsonl", "test.jsonl", "base_embeddings", "mining_stats.json"])
    assert not (mined_dir / "base_embeddings" / "old.npy").exists()
    score_with_teacher(mined.train, scored_dir, ScoreConfig(teacher="embedding", teacher_model=str(tiny_bert),
                                                            encode=ENCODE))
    assert sorted(p.name for p in scored_dir.iterdir()) == ["teacher_scores.json", "train.jsonl"]
    assert not list(tmp_path.glob(".*partial")), "no temporary folder is left"


def test_a_failed_step_leaves_the_earlier_folder_as_it_was(tmp_path, tiny_bert, tiny_dataset):
    prepared = prepare_training_data(tiny_dataset["rows"], tmp_path / "prepared", corpus_path=tiny_dataset["corpus"])
    mined = mine_hard_negatives(prepared.train, tmp_path / "mined",
                                MineConfig(model=str(tiny_bert), negative_number=2, encode=ENCODE),
                                corpus_path=prepared.corpus)
    before = {name: _snapshot(tmp_path / name) for name in ("prepared", "mined")}

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "pos": ["b"]}\n{"query": "c"}\n', encoding="utf-8")
    with pytest.raises(ValueError):
        prepare_training_data(bad, tmp_path / "prepared")
    with pytest.raises(ValueError):
        mine_hard_negatives(prepared.train, tmp_path / "mined",
                            MineConfig(model=str(tmp_path / "no-such-model"), negative_number=2, encode=ENCODE),
                            corpus_path=prepared.corpus)
    assert {name: _snapshot(tmp_path / name) for name in ("prepared", "mined")} == before
    assert mined.train.is_file() and not list(tmp_path.glob(".*partial"))


def test_embedding_teacher_reuses_the_vectors_mine_made(tmp_path, tiny_bert, tiny_dataset, caplog):
    prepared = prepare_training_data(tiny_dataset["rows"], tmp_path / "prepared", corpus_path=tiny_dataset["corpus"])
    mined = mine_hard_negatives(prepared.train, tmp_path / "mined",
                                MineConfig(model=str(tiny_bert), negative_number=3, encode=ENCODE),
                                corpus_path=prepared.corpus)
    teacher = ScoreConfig(teacher="embedding", teacher_model=str(tiny_bert), encode=ENCODE)
    fresh = read_jsonl_objects(score_with_teacher(mined.train, tmp_path / "fresh", teacher))
    passages = {p for row in fresh for p in row["pos"] + row["neg"]}
    with caplog.at_level(logging.INFO, logger="components.score"):
        reused = read_jsonl_objects(score_with_teacher(mined.train, tmp_path / "reused", teacher,
                                                       pool_embeddings=mined.base_embeddings))
    assert f"teacher: {len(passages)} of {len(passages)} passage vectors reused from mine's cache" in caplog.text
    np.testing.assert_allclose([r["pos_scores"] + r["neg_scores"] for r in reused],
                               [r["pos_scores"] + r["neg_scores"] for r in fresh], atol=1e-4)

    # Another encoder (other lengths) does not take mine's vectors.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="components.score"):
        score_with_teacher(mined.train, tmp_path / "other", ScoreConfig(
            teacher="embedding", teacher_model=str(tiny_bert), encode=ENCODE, passage_max_len=16),
            pool_embeddings=mined.base_embeddings)
    assert "reused from mine's cache" not in caplog.text
    assert json.loads((tmp_path / "reused" / "teacher_scores.json").read_text())["teacher"] == "embedding"
