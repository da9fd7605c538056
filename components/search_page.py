"""The search page of ``searchtune serve --ui``: base and fine-tuned top-k, side by side.

Both models embed the same corpus once at start-up; a query is embedded by both and each
column lists its top ``top_k`` passages by cosine. When the query is one of the test
split's queries, its known positives are marked, and a column that misses them says so.
Plain HTML rendered by the server: a form, two ordered lists, no script, no build step.
"""

from __future__ import annotations

import html
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Response
from starlette.concurrency import run_in_threadpool

from components.embedding import EncodeConfig, TextEncoder
from components.evaluate import normalize_rows
from components.jsonl_files import DataError, read_jsonl
from components.model_profiles import resolve_model

logger = logging.getLogger(__name__)

EXAMPLE_QUERIES = 8


@dataclass(frozen=True)
class _Hit:
    rank: int
    index: int
    score: float
    known_positive: bool


def _read_corpus(path: Path) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for line, row in read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(path, line, "text", "must be a string")
        ids.append(str(row.get("id", line)))
        texts.append(row["text"])
    if not texts:
        raise DataError(path, 0, "", "empty corpus")
    return ids, texts


def _read_positives(path: Path) -> dict[str, frozenset[str]]:
    positives: dict[str, set[str]] = {}
    for line, row in read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("query"), str):
            raise DataError(path, line, "query", "must be a string")
        pos = row.get("pos")
        if not isinstance(pos, list) or not all(isinstance(p, str) for p in pos):
            raise DataError(path, line, "pos", "must be a list of strings")
        positives.setdefault(row["query"].strip(), set()).update(pos)
    return {query: frozenset(texts) for query, texts in positives.items()}


class _Column:
    """One model over the corpus; a lock because a fast tokenizer is not re-entrant."""

    def __init__(self, title: str, encoder: TextEncoder, texts: list[str], lock: threading.Lock) -> None:
        self.title = title
        self.encoder = encoder
        self.lock = lock
        self.passages = normalize_rows(encoder.encode_passages(texts, description=f"{title}: encode corpus"))

    def search(self, query: str, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            vector = normalize_rows(self.encoder.encode_queries([query]))[0]
        scores = self.passages @ vector
        top = np.argsort(-scores, kind="stable")[:top_k]
        return top, scores[top]


class SearchPage:
    """The corpus, both models' vectors of it, and the known positives of the test split.

    Args:
        base_model: the model before fine-tuning (left column).
        finetuned: the served model's encoder (right column).
        finetuned_lock: the lock the server holds while it uses that encoder's tokenizer.
        corpus: ``{"id", "text"}`` JSON Lines.
        test_data: optional test rows, whose positives are marked.
        top_k: results per column.
        encode: how the base model runs (the fine-tuned one runs as served).
    """

    def __init__(self, base_model: str, finetuned: TextEncoder, finetuned_lock: threading.Lock, corpus: str,
                 test_data: str = "",
                 top_k: int = 10, encode: EncodeConfig = EncodeConfig(show_progress=False)) -> None:
        self.ids, self.texts = _read_corpus(Path(corpus))
        self.positives = _read_positives(Path(test_data)) if test_data else {}
        self.top_k = top_k
        logger.info("search page: %d passages, %d test queries with known positives", len(self.texts),
                    len(self.positives))
        base = TextEncoder(resolve_model(base_model), replace(encode, show_progress=False))
        self.columns = (_Column(f"Base: {base_model}", base, self.texts, threading.Lock()),
                        _Column(f"Fine-tuned: {finetuned.model_ref.name}", finetuned, self.texts, finetuned_lock))

    def search(self, query: str) -> list[list[_Hit]]:
        known = self.positives.get(query.strip(), frozenset())
        results = []
        for column in self.columns:
            indices, scores = column.search(query, self.top_k)
            results.append([_Hit(rank, int(i), float(s), self.texts[int(i)] in known)
                            for rank, (i, s) in enumerate(zip(indices, scores), start=1)])
        return results

    def render(self, query: str = "") -> str:
        query = query.strip()
        body = [_FORM.format(query=html.escape(query, quote=True))]
        if query:
            known = self.positives.get(query)
            if known is not None:
                body.append(f'<p id="known-note">This query is in the test split: its {len(known)} known '
                            'positive(s) are marked ★.</p>')
            columns = []
            for column, hits, role in zip(self.columns, self.search(query), ("base", "finetuned")):
                items = "".join(
                    f'<li class="hit{" known-positive" if hit.known_positive else ""}">'
                    f'<span class="score">{hit.score:.3f}</span> {"★ " if hit.known_positive else ""}'
                    f'{html.escape(self.texts[hit.index])} <span class="id">[{html.escape(self.ids[hit.index])}]'
                    "</span></li>" for hit in hits)
                missed = ""
                if known is not None and not any(hit.known_positive for hit in hits):
                    missed = f'<p class="missed">No known positive in the top {self.top_k}.</p>'
                columns.append(f'<section class="column"><h2>{html.escape(column.title)}</h2>'
                               f'<ol id="{role}-results">{items}</ol>{missed}</section>')
            body.append(f'<div class="columns">{"".join(columns)}</div>')
        elif self.positives:
            examples = "".join(f'<li><a href="/search?q={quote(q)}">{html.escape(q)}</a></li>'
                               for q in list(self.positives)[:EXAMPLE_QUERIES])
            body.append(f'<p>Queries from the test split (known positives get marked):</p><ul id="examples">'
                        f"{examples}</ul>")
        return _PAGE.format(corpus=len(self.texts), body="".join(body))


_FORM = ('<form action="/search" method="get"><input id="query" name="q" value="{query}" size="60" '
         'placeholder="type a query, e.g. 适合夏天穿的轻薄连衣裙" autofocus> '
         '<button id="search" type="submit">Search</button></form>')

_PAGE = """<!DOCTYPE html>
<html lang="zh"><head><meta charset="utf-8"><title>searchtune: base vs fine-tuned</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, "Noto Sans CJK SC", sans-serif; margin: 24px; color: #1f2933; }}
.columns {{ display: flex; gap: 24px; }}
.column {{ flex: 1; min-width: 0; }}
li {{ margin: 4px 0; }}
.known-positive {{ background: #fff3c4; }}
.score {{ color: #52606d; font-family: monospace; }}
.id {{ color: #9aa5b1; font-size: 12px; }}
.missed {{ color: #b44d12; }}
</style></head><body>
<h1>Base vs fine-tuned search</h1>
<p>Top results of both models over the same {corpus} passages (cosine).</p>
{body}
</body></html>
"""


def add_search_page(app: FastAPI, page: SearchPage) -> None:
    """``GET /`` (the form and example queries) and ``GET /search?q=...``."""

    @app.get("/")
    async def index():
        return Response(page.render(), media_type="text/html; charset=utf-8")

    @app.get("/search")
    async def search(q: str = ""):
        return Response(await run_in_threadpool(page.render, q[:1000]), media_type="text/html; charset=utf-8")
