"""mine: hn_mine.py semantics, determinism, top-up, false-negative filter, embedding cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.embedding import EncodeConfig, TextEncoder
from components.embedding_cache import CacheKey, load_passage_embeddings, texts_digest
from components.jsonl_files import read_jsonl_objects
from components.mine import MineConfig, mine_hard_negatives, parse_range
from components.model_profiles import resolve_model
from components.prepare import prepare_training_data

ENCODE = EncodeConfig(batch_size=8, show_progress=False, precision="fp32")


@pytest.fixture()
def prepared(tmp_path, tiny_dataset):
    return prepare_training_data(tiny_dataset["rows"], tmp_path / "prepared", corpus_path=tiny_dataset["corpus"])


def test_negatives_come_from_the_sampling_range_of_an_independent_ranking(tmp_path, tiny_bert, prepared):
    config = MineConfig(model=str(tiny_bert), range_for_sampling=(2, 12), negative_number=4, encode=ENCODE)
    result = mine_hard_negatives(prepared.train, tmp_path / "mined", config, test_path=prepared.test,
                                 corpus_path=prepared.corpus)
    pool = [e["text"] for e in read_jsonl_objects(prepared.corpus)]
    test_rows = read_jsonl_objects(prepared.test)
    test_passages = {p for r in test_rows for p in r["pos"]}
    candidates = [t for t in pool if t not in test_passages]

    # Independent ranking: transformers-free sentence-transformers load of the same model.
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_bert), device="cpu")
    candidate_vectors = st.encode(candidates, normalize_embeddings=True)
    for row in read_jsonl_objects(result.train):
        assert len(row["neg"]) == 4 and len(set(row["neg"])) == 4
        assert not set(row["neg"]) & set(row["pos"]) and row["query"] not in row["neg"]
        assert not set(row["neg"]) & test_passages, "test passages never become training negatives"
        query_vector = st.encode([row["query"]], normalize_embeddings=True)[0]
        scores = dict(zip(candidates, candidate_vectors @ query_vector))
        ranked = sorted(scores.values(), reverse=True)
        # Within the window [2:12] of the ranking, up to float noise at its edges.
        for negative in row["neg"]:
            assert ranked[11] - 1e-4 <= scores[negative] <= ranked[2] + 1e-4, (row["query"], negative)
    assert result.test is not None and len(read_jsonl_objects(result.test)) == len(test_rows)


def test_same_inputs_same_negatives_and_seed_changes_them(tmp_path, tiny_bert, prepared):
    config = MineConfig(model=str(tiny_bert), range_for_sampling=(0, 20), negative_number=3, encode=ENCODE)
    a = mine_hard_negatives(prepared.train, tmp_path / "a", config, corpus_path=prepared.corpus)
    b = mine_hard_negatives(prepared.train, tmp_path / "b", config, corpus_path=prepared.corpus)
    c = mine_hard_negatives(prepared.train, tmp_path / "c", MineConfig(**{**config.__dict__, "seed": 1}),
                            corpus_path=prepared.corpus)
    assert a.train.read_bytes() == b.train.read_bytes()
    assert a.train.read_bytes() != c.train.read_bytes()


def test_top_up_never_picks_positive_query_or_duplicate(tmp_path, tiny_bert):
    rows = [{"query": "夏天穿的轻薄连衣裙", "pos": ["雪纺夏装碎花裙 女", "冬天保暖的外套"]},
            {"query": "冬天保暖的外套", "pos": ["加厚羽绒服 男 冬季"]}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    texts = ["夏天穿的轻薄连衣裙", "雪纺夏装碎花裙 女", "冬天保暖的外套", "加厚羽绒服 男 冬季", "奶瓶刷 海绵", "登山杖 碳素", "保温饭盒"]
    corpus.write_text("".join(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n"
                              for i, t in enumerate(texts)), encoding="utf-8")
    # The window holds 1 candidate, 5 are wanted: the rest come from the top-up.
    config = MineConfig(model=str(tiny_bert), range_for_sampling=(0, 1), negative_number=5, encode=ENCODE)
    result = mine_hard_negatives(path, tmp_path / "mined", config, corpus_path=corpus)
    mined = read_jsonl_objects(result.train)
    assert len(mined[0]["neg"]) == 4, "only four passages are neither a positive nor the query"
    for row in mined:
        assert len(set(row["neg"])) == len(row["neg"])
        assert not set(row["neg"]) & set(row["pos"]) and row["query"] not in row["neg"]
    assert result.stats["train"]["negatives_topped_up"] > 0


def test_false_negative_filter_drops_candidates_near_the_positive(tmp_path, tiny_bert, prepared):
    plain = mine_hard_negatives(prepared.train, tmp_path / "plain",
                                MineConfig(model=str(tiny_bert), range_for_sampling=(0, 30), negative_number=5,
                                           encode=ENCODE), corpus_path=prepared.corpus)
    strict = mine_hard_negatives(prepared.train, tmp_path / "strict",
                                 MineConfig(model=str(tiny_bert), range_for_sampling=(0, 30), negative_number=5,
                                            max_negative_score_fraction=0.5, encode=ENCODE),
                                 corpus_path=prepared.corpus)
    assert plain.stats["train"]["false_negatives_filtered"] == 0
    assert strict.stats["train"]["false_negatives_filtered"] > 0
    encoder = TextEncoder(resolve_model(str(tiny_bert)), ENCODE)
    for row in read_jsonl_objects(strict.train):
        q = encoder.encode_queries([row["query"]])[0]
        positive = min(encoder.encode_passages(row["pos"]) @ q)
        chosen = encoder.encode_passages(row["neg"]) @ q
        ranked_window = chosen[chosen > 0.5 * positive + 1e-4]
        # Anything above the threshold can only have come from the top-up.
        assert len(ranked_window) <= strict.stats["train"]["negatives_topped_up"]


def test_pool_vectors_are_saved_for_evaluation(tmp_path, tiny_bert, prepared):
    config = MineConfig(model=str(tiny_bert), negative_number=2, encode=ENCODE)
    result = mine_hard_negatives(prepared.train, tmp_path / "mined", config, corpus_path=prepared.corpus)
    texts = [e["text"] for e in read_jsonl_objects(prepared.corpus)]
    encoder = TextEncoder(resolve_model(str(tiny_bert)), ENCODE)
    cached = load_passage_embeddings(result.base_embeddings,
                                     CacheKey(encoder.fingerprint("passage"), texts_digest(texts)))
    assert cached is not None and cached.shape == (len(texts), 32)
    np.testing.assert_allclose(cached, encoder.encode_passages(texts), atol=1e-5)
    assert load_passage_embeddings(result.base_embeddings, CacheKey("other", texts_digest(texts))) is None


def test_range_notation_and_config_checks():
    assert parse_range("2-200") == (2, 200)
    with pytest.raises(ValueError):
        MineConfig(range_for_sampling=(5, 5))
    with pytest.raises(ValueError):
        MineConfig(max_negative_score_fraction=1.5)
