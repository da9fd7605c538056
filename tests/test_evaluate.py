"""The evaluate step: metric maths (against ranx and by hand), significance (against ranx's
randomization test, scipy's bootstrap and exact enumeration), BM25 (by hand and against the
public data's reference figures) and rank fusion, the end-to-end step on a tiny random BERT,
reuse of cached base passage embeddings, all-or-nothing output, and input errors."""

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
    metrics_from_scores,
    normalize_rows,
    retrieval_metrics,
    separation_stats,
)
from components.jsonl_files import DataError
from components.lexical_retrieval import BM25Config, BM25Index, choose_tokenizer, reciprocal_rank_fusion, tokenize
from components.metric_names import flat_metric_name, flat_metric_names
from components.model_profiles import resolve_model
from components.significance import bootstrap_interval, compare_paired, randomization_test
from tests.conftest import SHARED_DATA

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
    # Per pool, metric and k: 3 roles, 2 lexical systems, p-value, interval and verdict.
    assert len(names) == len(set(names)) == 2 * 2 * 3 * (3 + 2 + 4) + 3 + 1
    assert names[-4:] == ["separation_base", "separation_finetuned", "separation_delta", "significance_level"]
    assert names == flat_metric_names((1, 5, 10))
    # The names another step (the quality gate) reads: a contract, spelled out.
    for pool in ("test", "global"):
        for metric in ("recall", "mrr"):
            for k in (1, 5, 10):
                for suffix in ("base", "finetuned", "delta", "bm25", "hybrid", "p_value", "delta_ci_low",
                               "delta_ci_high", "significant"):
                    assert f"{pool}_{metric}_at_{k}_{suffix}" in names
    without_lexical = flat_metric_names((1, 5, 10), lexical_baselines=False)
    assert set(names) - set(without_lexical) == {n for n in names if n.endswith(("_bm25", "_hybrid"))}


def test_config_normalizes_ks():
    assert EvaluateConfig(ks=(10, 1, 5, 5)).ks == (1, 5, 10)
    for bad in ((), (0,), (1, -2)):
        with pytest.raises(ValueError):
            EvaluateConfig(ks=bad)
    for bad in ({"significance_level": 0}, {"significance_level": 1.5}, {"confidence": 1}, {"permutations": 0},
                {"bootstrap_samples": 0}, {"fusion_depth": 5}, {"bm25_tokenizer": "jieba"}, {"bm25_b": 2}):
        with pytest.raises(ValueError):
            EvaluateConfig(**bad)


# --------------------------------------------------------------------------- significance


def test_randomization_test_is_exact_when_few_queries_differ():
    # Three queries differ, each by +1: of the 8 sign assignments only all-plus and
    # all-minus reach |sum| 3, so p = 2/8; the agreeing queries change nothing.
    control = np.array([0, 0, 0, 1, 1, 0, 1.0])
    treatment = np.array([1, 1, 1, 1, 1, 0, 1.0])
    assert randomization_test(control, treatment) == (0.25, True)
    assert randomization_test(treatment, control) == (0.25, True)  # two-sided
    # Differences 1, 1, -1: |sum| 1 is reached by every assignment.
    assert randomization_test(np.zeros(3), np.array([1.0, 1.0, -1.0])) == (1.0, True)
    assert randomization_test(np.ones(4), np.ones(4)) == (1.0, True)
    # Differences 0.5, 1, 1: |sum| >= 2.5 for (+,+,+), (-,-,-): 2/8; and (-,+,+) gives 1.5.
    assert randomization_test(np.zeros(3), np.array([0.5, 1.0, 1.0]))[0] == pytest.approx(0.25)


def test_randomization_test_resolves_p_below_one_percent():
    # 40 queries improve and none gets worse: no random assignment matches it, so p is the
    # smallest the budget can state, 1 / (1 + permutations), well below 0.01.
    control, treatment = np.zeros(200), np.r_[np.ones(40), np.zeros(160)]
    p_value, exact = randomization_test(control, treatment, permutations=10_000, seed=1)
    assert not exact and p_value == pytest.approx(1 / 10_001)
    assert randomization_test(control, treatment, seed=1) == randomization_test(control, treatment, seed=1)


