"""Step 2: mine hard negatives, with the semantics of FlagEmbedding's ``scripts/hn_mine.py``.

As in the reference: the candidate pool is encoded once (instruction on queries only),
an exact inner-product FAISS index is searched, ranks ``range_for_sampling`` (a slice
``[a:b]`` of the ranking, default 2-200) are kept, positives and the query itself are
dropped, and ``negative_number`` negatives are sampled per query.

Better than the reference:
- deterministic: the pool keeps file order and each query samples from its own seeded
  generator, so the same inputs give the same negatives;
- when too few candidates remain, the top-up draws from the rest of the pool and never
  picks a positive, the query, or a passage already chosen;
- an optional false-negative filter (NV-Retriever's TopK-PercPos) drops candidates that
  score above ``max_negative_score_fraction`` of the query's lowest positive score;
- test passages are kept out of the training candidates, so training never pushes a
  query away from a passage the test split asks for;
- the base model's vectors of the whole global pool are saved for the evaluate step.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from components.config_values import check_config
from components.embedding import EncodeConfig, TextEncoder
from components.embedding_cache import CacheKey, save_passage_embeddings, texts_digest
from components.jsonl_files import atomic_path, read_jsonl_objects, write_json, write_jsonl
from components.model_profiles import ProfileOverrides, resolve_model
from components.training_rows import query_prompts

logger = logging.getLogger(__name__)

MINED_TRAIN_FILENAME = "train.jsonl"
MINED_TEST_FILENAME = "test.jsonl"
EMBEDDINGS_DIRNAME = "base_embeddings"
STATS_FILENAME = "mining_stats.json"


@dataclass(frozen=True)
class MineConfig:
    """Hard-negative mining settings (the recipe's values by default).

    Attributes:
        model: the embedding model that ranks candidates (the student's base model).
        range_for_sampling: ``(a, b)``: keep ranking positions ``[a:b]`` (0-based slice),
            as hn_mine.py's ``--range_for_sampling 2-200``.
        negative_number: negatives per query.
        max_negative_score_fraction: TopK-PercPos filter; e.g. 0.95 drops candidates whose
            score exceeds 95% of the lowest positive score. None turns it off.
        seed: seeds sampling.
        query_max_len: overrides the model profile's query length when set.
        passage_max_len: overrides the model profile's passage length when set.
        search_batch_size: queries per FAISS search call.
        use_gpu_index: put the FAISS index on all GPUs when faiss-gpu sees any.
        encode: batch size, precision (fp16 on GPU), device.
        profile: pooling / normalize / instruction overrides for ``model``.
    """

    model: str = "BAAI/bge-large-zh-v1.5"
    range_for_sampling: tuple[int, int] = (2, 200)
    negative_number: int = 10
    max_negative_score_fraction: float | None = None
    seed: int = 42
    query_max_len: int | None = None
    passage_max_len: int | None = None
    search_batch_size: int = 1024
    use_gpu_index: bool = True
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    profile: ProfileOverrides = field(default_factory=ProfileOverrides, metadata={"flag_prefix": ""})

    def __post_init__(self) -> None:
        check_config(self)
        start, stop = self.range_for_sampling
        if not 0 <= start < stop:
            raise ValueError(f"range_for_sampling must be 0 <= a < b, got {self.range_for_sampling}")
        if self.negative_number < 1:
            raise ValueError("negative_number must be at least 1")
        if self.max_negative_score_fraction is not None and not 0 < self.max_negative_score_fraction <= 1:
            raise ValueError("max_negative_score_fraction must be in (0, 1]")


@dataclass(frozen=True)
class MinedData:
    """Files written by :func:`mine_hard_negatives`."""

    train: Path
    test: Path | None
    base_embeddings: Path
    stats: dict


def parse_range(text: str) -> tuple[int, int]:
    """``"2-200"`` → ``(2, 200)``, hn_mine.py's notation.

    Raises:
        ValueError: for anything but two whole numbers joined by a dash.
    """
    start, dash, stop = text.strip().partition("-")
    if not (dash and start.strip().isdigit() and stop.strip().isdigit()):
        raise ValueError(f"{text!r} is not allowed; expected two ranks joined by a dash, such as 2-200")
    return int(start), int(stop)


def format_range(window: tuple[int, int]) -> str:
    """``(2, 200)`` → ``"2-200"``: the inverse of :func:`parse_range`."""
    return f"{window[0]}-{window[1]}"


def _build_index(vectors: np.ndarray, use_gpu: bool):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    if use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        logger.info("FAISS index on %d GPU(s)", faiss.get_num_gpus())
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(vectors)
    return index


def _search(index, queries: np.ndarray, top_k: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.empty((len(queries), top_k), dtype=np.float32)
    ids = np.empty((len(queries), top_k), dtype=np.int64)
    for start in tqdm(range(0, len(queries), batch_size), desc="search", unit="batch", mininterval=2.0):
        s, i = index.search(queries[start:start + batch_size], top_k)
        scores[start:start + batch_size] = s
        ids[start:start + batch_size] = i
    return scores, ids


def _choose_negatives(
    row_index: int,
    row: dict,
    ranked_ids: np.ndarray,
    ranked_scores: np.ndarray,
    positive_score: float,
    candidate_texts: list[str],
    config: MineConfig,
) -> tuple[list[int], int, int]:
    """Candidate indices chosen for one row, and how many were filtered / topped up."""
    start, stop = config.range_for_sampling
    excluded = set(row["pos"]) | {row["query"]}
    threshold = (positive_score * config.max_negative_score_fraction
                 if config.max_negative_score_fraction is not None else None)
    eligible: list[int] = []
    filtered = 0
    for candidate, score in zip(ranked_ids[start:stop], ranked_scores[start:stop]):
        if candidate < 0:
            break
        if candidate_texts[candidate] in excluded:
            continue
        if threshold is not None and score > threshold:
            filtered += 1
            continue
        eligible.append(int(candidate))

    rng = np.random.default_rng([config.seed, row_index])
    if len(eligible) > config.negative_number:
        picked = sorted(rng.choice(len(eligible), size=config.negative_number, replace=False))
        return [eligible[i] for i in picked], filtered, 0

    chosen = list(eligible)
    missing = config.negative_number - len(chosen)
    if missing:
        taken = set(chosen)
        for candidate in rng.permutation(len(candidate_texts)):
            if candidate in taken or candidate_texts[candidate] in excluded:
                continue
            chosen.append(int(candidate))
            taken.add(int(candidate))
            if len(chosen) == config.negative_number:
                break
    return chosen, filtered, len(chosen) - len(eligible)


def _mine_rows(rows: list[dict], query_vectors: np.ndarray, candidate_ids: np.ndarray,
               pool_vectors: np.ndarray, pool_texts: list[str], config: MineConfig,
               description: str) -> tuple[list[dict], dict]:
    candidate_texts = [pool_texts[i] for i in candidate_ids]
    index = _build_index(pool_vectors[candidate_ids], config.use_gpu_index)
    top_k = min(config.range_for_sampling[1], len(candidate_ids))
    scores, ids = _search(index, query_vectors, top_k, config.search_batch_size)

    text_to_pool = {text: i for i, text in enumerate(pool_texts)}
    mined: list[dict] = []
    filtered_total = topped_up_total = short_rows = 0
    for row_index, row in enumerate(tqdm(rows, desc=description, unit="query", mininterval=2.0)):
        positive_vectors = pool_vectors[[text_to_pool[p] for p in row["pos"]]]
        positive_score = float((positive_vectors @ query_vectors[row_index]).min())
        chosen, filtered, topped_up = _choose_negatives(row_index, row, ids[row_index], scores[row_index],
                                                        positive_score, candidate_texts, config)
        filtered_total += filtered
        topped_up_total += topped_up
        short_rows += topped_up > 0
        out = dict(row)
        out["neg"] = [candidate_texts[c] for c in chosen]
        # Old teacher scores no longer match the new negatives.
        out.pop("neg_scores", None)
        mined.append(out)
    stats = {"queries": len(rows), "candidates": int(len(candidate_ids)),
             "false_negatives_filtered": filtered_total, "negatives_topped_up": topped_up_total,
             "queries_topped_up": int(short_rows)}
    return mined, stats


def mine_hard_negatives(
    train_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: MineConfig = MineConfig(),
    test_path: str | os.PathLike | None = None,
    corpus_path: str | os.PathLike | None = None,
) -> MinedData:
    """Add ``neg`` to every training (and test) row from the model's own ranking.

    Args:
        train_path: prepared training rows.
        output_dir: receives train.jsonl, test.jsonl (when a test split is given),
            base_embeddings/ (the pool's vectors) and mining_stats.json; written as a whole
            (an earlier run's folder is replaced, never mixed with).
        config: mining settings.
        test_path: test rows; their negatives (used for the evaluation's separation) are
            mined from the whole pool, and their passages are kept out of the training
            candidates.
        corpus_path: the global pool (``{"id","text"}`` rows). Without it the pool is every
            passage of the rows, as hn_mine.py does without ``--candidate_pool``.
    """
    output_dir = Path(output_dir)
    train_rows = read_jsonl_objects(train_path)
    test_rows = read_jsonl_objects(test_path) if test_path else []

    if corpus_path:
        pool_texts = list(dict.fromkeys(entry["text"] for entry in read_jsonl_objects(corpus_path)))
    else:
        pool_texts = list(dict.fromkeys(p for row in train_rows + test_rows
                                        for p in row["pos"] + (row.get("neg") or [])))
    # Every positive must be in the pool: its score bounds the false-negative filter.
    known = set(pool_texts)
    pool_texts += list(dict.fromkeys(p for row in train_rows + test_rows for p in row["pos"] if p not in known))

    model = resolve_model(config.model, config.profile)
    model = replace(model, profile=model.profile.with_max_lengths(config.query_max_len, config.passage_max_len))
    encoder = TextEncoder(model, config.encode)
    pool_vectors = encoder.encode_passages(pool_texts, "encode pool")
    train_queries = encoder.encode_queries([row["query"] for row in train_rows], "encode train queries",
                                           query_prompts(train_rows))

    test_passages = {p for row in test_rows for p in row["pos"]}
    train_candidates = np.array([i for i, t in enumerate(pool_texts) if t not in test_passages], dtype=np.int64)
    mined_train, train_stats = _mine_rows(train_rows, train_queries, train_candidates, pool_vectors,
                                          pool_texts, config, "mine train")
    stats: dict = {"pool_passages": len(pool_texts), "train": train_stats}

    mined_test = None
    if test_rows:
        test_queries = encoder.encode_queries([row["query"] for row in test_rows], "encode test queries",
                                              query_prompts(test_rows))
        mined_test, stats["test"] = _mine_rows(test_rows, test_queries, np.arange(len(pool_texts)),
                                               pool_vectors, pool_texts, config, "mine test")

    # The folder appears whole or not at all, and holds nothing from an earlier run.
    with atomic_path(output_dir) as staged:
        staged.mkdir()
        if mined_test is not None:
            write_jsonl(staged / MINED_TEST_FILENAME, mined_test)
        save_passage_embeddings(staged / EMBEDDINGS_DIRNAME, pool_vectors,
                                CacheKey(encoder.fingerprint("passage"), texts_digest(pool_texts)), pool_texts)
        write_jsonl(staged / MINED_TRAIN_FILENAME, mined_train)
        write_json(staged / STATS_FILENAME, stats)
    logger.info("mined negatives for %d train and %d test queries over %d passages",
                len(train_rows), len(test_rows), len(pool_texts))
    return MinedData(train=output_dir / MINED_TRAIN_FILENAME,
                     test=output_dir / MINED_TEST_FILENAME if mined_test is not None else None,
                     base_embeddings=output_dir / EMBEDDINGS_DIRNAME, stats=stats)
