"""Lexical retrieval: BM25 over a passage pool, and reciprocal-rank fusion with a dense ranking.

The evaluate step reports BM25 beside the models (does the dense model beat the words
alone?) and a fusion of BM25 with the fine-tuned model (what do the two give together?).

Tokenization follows the reference figures of ``../shared/data/README.md``:

* ``cjk-bigram``: lower-cased runs of letters and digits, each cut into its characters and
  its adjacent character pairs (Chinese has no spaces; unigrams + bigrams are the usual
  stand-in for a word segmenter);
* ``words``: lower-cased runs of letters and digits;
* ``auto``: ``cjk-bigram`` when at least a quarter of the pool's letters are CJK ideographs.

Scores are Lucene's BM25 (``bm25s``'s ``lucene`` method: idf ``ln(1 + (N - df + 0.5) /
(df + 0.5))``) with k1 0.9 and b 0.4, Anserini's defaults. With these choices the
reference figures are reproduced: cmrc_drcd_zh global MRR@10 0.771, amazon_pqa_en 0.182.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

logger = logging.getLogger(__name__)

Tokenizer = Literal["auto", "cjk-bigram", "words"]
TOKENIZERS: tuple[str, ...] = ("auto", "cjk-bigram", "words")

_ALNUM_RUN = re.compile(r"[^\W_]+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
# Share of CJK among a pool's letters above which ``auto`` picks character n-grams.
_CJK_SHARE_FOR_BIGRAMS = 0.25


@dataclass(frozen=True)
class BM25Config:
    """BM25 settings.

    Attributes:
        k1: term-frequency saturation.
        b: document-length normalization.
        tokenizer: ``auto``, ``cjk-bigram`` or ``words`` (see the module docstring).
    """

    k1: float = 0.9
    b: float = 0.4
    tokenizer: Tokenizer = "auto"

    def __post_init__(self) -> None:
        if self.k1 < 0:
            raise ValueError(f"k1 must be at least 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ValueError(f"b must be between 0 and 1, got {self.b}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")


def choose_tokenizer(texts: Sequence[str]) -> Literal["cjk-bigram", "words"]:
    """``cjk-bigram`` for a pool whose letters are mostly Chinese (or Japanese kanji), else ``words``."""
    letters = cjk = 0
    for text in texts:
        for run in _ALNUM_RUN.findall(text):
            letters += len(run)
            cjk += len(_CJK.findall(run))
    return "cjk-bigram" if letters and cjk / letters >= _CJK_SHARE_FOR_BIGRAMS else "words"


def tokenize(text: str, tokenizer: Literal["cjk-bigram", "words"]) -> list[str]:
    """The BM25 terms of one text under a concrete tokenizer."""
    runs = _ALNUM_RUN.findall(text.lower())
    if tokenizer == "words":
        return runs
    terms: list[str] = []
    for run in runs:
        terms.extend(run)
        terms.extend(run[i:i + 2] for i in range(len(run) - 1))
    return terms


class BM25Index:
    """A BM25 index over a fixed list of passages (``bm25s``, Lucene scoring)."""

    def __init__(self, passages: Sequence[str], config: BM25Config = BM25Config()) -> None:
        import bm25s

        if not passages:
            raise ValueError("cannot index an empty pool")
        self.config = config
        self.tokenizer: Literal["cjk-bigram", "words"] = (
            choose_tokenizer(passages) if config.tokenizer == "auto" else config.tokenizer)
        self.size = len(passages)
        self._retriever = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
        self._retriever.index([tokenize(text, self.tokenizer) for text in passages], show_progress=False)
        self._vocabulary: dict[str, int] = self._retriever.vocab_dict
        # Lucene's idf per term, from each term's document frequency (its column's length).
        frequencies = np.diff(np.asarray(self._retriever.scores["indptr"], dtype=np.int64))
        self._idf = np.log(1 + (self.size - frequencies + 0.5) / (frequencies + 0.5))

    def _term_ids(self, query: str) -> list[int]:
        return [self._vocabulary[t] for t in tokenize(query, self.tokenizer) if t in self._vocabulary]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for one query (a repeated query term counts each time)."""
        ids = self._term_ids(query)
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._retriever.get_scores(ids), dtype=np.float32)

    def score_bound(self, query: str) -> float:
        """The sum of the query terms' idf: Lucene's term factor tf / (tf + k1 * norm) stays
        below 1, so no passage reaches this score. Dividing by it puts scores in [0, 1): the
        share of the query's lexical weight a passage matches, comparable across queries."""
        return float(self._idf[self._term_ids(query)].sum())

    def search(self, queries: Sequence[str], depth: int) -> np.ndarray:
        """Top ``depth`` passage indices per query, best first; ties go to the lower index.

        Passages sharing no term with the query are not retrieved: their slots hold -1.
        """
        depth = min(depth, self.size)
        ranked = np.full((len(queries), depth), -1, dtype=np.int64)
        for row, query in enumerate(queries):
            scores = self.scores(query)
            matched = np.flatnonzero(scores > 0)
            if matched.size > depth:
                # Keep every passage tied with the depth-th score, then order exactly.
                threshold = np.partition(scores[matched], matched.size - depth)[matched.size - depth]
                matched = matched[scores[matched] >= threshold]
            order = matched[np.lexsort((matched, -scores[matched]))][:depth]
            ranked[row, :order.size] = order
        return ranked


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], depth: int, k: int = 60) -> np.ndarray:
    """Fuse rankings of the same queries by reciprocal rank (Cormack et al., 2009).

    Each ranking is a (queries x depth_i) matrix of pool indices, best first, -1 for empty
    slots. A passage's fused score is the sum over rankings of ``1 / (k + rank)`` (rank from
    1; nothing from a ranking it is absent from). Ties go to the lower pool index.

    Returns:
        (queries x depth) fused indices, -1 where fewer passages were ranked at all.
    """
    if not rankings:
        raise ValueError("nothing to fuse")
    queries = len(rankings[0])
    if any(len(r) != queries for r in rankings):
        raise ValueError("rankings must cover the same queries")
    fused = np.full((queries, depth), -1, dtype=np.int64)
    for row in range(queries):
        scores: dict[int, float] = {}
        for ranking in rankings:
            for rank, index in enumerate(ranking[row], start=1):
                if index >= 0:
                    scores[int(index)] = scores.get(int(index), 0.0) + 1.0 / (k + rank)
        order = sorted(scores, key=lambda index: (-scores[index], index))[:depth]
        fused[row, :len(order)] = order
    return fused
