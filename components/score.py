"""Step 3: teacher scores for knowledge distillation.

Writes ``pos_scores`` / ``neg_scores`` aligned with ``pos`` / ``neg``. FlagEmbedding's
kl_div loss turns a row's scores into targets with a plain softmax, so the scale of the
scores is the teacher's "temperature":

- ``cross-encoder`` (the recipe's, on the cluster: BAAI/bge-reranker-v2-m3) goes through
  FlagEmbedding's own reranker classes, sigmoid-normalized as in the recipe;
- ``embedding`` (the local default, where no cross-encoder is at hand) uses a bi-encoder's
  cosine similarity divided by ``embedding_temperature``, the student's own temperature,
  so teacher and student distributions are on the same scale.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from components.embedding import EncodeConfig, TextEncoder
from components.jsonl_files import read_jsonl_objects, write_jsonl
from components.model_profiles import resolve_model

logger = logging.getLogger(__name__)

TeacherKind = Literal["cross-encoder", "embedding"]
SCORED_FILENAME = "train.jsonl"


@dataclass(frozen=True)
class ScoreConfig:
    """Teacher settings (the recipe's by default).

    Attributes:
        teacher: ``cross-encoder`` or ``embedding``.
        teacher_model: model name (hub id, folder, or ``builtin:...``).
        normalize: sigmoid-normalize cross-encoder logits (the recipe does).
        query_max_len: cross-encoder query tokens (FlagEmbedding's ``query_max_length``).
        max_length: cross-encoder pair tokens.
        embedding_temperature: the embedding teacher's scores are cosine / this.
        batch_size: cross-encoder pairs per forward pass.
        devices: e.g. ``["cuda:0", "cuda:1"]``; empty lets FlagEmbedding pick (all GPUs, else CPU).
        fp16: half precision on GPU.
        encode: the embedding teacher's encoder settings.
    """

    teacher: TeacherKind = "cross-encoder"
    teacher_model: str = "BAAI/bge-reranker-v2-m3"
    normalize: bool = True
    query_max_len: int = 512
    max_length: int = 1024
    embedding_temperature: float = 0.02
    batch_size: int = 64
    devices: tuple[str, ...] = ()
    fp16: bool = True
    encode: EncodeConfig = field(default_factory=EncodeConfig)

    def __post_init__(self) -> None:
        if self.teacher not in ("cross-encoder", "embedding"):
            raise ValueError(f"teacher must be 'cross-encoder' or 'embedding', got {self.teacher!r}")
        if self.embedding_temperature <= 0:
            raise ValueError("embedding_temperature must be positive")


def _pairs(rows: list[dict]) -> list[tuple[str, str]]:
    return [(row["query"], passage) for row in rows for passage in row["pos"] + (row.get("neg") or [])]


def _cross_encoder_scores(rows: list[dict], config: ScoreConfig) -> np.ndarray:
    import torch
    from FlagEmbedding import FlagReranker

    model = resolve_model(config.teacher_model)
    devices = list(config.devices) or None
    reranker = FlagReranker(
        model.path,
        use_fp16=config.fp16 and torch.cuda.is_available(),
        devices=devices,
        batch_size=config.batch_size,
        query_max_length=config.query_max_len,
        max_length=config.max_length,
        normalize=config.normalize,
    )
    scores = reranker.compute_score(_pairs(rows))
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def _embedding_scores(rows: list[dict], config: ScoreConfig) -> np.ndarray:
    encoder = TextEncoder(resolve_model(config.teacher_model), config.encode)
    queries = list(dict.fromkeys(row["query"] for row in rows))
    passages = list(dict.fromkeys(p for row in rows for p in row["pos"] + (row.get("neg") or [])))
    query_vectors = encoder.encode_queries(queries, "teacher: queries")
    passage_vectors = encoder.encode_passages(passages, "teacher: passages")
    if not encoder.profile.normalize:
        query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True).clip(min=1e-12)
        passage_vectors /= np.linalg.norm(passage_vectors, axis=1, keepdims=True).clip(min=1e-12)
    query_index = {q: i for i, q in enumerate(queries)}
    passage_index = {p: i for i, p in enumerate(passages)}
    pairs = _pairs(rows)
    q = query_vectors[[query_index[a] for a, _ in pairs]]
    p = passage_vectors[[passage_index[b] for _, b in pairs]]
    return (q * p).sum(axis=1).astype(np.float64) / config.embedding_temperature


def score_with_teacher(
    train_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: ScoreConfig = ScoreConfig(),
) -> Path:
    """Add ``pos_scores`` and ``neg_scores`` from the teacher to every row.

    Args:
        train_path: rows with ``pos`` and (mined) ``neg``.
        output_dir: receives train.jsonl, the scored rows.
        config: which teacher and how to run it.

    Returns:
        The scored rows' path.
    """
    rows = read_jsonl_objects(train_path)
    logger.info("scoring %d pairs of %d rows with %s teacher %s", len(_pairs(rows)), len(rows),
                config.teacher, config.teacher_model)
    scores = (_cross_encoder_scores if config.teacher == "cross-encoder" else _embedding_scores)(rows, config)
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
    output = Path(output_dir) / SCORED_FILENAME
    write_jsonl(output, scored)
    return output
