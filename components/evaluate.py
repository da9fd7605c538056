"""Evaluate step: a base and a fine-tuned embedding model, side by side, on the test split.

Each model is scored in two pools:

* the **test pool**: the unique positive passages of the test split's own rows;
* the **global pool**: every text of the corpus file (the passages a deployed search sees).

Per model and pool: recall@k (a hit when *any* positive is in the top k) and MRR@k (the
reciprocal rank of the first positive, 0 when none is in the top k), by exact inner-product
search over L2-normalized vectors. Per model also the *separation*: the mean cosine of a
query to its positives minus the mean cosine to its mined hard negatives, over the rows
that have negatives.

Beside the two models, in the same pools (``EvaluateConfig.lexical_baselines``): **BM25**
(does the dense model beat the words alone?) and a **hybrid**, the reciprocal-rank fusion of
BM25 with the fine-tuned model (what do the two give together?); see
:mod:`components.lexical_retrieval`.

Every fine-tuned-minus-base difference gets a paired test over the test queries (see
:mod:`components.significance`): a randomization-test p-value and a bootstrap interval, so
the report tells a real gain from luck.

Every positive text must appear byte for byte in the corpus, so both pools share one set
of passage vectors per model: the corpus is encoded once (or, for the base model, read
from the embedding cache that mining saved) and the test pool is a subset of its rows.

Writes, as one folder that appears whole or not at all, ``metrics.json`` (nested, with each
query's first-positive rank per system for run-to-run comparisons), ``report.md`` and
``report.html`` (rendered by :mod:`components.evaluation_report`). :func:`flat_metric_name`
and :func:`flat_metric_names` give the stable flat names the pipeline logs as KFP metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from components.config_values import check_config
from components.embedding import EncodeConfig, TextEncoder
from components.embedding_cache import CacheKey, load_passage_embeddings, texts_digest
from components.evaluation_report import render_html_report, render_markdown_report
from components.jsonl_files import DataError, atomic_path, read_jsonl, write_json, write_text
from components.lexical_retrieval import TOKENIZERS, BM25Config, BM25Index, Tokenizer, reciprocal_rank_fusion
from components.metric_names import (
    LEXICAL_SYSTEMS,
    METRICS,
    MODEL_ROLES,
    POOL_KEYS,
    POOLS,
    SIGNIFICANCE_LEVEL_METRIC,
    flat_metric_name,
    metric_key,
    separation_metric_name,
)
from components.model_profiles import ProfileOverrides, resolve_model
from components.significance import compare_paired

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.json"
REPORT_MD_FILENAME = "report.md"
REPORT_HTML_FILENAME = "report.html"

RANDOMIZATION_TEST = "paired randomization test (two-sided sign flips over queries)"


@dataclass(frozen=True)
class EvaluateConfig:
    """How to evaluate.

    Attributes:
        ks: cut-offs for recall@k and MRR@k (deduplicated and sorted).
        query_max_len: overrides the profile's query length (both models) when given.
        passage_max_len: overrides the profile's passage length (both models) when given.
            An override changes the encoder fingerprint, so a base embedding cache made
            under other lengths is (rightly) not reused.
        significance_level: a fine-tuned-minus-base difference with a p-value below this is
            reported significant, else "not significant".
        permutations: random sign assignments of the randomization test (the test is exact
            when fewer queries differ than this can enumerate); 10,000 resolves p down to 1e-4.
        bootstrap_samples: resamples of the bootstrap interval of each difference.
        confidence: coverage of that interval.
        seed: seeds the randomization test and the bootstrap.
        lexical_baselines: also rank both pools with BM25 and with the fusion of BM25 and
            the fine-tuned model.
        bm25_k1: BM25 term-frequency saturation.
        bm25_b: BM25 length normalization.
        bm25_tokenizer: ``auto`` (character unigrams and bigrams for a mostly Chinese pool,
            else lower-cased words), ``cjk-bigram`` or ``words``.
        fusion_k: the reciprocal-rank-fusion constant: a passage at rank r adds 1 / (k + r).
        fusion_depth: how many passages of each ranking the fusion reads.
        encode: batch size, precision, device.
        profile: pooling / normalize / instruction overrides, applied to both models (the
            fine-tuned model's saved profile already records what it was trained with).
    """

    ks: tuple[int, ...] = (1, 5, 10)
    query_max_len: int | None = None
    passage_max_len: int | None = None
    significance_level: float = 0.05
    permutations: int = 10_000
    bootstrap_samples: int = 10_000
    confidence: float = 0.95
    seed: int = 42
    lexical_baselines: bool = True
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    bm25_tokenizer: Tokenizer = "auto"
    fusion_k: int = 60
    fusion_depth: int = 100
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    profile: ProfileOverrides = field(default_factory=ProfileOverrides, metadata={"flag_prefix": ""})

    def __post_init__(self) -> None:
        ks = tuple(self.ks)
        if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty sequence of positive integers, got {self.ks!r}")
        object.__setattr__(self, "ks", tuple(sorted({int(k) for k in ks})))
        check_config(self)
        for name in ("query_max_len", "passage_max_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("significance_level", "confidence"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        for name in ("permutations", "bootstrap_samples", "fusion_k", "fusion_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.bm25_k1 < 0:
            raise ValueError(f"bm25_k1 must be at least 0, got {self.bm25_k1}")
        if not 0 <= self.bm25_b <= 1:
            raise ValueError(f"bm25_b must be between 0 and 1, got {self.bm25_b}")
        if self.bm25_tokenizer not in TOKENIZERS:
            raise ValueError(f"bm25_tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.bm25_tokenizer!r}")
        if self.fusion_depth < self.ks[-1]:
            raise ValueError(f"fusion_depth ({self.fusion_depth}) must be at least the largest k ({self.ks[-1]})")

    @property
    def bm25(self) -> BM25Config:
        return BM25Config(k1=self.bm25_k1, b=self.bm25_b, tokenizer=self.bm25_tokenizer)


@dataclass(frozen=True)
class EvaluationResult:
    """What the evaluate step produced.

    Attributes:
        metrics: the nested metrics, as written to ``metrics.json``.
        flat: every :func:`flat_metric_names` name to its value (NaN for separation when no
            test row has negatives); the same names on every run with the same ``ks`` and
            ``lexical_baselines``.
        metrics_path, report_md_path, report_html_path: the files written.
    """

    metrics: dict
    flat: dict[str, float]
    metrics_path: Path
    report_md_path: Path
    report_html_path: Path

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return (self.metrics_path, self.report_md_path, self.report_html_path)


# --------------------------------------------------------------------------- pure metrics


def first_positive_ranks(rankings: Sequence[Sequence[int]] | np.ndarray,
                         positives: Sequence[Sequence[int] | set[int] | frozenset[int]],
                         depth: int) -> np.ndarray:
    """Per query, the 1-based rank of its first positive within the top ``depth`` (inf if none).

    Args:
        rankings: per query, pool indices best first. Negative indices (padding) are ignored.
        positives: per query, the indices of its relevant passages (at least one each).
        depth: how far down each ranking to look.

    Raises:
        ValueError: on mismatched lengths, no queries or a query without positives.
    """
    if len(rankings) != len(positives):
        raise ValueError(f"{len(rankings)} rankings but {len(positives)} positive sets")
    if len(rankings) == 0:
        raise ValueError("no queries to score")
    first_ranks = np.full(len(rankings), np.inf)
    for query, (ranking, relevant) in enumerate(zip(rankings, positives)):
        relevant = set(int(i) for i in relevant)
        if not relevant:
            raise ValueError(f"query {query} has no positives")
        for rank, index in enumerate(list(ranking)[:depth], start=1):
            if int(index) >= 0 and int(index) in relevant:
                first_ranks[query] = rank
                break
    return first_ranks


def per_query_values(first_ranks: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Each query's recall@k (0 or 1) or reciprocal rank within k (0 beyond it)."""
    first_ranks = np.asarray(first_ranks, dtype=np.float64)
    if metric == "recall":
        return (first_ranks <= k).astype(np.float64)
    if metric == "mrr":
        return np.where(first_ranks <= k, 1.0 / first_ranks, 0.0)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def metrics_from_first_ranks(first_ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``{"recall@1": ..., ..., "mrr@1": ..., ...}`` from first-positive ranks."""
    ks = sorted({int(k) for k in ks})
    return {metric_key(metric, k): float(np.mean(per_query_values(first_ranks, metric, k)))
            for metric in METRICS for k in ks}


def retrieval_metrics(rankings: Sequence[Sequence[int]] | np.ndarray,
                      positives: Sequence[Sequence[int] | set[int] | frozenset[int]],
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k (any positive in the top k) and MRR@k, averaged over queries.

    Args:
        rankings: per query, pool indices best first; at least ``max(ks)`` long unless the
            pool is smaller (what is missing counts as a miss). Negative indices (faiss's
            padding) are ignored.
        positives: per query, the indices of its relevant passages (at least one each).
        ks: cut-offs.

    Returns:
        ``{"recall@1": ..., ..., "mrr@1": ..., ...}``, each in [0, 1].

    Raises:
        ValueError: on mismatched lengths, no queries, a query without positives or a bad k.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return metrics_from_first_ranks(first_positive_ranks(rankings, positives, ks[-1]), ks)


def rank_by_scores(scores: np.ndarray, depth: int) -> np.ndarray:
    """The top ``depth`` column indices of each row, highest score first (ties: lower index)."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D matrix, got shape {scores.shape}")
    return np.argsort(-scores, axis=1, kind="stable")[:, :depth]


def metrics_from_scores(scores: np.ndarray, positives: Sequence[Sequence[int] | set[int]],
                        ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """:func:`retrieval_metrics` of a (queries x passages) score matrix."""
    return retrieval_metrics(rank_by_scores(scores, max(int(k) for k in ks)), positives, ks)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalized float32 copy (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def search_top_k(queries: np.ndarray, passages: np.ndarray, depth: int) -> np.ndarray:
    """Exact inner-product top-``depth`` passage indices per query (faiss IndexFlatIP)."""
    import faiss

    passages = np.ascontiguousarray(passages, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    index = faiss.IndexFlatIP(passages.shape[1])
    index.add(passages)
    _, labels = index.search(queries, min(depth, passages.shape[0]))
    return labels


def separation_stats(query_vectors: np.ndarray, positive_vectors: Sequence[np.ndarray],
                     negative_vectors: Sequence[np.ndarray]) -> dict[str, float | None]:
    """Mean cos(query, positive) minus mean cos(query, negative).

    Each row contributes the mean over its own positives and over its own negatives, and the
    row means are averaged (every row weighs the same, whatever its number of negatives).
    All vectors are normalized here. Rows without negatives must be left out by the caller.

    Returns:
        ``{"separation", "mean_cos_positive", "mean_cos_negative"}``; None each when no rows.
    """
    if len(query_vectors) == 0:
        return {"separation": None, "mean_cos_positive": None, "mean_cos_negative": None}
    queries = normalize_rows(query_vectors)
    positive_means = [float(np.mean(normalize_rows(p) @ q)) for q, p in zip(queries, positive_vectors)]
    negative_means = [float(np.mean(normalize_rows(n) @ q)) for q, n in zip(queries, negative_vectors)]
    mean_positive = float(np.mean(positive_means))
    mean_negative = float(np.mean(negative_means))
    return {"separation": mean_positive - mean_negative, "mean_cos_positive": mean_positive,
            "mean_cos_negative": mean_negative}


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _TestRow:
    line: int
    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...]


@dataclass(frozen=True)
class _EvaluationData:
    """The test rows resolved against the corpus."""

    rows: list[_TestRow]
    corpus_texts: list[str]
    # Per row: every corpus index whose text is one of the row's positives (global pool).
    global_positives: list[frozenset[int]]
    # Corpus index of each test-pool passage (first occurrence of each unique positive).
    test_pool_corpus_indices: np.ndarray
    # Per row: indices into the test pool.
    test_positives: list[frozenset[int]]
    # Indices of rows with at least one negative.
    rows_with_negatives: list[int]
    # Negatives not in the corpus, unique, in first-seen order (they must be encoded).
    extra_negatives: list[str]

    def positives(self, pool: str) -> list[frozenset[int]]:
        """Per row, its positives' indices in ``test_pool`` or ``global_pool``."""
        return self.test_positives if pool == "test_pool" else self.global_positives


def _string_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _read_test_rows(path: Path) -> list[_TestRow]:
    rows = []
    for line, value in read_jsonl(path):
        if not isinstance(value, dict):
            raise DataError(path, line, "", f"expected a JSON object, got {type(value).__name__}")
        query = value.get("query")
        if not isinstance(query, str) or not query.strip():
            raise DataError(path, line, "query", "must be a non-empty string")
        pos = value.get("pos")
        if not _string_list(pos) or not pos:
            raise DataError(path, line, "pos", "must be a non-empty list of strings")
        neg = value.get("neg")
        if neg is None:
            neg = []
        if not _string_list(neg):
            raise DataError(path, line, "neg", "must be a list of strings")
        rows.append(_TestRow(line=line, query=query, pos=tuple(pos), neg=tuple(neg)))
    if not rows:
        raise DataError(path, 0, "", "no test rows")
    return rows


def _read_corpus_texts(path: Path) -> list[str]:
    texts = []
    for line, value in read_jsonl(path):
        if not isinstance(value, dict):
            raise DataError(path, line, "", f"expected a JSON object, got {type(value).__name__}")
        text = value.get("text")
        if not isinstance(text, str):
            raise DataError(path, line, "text", "must be a string")
        texts.append(text)
    if not texts:
        raise DataError(path, 0, "", "empty corpus")
    return texts


def _preview(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _load_data(test_path: Path, corpus_path: Path) -> _EvaluationData:
    rows = _read_test_rows(test_path)
    corpus_texts = _read_corpus_texts(corpus_path)
    corpus_indices: dict[str, list[int]] = {}
    for index, text in enumerate(corpus_texts):
        corpus_indices.setdefault(text, []).append(index)

    test_pool_index: dict[str, int] = {}
    test_pool_corpus: list[int] = []
    global_positives, test_positives = [], []
    for row in rows:
        global_set: set[int] = set()
        test_set: set[int] = set()
        for number, text in enumerate(row.pos):
            where = corpus_indices.get(text)
            if where is None:
                raise DataError(test_path, row.line, "pos",
                                f"pos[{number}] is not a text of the corpus {corpus_path} "
                                f"(texts must match byte for byte): {_preview(text)!r}")
            global_set.update(where)
            if text not in test_pool_index:
                test_pool_index[text] = len(test_pool_corpus)
                test_pool_corpus.append(where[0])
            test_set.add(test_pool_index[text])
        global_positives.append(frozenset(global_set))
        test_positives.append(frozenset(test_set))

    extra: dict[str, None] = {}
    for row in rows:
        for text in row.neg:
            if text not in corpus_indices:
                extra.setdefault(text)
    return _EvaluationData(
        rows=rows,
        corpus_texts=corpus_texts,
        global_positives=global_positives,
        test_pool_corpus_indices=np.asarray(test_pool_corpus, dtype=np.int64),
        test_positives=test_positives,
        rows_with_negatives=[i for i, row in enumerate(rows) if row.neg],
        extra_negatives=list(extra),
    )


# --------------------------------------------------------------------------- one model


def _make_encoder(model_name: str, config: EvaluateConfig) -> TextEncoder:
    resolved = resolve_model(model_name, config.profile)
    profile = resolved.profile.with_max_lengths(config.query_max_len, config.passage_max_len)
    return TextEncoder(dataclasses.replace(resolved, profile=profile), config.encode)


def _corpus_vectors(encoder: TextEncoder, data: _EvaluationData, role: str,
                    cache_folder: str | os.PathLike | None) -> tuple[np.ndarray, bool]:
    if cache_folder:
        key = CacheKey(encoder.fingerprint("passage"), texts_digest(data.corpus_texts))
        cached = load_passage_embeddings(cache_folder, key)
        if cached is not None:
            expected = (len(data.corpus_texts), encoder.dimension)
            if cached.ndim == 2 and tuple(cached.shape) == expected:
                logger.info("%s: %d corpus passage embeddings reused from %s, not re-encoded",
                            role, cached.shape[0], cache_folder)
                return cached, True
            logger.warning("%s: embedding cache in %s has shape %s, expected %s: encoding instead",
                           role, cache_folder, cached.shape, expected)
        else:
            logger.info("%s: no matching embedding cache in %s: encoding the corpus", role, cache_folder)
    vectors = encoder.encode_passages(data.corpus_texts, description=f"{role}: encode corpus")
    return vectors, False


@dataclass
class _ModelRun:
    """One model's figures, and its rankings of both pools (for significance and fusion)."""

    metrics: dict
    rankings: dict[str, np.ndarray]
    passage_embeddings_reused: bool


def _evaluate_model(model_name: str, role: str, data: _EvaluationData, config: EvaluateConfig,
                    cache_folder: str | os.PathLike | None, depth: int) -> _ModelRun:
    logger.info("%s model: %s", role, model_name)
    encoder = _make_encoder(model_name, config)
    try:
        corpus_vectors, reused = _corpus_vectors(encoder, data, role, cache_folder)
        corpus_vectors = normalize_rows(corpus_vectors)
        query_vectors = normalize_rows(encoder.encode_queries([row.query for row in data.rows],
                                                              description=f"{role}: encode queries"))
        extra_vectors = (normalize_rows(encoder.encode_passages(data.extra_negatives,
                                                                description=f"{role}: encode negatives"))
                         if data.extra_negatives else np.zeros((0, corpus_vectors.shape[1]), np.float32))
    finally:
        del encoder  # free the model before the next one loads

    rankings = {"test_pool": search_top_k(query_vectors, corpus_vectors[data.test_pool_corpus_indices], depth),
                "global_pool": search_top_k(query_vectors, corpus_vectors, depth)}
    metrics = {pool: retrieval_metrics(rankings[pool], data.positives(pool), config.ks) for pool in rankings}

    text_index = {}
    for index, text in enumerate(data.corpus_texts):
        text_index.setdefault(text, index)
    extra_index = {text: i for i, text in enumerate(data.extra_negatives)}

    def passage_vector(text: str) -> np.ndarray:
        if text in text_index:
            return corpus_vectors[text_index[text]]
        return extra_vectors[extra_index[text]]

    selected = data.rows_with_negatives
    metrics["separation"] = separation_stats(
        query_vectors[selected],
        [np.stack([passage_vector(t) for t in data.rows[i].pos]) for i in selected],
        [np.stack([passage_vector(t) for t in data.rows[i].neg]) for i in selected],
    )
    logger.info("%s: test pool %s; global pool %s; separation %s", role, _brief(metrics["test_pool"]),
                _brief(metrics["global_pool"]), metrics["separation"]["separation"])
    return _ModelRun(metrics=metrics, rankings=rankings, passage_embeddings_reused=reused)


def _lexical_rankings(data: _EvaluationData, config: EvaluateConfig, finetuned: _ModelRun,
                      ) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """BM25's and the hybrid's rankings of both pools, and the tokenizer BM25 used."""
    queries = [row.query for row in data.rows]
    pools = {"test_pool": [data.corpus_texts[i] for i in data.test_pool_corpus_indices],
             "global_pool": data.corpus_texts}
    rankings: dict[str, dict[str, np.ndarray]] = {"bm25": {}, "hybrid": {}}
    tokenizer = ""
    for pool, texts in pools.items():
        index = BM25Index(texts, config.bm25)
        tokenizer = index.tokenizer
        rankings["bm25"][pool] = index.search(queries, config.fusion_depth)
        rankings["hybrid"][pool] = reciprocal_rank_fusion(
            [rankings["bm25"][pool], finetuned.rankings[pool][:, :config.fusion_depth]],
            depth=config.ks[-1], k=config.fusion_k)
        logger.info("bm25 (%s) and hybrid ranked the %s", tokenizer, pool.replace("_", " "))
    return rankings, tokenizer


def _brief(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())


# --------------------------------------------------------------------------- assembly


def _delta(base: float | None, finetuned: float | None) -> float | None:
    if base is None or finetuned is None:
        return None
    return finetuned - base


def _delta_section(base: dict, finetuned: dict) -> dict:
    return {
        section: {name: _delta(base[section][name], finetuned[section][name]) for name in base[section]}
        for section in ("test_pool", "global_pool", "separation")
    }


def _significance(first_ranks: dict[str, dict[str, np.ndarray]], config: EvaluateConfig) -> dict:
    """Per pool and metric: the fine-tuned-minus-base difference, its p-value and interval."""
    section: dict = {}
    for pool, ranks in first_ranks.items():
        section[pool] = {}
        for metric in METRICS:
            for k in config.ks:
                comparison = compare_paired(per_query_values(ranks["base"], metric, k),
                                            per_query_values(ranks["finetuned"], metric, k),
                                            permutations=config.permutations,
                                            bootstrap_samples=config.bootstrap_samples,
                                            confidence=config.confidence, seed=config.seed)
                section[pool][metric_key(metric, k)] = {
                    "delta": comparison.delta, "p_value": comparison.p_value, "ci_low": comparison.ci_low,
                    "ci_high": comparison.ci_high, "exact": comparison.exact,
                    "significant": comparison.p_value < config.significance_level}
    return section


def _flat(metrics: dict, ks: Sequence[int], lexical: bool) -> dict[str, float]:
    flat: dict[str, float] = {}
    significance_fields = {"p_value": "p_value", "delta_ci_low": "ci_low", "delta_ci_high": "ci_high",
                           "significant": "significant"}
    for pool in POOLS:
        for metric in METRICS:
            for k in ks:
                key = metric_key(metric, k)
                for role in MODEL_ROLES + (LEXICAL_SYSTEMS if lexical else ()):
                    flat[flat_metric_name(pool, metric, k, role)] = float(  # type: ignore[arg-type]
                        metrics[role][POOL_KEYS[pool]][key])
                tested = metrics["significance"][POOL_KEYS[pool]][key]
                for suffix, name in significance_fields.items():
                    flat[flat_metric_name(pool, metric, k, suffix)] = float(tested[name])  # type: ignore[arg-type]
    for role in MODEL_ROLES:
        value = metrics[role]["separation"]["separation"]
        flat[separation_metric_name(role)] = math.nan if value is None else float(value)  # type: ignore[arg-type]
    flat[SIGNIFICANCE_LEVEL_METRIC] = float(metrics["settings"]["significance"]["level"])
    return flat


def _first_rank_list(ranks: np.ndarray) -> list[int | None]:
    return [None if math.isinf(rank) else int(rank) for rank in ranks]


def evaluate_retrieval(test_path: str | os.PathLike, corpus_path: str | os.PathLike, base_model: str,
                       finetuned_model: str, output_dir: str | os.PathLike,
                       config: EvaluateConfig = EvaluateConfig(),
                       base_passage_embeddings: str | os.PathLike | None = None) -> EvaluationResult:
    """Compare a base and a fine-tuned model on the test split; write metrics and reports.

    Args:
        test_path: test rows, JSON Lines ``{"query", "pos": [...], "neg": [...] (optional)}``.
        corpus_path: the global pool, JSON Lines ``{"id", "text"}``; every positive of the
            test rows must be one of its texts, byte for byte.
        base_model, finetuned_model: model names for :func:`resolve_model`.
        output_dir: receives ``metrics.json``, ``report.md`` and ``report.html``; written
            as a whole at the end (an earlier folder there is replaced, never mixed in).
        config: cut-offs, length overrides, significance and lexical settings, encoding.
        base_passage_embeddings: a folder written by ``save_passage_embeddings`` holding the
            base model's corpus vectors; used (and the corpus not re-encoded for the base
            model) when its key matches this encoder and this corpus.

    Raises:
        DataError: on malformed input, or a positive that is not in the corpus
            (``test.jsonl:LINE: pos: ...``).
    """
    test_path, corpus_path, output_dir = Path(test_path), Path(corpus_path), Path(output_dir)
    data = _load_data(test_path, corpus_path)
    logger.info("%d test queries; test pool %d passages; global pool %d passages; %d rows with negatives",
                len(data.rows), len(data.test_pool_corpus_indices), len(data.corpus_texts),
                len(data.rows_with_negatives))

    depth = max(config.ks[-1], config.fusion_depth if config.lexical_baselines else 0)
    base = _evaluate_model(base_model, "base", data, config, base_passage_embeddings, depth)
    finetuned = _evaluate_model(finetuned_model, "finetuned", data, config, None, depth)
    rankings = {"base": base.rankings, "finetuned": finetuned.rankings}
    tokenizer = None
    if config.lexical_baselines:
        lexical, tokenizer = _lexical_rankings(data, config, finetuned)
        rankings.update(lexical)
    first_ranks = {pool: {system: first_positive_ranks(ranked[pool], data.positives(pool), config.ks[-1])
                          for system, ranked in rankings.items()} for pool in POOL_KEYS.values()}

    counts = {
        "queries": len(data.rows),
        "test_pool_passages": int(len(data.test_pool_corpus_indices)),
        "global_pool_passages": len(data.corpus_texts),
        "positives": sum(len(row.pos) for row in data.rows),
        "rows_with_negatives": len(data.rows_with_negatives),
        "negatives": sum(len(row.neg) for row in data.rows),
        "negatives_not_in_corpus": len(data.extra_negatives),
    }
    metrics: dict = {
        "models": {"base": str(base_model), "finetuned": str(finetuned_model)},
        "ks": list(config.ks),
        "base": base.metrics,
        "finetuned": finetuned.metrics,
        "delta": _delta_section(base.metrics, finetuned.metrics),
    }
    for system in LEXICAL_SYSTEMS if config.lexical_baselines else ():
        metrics[system] = {pool: metrics_from_first_ranks(first_ranks[pool][system], config.ks)
                           for pool in POOL_KEYS.values()}
    metrics["significance"] = _significance(first_ranks, config)
    metrics["settings"] = {
        "significance": {"test": RANDOMIZATION_TEST, "level": config.significance_level,
                         "permutations": config.permutations, "interval": "percentile bootstrap",
                         "bootstrap_samples": config.bootstrap_samples, "confidence": config.confidence,
                         "seed": config.seed},
        "lexical": ({"bm25_k1": config.bm25_k1, "bm25_b": config.bm25_b, "bm25_tokenizer": tokenizer,
                     "fusion": "reciprocal rank (bm25 + finetuned)", "fusion_k": config.fusion_k,
                     "fusion_depth": config.fusion_depth} if config.lexical_baselines else None),
    }
    metrics["counts"] = counts
    metrics["base_passage_embeddings_reused"] = base.passage_embeddings_reused
    # Each query's first-positive rank (null: not in the top max(ks)), in test-file order:
    # two runs on the same test split can be compared query by query.
    metrics["per_query_first_rank"] = {pool: {system: _first_rank_list(ranks) for system, ranks in systems.items()}
                                       for pool, systems in first_ranks.items()}
    flat = _flat(metrics, config.ks, config.lexical_baselines)

    with atomic_path(output_dir) as staged:
        staged.mkdir()
        write_json(staged / METRICS_FILENAME, metrics)
        write_text(staged / REPORT_MD_FILENAME, render_markdown_report(metrics))
        write_text(staged / REPORT_HTML_FILENAME, render_html_report(metrics))
    logger.info("evaluation written to %s", output_dir)
    return EvaluationResult(metrics=metrics, flat=flat, metrics_path=output_dir / METRICS_FILENAME,
                            report_md_path=output_dir / REPORT_MD_FILENAME,
                            report_html_path=output_dir / REPORT_HTML_FILENAME)
