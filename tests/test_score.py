"""score: both teachers against independent computations of the same scores, and the
scale of the stored scores checked through FlagEmbedding's own distillation code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from components.jsonl_files import read_jsonl_objects
from components.score import METADATA_FILENAME, ScoreConfig, score_with_teacher
from tests.conftest import TINY_DISTRACTORS, TINY_ROWS, build_tiny_bert

# One positive and seven negatives per row: the recipe's group of 8.
NEGATIVES_PER_ROW = 7
# Optimizer steps that fit the perfect teachers below.
STEPS, LEARNING_RATE = 30, 5e-3


@pytest.fixture()
def mined_rows(tmp_path):
    rows = [{**row, "neg": TINY_DISTRACTORS[i % 12:i % 12 + 3]} for i, row in enumerate(TINY_ROWS)]
    path = tmp_path / "mined.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _group_rows() -> list[dict]:
    """Each tiny row with seven negatives: the distractors next to it, in a fixed order."""
    return [{**row, "neg": [TINY_DISTRACTORS[(i + k) % 12] for k in range(NEGATIVES_PER_ROW)]}
            for i, row in enumerate(TINY_ROWS)]


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _train_perfect_teachers(folder: Path, texts: list[str]) -> tuple[Path, Path]:
    """A tiny cross-encoder and a tiny bi-encoder fitted to rank every positive of
    :func:`_group_rows` above its negatives by a wide margin: perfect teachers."""
    import torch

    rows = _group_rows()
    # One thread: on a shared 2-core machine more threads make these tiny steps 20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(folder, texts, rows)
    finally:
        torch.set_num_threads(threads)


def _fit(folder: Path, texts: list[str], rows: list[dict]) -> tuple[Path, Path]:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    reranker_dir = build_tiny_bert(folder / "reranker", texts, sequence_classification=True)
    tokenizer = AutoTokenizer.from_pretrained(reranker_dir)
    torch.manual_seed(0)
    reranker = AutoModelForSequenceClassification.from_pretrained(reranker_dir)
    pairs = [(row["query"], p) for row in rows for p in row["pos"] + row["neg"]]
    batch = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="pt")
    optimizer = torch.optim.Adam(reranker.parameters(), lr=LEARNING_RATE)
    group = 1 + NEGATIVES_PER_ROW
    targets = torch.zeros(len(rows), dtype=torch.long)
    for _ in range(STEPS):
        # Listwise, as the student: the positive (first of each group) against its negatives.
        loss = torch.nn.functional.cross_entropy(reranker(**batch).logits.view(len(rows), group), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    reranker.save_pretrained(reranker_dir)

    encoder_dir = build_tiny_bert(folder / "encoder", texts)
    encoder = AutoModel.from_pretrained(encoder_dir)
    queries = tokenizer([row["query"] for row in rows], padding=True, return_tensors="pt")
    passages = tokenizer([p for row in rows for p in row["pos"] + row["neg"]], padding=True, return_tensors="pt")
    optimizer = torch.optim.Adam(encoder.parameters(), lr=LEARNING_RATE)
    for _ in range(STEPS):
        q = torch.nn.functional.normalize(encoder(**queries).last_hidden_state[:, 0], dim=-1)
        p = torch.nn.functional.normalize(encoder(**passages).last_hidden_state[:, 0], dim=-1)
        scores = torch.einsum("qd,qgd->qg", q, p.view(len(rows), group, -1)) / 0.02
        loss = torch.nn.functional.cross_entropy(scores, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.save_pretrained(encoder_dir)
    return reranker_dir, encoder_dir


@pytest.fixture(scope="module")
def perfect_teachers(tmp_path_factory, tiny_texts) -> tuple[Path, Path]:
    return _train_perfect_teachers(tmp_path_factory.mktemp("teachers"), tiny_texts)


def flagembedding_targets(rows: list[dict], model_dir: Path) -> np.ndarray:
    """The distillation targets FlagEmbedding itself builds from rows' stored scores:
    its embedder's training forward pass, with the loss function observed, not replaced."""
    import torch
    from FlagEmbedding.abc.finetune.embedder import AbsEmbedderModel
    from FlagEmbedding.finetune.embedder.encoder_only.base.modeling import BiEncoderOnlyEmbedderModel
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BiEncoderOnlyEmbedderModel(AutoModel.from_pretrained(model_dir), tokenizer=tokenizer, temperature=0.02,
                                       normalize_embeddings=True)
    model.train()
    seen: list[torch.Tensor] = []
    real_distill_loss = AbsEmbedderModel.distill_loss

    def observed(kd_loss_type, teacher_targets, student_scores, group_size=None):
        seen.append(teacher_targets.detach().clone())
        return real_distill_loss(kd_loss_type, teacher_targets, student_scores, group_size)

    AbsEmbedderModel.distill_loss = staticmethod(observed)
    try:
        queries = tokenizer([row["query"] for row in rows], padding=True, return_tensors="pt")
        passages = tokenizer([p for row in rows for p in row["pos"][:1] + row["neg"]], padding=True,
                             return_tensors="pt")
        # FlagEmbedding's dataset gives one positive's score, then the sampled negatives'.
        teacher_scores = [s for row in rows for s in row["pos_scores"][:1] + row["neg_scores"]]
        model(queries, passages, teacher_scores=teacher_scores)
    finally:
        AbsEmbedderModel.distill_loss = staticmethod(real_distill_loss)
    assert len(seen) == 1
    return seen[0].numpy()


