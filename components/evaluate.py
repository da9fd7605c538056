"""Evaluate step: a base and a fine-tuned embedding model, side by side, on the test split.

Each model is scored in two pools:

* the **test pool**: the unique positive passages of the test split's own rows;
* the **global pool**: every text of the corpus file (the passages a deployed search sees).

Per model and pool: recall@k (a hit when *any* positive is in the top k) and MRR@k (the
reciprocal rank of the first positive, 0 when none is in the top k), by exact inner-product
search over L2-normalized vectors. Per model also the *separation*: the mean cosine of a
query to its positives minus the mean cosine to its mined hard negatives, over the rows
that have negatives.

Every positive text must appear byte for byte in the corpus, so both pools share one set
of passage vectors per model: the corpus is encoded once (or, for the base model, read
from the embedding cache that mining saved) and the test pool is a subset of its rows.

Writes ``metrics.json`` (nested), ``report.md`` (improvement per pool and a before/after
table) and ``report.html`` (the same tables and a grouped bar chart per pool, self-contained
for the Kubeflow UI). :func:`flat_metric_name` gives the stable flat names the pipeline logs
as KFP metrics.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np

from components.embedding import EncodeConfig, TextEncoder
from components.embedding_cache import CacheKey, load_passage_embeddings, texts_digest
from components.jsonl_files import DataError, read_jsonl, write_json, write_text
from components.model_profiles import resolve_model

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.json"
REPORT_MD_FILENAME = "report.md"
REPORT_HTML_FILENAME = "report.html"

PoolName = Literal["test", "global"]
MetricName = Literal["recall", "mrr"]
ModelRole = Literal["base", "finetuned", "delta"]

POOLS: tuple[str, ...] = ("test", "global")
METRICS: tuple[str, ...] = ("recall", "mrr")
MODEL_ROLES: tuple[str, ...] = ("base", "finetuned", "delta")
# Nested metrics.json keys of the two pools.
POOL_KEYS = {"test": "test_pool", "global": "global_pool"}
POOL_TITLES = {"test": "Test pool", "global": "Global pool"}
ROLE_TITLES = {"base": "Base", "finetuned": "Fine-tuned"}


@dataclass(frozen=True)
class EvaluateConfig:
    """How to evaluate.

    Attributes:
        ks: cut-offs for recall@k and MRR@k (deduplicated and sorted).
        query_max_len: overrides the profile's query length (both models) when given.
        passage_max_len: overrides the profile's passage length (both models) when given.
            An override changes the encoder fingerprint, so a base embedding cache made
            under other lengths is (rightly) not reused.
        encode: batch size, precision, device.
    """

    ks: tuple[int, ...] = (1, 5, 10)
    query_max_len: int | None = None
    passage_max_len: int | None = None
    encode: EncodeConfig = field(default_factory=EncodeConfig)

    def __post_init__(self) -> None:
        ks = tuple(self.ks)
        if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty sequence of positive integers, got {self.ks!r}")
        object.__setattr__(self, "ks", tuple(sorted({int(k) for k in ks})))
        for name in ("query_max_len", "passage_max_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class EvaluationResult:
    """What the evaluate step produced.

    Attributes:
        metrics: the nested metrics, as written to ``metrics.json``.
        flat: every :func:`flat_metric_names` name to its value (NaN for separation when no
            test row has negatives); the same names on every run with the same ``ks``.
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


# --------------------------------------------------------------------------- metric names


