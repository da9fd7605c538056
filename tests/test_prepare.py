"""prepare: validation errors name file:line:field, leave nothing behind; split and pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.jsonl_files import DataError, read_jsonl_objects
from components.prepare import PrepareConfig, prepare_training_data
from pipelines.cli import main

GOOD = {"query": "夏天穿的连衣裙", "pos": ["雪纺裙"]}


def _write_lines(path: Path, lines: list[str | bytes]) -> Path:
    with path.open("wb") as handle:
        for line in lines:
            handle.write(line if isinstance(line, bytes) else line.encode("utf-8"))
            handle.write(b"\n")
    return path


def _row(**fields) -> str:
    return json.dumps(fields, ensure_ascii=False)


BAD_INPUTS = {
    "malformed JSON": (['{"query": "a", "pos": ["b"]', ], 1, ""),
    "missing query": ([_row(pos=["b"])], 1, "query"),
    "empty query": ([_row(query="  ", pos=["b"])], 1, "query"),
    "missing pos": ([_row(query="a")], 1, "pos"),
    "empty pos list": ([_row(query="a", pos=[])], 1, "pos"),
    "empty positive": ([_row(query="a", pos=["b", ""])], 1, "pos[1]"),
    "pos not a list": ([_row(query="a", pos="b")], 1, "pos"),
    "neg not strings": ([_row(query="a", pos=["b"], neg=[3])], 1, "neg[0]"),
    "misaligned pos_scores": ([_row(query="a", pos=["b", "c"], pos_scores=[0.5])], 1, "pos_scores"),
    "misaligned neg_scores": ([_row(query="a", pos=["b"], neg=["c", "d"], neg_scores=[0.1])], 1, "neg_scores"),
    "scores not numbers": ([_row(query="a", pos=["b"], pos_scores=["high"])], 1, "pos_scores"),
    "prompt not a string": ([_row(query="a", pos=["b"], prompt=5)], 1, "prompt"),
    "invalid UTF-8": ([_row(**GOOD), b'{"query": "\xff\xfe", "pos": ["x"]}'], 2, ""),
    "duplicate query": ([_row(**GOOD), _row(query="q2", pos=["c"]), _row(query=GOOD["query"], pos=["other"])],
                        3, "query"),
    "positive also a negative": ([_row(query="a", pos=["b"], neg=["c", "b"])], 1, "neg"),
    "not an object": (["[1, 2]"], 1, ""),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_file_line_field_and_writes_nothing(case, tmp_path, capsys):
    lines, line, field = BAD_INPUTS[case]
    rows = _write_lines(tmp_path / "rows.jsonl", [_row(query=f"filler {i}", pos=[f"p{i}"]) for i in range(0)] + lines)
    output = tmp_path / "out"

    code = main(["prepare", "--train-data", str(rows), "--output-dir", str(output)])

    message = capsys.readouterr().err
    assert code == 2
    location = f"{rows}:{line}"
    assert location in message, message
    if field:
        assert f"{location}: {field}:" in message, message
    assert not output.exists() or not any(output.iterdir())


def test_skip_invalid_drops_and_reports_each_bad_row(tmp_path):
    rows = _write_lines(tmp_path / "rows.jsonl", [
        _row(query=f"q{i}", pos=[f"p{i}"]) for i in range(20)
    ] + ['{"broken', _row(query="", pos=["x"]), _row(query="q0", pos=["p0"])])
    result = prepare_training_data(rows, tmp_path / "out", PrepareConfig(skip_invalid=True))
    assert result.report["counts"]["invalid_rows_skipped"] == 2
    assert result.report["counts"]["exact_duplicate_rows_dropped"] == 1
    assert any(":21:" in problem for problem in result.report["invalid_rows"])
    assert any(":22: query:" in problem for problem in result.report["invalid_rows"])
    assert result.report["counts"]["train_queries"] + result.report["counts"]["test_queries"] == 20
    assert "Skipped rows" in result.report_markdown.read_text(encoding="utf-8")


def test_split_is_9_to_1_seeded_and_keeps_shared_positives_together(tmp_path):
    rows = [{"query": f"query {i}", "pos": [f"passage {i}"], "extra": i} for i in range(100)]
    # Rows 0-9 share a positive: they must land on the same side.
    for i in range(10):
        rows[i]["pos"].append("shared passage")
    path = _write_lines(tmp_path / "rows.jsonl", [json.dumps(r) for r in rows])

    first = prepare_training_data(path, tmp_path / "a", PrepareConfig(seed=7))
    second = prepare_training_data(path, tmp_path / "b", PrepareConfig(seed=7))
    other = prepare_training_data(path, tmp_path / "c", PrepareConfig(seed=8))

    train = read_jsonl_objects(first.train)
    test = read_jsonl_objects(first.test)
    assert first.train.read_bytes() == second.train.read_bytes()
    assert first.test.read_bytes() != other.test.read_bytes()
    assert len(train) + len(test) == 100 and 8 <= len(test) <= 20
    assert not {r["query"] for r in train} & {r["query"] for r in test}
    assert not {p for r in train for p in r["pos"]} & {p for r in test for p in r["pos"]}
    assert all("extra" in r for r in train), "unknown fields are kept"


def test_given_test_file_is_checked_for_overlap(tmp_path):
    train = _write_lines(tmp_path / "train.jsonl", [_row(query="a", pos=["x"]), _row(query="b", pos=["y"])])
    test = _write_lines(tmp_path / "test.jsonl", [_row(query="c", pos=["z"]), _row(query="d", pos=["y"])])
    with pytest.raises(DataError) as error:
        prepare_training_data(train, tmp_path / "out", test_path=test)
    assert f"{test}:2: pos[0]:" in str(error.value)


def test_global_pool_report_and_token_statistics(tmp_path, tiny_bert, tiny_dataset):
    result = prepare_training_data(tiny_dataset["rows"], tmp_path / "out",
                                   PrepareConfig(model=str(tiny_bert), passage_max_len=8, query_max_len=64),
                                   corpus_path=tiny_dataset["corpus"])
    pool = read_jsonl_objects(result.corpus)
    texts = [entry["text"] for entry in pool]
    assert len(texts) == len(set(texts)) == 24  # 12 positives + 12 distractors
    for row in read_jsonl_objects(result.train) + read_jsonl_objects(result.test):
        assert set(row["pos"]) <= set(texts)
    tokens = result.report["tokens"]
    assert tokens["passage"]["truncated"] > 0 and tokens["query"]["truncated"] == 0
    assert 0.0 <= tokens["query"]["unk_share"] < 0.05
    markdown = result.report_markdown.read_text(encoding="utf-8")
    assert "[UNK] share" in markdown and "global_pool_passages | 24" in markdown


def test_corpus_with_duplicate_ids_is_rejected(tmp_path, tiny_dataset):
    corpus = _write_lines(tmp_path / "corpus.jsonl", [json.dumps({"id": "a", "text": "x"}),
                                                       json.dumps({"id": "a", "text": "y"})])
    with pytest.raises(DataError, match=r"corpus.jsonl:2: id:"):
        prepare_training_data(tiny_dataset["rows"], tmp_path / "out", corpus_path=corpus)
