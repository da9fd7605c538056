"""Passage embeddings saved by one step and reused by another.

Mining encodes the whole global pool with the base model; evaluation needs exactly those
vectors for the base model's side of the report. The cache is a folder holding
``passages.npy`` (float32, one row per line of the corpus file, in order) and
``meta.json`` that says which encoder made them and over which corpus, so a stale or
foreign cache is never used by mistake. ``texts.json`` (the passages, in order) lets a step
that holds only some of the passages, such as the embedding teacher scoring mined rows,
look vectors up by text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.jsonl_files import atomic_path

logger = logging.getLogger(__name__)

VECTORS_FILENAME = "passages.npy"
META_FILENAME = "meta.json"
TEXTS_FILENAME = "texts.json"


@dataclass(frozen=True)
class CacheKey:
    """What must match for cached vectors to be reused.

    Attributes:
        encoder_fingerprint: ``TextEncoder.fingerprint("passage")`` of the encoder that made them.
        texts_sha256: digest of the passage texts, in order.
    """

    encoder_fingerprint: str
    texts_sha256: str


def texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def save_passage_embeddings(folder: str | os.PathLike, vectors: np.ndarray, key: CacheKey,
                            texts: list[str] | None = None) -> None:
    """Write vectors and their key (and the texts, when given) atomically into ``folder``."""
    with atomic_path(folder) as temporary:
        temporary.mkdir()
        np.save(temporary / VECTORS_FILENAME, vectors.astype(np.float32, copy=False))
        if texts is not None:
            if texts_digest(texts) != key.texts_sha256 or len(texts) != len(vectors):
                raise ValueError("the texts given are not the ones the cache key names")
            (temporary / TEXTS_FILENAME).write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        (temporary / META_FILENAME).write_text(
            json.dumps({**asdict(key), "count": int(vectors.shape[0]), "dimension": int(vectors.shape[1])},
                       indent=2) + "\n",
            encoding="utf-8",
        )


def load_passage_embeddings(folder: str | os.PathLike | None, key: CacheKey) -> np.ndarray | None:
    """The cached vectors if ``folder`` holds vectors made under ``key``; else None."""
    if not folder:
        return None
    folder = Path(folder)
    meta_path = folder / META_FILENAME
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("encoder_fingerprint") != key.encoder_fingerprint or meta.get("texts_sha256") != key.texts_sha256:
        logger.info("embedding cache in %s was made by another encoder or corpus: not reused", folder)
        return None
    vectors = np.load(folder / VECTORS_FILENAME)
    logger.info("reusing %d cached passage embeddings from %s", vectors.shape[0], folder)
    return vectors


def load_passage_embeddings_by_text(folder: str | os.PathLike | None,
                                    encoder_fingerprint: str) -> dict[str, np.ndarray] | None:
    """Text → cached vector, if ``folder`` holds vectors and texts made by this encoder; else None."""
    if not folder:
        return None
    folder = Path(folder)
    meta_path, texts_path = folder / META_FILENAME, folder / TEXTS_FILENAME
    if not meta_path.is_file() or not texts_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("encoder_fingerprint") != encoder_fingerprint:
        logger.info("embedding cache in %s was made by another encoder: not reused", folder)
        return None
    texts = json.loads(texts_path.read_text(encoding="utf-8"))
    if texts_digest(texts) != meta.get("texts_sha256"):
        return None
    vectors = np.load(folder / VECTORS_FILENAME)
    return dict(zip(texts, vectors))
