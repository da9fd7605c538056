"""Step 1: validate training rows, split them 9:1, build the global pool, report.

The split keeps every query and every positive passage on one side only: rows that
share a positive are grouped (union-find) and whole groups go to one split, so the test
split measures retrieval of passages the model never saw as positives.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from components.config_values import check_config
from components.jsonl_files import DataError, atomic_path, read_jsonl, write_json, write_jsonl, write_text
from components.model_profiles import ProfileOverrides
from components.training_rows import validate_corpus_row, validate_row

logger = logging.getLogger(__name__)

TRAIN_FILENAME = "train.jsonl"
TEST_FILENAME = "test.jsonl"
CORPUS_FILENAME = "corpus.jsonl"
REPORT_JSON_FILENAME = "data_report.json"
REPORT_MD_FILENAME = "data_report.md"


@dataclass(frozen=True)
class PrepareConfig:
    """How to validate and split.

    Attributes:
        test_fraction: share of queries held out when no test file is given (the recipe's 9:1).
        seed: seeds the split.
        skip_invalid: drop bad rows (each reported) instead of stopping at the first.
        model: tokenizer used for the report's token statistics; empty skips them.
        query_max_len: query token budget the report checks truncation against.
        passage_max_len: passage token budget the report checks truncation against.
        profile: pooling / normalize / instruction overrides for ``model`` (the instructions
            count towards the query and passage tokens).
    """

    test_fraction: float = 0.1
    seed: int = 42
    skip_invalid: bool = False
    model: str = ""
    query_max_len: int = 512
    passage_max_len: int = 512
    profile: ProfileOverrides = field(default_factory=ProfileOverrides, metadata={"flag_prefix": ""})

    def __post_init__(self) -> None:
        check_config(self)
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")


@dataclass(frozen=True)
class PreparedData:
    """Files written by :func:`prepare_training_data`."""

    train: Path
    test: Path
    corpus: Path
    report_json: Path
    report_markdown: Path
    report: dict = field(default_factory=dict)


@dataclass
class _RowsRead:
    rows: list[dict]
    lines: list[int]
    invalid: list[str]
    exact_duplicates: int


def _read_rows(path: Path, skip_invalid: bool) -> _RowsRead:
    rows: list[dict] = []
    lines: list[int] = []
    invalid: list[str] = []
    first_seen: dict[str, tuple[int, int]] = {}  # query -> (line, index in rows)

    def reject(error: DataError) -> None:
        if not skip_invalid:
            raise error
        logger.warning("skipped %s", error)
        invalid.append(str(error))

    exact_duplicates = 0
    for line, value in read_jsonl(path, on_error=reject if skip_invalid else None):
        try:
            row = validate_row(value, path, line)
            query = row["query"]
            if query in first_seen:
                first, index = first_seen[query]
                if rows[index] == row:
                    exact_duplicates += 1
                    continue
                raise DataError(path, line, "query",
                                f"duplicates the query on line {first} with different passages; merge the rows")
        except DataError as error:
            reject(error)
            continue
        first_seen[query] = (line, len(rows))
        rows.append(row)
        lines.append(line)
    if not rows:
        raise DataError(path, 0, "", "no valid rows")
    return _RowsRead(rows, lines, invalid, exact_duplicates)


def _split_by_shared_positives(rows: list[dict], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and test rows; rows sharing a positive land on the same side."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for index, row in enumerate(rows):
        for passage in row["pos"]:
            if passage in owner:
                parent[find(index)] = find(owner[passage])
            else:
                owner[passage] = index
    groups: dict[int, list[int]] = {}
    for index in range(len(rows)):
        groups.setdefault(find(index), []).append(index)
    ordered = sorted(groups.values(), key=lambda members: members[0])
    random.Random(seed).shuffle(ordered)

    target = max(1, round(len(rows) * test_fraction))
    test: list[int] = []
    train: list[int] = []
    for members in ordered:
        (test if len(test) < target else train).extend(members)
    if not train:
        raise ValueError("every row shares positives with every other: cannot hold out a test split")
    return sorted(train), sorted(test)


def _check_disjoint(train: list[dict], test: list[dict], test_path: Path, test_lines: list[int]) -> None:
    train_queries = {row["query"] for row in train}
    train_positives = {p for row in train for p in row["pos"]}
    for row, line in zip(test, test_lines):
        if row["query"] in train_queries:
            raise DataError(test_path, line, "query", "also a training query: the splits must not share queries")
        for index, passage in enumerate(row["pos"]):
            if passage in train_positives:
                raise DataError(test_path, line, f"pos[{index}]",
                                "also a training positive: the splits must not share positive passages")


def _passage_id(text: str) -> str:
    return "p" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _build_global_pool(rows: list[dict], corpus_path: Path | None) -> list[dict]:
    pool: list[dict] = []
    seen: dict[str, str] = {}
    if corpus_path is not None:
        ids: dict[str, int] = {}
        for line, value in read_jsonl(corpus_path):
            entry = validate_corpus_row(value, corpus_path, line)
            if entry["id"] in ids:
                raise DataError(corpus_path, line, "id", f"duplicates the id on line {ids[entry['id']]}")
            ids[entry["id"]] = line
            if entry["text"] in seen:
                continue
            seen[entry["text"]] = entry["id"]
            pool.append({"id": entry["id"], "text": entry["text"]})
    for row in rows:
        for passage in row["pos"] + (row.get("neg") or []):
            if passage not in seen:
                seen[passage] = _passage_id(passage)
                pool.append({"id": seen[passage], "text": passage})
    return pool


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {"p50": float(np.percentile(array, 50)), "p90": float(np.percentile(array, 90)),
            "p99": float(np.percentile(array, 99)), "max": int(array.max()), "mean": round(float(array.mean()), 2)}


def _token_statistics(model_name: str, queries: list[str], passages: list[str], config: PrepareConfig) -> dict:
    from components.embedding import load_tokenizer
    from components.model_profiles import resolve_model

    model = resolve_model(model_name, config.profile)
    tokenizer = load_tokenizer(model)
    stats: dict = {"model": model_name}
    for kind, texts, max_len, fmt in (
        ("query", queries, config.query_max_len, model.profile.format_query),
        ("passage", passages, config.passage_max_len, model.profile.format_passage),
    ):
        encoded = tokenizer([fmt(t) for t in texts], add_special_tokens=True)["input_ids"]
        lengths = [len(ids) for ids in encoded]
        total = sum(lengths)
        unknown = sum(ids.count(tokenizer.unk_token_id) for ids in encoded) if tokenizer.unk_token_id is not None else 0
        stats[kind] = {
            "tokens": _percentiles(lengths),
            "max_len": max_len,
            "truncated": int(sum(length > max_len for length in lengths)),
            "unk_share": round(unknown / total, 6) if total else 0.0,
        }
    return stats


def _render_report_markdown(report: dict) -> str:
    lines = ["# Data report", "", "| count | value |", "| --- | --- |"]
    for key, value in report["counts"].items():
        lines.append(f"| {key} | {value} |")
    lines += ["", "## Lengths (characters)", "", "| text | p50 | p90 | p99 | max | mean |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, stats in report["characters"].items():
        lines.append(f"| {kind} | {stats['p50']:.0f} | {stats['p90']:.0f} | {stats['p99']:.0f} | {stats['max']} | {stats['mean']} |")
    tokens = report.get("tokens")
    if tokens:
        lines += ["", f"## Tokens ({tokens['model']})", "",
                  "| text | p50 | p90 | p99 | max | max_len | truncated | [UNK] share |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for kind in ("query", "passage"):
            stats = tokens[kind]
            t = stats["tokens"]
            lines.append(f"| {kind} | {t['p50']:.0f} | {t['p90']:.0f} | {t['p99']:.0f} | {t['max']} | "
                         f"{stats['max_len']} | {stats['truncated']} | {stats['unk_share']:.2%} |")
    if report["invalid_rows"]:
        lines += ["", "## Skipped rows", ""] + [f"- {problem}" for problem in report["invalid_rows"]]
    return "\n".join(lines) + "\n"


def prepare_training_data(
    train_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: PrepareConfig = PrepareConfig(),
    test_path: str | os.PathLike | None = None,
    corpus_path: str | os.PathLike | None = None,
) -> PreparedData:
    """Validate rows, split train/test, build the global pool, and write a data report.

    Args:
        train_path: JSONL training rows (all rows, when no ``test_path`` is given).
        output_dir: receives train.jsonl, test.jsonl, corpus.jsonl, data_report.{json,md};
            written as a whole, replacing an earlier run's folder.
        config: split and validation settings.
        test_path: a test split to use instead of splitting; checked to share no query or
            positive with the training rows.
        corpus_path: extra ``{"id","text"}`` passages for the global pool (distractors).

    Raises:
        DataError: on the first bad row (unless ``skip_invalid``), naming file:line:field.
    """
    train_path = Path(train_path)
    output_dir = Path(output_dir)
    read = _read_rows(train_path, config.skip_invalid)
    invalid = list(read.invalid)
    duplicates = read.exact_duplicates

    if test_path is not None:
        test_path = Path(test_path)
        test_read = _read_rows(test_path, config.skip_invalid)
        _check_disjoint(read.rows, test_read.rows, test_path, test_read.lines)
        train_rows, test_rows = read.rows, test_read.rows
        invalid += test_read.invalid
        duplicates += test_read.exact_duplicates
    else:
        train_index, test_index = _split_by_shared_positives(read.rows, config.test_fraction, config.seed)
        train_rows = [read.rows[i] for i in train_index]
        test_rows = [read.rows[i] for i in test_index]

    pool = _build_global_pool(train_rows + test_rows, Path(corpus_path) if corpus_path else None)
    queries = [row["query"] for row in train_rows + test_rows]
    passages = [entry["text"] for entry in pool]
    report: dict = {
        "inputs": {"train": str(train_path), "test": str(test_path) if test_path else None,
                   "corpus": str(corpus_path) if corpus_path else None},
        "config": asdict(config),
        "counts": {
            "train_queries": len(train_rows),
            "test_queries": len(test_rows),
            "global_pool_passages": len(pool),
            "train_positives": sum(len(r["pos"]) for r in train_rows),
            "test_positives": sum(len(r["pos"]) for r in test_rows),
            "rows_with_negatives": sum(bool(r.get("neg")) for r in train_rows + test_rows),
            "rows_with_scores": sum(r.get("pos_scores") is not None for r in train_rows + test_rows),
            "invalid_rows_skipped": len(invalid),
            "exact_duplicate_rows_dropped": duplicates,
        },
        "characters": {"query": _percentiles([len(q) for q in queries]),
                       "passage": _percentiles([len(p) for p in passages])},
        "invalid_rows": invalid,
    }
    if config.model:
        report["tokens"] = _token_statistics(config.model, queries, passages, config)

    result = PreparedData(
        train=output_dir / TRAIN_FILENAME,
        test=output_dir / TEST_FILENAME,
        corpus=output_dir / CORPUS_FILENAME,
        report_json=output_dir / REPORT_JSON_FILENAME,
        report_markdown=output_dir / REPORT_MD_FILENAME,
        report=report,
    )
    # The folder appears whole or not at all, and holds nothing from an earlier run.
    with atomic_path(output_dir) as staged:
        staged.mkdir()
        write_jsonl(staged / TRAIN_FILENAME, train_rows)
        write_jsonl(staged / TEST_FILENAME, test_rows)
        write_jsonl(staged / CORPUS_FILENAME, pool)
        write_json(staged / REPORT_JSON_FILENAME, report)
        write_text(staged / REPORT_MD_FILENAME, _render_report_markdown(report))
    logger.info("prepared %d train / %d test queries, global pool of %d passages",
                len(train_rows), len(test_rows), len(pool))
    return result
