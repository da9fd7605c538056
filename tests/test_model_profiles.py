"""Model profiles: explicit overrides reach every step, an undescribed model is an error
that names them, and a row's prompt is read by mining and the embedding teacher as
training reads it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from components.embedding import EncodeConfig, TextEncoder
from components.embedding_cache import CacheKey, load_passage_embeddings, texts_digest
from components.encoding_profiles import PROFILE_FILENAME
from components.jsonl_files import read_jsonl_objects
from components.mine import MineConfig, mine_hard_negatives
from components.model_profiles import (
    ModelNotFoundError,
    ProfileOverrides,
    UnknownProfileError,
    resolve_model,
)
from components.score import ScoreConfig, score_with_teacher
from pipelines.cli import main
from tests.conftest import TINY_DISTRACTORS, TINY_ROWS

ENCODE = EncodeConfig(batch_size=8, show_progress=False, precision="fp32", device="cpu")
PROMPT = "为这个商品搜索生成表示："


@pytest.fixture()
def bare_bert(tmp_path, tiny_bert):
    """The tiny BERT with nothing that declares its profile: weights and tokenizer only."""
    folder = tmp_path / "bare"
    shutil.copytree(tiny_bert, folder, ignore=shutil.ignore_patterns(
        PROFILE_FILENAME, "modules.json", "1_Pooling", "2_Normalize", "config_sentence_transformers.json",
        "sentence_bert_config.json"))
    return folder


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_model_nothing_describes_is_an_error_naming_the_overrides(bare_bert):
    with pytest.raises(UnknownProfileError) as error:
        resolve_model(str(bare_bert))
    for name in ("pooling", "normalize", "query_instruction", "passage_instruction"):
        assert name in str(error.value)
    with pytest.raises(UnknownProfileError):
        resolve_model(str(bare_bert), ProfileOverrides(pooling="mean"))
    profile = resolve_model(str(bare_bert), ProfileOverrides(pooling="mean", normalize="off")).profile
    assert (profile.pooling, profile.normalize, profile.query_instruction) == ("mean", False, "")


def test_wrong_model_names_are_one_line_errors(tmp_path, tiny_dataset, capsys):
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model(str(tmp_path / "no-model"))
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        resolve_model("someone/no-such-model-here")
    with pytest.raises(ModelNotFoundError, match="known builtins: multilingual-e5-small"):
        resolve_model("builtin:bge-large-zh-v1.5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    for model in (str(tmp_path / "no-model"), "someone/no-such-model-here"):
        assert main(["mine", "--train-data", str(tiny_dataset["rows"]), "--model", model,
                     "--output-dir", str(tmp_path / "out")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and model in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_overrides_reach_mining_and_the_embedding_teacher(tmp_path, tiny_bert, tiny_dataset):
    overrides = ProfileOverrides(pooling="mean", query_instruction="查询：")
    mined = mine_hard_negatives(tiny_dataset["rows"], tmp_path / "mined",
                                MineConfig(model=str(tiny_bert), negative_number=2, encode=ENCODE, profile=overrides),
                                corpus_path=tiny_dataset["corpus"])
    encoder = TextEncoder(resolve_model(str(tiny_bert), overrides), ENCODE)
    assert encoder.profile.pooling == "mean" and encoder.profile.format_query("a") == "查询：a"
    texts = [json.loads(line)["text"] for line in tiny_dataset["corpus"].read_text(encoding="utf-8").splitlines()]
    texts += [p for row in TINY_ROWS for p in row["pos"]]
    cached = load_passage_embeddings(mined.base_embeddings,
                                     CacheKey(encoder.fingerprint("passage"), texts_digest(texts)))
    assert cached is not None, "mine encoded with the overridden profile"
    np.testing.assert_allclose(cached, encoder.encode_passages(texts), atol=1e-5)

    scored = score_with_teacher(mined.train, tmp_path / "scored",
                                ScoreConfig(teacher="embedding", teacher_model=str(tiny_bert), encode=ENCODE,
                                            profile=overrides))
    row = read_jsonl_objects(scored)[0]
    q = encoder.encode_queries([row["query"]])[0]
    np.testing.assert_allclose(row["pos_scores"] + row["neg_scores"],
                               encoder.encode_passages(row["pos"] + row["neg"]) @ q / 0.02, atol=2e-3)


def test_a_rows_prompt_is_read_by_mining_and_the_teacher_as_by_training(tmp_path, tiny_bert):
    """A prompt replaces the model's query instruction for its row: the same as writing it
    before the query (tiny_bert has no instruction of its own)."""
    corpus = _write(tmp_path / "corpus.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(TINY_DISTRACTORS)])
    with_prompt = _write(tmp_path / "prompted.jsonl", [{**row, "prompt": PROMPT} for row in TINY_ROWS])
    spelled_out = _write(tmp_path / "spelled.jsonl", [{**row, "query": PROMPT + row["query"]} for row in TINY_ROWS])
    plain = _write(tmp_path / "plain.jsonl", TINY_ROWS)
    config = MineConfig(model=str(tiny_bert), range_for_sampling=(0, 10), negative_number=3, encode=ENCODE)
    negatives = {}
    for name, rows in (("prompted", with_prompt), ("spelled", spelled_out), ("plain", plain)):
        result = mine_hard_negatives(rows, tmp_path / name, config, corpus_path=corpus)
        negatives[name] = [row["neg"] for row in read_jsonl_objects(result.train)]
    assert negatives["prompted"] == negatives["spelled"]
    assert negatives["prompted"] != negatives["plain"]

    teacher = ScoreConfig(teacher="embedding", teacher_model=str(tiny_bert), encode=ENCODE)
    mined_prompted = _write(tmp_path / "mp.jsonl", [{**row, "neg": TINY_DISTRACTORS[:3]}
                                                    for row in read_jsonl_objects(with_prompt)])
    mined_spelled = _write(tmp_path / "ms.jsonl", [{**row, "neg": TINY_DISTRACTORS[:3]}
                                                   for row in read_jsonl_objects(spelled_out)])
    a = read_jsonl_objects(score_with_teacher(mined_prompted, tmp_path / "sa", teacher))
    b = read_jsonl_objects(score_with_teacher(mined_spelled, tmp_path / "sb", teacher))
    np.testing.assert_allclose([r["pos_scores"] + r["neg_scores"] for r in a],
                               [r["pos_scores"] + r["neg_scores"] for r in b], atol=1e-3)


def test_override_values_are_checked():
    with pytest.raises(ValueError, match="pooling: 'max' is not allowed; expected one of auto, cls, mean"):
        ProfileOverrides(pooling="max")
    with pytest.raises(ValueError, match="normalize: True is not allowed"):
        ProfileOverrides(normalize=True)
