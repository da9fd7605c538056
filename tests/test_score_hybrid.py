"""score: the hybrid teacher (embedding cosine + BM25 share), against its parts computed
independently: the embedding teacher's own scores and BM25 by the formula."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from components.jsonl_files import read_jsonl_objects
from components.lexical_retrieval import tokenize
from components.score import METADATA_FILENAME, ScoreConfig, score_with_teacher
from tests.conftest import TINY_DISTRACTORS, TINY_ROWS


@pytest.fixture()
def mined_rows(tmp_path):
    rows = [{**row, "neg": TINY_DISTRACTORS[i % 12:i % 12 + 3]} for i, row in enumerate(TINY_ROWS)]
    path = tmp_path / "mined.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path, rows


def _bm25_shares(rows: list[dict]) -> list[list[float]]:
    """BM25 (Lucene, k1 0.9, b 0.4) over the rows' passages, over the query's idf sum."""
    passages = list(dict.fromkeys(p for row in rows for p in row["pos"] + row["neg"]))
    terms = [tokenize(p, "cjk-bigram") for p in passages]
    average = sum(len(t) for t in terms) / len(terms)
    n = len(passages)
    shares = []
    for row in rows:
        query = tokenize(row["query"], "cjk-bigram")
        idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5))
               for t in query if (df := sum(t in doc for doc in terms))}
        bound = sum(idf.get(t, 0.0) for t in query)
        group = []
        for passage in row["pos"] + row["neg"]:
            doc = terms[passages.index(passage)]
            score = sum(idf[t] * doc.count(t) / (doc.count(t) + 0.9 * (0.6 + 0.4 * len(doc) / average))
                        for t in query if t in idf)
            group.append(score / bound if bound else 0.0)
        shares.append(group)
    return shares


def test_hybrid_teacher_is_embedding_plus_weighted_bm25_share(tmp_path, tiny_bert, mined_rows):
    path, rows = mined_rows
    embedding = read_jsonl_objects(score_with_teacher(
        path, tmp_path / "embedding", ScoreConfig(teacher="embedding", teacher_model=str(tiny_bert))))
    config = ScoreConfig(teacher="hybrid", teacher_model=str(tiny_bert), lexical_weight=0.3)
    hybrid = read_jsonl_objects(score_with_teacher(path, tmp_path / "hybrid", config))
    shares = _bm25_shares(rows)
    assert any(s > 0.2 for group in shares for s in group), "the rows share words: BM25 must see them"
    for plain, mixed, share in zip(embedding, hybrid, shares):
        # Stored logits: (cosine + 0.3 x share) / 0.02, the embedding teacher's plus 15 x share.
        expected = np.asarray(plain["pos_scores"] + plain["neg_scores"]) + 0.3 * np.asarray(share) / 0.02
        np.testing.assert_allclose(mixed["pos_scores"] + mixed["neg_scores"], expected, atol=1e-3)
    metadata = json.loads((tmp_path / "hybrid" / METADATA_FILENAME).read_text(encoding="utf-8"))
    assert metadata["teacher"] == "hybrid" and metadata["teacher_temperature"] == 0.02
    assert metadata["score_scale"] == "cosine + 0.3 x BM25 / idf bound / 0.02"


def test_hybrid_teacher_settings_are_checked():
    with pytest.raises(ValueError, match="lexical_weight"):
        ScoreConfig(teacher="hybrid", lexical_weight=-1)
    with pytest.raises(ValueError, match="hybrid"):
        ScoreConfig(teacher="bm25")
