"""Step 3: teacher scores for knowledge distillation.

Writes ``pos_scores`` / ``neg_scores`` aligned with ``pos`` / ``neg``, and
``teacher_scores.json`` beside the rows saying which teacher made them and on what scale.

FlagEmbedding 1.4 turns a row's group of teacher scores into distillation targets with a
plain softmax (``AbsEmbedderModel.forward``: ``F.softmax(teacher_scores, dim=-1)``), while
the student's own scores are cosine / temperature. So every teacher stores **logits on the
student's scale**: its raw score divided by ``teacher_temperature``, and the softmax over a
stored group is the target distribution, whichever teacher wrote it:

- ``cross-encoder`` (the recipe's, on the cluster: BAAI/bge-reranker-v2-m3) goes through
  FlagEmbedding's own reranker classes; its raw score is the relevance logit, so the
  default temperature is 1. ``cross_encoder_scores="sigmoid"`` stores the recipe's
  sigmoid-normalized scores instead, for fidelity only: squeezed into [0, 1], even a perfect
  teacher then gives the positive at most e/(e+7) ≈ 0.28 of the mass in a group of 8, and
  distillation pulls the student towards uniform;
- ``embedding`` (the local default, where no cross-encoder is at hand) uses a bi-encoder's
  cosine similarity; the default temperature is the student's own (0.02), so teacher and
  student distributions are on the same scale.
- ``hybrid``: the embedding teacher's cosine plus ``lexical_weight`` times the pair's BM25
  score over the rows' passages, divided by the query's BM25 bound (the sum of its terms'
  idf), so the lexical part is the share of the query's words the passage matches, in
  [0, 1). Where no cross-encoder is at hand this teacher knows more than the student: on
  data whose questions share words with their answers, BM25 ranks better than a small
  embedding model and errs elsewhere. Same default temperature as ``embedding``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from components.config_values import check_config
from components.embedding import EncodeConfig, TextEncoder
from components.embedding_cache import load_passage_embeddings_by_text
from components.jsonl_files import atomic_path, read_jsonl_objects, write_json, write_jsonl
from components.model_profiles import ProfileOverrides, locate_model, resolve_model
from components.training_rows import query_prompts

logger = logging.getLogger(__name__)

TeacherKind = Literal["cross-encoder", "embedding", "hybrid"]
TEACHERS: tuple[str, ...] = ("cross-encoder", "embedding", "hybrid")
CrossEncoderScores = Literal["logits", "sigmoid"]
SCORED_FILENAME = "train.jsonl"
METADATA_FILENAME = "teacher_scores.json"
# The recipe's contrastive temperature (TrainConfig.temperature): cosine / 0.02 is the
# student's own score, so it is the embedding teacher's default temperature.
STUDENT_TEMPERATURE = 0.02


@dataclass(frozen=True)
class ScoreConfig:
    """Teacher settings (the recipe's by default).

    Attributes:
        teacher: ``cross-encoder``, ``embedding`` or ``hybrid`` (embedding + BM25).
        teacher_model: model name (hub id, folder, or ``builtin:...``).
        teacher_temperature: stored score = the teacher's raw score / this, so that a
            softmax over a row's stored scores is its distillation target. None: 1.0 for a
            cross-encoder (its logits already are log-odds) and ``student_temperature`` for
            an embedding teacher (its cosines then sit on the student's scale).
        student_temperature: the student's contrastive temperature (the train step's
            ``temperature``); the embedding teacher's default temperature.
        cross_encoder_scores: ``logits`` (default: distillation can teach) or ``sigmoid``,
            the recipe's normalized scores, kept for fidelity: in [0, 1] they give nearly
            uniform targets, so distillation mostly cannot teach.
        lexical_weight: the hybrid teacher's weight on its BM25 share (cosine + this x share);
            0.3 ranked best of 0.05-0.5 on a validation split of cmrc_drcd_zh (README, recipe study).
        query_max_len: query tokens (the cross-encoder's ``query_max_length``; the embedding
            teacher's query length).
        passage_max_len: the embedding teacher's passage tokens; None keeps its profile's.
        max_length: cross-encoder pair tokens.
        batch_size: cross-encoder pairs per forward pass.
        devices: e.g. ``["cuda:0", "cuda:1"]``; empty lets FlagEmbedding pick (all GPUs, else CPU).
        fp16: half precision on GPU.
        encode: the embedding teacher's encoder settings.
        profile: pooling / normalize / instruction overrides for an embedding teacher.
    """

    teacher: TeacherKind = "cross-encoder"
    teacher_model: str = "BAAI/bge-reranker-v2-m3"
    teacher_temperature: float | None = None
    student_temperature: float = STUDENT_TEMPERATURE
    cross_encoder_scores: CrossEncoderScores = "logits"
    lexical_weight: float = 0.3
    query_max_len: int = 512
    passage_max_len: int | None = None
    max_length: int = 1024
    batch_size: int = 64
    devices: tuple[str, ...] = ()
    fp16: bool = True
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    profile: ProfileOverrides = field(default_factory=ProfileOverrides, metadata={"flag_prefix": ""})

    def __post_init__(self) -> None:
        check_config(self)
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}, got {self.teacher!r}")
        if self.lexical_weight < 0:
            raise ValueError(f"lexical_weight must be at least 0, got {self.lexical_weight}")
        if self.cross_encoder_scores not in ("logits", "sigmoid"):
            raise ValueError(f"cross_encoder_scores must be 'logits' or 'sigmoid', got {self.cross_encoder_scores!r}")
        if self.teacher_temperature is not None and not self.teacher_temperature > 0:
            raise ValueError(f"teacher_temperature must be positive, got {self.teacher_temperature}")
        if not self.student_temperature > 0:
            raise ValueError(f"student_temperature must be positive, got {self.student_temperature}")

    @property
    def temperature(self) -> float:
        """The temperature the raw teacher scores are divided by."""
        if self.teacher_temperature is not None:
            return self.teacher_temperature
        return 1.0 if self.teacher == "cross-encoder" else self.student_temperature

    @property
    def raw_score(self) -> str:
        """What the teacher's raw score is, in words."""
        if self.teacher == "embedding":
            return "cosine"
        if self.teacher == "hybrid":
            return f"cosine + {self.lexical_weight:g} x BM25 / idf bound"
        return "sigmoid(logit)" if self.cross_encoder_scores == "sigmoid" else "logit"


def _pairs(rows: list[dict]) -> list[tuple[str, str]]:
    return [(row["query"], passage) for row in rows for passage in row["pos"] + (row.get("neg") or [])]


def _cross_encoder_scores(rows: list[dict], config: ScoreConfig, pool_embeddings: Path | None) -> np.ndarray:
    """The reranker's score of every pair. A row's ``prompt`` is an instruction for the
    embedding model, not the reranker: the reranker reads the bare query, as in the recipe."""
    import torch
    from FlagEmbedding import FlagReranker

    devices = list(config.devices) or None
    reranker = FlagReranker(
        locate_model(config.teacher_model),
        use_fp16=config.fp16 and torch.cuda.is_available(),
        devices=devices,
        batch_size=config.batch_size,
        query_max_length=config.query_max_len,
        max_length=config.max_length,
        normalize=config.cross_encoder_scores == "sigmoid",
    )
    scores = reranker.compute_score(_pairs(rows))
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def _embedding_scores(rows: list[dict], config: ScoreConfig, pool_embeddings: Path | None) -> np.ndarray:
    """Cosine similarity of every pair; passage vectors come from ``pool_embeddings``
    (mine's cache) where this very encoder made them."""
    model = resolve_model(config.teacher_model, config.profile)
    model = replace(model, profile=model.profile.with_max_lengths(config.query_max_len, config.passage_max_len))
    encoder = TextEncoder(model, config.encode)
    prompts = query_prompts(rows) or [None] * len(rows)
    # A query is encoded once per instruction it is read with.
    queries = list(dict.fromkeys(zip(prompts, (row["query"] for row in rows))))
    passages = list(dict.fromkeys(p for row in rows for p in row["pos"] + (row.get("neg") or [])))
    query_vectors = encoder.encode_queries([q for _, q in queries], "teacher: queries", [i for i, _ in queries])
    cached = load_passage_embeddings_by_text(pool_embeddings, encoder.fingerprint("passage")) or {}
    missing = [p for p in passages if p not in cached]
    if cached:
        logger.info("teacher: %d of %d passage vectors reused from mine's cache", len(passages) - len(missing),
                    len(passages))
    encoded = dict(zip(missing, encoder.encode_passages(missing, "teacher: passages")))
    passage_vectors = np.stack([cached[p] if p in cached else encoded[p] for p in passages]) if passages \
        else np.zeros((0, encoder.dimension), dtype=np.float32)
    if not encoder.profile.normalize:
        query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True).clip(min=1e-12)
        passage_vectors /= np.linalg.norm(passage_vectors, axis=1, keepdims=True).clip(min=1e-12)
    query_index = {q: i for i, q in enumerate(queries)}
    passage_index = {p: i for i, p in enumerate(passages)}
    q_rows = [query_index[(prompt, row["query"])] for prompt, row in zip(prompts, rows)
              for _ in row["pos"] + (row.get("neg") or [])]
    p_rows = [passage_index[b] for _, b in _pairs(rows)]
    return (query_vectors[q_rows] * passage_vectors[p_rows]).sum(axis=1).astype(np.float64)


def _hybrid_scores(rows: list[dict], config: ScoreConfig, pool_embeddings: Path | None) -> np.ndarray:
    """Cosine plus ``lexical_weight`` x the pair's BM25 share of the query's bound."""
    from components.lexical_retrieval import BM25Index

    cosine = _embedding_scores(rows, config, pool_embeddings)
    passages = list(dict.fromkeys(p for row in rows for p in row["pos"] + (row.get("neg") or [])))
    passage_index = {p: i for i, p in enumerate(passages)}
    index = BM25Index(passages)
    lexical = np.empty(len(cosine), dtype=np.float64)
    cursor = 0
    for row in rows:
        group = [passage_index[p] for p in row["pos"] + (row.get("neg") or [])]
        bound = index.score_bound(row["query"])
        lexical[cursor:cursor + len(group)] = index.scores(row["query"])[group] / bound if bound > 0 else 0.0
        cursor += len(group)
    logger.info("hybrid teacher: BM25 (%s) over %d passages, weight %g", index.tokenizer, len(passages),
                config.lexical_weight)
    return cosine + config.lexical_weight * lexical


_TEACHER_SCORES = {"cross-encoder": _cross_encoder_scores, "embedding": _embedding_scores, "hybrid": _hybrid_scores}


def _positive_target(row: dict) -> float:
    """The softmax mass FlagEmbedding's targets give a row's first positive against all
    its negatives: how much a distilled student is told to prefer the answer."""
    scores = np.asarray(row["pos_scores"][:1] + row["neg_scores"], dtype=np.float64)
    weights = np.exp(scores - scores.max())
    return float(weights[0] / weights.sum())


def _score_metadata(rows: list[dict], config: ScoreConfig) -> dict:
    """What the stored scores mean: written beside the rows and into the KFP artifact."""
    with_negatives = [row for row in rows if row["neg_scores"]]
    mass = [_positive_target(row) for row in with_negatives]
    return {
        "teacher": config.teacher,
        "teacher_model": config.teacher_model,
        "teacher_temperature": config.temperature,
        "raw_score": config.raw_score,
        "score_scale": f"{config.raw_score} / {config.temperature:g}",
        "targets": "softmax over each row's stored scores (FlagEmbedding's distillation targets)",
        "rows": len(rows),
        "pairs": sum(len(row["pos"]) + len(row["neg"]) for row in rows),
        "mean_positive_target": round(float(np.mean(mass)), 6) if mass else None,
        "config": {key: value for key, value in asdict(config).items() if key != "encode"},
    }


def score_with_teacher(
    train_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: ScoreConfig = ScoreConfig(),
    pool_embeddings: str | os.PathLike | None = None,
) -> Path:
    """Add ``pos_scores`` and ``neg_scores`` from the teacher to every row.

    Args:
        train_path: rows with ``pos`` and (mined) ``neg``.
        output_dir: receives train.jsonl, the scored rows (logits on the student's scale),
            and teacher_scores.json, what they mean (teacher, temperature, scale); written as
            a whole, replacing an earlier run's folder.
        config: which teacher and how to run it.
        pool_embeddings: mine's ``base_embeddings`` folder: an embedding teacher that is the
            model mine used (same settings) reuses those passage vectors instead of
            encoding the passages again.

    Returns:
        The scored rows' path.
    """
    rows = read_jsonl_objects(train_path)
    logger.info("scoring %d pairs of %d rows with %s teacher %s (scores: %s / %g)", len(_pairs(rows)), len(rows),
                config.teacher, config.teacher_model, config.raw_score, config.temperature)
    raw = _TEACHER_SCORES[config.teacher](rows, config, Path(pool_embeddings) if pool_embeddings else None)
    scores = raw / config.temperature
    scored = []
    cursor = 0
    for row in rows:
        negatives = row.get("neg") or []
        out = dict(row)
        out["pos_scores"] = [round(float(s), 6) for s in scores[cursor:cursor + len(row["pos"])]]
        cursor += len(row["pos"])
        out["neg_scores"] = [round(float(s), 6) for s in scores[cursor:cursor + len(negatives)]]
        cursor += len(negatives)
        out["neg"] = negatives
        scored.append(out)
    output_dir = Path(output_dir)
    metadata = _score_metadata(scored, config)
    if metadata["mean_positive_target"] is not None:
        logger.info("teacher targets give the positive %.3f of the mass on average",
                    metadata["mean_positive_target"])
    with atomic_path(output_dir) as staged:
        staged.mkdir()
        write_jsonl(staged / SCORED_FILENAME, scored)
        write_json(staged / METADATA_FILENAME, metadata)
    return output_dir / SCORED_FILENAME
