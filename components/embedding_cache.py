"""Passage embeddings saved by one step and reused by another.

Mining encodes the whole global pool with the base model; evaluation needs exactly those
vectors for the base model's side of the report. The cache is a folder holding
``passages.npy`` (float32, one row per line of the corpus file, in order) and
``meta.json`` that says which encoder made them and over which corpus, so a stale or
foreign cache is never used by mistake.
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


def save_passage_embeddings(folder: str | os.PathLike, vectors: np.ndarray, key: CacheKey) -> None:
    """Write vectors and their key atomically into ``folder``."""
    with atomic_path(folder) as temporary:
        temporary.mkdir()
        np.save(temporary / VECTORS_FILENAME, vectors.astype(np.float32, copy=False))
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