def test_embedding_teacher_is_cosine_over_temperature(tmp_path, tiny_bert, mined_rows):
    from sentence_transformers import SentenceTransformer

    config = ScoreConfig(teacher="embedding", teacher_model=str(tiny_bert), teacher_temperature=0.05)
    scored = read_jsonl_objects(score_with_teacher(mined_rows, tmp_path / "out", config))
    model = SentenceTransformer(str(tiny_bert), device="cpu")
    for row in scored:
        assert len(row["pos_scores"]) == len(row["pos"]) and len(row["neg_scores"]) == len(row["neg"])
        q = model.encode([row["query"]], normalize_embeddings=True)[0]
        expected = model.encode(row["pos"] + row["neg"], normalize_embeddings=True) @ q / 0.05
        np.testing.assert_allclose(row["pos_scores"] + row["neg_scores"], expected, atol=2e-3)
    metadata = json.loads((tmp_path / "out" / METADATA_FILENAME).read_text(encoding="utf-8"))
    assert metadata["teacher"] == "embedding" and metadata["teacher_temperature"] == 0.05
    assert metadata["score_scale"] == "cosine / 0.05"


def _cross_encoder_logits(folder: Path, scored: list[dict]) -> list[np.ndarray]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    logits = []
    for row in scored:
        passages = row["pos"] + row["neg"]
        with torch.inference_mode():
            batch = tokenizer([row["query"]] * len(passages), passages, padding=True, return_tensors="pt")
            logits.append(model(**batch).logits.view(-1).numpy())
    return logits


def test_cross_encoder_teacher_stores_logits_over_temperature(tmp_path, tiny_texts, mined_rows):
    folder = build_tiny_bert(tmp_path / "reranker", tiny_texts, sequence_classification=True)
    config = ScoreConfig(teacher="cross-encoder", teacher_model=str(folder), devices=("cpu",), batch_size=4,
                         teacher_temperature=0.5)
    scored = read_jsonl_objects(score_with_teacher(mined_rows, tmp_path / "out", config))
    for row, logits in zip(scored[:4], _cross_encoder_logits(folder, scored[:4])):
        np.testing.assert_allclose(row["pos_scores"] + row["neg_scores"], logits / 0.5, atol=1e-4)
    metadata = json.loads((tmp_path / "out" / METADATA_FILENAME).read_text(encoding="utf-8"))
    assert metadata["raw_score"] == "logit" and metadata["teacher_temperature"] == 0.5


def test_recipe_sigmoid_scores_stay_available(tmp_path, tiny_texts, mined_rows):
    import torch

    folder = build_tiny_bert(tmp_path / "reranker", tiny_texts, sequence_classification=True)
    config = ScoreConfig(teacher="cross-encoder", teacher_model=str(folder), devices=("cpu",), batch_size=4,
                         cross_encoder_scores="sigmoid")
    scored = read_jsonl_objects(score_with_teacher(mined_rows, tmp_path / "out", config))
    for row, logits in zip(scored[:4], _cross_encoder_logits(folder, scored[:4])):
        np.testing.assert_allclose(row["pos_scores"] + row["neg_scores"],
                                   torch.sigmoid(torch.from_numpy(logits)).numpy(), atol=1e-4)
    metadata = json.loads((tmp_path / "out" / METADATA_FILENAME).read_text(encoding="utf-8"))
    assert metadata["score_scale"] == "sigmoid(logit) / 1"


def test_perfect_teachers_targets_favour_the_positive_and_agree(tmp_path, perfect_teachers, tiny_bert):
    """FlagEmbedding's softmax over the stored scores is the target: under the default
    scale a perfect teacher of either kind puts most of the mass on the positive, and the
    two teachers' targets on the same rows are alike. The recipe's sigmoid scores cannot:
    at most e/(e+7) for a group of 8."""
    reranker, encoder = perfect_teachers
    rows = _write_rows(tmp_path / "rows.jsonl", _group_rows())
    targets = {}
    for name, config in {
        "cross-encoder": ScoreConfig(teacher="cross-encoder", teacher_model=str(reranker), devices=("cpu",)),
        "embedding": ScoreConfig(teacher="embedding", teacher_model=str(encoder)),
        "sigmoid": ScoreConfig(teacher="cross-encoder", teacher_model=str(reranker), devices=("cpu",),
                               cross_encoder_scores="sigmoid"),
    }.items():
        scored = read_jsonl_objects(score_with_teacher(rows, tmp_path / name, config))
        targets[name] = flagembedding_targets(scored, tiny_bert)
        metadata = json.loads((tmp_path / name / METADATA_FILENAME).read_text(encoding="utf-8"))
        assert metadata["mean_positive_target"] == pytest.approx(targets[name][:, 0].mean(), abs=1e-4)

    for name in ("cross-encoder", "embedding"):
        assert targets[name][:, 0].min() > 0.5, (name, targets[name][:, 0])
        assert (targets[name].argmax(axis=1) == 0).all()
    assert abs(targets["cross-encoder"][:, 0].mean() - targets["embedding"][:, 0].mean()) < 0.25
    assert targets["sigmoid"][:, 0].max() <= math.e / (math.e + NEGATIVES_PER_ROW) + 1e-6


def test_teacher_settings_are_checked():
    with pytest.raises(ValueError, match="teacher"):
        ScoreConfig(teacher="llm")
    with pytest.raises(ValueError, match="teacher_temperature"):
        ScoreConfig(teacher_temperature=0.0)
    with pytest.raises(ValueError, match="cross_encoder_scores"):
        ScoreConfig(cross_encoder_scores="probability")
    assert ScoreConfig().temperature == 1.0
    assert ScoreConfig(teacher="embedding", student_temperature=0.05).temperature == 0.05