def flat_metric_name(pool: PoolName, metric: MetricName, k: int, model: ModelRole) -> str:
    """The KFP-stable flat name of one metric, e.g. ``global_recall_at_1_finetuned``.

    Args:
        pool: ``test`` or ``global``.
        metric: ``recall`` or ``mrr``.
        k: the cut-off.
        model: ``base``, ``finetuned`` or ``delta`` (fine-tuned minus base).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if model not in MODEL_ROLES:
        raise ValueError(f"model must be one of {MODEL_ROLES}, got {model!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return f"{pool}_{metric}_at_{int(k)}_{model}"


def separation_metric_name(model: ModelRole) -> str:
    """``separation_base``, ``separation_finetuned`` or ``separation_delta``."""
    if model not in MODEL_ROLES:
        raise ValueError(f"model must be one of {MODEL_ROLES}, got {model!r}")
    return f"separation_{model}"


def flat_metric_names(ks: Sequence[int] = (1, 5, 10)) -> list[str]:
    """Every flat name the step reports for these cut-offs, in a fixed order."""
    ks = sorted({int(k) for k in ks})
    names = [flat_metric_name(pool, metric, k, role)  # type: ignore[arg-type]
             for pool in POOLS for metric in METRICS for k in ks for role in MODEL_ROLES]
    return names + [separation_metric_name(role) for role in MODEL_ROLES]  # type: ignore[arg-type]


def _metric_key(metric: str, k: int) -> str:
    return f"{metric}@{k}"


# --------------------------------------------------------------------------- pure metrics


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
    if len(rankings) != len(positives):
        raise ValueError(f"{len(rankings)} rankings but {len(positives)} positive sets")
    if len(rankings) == 0:
        raise ValueError("no queries to score")
    depth = ks[-1]
    first_ranks = np.full(len(rankings), np.inf)
    for query, (ranking, relevant) in enumerate(zip(rankings, positives)):
        relevant = set(int(i) for i in relevant)
        if not relevant:
            raise ValueError(f"query {query} has no positives")
        for rank, index in enumerate(list(ranking)[:depth], start=1):
            if int(index) >= 0 and int(index) in relevant:
                first_ranks[query] = rank
                break
    result: dict[str, float] = {}
    for k in ks:
        result[_metric_key("recall", k)] = float(np.mean(first_ranks <= k))
    for k in ks:
        reciprocal = np.where(first_ranks <= k, 1.0 / first_ranks, 0.0)
        result[_metric_key("mrr", k)] = float(np.mean(reciprocal))
    return result


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
    resolved = resolve_model(model_name)
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


def _evaluate_model(model_name: str, role: str, data: _EvaluationData, config: EvaluateConfig,
                    cache_folder: str | os.PathLike | None) -> tuple[dict, bool]:
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

    depth = config.ks[-1]
    test_pool_vectors = corpus_vectors[data.test_pool_corpus_indices]
    test_metrics = retrieval_metrics(search_top_k(query_vectors, test_pool_vectors, depth),
                                     data.test_positives, config.ks)
    global_metrics = retrieval_metrics(search_top_k(query_vectors, corpus_vectors, depth),
                                       data.global_positives, config.ks)

    text_index = {}
    for index, text in enumerate(data.corpus_texts):
        text_index.setdefault(text, index)
    extra_index = {text: i for i, text in enumerate(data.extra_negatives)}

    def passage_vector(text: str) -> np.ndarray:
        if text in text_index:
            return corpus_vectors[text_index[text]]
        return extra_vectors[extra_index[text]]

    selected = data.rows_with_negatives
    separation = separation_stats(
        query_vectors[selected],
        [np.stack([passage_vector(t) for t in data.rows[i].pos]) for i in selected],
        [np.stack([passage_vector(t) for t in data.rows[i].neg]) for i in selected],
    )
    logger.info("%s: test pool %s; global pool %s; separation %s", role, _brief(test_metrics),
                _brief(global_metrics), separation["separation"])
    return {"test_pool": test_metrics, "global_pool": global_metrics, "separation": separation}, reused


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


def _flat(metrics: dict, ks: Sequence[int]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for pool in POOLS:
        for metric in METRICS:
            for k in ks:
                for role in MODEL_ROLES:
                    value = metrics[role][POOL_KEYS[pool]][_metric_key(metric, k)]
                    flat[flat_metric_name(pool, metric, k, role)] = float(value)  # type: ignore[arg-type]
    for role in MODEL_ROLES:
        value = metrics[role]["separation"]["separation"]
        flat[separation_metric_name(role)] = math.nan if value is None else float(value)  # type: ignore[arg-type]
    return flat


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
        output_dir: where ``metrics.json``, ``report.md`` and ``report.html`` are written.
        config: cut-offs, length overrides, encoding settings.
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

    base, reused = _evaluate_model(base_model, "base", data, config, base_passage_embeddings)
    finetuned, _ = _evaluate_model(finetuned_model, "finetuned", data, config, None)

    counts = {
        "queries": len(data.rows),
        "test_pool_passages": int(len(data.test_pool_corpus_indices)),
        "global_pool_passages": len(data.corpus_texts),
        "positives": sum(len(row.pos) for row in data.rows),
        "rows_with_negatives": len(data.rows_with_negatives),
        "negatives": sum(len(row.neg) for row in data.rows),
        "negatives_not_in_corpus": len(data.extra_negatives),
    }
    metrics = {
        "models": {"base": str(base_model), "finetuned": str(finetuned_model)},
        "ks": list(config.ks),
        "base": base,
        "finetuned": finetuned,
        "delta": _delta_section(base, finetuned),
        "counts": counts,
        "base_passage_embeddings_reused": reused,
    }
    flat = _flat(metrics, config.ks)

    metrics_path = output_dir / METRICS_FILENAME
    report_md_path = output_dir / REPORT_MD_FILENAME
    report_html_path = output_dir / REPORT_HTML_FILENAME
    write_json(metrics_path, metrics)
    write_text(report_md_path, render_markdown_report(metrics))
    write_text(report_html_path, render_html_report(metrics))
    logger.info("evaluation written to %s", output_dir)
    return EvaluationResult(metrics=metrics, flat=flat, metrics_path=metrics_path,
                            report_md_path=report_md_path, report_html_path=report_html_path)


# --------------------------------------------------------------------------- reports


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fmt_delta(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _fmt_relative(base: float | None, finetuned: float | None) -> str:
    if base is None or finetuned is None or base == 0:
        return "n/a"
    return f"{(finetuned - base) / abs(base) * 100:+.1f}%"


def _metric_names(ks: Sequence[int]) -> list[str]:
    return [_metric_key(metric, k) for metric in METRICS for k in ks]


def _improvement_rows(metrics: dict, section: str) -> list[list[str]]:
    base, finetuned = metrics["base"][section], metrics["finetuned"][section]
    return [[name, _fmt(base[name]), _fmt(finetuned[name]), _fmt_delta(_delta(base[name], finetuned[name])),
             _fmt_relative(base[name], finetuned[name])] for name in base]


_IMPROVEMENT_HEADER = ["Metric", "Base", "Fine-tuned", "Δ", "Δ%"]
_SEPARATION_LABELS = {"separation": "separation", "mean_cos_positive": "mean cos(query, pos)",
                      "mean_cos_negative": "mean cos(query, neg)"}


def _separation_rows(metrics: dict) -> list[list[str]]:
    rows = _improvement_rows(metrics, "separation")
    for row in rows:
        row[0] = _SEPARATION_LABELS.get(row[0], row[0])
    return rows


def _detail_table(metrics: dict) -> tuple[list[str], list[list[str]]]:
    names = _metric_names(metrics["ks"])
    header = ["Model"] + [f"{pool} {name}" for pool in POOLS for name in names] + ["separation"]
    rows = []
    for role in ("base", "finetuned"):
        values = [metrics[role][POOL_KEYS[pool]][name] for pool in POOLS for name in names]
        rows.append([f"{ROLE_TITLES[role]} ({metrics['models'][role]})"] + [_fmt(v) for v in values]
                    + [_fmt(metrics[role]["separation"]["separation"])])
    return header, rows


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_markdown_cell(c) for c in header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pool_size(metrics: dict, pool: str) -> int:
    return metrics["counts"]["test_pool_passages" if pool == "test" else "global_pool_passages"]


def _summary_lines(metrics: dict) -> list[str]:
    counts = metrics["counts"]
    return [
        f"- Base model: `{metrics['models']['base']}`",
        f"- Fine-tuned model: `{metrics['models']['finetuned']}`",
        f"- Test queries: {counts['queries']}; test pool: {counts['test_pool_passages']} passages "
        f"(the unique positives of the test rows); global pool: {counts['global_pool_passages']} passages "
        f"(the whole corpus)",
        f"- Rows with hard negatives (separation): {counts['rows_with_negatives']}",
        "- recall@k: share of queries with any positive in the top k; mrr@k: mean reciprocal rank of the "
        "first positive (0 beyond k); exact inner-product search over normalized vectors",
        "- separation: mean cos(query, positive) − mean cos(query, hard negative)",
    ]


def render_markdown_report(metrics: dict) -> str:
    """The Markdown report: improvement per pool, then the before/after table."""
    parts = ["# Evaluation: base vs fine-tuned", "", *_summary_lines(metrics), "",
             "## Improvement per pool", ""]
    for pool in POOLS:
        parts += [f"### {POOL_TITLES[pool]} ({_pool_size(metrics, pool)} passages)", "",
                  _markdown_table(_IMPROVEMENT_HEADER, _improvement_rows(metrics, POOL_KEYS[pool])), ""]
    parts += ["### Separation", "", _markdown_table(_IMPROVEMENT_HEADER, _separation_rows(metrics)), "",
              "## Before / after", ""]
    header, rows = _detail_table(metrics)
    parts += [_markdown_table(header, rows), ""]
    return "\n".join(parts)


def _bar_chart_png(metrics: dict, pool: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _metric_names(metrics["ks"])
    section = POOL_KEYS[pool]
    base = [metrics["base"][section][n] for n in names]
    finetuned = [metrics["finetuned"][section][n] for n in names]
    figure = Figure(figsize=(max(5.0, 0.9 * len(names) + 1.5), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(names))
    width = 0.38
    for offset, values, label, color in ((-width / 2, base, "base", "#9aa5b1"),
                                         (width / 2, finetuned, "fine-tuned", "#2f6fde")):
        bars = axes.bar(positions + offset, values, width, label=label, color=color)
        axes.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7, padding=1)
    axes.set_xticks(positions, names)
    axes.set_ylim(0, 1.1)
    axes.set_title(f"{POOL_TITLES[pool]} ({_pool_size(metrics, pool)} passages)")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Noto Sans CJK SC", sans-serif; margin: 24px; color: #1f2933; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }
th, td { border: 1px solid #d3d8de; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f3f6; }
img { max-width: 100%; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
"""


