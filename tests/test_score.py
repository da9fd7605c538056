"""score: both teachers against independent computations of the same scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.jsonl_files import read_jsonl_objects
from components.score import ScoreConfig, score_with_teacher
from tests.conftest import TINY_DISTRACTORS, TINY_ROWS, build_tiny_bert


@pytest.fixture()
def mined_rows(tmp_path):
    rows = [{**row, "neg": TINY_DISTRACTORS[i % 12:i % 12 + 3]} for i, row in enumerate(TINY_ROWS)]
    path = tmp_path / "mined.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_embedding_teacher_is_cosine_over_temperature(tmp_path, tiny_bert, mined_rows):
    from sentence_transformers import SentenceTransformer

    config = ScoreConfig(teacher="embedding", teacher_model=str(tiny_bert), embedding_temperature=0.05)
    scored = read_jsonl_objects(score_with_teacher(mined_rows, tmp_path / "out", config))
    model = SentenceTransformer(str(tiny_bert), device="cpu")
    for row in scored:
        assert len(row["pos_scores"]) == len(row["pos"]) and len(row["neg_scores"]) == len(row["neg"])
        q = model.encode([row["query"]], normalize_embeddings=True)[0]
        expected = model.encode(row["pos"] + row["neg"], normalize_embeddings=True) @ q / 0.05
        np.testing.assert_allclose(row["pos_scores"] + row["neg_scores"], expected, atol=2e-3)


def test_cross_encoder_teacher_is_sigmoid_of_the_logit(tmp_path, tiny_texts, mined_rows):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = build_tiny_bert(tmp_path / "reranker", tiny_texts, sequence_classification=True)
    config = ScoreConfig(teacher="cross-encoder", teacher_model=str(folder), devices=("cpu",), batch_size=4)
    scored = read_jsonl_objects(score_with_teacher(mined_rows, tmp_path / "out", config))

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    for row in scored[:4]:
        passages = row["pos"] + row["neg"]
        with torch.inference_mode():
            batch = tokenizer([row["query"]] * len(passages), passages, padding=True, return_tensors="pt")
            expected = torch.sigmoid(model(**batch).logits.view(-1)).numpy()
        np.testing.assert_allclose(row["pos_scores"] + row["neg_scores"], expected, atol=1e-4)
        assert all(0.0 <= s <= 1.0 for s in row["pos_scores"] + row["neg_scores"])


def test_unknown_teacher_is_rejected():
    with pytest.raises(ValueError, match="teacher"):
        ScoreConfig(teacher="llm")
