"""The training-row format and its validation.

A row is ``{"query": str, "pos": [str, ...], "neg": [str, ...], "pos_scores": [num, ...],
"neg_scores": [num, ...], "prompt": str}``; only ``query`` and ``pos`` are required and
unknown fields are kept. Each check raises :class:`DataError` naming file, line and field.
"""

from __future__ import annotations

import math
import os
from typing import Any

from components.jsonl_files import DataError

REQUIRED_FIELDS = ("query", "pos")
PASSAGE_LIST_FIELDS = ("pos", "neg")
SCORE_FIELDS = {"pos": "pos_scores", "neg": "neg_scores"}


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python, but true/false is not a teacher score.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_row(row: Any, path: str | os.PathLike, line: int) -> dict:
    """Check one parsed line and return it with passage lists de-duplicated.

    Duplicate passages inside ``pos`` or ``neg`` are dropped (first occurrence wins, its
    score kept). A passage listed as both positive and negative is an error: training
    would push the query away from its own answer.

    Raises:
        DataError: naming ``path:line`` and the offending field.
    """
    if not isinstance(row, dict):
        raise DataError(path, line, "", f"expected a JSON object, got {type(row).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in row:
            raise DataError(path, line, name, "missing required field")
    if not isinstance(row["query"], str) or not row["query"].strip():
        raise DataError(path, line, "query", "must be a non-empty string")
    if "prompt" in row and row["prompt"] is not None and not isinstance(row["prompt"], str):
        raise DataError(path, line, "prompt", "must be a string")

    cleaned = dict(row)
    for name in PASSAGE_LIST_FIELDS:
        if name not in row or (name == "neg" and row[name] is None):
            continue
        passages = row[name]
        if not isinstance(passages, list):
            raise DataError(path, line, name, "must be a list of strings")
        if name == "pos" and not passages:
            raise DataError(path, line, "pos", "must hold at least one passage")
        for index, passage in enumerate(passages):
            if not isinstance(passage, str) or not passage.strip():
                raise DataError(path, line, f"{name}[{index}]", "must be a non-empty string")

        score_name = SCORE_FIELDS[name]
        scores = row.get(score_name)
        if scores is not None:
            if not isinstance(scores, list) or not all(_is_number(s) for s in scores):
                raise DataError(path, line, score_name, "must be a list of finite numbers")
            if len(scores) != len(passages):
                raise DataError(path, line, score_name,
                                f"has {len(scores)} scores for {len(passages)} passages in '{name}'")

        seen: set[str] = set()
        keep = []
        for index, passage in enumerate(passages):
            if passage not in seen:
                seen.add(passage)
                keep.append(index)
        cleaned[name] = [passages[i] for i in keep]
        if scores is not None:
            cleaned[score_name] = [scores[i] for i in keep]

    for score_name, name in (("pos_scores", "pos"), ("neg_scores", "neg")):
        if row.get(score_name) is not None and name not in row:
            raise DataError(path, line, score_name, f"given without '{name}'")

    overlap = set(cleaned["pos"]) & set(cleaned.get("neg") or [])
    if overlap:
        example = next(iter(sorted(overlap)))
        raise DataError(path, line, "neg", f"passage is also a positive: {example[:60]!r}")
    return cleaned


def validate_corpus_row(row: Any, path: str | os.PathLike, line: int) -> dict:
    """Check one ``{"id": str, "text": str}`` corpus line."""
    if not isinstance(row, dict):
        raise DataError(path, line, "", f"expected a JSON object, got {type(row).__name__}")
    for name in ("id", "text"):
        if name not in row:
            raise DataError(path, line, name, "missing required field")
        if not isinstance(row[name], str) or not row[name].strip():
            raise DataError(path, line, name, "must be a non-empty string")
    return row


def query_prompts(rows: list[dict]) -> list[str | None] | None:
    """Each row's ``prompt`` (None where a row has none or an empty one), or None when no
    row has one: what :meth:`TextEncoder.encode_queries` takes as ``instructions``.

    A row's prompt replaces the model's query instruction for that row, as in
    FlagEmbedding's training data, so mining, scoring and evaluation encode the query the
    way training does.
    """
    prompts = [row.get("prompt") or None for row in rows]
    return prompts if any(prompts) else None
