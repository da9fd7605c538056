"""Quality on real data: a brief fine-tune of the builtin model on a slice of cmrc_drcd_zh
must raise recall@1 on a slice of its test split, with the local preset's settings."""

from __future__ import annotations

import json

import pytest

from components.embedding import EncodeConfig
from components.evaluate import EvaluateConfig, evaluate_retrieval
from components.mine import MineConfig, mine_hard_negatives, parse_range
from components.prepare import prepare_training_data
from components.score import ScoreConfig, score_with_teacher
from components.train import TrainConfig, fine_tune
from pipelines.parameters import LOCAL
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.slow

DATA = SHARED_DATA / "cmrc_drcd_zh"
TRAIN_QUERIES, TEST_QUERIES, DISTRACTORS_PER_QUERY = 1600, 250, 8


def _lexical_neighbours(queries: list[str], texts: list[str], per_query: int) -> set[int]:
    """Indices of the texts sharing the most character bigrams with each query: the
    distractors a lexical matcher (and an untuned model) confuses with the answer."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(2, 2), sublinear_tf=True)
    passages = vectorizer.fit_transform(texts)
    scores = (vectorizer.transform(queries) @ passages.T).toarray()
    return {int(i) for row in scores for i in row.argsort()[::-1][:per_query]}


@pytest.fixture(scope="module")
def cmrc_slice(tmp_path_factory):
    if not DATA.is_dir():
        pytest.fail(f"public data missing: {DATA} (see ../shared/data/README.md)")
    folder = tmp_path_factory.mktemp("cmrc")
    read = lambda name: [json.loads(line) for line in (DATA / name).open(encoding="utf-8")]  # noqa: E731
    train, test = read("train.jsonl")[:TRAIN_QUERIES], read("test.jsonl")[:TEST_QUERIES]
    needed = {p for row in train + test for p in row["pos"]}
    corpus = read("corpus.jsonl")
    hard = _lexical_neighbours([row["query"] for row in train + test], [c["text"] for c in corpus],
                               DISTRACTORS_PER_QUERY)
    pool = [c for i, c in enumerate(corpus) if c["text"] in needed or i in hard]
    for name, rows in (("train", train), ("test", test), ("corpus", pool)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                             encoding="utf-8")
    return folder


def test_brief_fine_tune_improves_recall_at_1(cmrc_slice, tmp_path):
    p = LOCAL
    encode = EncodeConfig(batch_size=p.encode_batch_size, show_progress=False)
    prepared = prepare_training_data(cmrc_slice / "train.jsonl", tmp_path / "prepared",
                                     test_path=cmrc_slice / "test.jsonl", corpus_path=cmrc_slice / "corpus.jsonl")
    mined = mine_hard_negatives(prepared.train, tmp_path / "mined",
                                MineConfig(model=p.student_model, range_for_sampling=parse_range(p.negative_range),
                                           negative_number=p.negative_number, query_max_len=p.query_max_len,
                                           passage_max_len=p.passage_max_len, encode=encode),
                                test_path=prepared.test, corpus_path=prepared.corpus)
    # As in the pipeline: the teacher reads the pipeline's lengths, so the embedding teacher
    # (the student model) takes mine's passage vectors instead of encoding them again.
    scored = score_with_teacher(mined.train, tmp_path / "scored",
                                ScoreConfig(teacher=p.teacher, teacher_model=p.teacher_model,
                                            query_max_len=p.query_max_len, passage_max_len=p.passage_max_len,
                                            encode=encode),
                                pool_embeddings=mined.base_embeddings)
    trained = fine_tune(scored, tmp_path / "model", TrainConfig(
        model=p.student_model, train_group_size=p.train_group_size, query_max_len=p.query_max_len,
        passage_max_len=p.passage_max_len, knowledge_distillation=p.knowledge_distillation,
        learning_rate=p.learning_rate, num_train_epochs=p.num_train_epochs,
        per_device_train_batch_size=p.per_device_train_batch_size, precision=p.precision, deepspeed=p.deepspeed,
        gradient_checkpointing=p.gradient_checkpointing, freeze_word_embeddings=p.freeze_word_embeddings,
        nproc_per_node=p.nproc_per_node, logging_steps=25))
    result = evaluate_retrieval(mined.test, prepared.corpus, p.student_model, trained.model_dir, tmp_path / "eval",
                                EvaluateConfig(query_max_len=p.query_max_len, passage_max_len=p.passage_max_len,
                                               encode=encode),
                                base_passage_embeddings=mined.base_embeddings)
    flat = result.flat
    print(result.report_md_path.read_text(encoding="utf-8"))
    assert flat["global_recall_at_1_finetuned"] > flat["global_recall_at_1_base"]
    assert flat["test_recall_at_1_finetuned"] > flat["test_recall_at_1_base"]
    assert flat["separation_finetuned"] > flat["separation_base"]
