"""The evaluate step: metric maths (against ranx and by hand), the end-to-end step on a tiny
random BERT, reuse of cached base passage embeddings, and input errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import build_tiny_bert

from components import evaluate as evaluate_module
from components.embedding import EncodeConfig, TextEncoder
from components.embedding_cache import CacheKey, save_passage_embeddings, texts_digest
from components.evaluate import (
    EvaluateConfig,
    evaluate_retrieval,
    flat_metric_name,
    flat_metric_names,
    metrics_from_scores,
    normalize_rows,
    retrieval_metrics,
    separation_stats,
)
from components.jsonl_files import DataError
from components.model_profiles import resolve_model

ENCODE = EncodeConfig(batch_size=8, precision="fp32", device="cpu", show_progress=False)
CONFIG = EvaluateConfig(ks=(1, 5, 10), encode=ENCODE)

CORPUS = [
    "红色连衣裙夏季新款",
    "男士运动跑鞋透气",
    "无线蓝牙耳机降噪",
    "不锈钢保温杯大容量",
    "儿童益智积木玩具",
    "纯棉短袖T恤男款",
    "机械键盘青轴游戏",
    "护肤套装补水保湿",
    "家用电饭煲智能预约",
    "户外登山背包防水",
    "红色连衣裙夏季新款",  # a duplicate text at another id: both count as the positive
    "手机壳硅胶防摔",
]
TEST_ROWS = [
    {"query": "夏天穿的红裙子", "pos": ["红色连衣裙夏季新款"], "neg": ["纯棉短袖T恤男款", "不在语料里的负例"]},
    {"query": "跑步鞋", "pos": ["男士运动跑鞋透气", "户外登山背包防水"], "neg": ["儿童益智积木玩具"]},
    {"query": "降噪耳机", "pos": ["无线蓝牙耳机降噪"]},
    {"query": "保温杯", "pos": ["不锈钢保温杯大容量"], "neg": []},
    {"query": "游戏键盘", "pos": ["机械键盘青轴游戏"], "neg": ["手机壳硅胶防摔", "家用电饭煲智能预约"]},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("models")
    texts = CORPUS + [row["query"] for row in TEST_ROWS] + [t for row in TEST_ROWS for t in row.get("neg", [])]
    return (str(build_tiny_bert(root / "base", texts, pooling="mean", seed=1)),
            str(build_tiny_bert(root / "tuned", texts, pooling="mean", seed=2)))


@pytest.fixture()
def data_files(tmp_path) -> tuple[Path, Path]:
    corpus = _write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"p{i}", "text": t} for i, t in enumerate(CORPUS)])
    test = _write_jsonl(tmp_path / "test.jsonl", TEST_ROWS)
    return test, corpus


# --------------------------------------------------------------------------- pure metrics


def test_metrics_match_ranx_hit_rate_and_mrr():
    from ranx import Qrels, Run, evaluate

    rng = np.random.default_rng(0)
    n_queries, n_passages = 40, 30
    scores = rng.random((n_queries, n_passages))
    positives = [set(rng.choice(n_passages, size=rng.integers(1, 5), replace=False).tolist())
                 for _ in range(n_queries)]
    ours = metrics_from_scores(scores, positives, ks=(1, 5, 10))

    qrels = Qrels({f"q{q}": {f"d{d}": 1 for d in positives[q]} for q in range(n_queries)})
    run = Run({f"q{q}": {f"d{d}": float(scores[q, d]) for d in range(n_passages)} for q in range(n_queries)})
    # ranx's recall@k is the share of a query's positives retrieved; "any positive in the top k"
    # is its hit_rate@k.
    theirs = evaluate(qrels, run, [f"hit_rate@{k}" for k in (1, 5, 10)] + [f"mrr@{k}" for k in (1, 5, 10)])
    for k in (1, 5, 10):
        assert ours[f"recall@{k}"] == pytest.approx(float(theirs[f"hit_rate@{k}"]), abs=1e-9)
        assert ours[f"mrr@{k}"] == pytest.approx(float(theirs[f"mrr@{k}"]), abs=1e-9)
    # The scores were random enough for the metrics to be non-trivial.
    assert 0 < ours["recall@1"] < ours["recall@10"] < 1


def test_metrics_hand_computed():
    rankings = [
        [3, 1, 2, 0, 4],  # first positive (2) at rank 3
        [0, 4, 3, 2, 1],  # first positive (0) at rank 1
        [1, 2, 3, 4, 0],  # no positive in the top 5 (5 is beyond it)
        [4, 3, 2, 1, 0],  # positives 1 and 0: the first at rank 4
    ]
    positives = [{2}, {0, 4}, {5}, {0, 1}]
    metrics = retrieval_metrics(rankings, positives, ks=(5, 1, 3))
    assert list(metrics) == ["recall@1", "recall@3", "recall@5", "mrr@1", "mrr@3", "mrr@5"]
    assert metrics["recall@1"] == pytest.approx(1 / 4)
    assert metrics["recall@3"] == pytest.approx(2 / 4)
    assert metrics["recall@5"] == pytest.approx(3 / 4)
    assert metrics["mrr@1"] == pytest.approx(1 / 4)
    assert metrics["mrr@3"] == pytest.approx((1 / 3 + 1) / 4)
    assert metrics["mrr@5"] == pytest.approx((1 / 3 + 1 + 1 / 4) / 4)

    # A score matrix ranks highest first; ties go to the lower index.
    scores = np.array([[0.1, 0.9, 0.5], [0.7, 0.7, 0.2]])
    assert metrics_from_scores(scores, [{2}, {1}], ks=(1, 2)) == {
        "recall@1": 0.0, "recall@2": 1.0, "mrr@1": 0.0, "mrr@2": 0.5}

    with pytest.raises(ValueError):
        retrieval_metrics([[0]], [set()], ks=(1,))
    with pytest.raises(ValueError):
        retrieval_metrics([[0], [1]], [{0}], ks=(1,))


def test_separation_hand_computed():
    query = np.array([[1.0, 0.0], [0.0, 2.0]])
    positives = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])]
    negatives = [np.array([[0.0, 3.0], [1.0, 1.0]]), np.array([[0.0, -1.0]])]
    stats = separation_stats(query, positives, negatives)
    mean_positive = (1.0 + 0.5) / 2
    mean_negative = ((0.0 + math.sqrt(0.5)) / 2 + -1.0) / 2
    assert stats["mean_cos_positive"] == pytest.approx(mean_positive)
    assert stats["mean_cos_negative"] == pytest.approx(mean_negative)
    assert stats["separation"] == pytest.approx(mean_positive - mean_negative)
    assert separation_stats(np.zeros((0, 2)), [], [])["separation"] is None


def test_flat_metric_names():
    assert flat_metric_name("global", "recall", 1, "finetuned") == "global_recall_at_1_finetuned"
    assert flat_metric_name("test", "mrr", 10, "delta") == "test_mrr_at_10_delta"
    for bad in (("pool", "recall", 1, "base"), ("test", "ndcg", 1, "base"), ("test", "mrr", 0, "base"),
                ("test", "mrr", 1, "tuned")):
        with pytest.raises(ValueError):
            flat_metric_name(*bad)
    names = flat_metric_names((10, 1, 5))
    assert len(names) == len(set(names)) == 2 * 2 * 3 * 3 + 3
    assert names[-3:] == ["separation_base", "separation_finetuned", "separation_delta"]
    assert names == flat_metric_names((1, 5, 10))


def test_config_normalizes_ks():
    assert EvaluateConfig(ks=(10, 1, 5, 5)).ks == (1, 5, 10)
    for bad in ((), (0,), (1, -2)):
        with pytest.raises(ValueError):
            EvaluateConfig(ks=bad)


# --------------------------------------------------------------------------- the step


def test_evaluate_end_to_end_same_model(models, data_files, tmp_path):
    base, _ = models
    test, corpus = data_files
    result = evaluate_retrieval(test, corpus, base, base, tmp_path / "out", CONFIG)

    for path in result.paths:
        assert path.is_file() and path.parent == tmp_path / "out"
    on_disk = json.loads(result.metrics_path.read_text(encoding="utf-8"))
    assert on_disk == result.metrics
    assert on_disk["counts"] == {"queries": 5, "test_pool_passages": 6, "global_pool_passages": 12,
                                 "positives": 6, "rows_with_negatives": 3, "negatives": 5,
                                 "negatives_not_in_corpus": 1}
    assert on_disk["base_passage_embeddings_reused"] is False
    for role in ("base", "finetuned"):
        for pool in ("test_pool", "global_pool"):
            assert sorted(on_disk[role][pool]) == sorted(f"{m}@{k}" for m in ("recall", "mrr") for k in (1, 5, 10))
            assert all(0.0 <= v <= 1.0 for v in on_disk[role][pool].values())
        assert set(on_disk[role]["separation"]) == {"separation", "mean_cos_positive", "mean_cos_negative"}
    # The test pool has 6 passages: every query finds a positive within the top 10.
    assert on_disk["base"]["test_pool"]["recall@10"] == 1.0

    assert list(result.flat) == flat_metric_names((1, 5, 10))
    for name, value in result.flat.items():
        assert isinstance(value, float) and math.isfinite(value), name
        if name.endswith("_delta"):
            assert value == pytest.approx(0.0, abs=1e-6), name
    assert result.flat["global_recall_at_1_base"] == on_disk["base"]["global_pool"]["recall@1"]
    assert result.flat["separation_base"] == pytest.approx(on_disk["base"]["separation"]["separation"])

    report = result.report_md_path.read_text(encoding="utf-8")
    assert "### Test pool (6 passages)" in report and "### Global pool (12 passages)" in report
    assert "| recall@5 |" in report and "| mrr@10 |" in report and "Δ%" in report
    assert "| Model | test recall@1 |" in report and "| global mrr@10 | separation |" in report
    page = result.report_html_path.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2
    assert "<table>" in page and 'src="http' not in page and "<script" not in page  # self-contained


def test_evaluate_without_negatives_reports_no_separation(models, data_files, tmp_path):
    base, tuned = models
    test, corpus = data_files
    _write_jsonl(test, [{"query": row["query"], "pos": row["pos"]} for row in TEST_ROWS])
    result = evaluate_retrieval(test, corpus, base, tuned, tmp_path / "out", EvaluateConfig(ks=(2,), encode=ENCODE))
    assert list(result.flat) == flat_metric_names((2,))
    assert all(math.isnan(result.flat[f"separation_{role}"]) for role in ("base", "finetuned", "delta"))
    on_disk = json.loads(result.metrics_path.read_text(encoding="utf-8"))  # strict JSON: null, not NaN
    assert on_disk["base"]["separation"]["separation"] is None
    assert on_disk["counts"]["rows_with_negatives"] == 0
    assert "| separation | n/a | n/a | n/a | n/a |" in result.report_md_path.read_text(encoding="utf-8")


def test_evaluate_reuses_base_embedding_cache(models, data_files, tmp_path, monkeypatch):
    base, tuned = models
    test, corpus = data_files
    calls: list[tuple[str, int]] = []
    original = TextEncoder.encode_passages

    def spy(self, texts, description="encode passages"):
        calls.append((self.model_ref.path, len(texts)))
        return original(self, texts, description)

    monkeypatch.setattr(TextEncoder, "encode_passages", spy)

    # Without a cache: both models encode the corpus (12) and the one negative not in it.
    plain = evaluate_retrieval(test, corpus, base, tuned, tmp_path / "plain", CONFIG)
    assert sorted(calls) == sorted([(base, 12), (base, 1), (tuned, 12), (tuned, 1)])
    assert plain.metrics["base_passage_embeddings_reused"] is False

    # A cache under the right key but holding other (random) vectors: the base model must
    # use them (its metrics are those of these vectors) and not encode the corpus.
    encoder = TextEncoder(resolve_model(base), ENCODE)
    key = CacheKey(encoder.fingerprint("passage"), texts_digest(CORPUS))
    fake = np.random.default_rng(7).standard_normal((len(CORPUS), encoder.dimension)).astype(np.float32)
    save_passage_embeddings(tmp_path / "cache", fake, key)
    calls.clear()
    cached = evaluate_retrieval(test, corpus, base, tuned, tmp_path / "cached", CONFIG,
                                base_passage_embeddings=tmp_path / "cache")
    assert (base, 12) not in calls
    assert sorted(calls) == sorted([(base, 1), (tuned, 12), (tuned, 1)])
    assert cached.metrics["base_passage_embeddings_reused"] is True

    queries = normalize_rows(encoder.encode_queries([row["query"] for row in TEST_ROWS]))
    global_positives = [{i for i, text in enumerate(CORPUS) if text in row["pos"]} for row in TEST_ROWS]
    expected = metrics_from_scores(queries @ normalize_rows(fake).T, global_positives, CONFIG.ks)
    for name, value in expected.items():
        assert cached.metrics["base"]["global_pool"][name] == pytest.approx(value, abs=1e-9)
    assert cached.metrics["finetuned"] == plain.metrics["finetuned"]

    # The same vectors under another encoder's key are not reused: the base encodes again.
    save_passage_embeddings(tmp_path / "stale", fake, CacheKey("another-encoder", key.texts_sha256))
    calls.clear()
    stale = evaluate_retrieval(test, corpus, base, tuned, tmp_path / "stale_out", CONFIG,
                               base_passage_embeddings=tmp_path / "stale")
    assert (base, 12) in calls
    assert stale.metrics["base_passage_embeddings_reused"] is False
    assert stale.metrics["base"] == plain.metrics["base"]

    # Right key, wrong shape: not trusted, encoded instead.
    save_passage_embeddings(tmp_path / "short", fake[:5], key)
    calls.clear()
    short = evaluate_retrieval(test, corpus, base, tuned, tmp_path / "short_out", CONFIG,
                               base_passage_embeddings=tmp_path / "short")
    assert (base, 12) in calls
    assert short.metrics["base_passage_embeddings_reused"] is False


def test_positive_missing_from_corpus_names_file_line_and_field(models, data_files, tmp_path):
    base, _ = models
    test, corpus = data_files
    rows = TEST_ROWS[:2] + [{"query": "水杯", "pos": ["不锈钢保温杯大容量", "语料里没有的正例"]}]
    _write_jsonl(test, rows)
    with pytest.raises(DataError) as caught:
        evaluate_retrieval(test, corpus, base, base, tmp_path / "out", CONFIG)
    assert caught.value.line == 3 and caught.value.field == "pos"
    assert str(caught.value).startswith(f"{test}:3: pos: pos[1]")
    assert not (tmp_path / "out").exists()


def test_malformed_rows_are_located(models, data_files, tmp_path):
    base, _ = models
    test, corpus = data_files
    _write_jsonl(test, [TEST_ROWS[0], {"query": "跑步鞋", "pos": []}])
    with pytest.raises(DataError, match=r":2: pos: must be a non-empty list"):
        evaluate_retrieval(test, corpus, base, base, tmp_path / "out", CONFIG)
    _write_jsonl(test, [{"query": "跑步鞋", "pos": ["男士运动跑鞋透气"], "neg": "x"}])
    with pytest.raises(DataError, match=r":1: neg: must be a list of strings"):
        evaluate_retrieval(test, corpus, base, base, tmp_path / "out", CONFIG)