def render_html_report(metrics: dict) -> str:
    """A self-contained HTML report (charts inlined as base64 PNG) for the Kubeflow UI."""
    summary = "".join(f"<li>{html.escape(line[2:]).replace('`', '')}</li>" for line in _summary_lines(metrics))
    charts = "".join(
        f'<div><img alt="{html.escape(POOL_TITLES[pool])}" src="data:image/png;base64,'
        f'{base64.b64encode(_bar_chart_png(metrics, pool)).decode("ascii")}"></div>' for pool in POOLS)
    sections = []
    for pool in POOLS:
        sections.append(f"<h3>{html.escape(POOL_TITLES[pool])} ({_pool_size(metrics, pool)} passages)</h3>"
                        + _html_table(_IMPROVEMENT_HEADER, _improvement_rows(metrics, POOL_KEYS[pool])))
    sections.append("<h3>Separation</h3>" + _html_table(_IMPROVEMENT_HEADER, _separation_rows(metrics)))
    header, rows = _detail_table(metrics)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>Evaluation: base vs fine-tuned</title>"
        f"<style>{_HTML_STYLE}</style></head><body>"
        "<h1>Evaluation: base vs fine-tuned</h1>"
        f"<ul>{summary}</ul>"
        f"<h2>Before / after per pool</h2><div class=\"charts\">{charts}</div>"
        "<h2>Improvement per pool</h2>" + "".join(sections)
        + "<h2>Before / after</h2>" + _html_table(header, rows)
        + "</body></html>\n"
    )