def _runs_with_gain(rng: np.random.Generator, n: int, flips: float, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """First-positive ranks (1..20) of a control and a treatment that is better on average."""
    control = rng.integers(1, 21, size=n).astype(float)
    treatment = control.copy()
    changed = rng.random(n) < flips
    treatment[changed] = np.clip(control[changed] + rng.integers(-6, 5, size=changed.sum()), 1, 20)
    better = rng.random(n) < gain
    treatment[better] = 1
    return control, treatment


def test_randomization_test_agrees_with_ranx_fisher():
    numba = pytest.importorskip("numba")
    from ranx import Qrels, Run, compare

    from components.evaluate import per_query_values

    threads = numba.get_num_threads()
    # ranx seeds numba's generator on one thread only: one thread makes its draws repeatable.
    numba.set_num_threads(1)
    try:
        rng = np.random.default_rng(3)
        for n, flips, gain in ((300, 0.3, 0.0), (300, 0.3, 0.04), (300, 0.3, 0.15)):
            control, treatment = _runs_with_gain(rng, n, flips, gain)

            def run(ranks: np.ndarray, name: str) -> Run:
                # The positive d0 sits at the given rank among 20 passages.
                docs = {}
                for q, rank in enumerate(ranks):
                    others = iter(range(1, 20))
                    docs[f"q{q}"] = {("d0" if r == rank else f"d{next(others)}"): float(30 - r) for r in range(1, 21)}
                return Run(docs, name=name)

            qrels = Qrels({f"q{q}": {"d0": 1} for q in range(n)})
            report = compare(qrels, [run(control, "control"), run(treatment, "treatment")],
                             metrics=["hit_rate@1", "hit_rate@5", "mrr@10"], stat_test="fisher",
                             n_permutations=10_000, random_seed=42)
            theirs = report.comparisons[frozenset(["control", "treatment"])]
            for ranx_name, metric, k in (("hit_rate@1", "recall", 1), ("hit_rate@5", "recall", 5),
                                         ("mrr@10", "mrr", 10)):
                ours, _ = randomization_test(per_query_values(control, metric, k),
                                             per_query_values(treatment, metric, k), permutations=10_000)
                p = theirs[ranx_name]["p_value"]
                # Two Monte Carlo estimates of one p-value: within 5 standard errors.
                assert abs(ours - p) <= 5 * math.sqrt(max(p * (1 - p), 1e-4) * 2 / 10_000) + 2e-4, (n, gain, ranx_name)
        assert p < 0.01 and ours < 0.01  # the strong gain was found by both
    finally:
        numba.set_num_threads(threads)


def test_bootstrap_interval_agrees_with_scipy():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(5)
    control, treatment = _runs_with_gain(rng, 400, 0.4, 0.05)
    from components.evaluate import per_query_values

    a, b = per_query_values(control, "mrr", 10), per_query_values(treatment, "mrr", 10)
    low, high = bootstrap_interval(a, b, samples=10_000, seed=0)
    theirs = bootstrap(((b - a),), np.mean, n_resamples=10_000, method="percentile", confidence_level=0.95,
                       random_state=np.random.default_rng(0)).confidence_interval
    width = high - low
    assert low < float(np.mean(b - a)) < high
    assert abs(low - theirs.low) < 0.05 * width and abs(high - theirs.high) < 0.05 * width
    comparison = compare_paired(a, b, permutations=2_000, bootstrap_samples=2_000)
    assert comparison.delta == pytest.approx(float(np.mean(b - a)))
    assert comparison.ci_low < comparison.delta < comparison.ci_high
    with pytest.raises(ValueError):
        compare_paired(a, b[:-1])


# --------------------------------------------------------------------------- lexical


def test_tokenizers():
    assert tokenize("手机壳 iPhone15，防摔", "cjk-bigram") == ["手", "机", "壳", "手机", "机壳", "i", "p", "h", "o", "n",
                                                            "e", "1", "5", "ip", "ph", "ho", "on", "ne", "e1", "15",
                                                            "防", "摔", "防摔"]
    assert tokenize("Waterproof, USB-C cable_2m", "words") == ["waterproof", "usb", "c", "cable", "2m"]
    assert choose_tokenizer(["红色连衣裙 new", "男士跑鞋"]) == "cjk-bigram"
    assert choose_tokenizer(["Red dress, summer", "running shoes 跑鞋"]) == "words"


def test_bm25_scores_by_hand():
    passages = ["a b a", "b c", "c c c d"]
    index = BM25Index(passages, BM25Config(k1=1.2, b=0.75, tokenizer="words"))
    lengths, average = [3, 2, 4], 3.0

    def expected(query: list[str], doc: int) -> float:
        total = 0.0
        for term in query:
            frequency = passages[doc].split().count(term)
            df = sum(term in p.split() for p in passages)
            if frequency:
                idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
                total += idf * frequency / (frequency + 1.2 * (1 - 0.75 + 0.75 * lengths[doc] / average))
        return total

    for query in (["a"], ["b", "c"], ["c", "c"], ["d", "a", "zzz"]):
        scores = index.scores(" ".join(query))
        for doc in range(3):
            assert scores[doc] == pytest.approx(expected(query, doc), rel=1e-5), (query, doc)
    ranked = index.search(["b c", "zzz", "a"], depth=3)
    assert ranked[0].tolist() == [1, 2, 0]   # b c: doc 1 has both terms
    assert ranked[1].tolist() == [-1, -1, -1]  # no shared term: nothing retrieved
    assert ranked[2].tolist() == [0, -1, -1]


def test_reciprocal_rank_fusion_by_hand():
    dense = np.array([[3, 1, 2], [0, 1, -1]])
    lexical = np.array([[1, 4, -1], [5, 6, 7]])
    fused = reciprocal_rank_fusion([dense, lexical], depth=4, k=60)
    # Query 0: 1 scores 1/62 + 1/61; 3 scores 1/61; 4 scores 1/62; 2 scores 1/63.
    assert fused[0].tolist() == [1, 3, 4, 2]
    # Query 1: 0 and 5 tie at 1/61 (lower index first), then 1 and 6 at 1/62.
    assert fused[1].tolist() == [0, 5, 1, 6]
    assert reciprocal_rank_fusion([dense[:, :1]], depth=2).tolist() == [[3, -1], [0, -1]]


@pytest.mark.parametrize("name, mrr_at_10, hit_at_10", [("amazon_pqa_en", 0.182, 0.274),
                                                        ("cmrc_drcd_zh", 0.771, 0.887)])
def test_bm25_reproduces_the_public_data_reference(name, mrr_at_10, hit_at_10):
    """../shared/data/README.md: BM25 (k1 0.9, b 0.4), global pool, test split."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.fail(f"public data missing: {folder} (see ../shared/data/README.md)")
    corpus = [json.loads(line)["text"] for line in (folder / "corpus.jsonl").open(encoding="utf-8")]
    test = [json.loads(line) for line in (folder / "test.jsonl").open(encoding="utf-8")]
    where: dict[str, set[int]] = {}
    for index, text in enumerate(corpus):
        where.setdefault(text, set()).add(index)
    ranked = BM25Index(corpus).search([row["query"] for row in test], 10)
    metrics = retrieval_metrics(ranked, [set().union(*(where[p] for p in row["pos"])) for row in test], (10,))
    # The README gives three decimals.
    assert metrics["mrr@10"] == pytest.approx(mrr_at_10, abs=1e-3)
    assert metrics["recall@10"] == pytest.approx(hit_at_10, abs=1e-3)


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
        if name.endswith(("_delta", "_delta_ci_low", "_delta_ci_high", "_significant")):
            assert value == pytest.approx(0.0, abs=1e-6), name
        if name.endswith("_p_value"):
            assert value == 1.0, name  # the same model: no query differs
    assert result.flat["significance_level"] == 0.05
    assert result.flat["global_recall_at_1_base"] == on_disk["base"]["global_pool"]["recall@1"]
    assert result.flat["separation_base"] == pytest.approx(on_disk["base"]["separation"]["separation"])
    assert on_disk["settings"]["lexical"]["bm25_tokenizer"] == "cjk-bigram"
    assert on_disk["settings"]["significance"]["level"] == 0.05

    # BM25 and the hybrid, recomputed here from the library calls.
    index = BM25Index(CORPUS)
    bm25_ranking = index.search([row["query"] for row in TEST_ROWS], 100)
    global_positives = [{i for i, text in enumerate(CORPUS) if text in row["pos"]} for row in TEST_ROWS]
    assert on_disk["bm25"]["global_pool"] == retrieval_metrics(bm25_ranking, global_positives, (1, 5, 10))
    assert result.flat["global_mrr_at_10_bm25"] == on_disk["bm25"]["global_pool"]["mrr@10"]
    assert result.flat["test_recall_at_1_hybrid"] == on_disk["hybrid"]["test_pool"]["recall@1"]
    ranks = on_disk["per_query_first_rank"]["global_pool"]
    assert sorted(ranks) == ["base", "bm25", "finetuned", "hybrid"] and all(len(r) == 5 for r in ranks.values())
    assert ranks["base"] == ranks["finetuned"]
    assert np.mean([r == 1 for r in ranks["bm25"]]) == on_disk["bm25"]["global_pool"]["recall@1"]

    report = result.report_md_path.read_text(encoding="utf-8")
    assert "### Test pool (6 passages)" in report and "### Global pool (12 passages)" in report
    assert "| recall@5 |" in report and "| mrr@10 |" in report and "Δ%" in report
    assert "| Model | test recall@1 |" in report and "| global mrr@10 | separation |" in report
    assert "| 95% CI of Δ | p | Significance | BM25 | Hybrid |" in report
    assert report.count("not significant (p ≥ 0.05)") == 2 * 2 * 3 + 1  # every row, and the headline
    assert "| BM25 |" in report and "| Hybrid (BM25 + fine-tuned) |" in report
    assert "Level 0.05" in report and "character unigrams and bigrams" in report
    page = result.report_html_path.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2
    assert "<table>" in page and 'src="http' not in page and "<script" not in page  # self-contained
    assert "not significant" in page


def test_evaluate_writes_its_folder_whole_or_not_at_all(models, data_files, tmp_path, monkeypatch):
    base, _ = models
    test, corpus = data_files
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run", encoding="utf-8")
    result = evaluate_retrieval(test, corpus, base, base, out, EvaluateConfig(ks=(1,), fusion_depth=5,
                                                                              encode=ENCODE))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.html", "report.md"]
    assert not list(tmp_path.glob(".out.*")), "no temporary sibling is left behind"
    before = result.metrics_path.read_bytes()

    # A run that fails half-way (metrics written, the HTML report not) leaves the earlier
    # folder exactly as it was.
    def broken(metrics):
        raise RuntimeError("disk full")

    monkeypatch.setattr(evaluate_module, "render_html_report", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        evaluate_retrieval(test, corpus, base, base, out, CONFIG)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.html", "report.md"]
    assert result.metrics_path.read_bytes() == before
    assert not list(tmp_path.glob(".out.*"))


def test_profile_overrides_reach_both_models(models):
    from components.model_profiles import ProfileOverrides

    base, tuned = models
    config = EvaluateConfig(encode=ENCODE, profile=ProfileOverrides(pooling="cls", query_instruction="问："))
    for model in (base, tuned):
        encoder = evaluate_module._make_encoder(model, config)
        assert encoder.profile.pooling == "cls" and encoder.profile.format_query("鞋") == "问：鞋"
    assert evaluate_module._make_encoder(base, CONFIG).profile.pooling == "mean"
    with pytest.raises(ValueError, match="pooling"):
        EvaluateConfig(profile=ProfileOverrides(pooling="max"))


def test_evaluate_without_negatives_reports_no_separation(models, data_files, tmp_path):
    base, tuned = models
    test, corpus = data_files
    _write_jsonl(test, [{"query": row["query"], "pos": row["pos"]} for row in TEST_ROWS])
    result = evaluate_retrieval(test, corpus, base, tuned, tmp_path / "out",
                                EvaluateConfig(ks=(2,), lexical_baselines=False, encode=ENCODE))
    assert list(result.flat) == flat_metric_names((2,), lexical_baselines=False)
    assert "bm25" not in result.metrics and result.metrics["settings"]["lexical"] is None
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
