"""Study: which levers of the local recipe raise retrieval quality on cmrc_drcd_zh.

Settings are chosen on a **validation split carved from the training queries** (prepare's
own group-aware split: queries sharing a positive stay on one side), never on the test
split. Each trial runs the pipeline's own step functions (mine, score, fine-tune, evaluate)
on the first ``--train-queries`` training queries and evaluates on the validation queries
against the whole corpus (the global pool), so trials fit a 2-core machine. A trial is a set
of overrides of the local preset (``pipelines.parameters.LOCAL``); mined and scored rows are
shared between trials that agree on them.

Each trial's validation figures are compared query by query with the base model and with
the study's reference trial (paired randomization test, as the evaluate step does).
Results accumulate in ``benchmarks/results/recipe_study.json`` (one record per trial and
training-set size; rerunning a trial replaces its record).

    python benchmarks/recipe_study.py --train-queries 2000 --trials reference range_2_30
    python benchmarks/recipe_study.py --list
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.local_pipeline import machine  # noqa: E402
from components.embedding import EncodeConfig  # noqa: E402
from components.evaluate import EvaluateConfig, evaluate_retrieval, per_query_values  # noqa: E402
from components.mine import MineConfig, mine_hard_negatives, parse_range  # noqa: E402
from components.prepare import PrepareConfig, prepare_training_data  # noqa: E402
from components.score import ScoreConfig, score_with_teacher  # noqa: E402
from components.significance import compare_paired  # noqa: E402
from components.train import TrainConfig, fine_tune  # noqa: E402
from pipelines.parameters import LOCAL  # noqa: E402

logger = logging.getLogger("benchmarks.recipe_study")

VALIDATION_FRACTION = 0.15
# The validation pool: per validation query, this many of the base model's and of BM25's
# best passages in the whole corpus, plus every validation positive.
VALIDATION_CANDIDATES = 10
REFERENCE = "reference"
# Levers: overrides of the local preset's pipeline parameters, plus two study-only knobs
# (warmup_ratio, a TrainConfig field the pipeline does not expose; lexical_weight, the
# hybrid teacher's ScoreConfig field). A trial is "reference" or levers joined by "+"
# (later ones win), always over the reference: the local preset as the study began (hybrid
# teacher, ranks 2-200, lr 5e-5) with distillation off, pinned here so that the study's
# records keep their meaning now that its winner is the preset.
LEVERS: dict[str, dict] = {
    REFERENCE: {"knowledge_distillation": "off", "teacher": "hybrid", "negative_range": "2-200",
                "learning_rate": 5e-5},
    "kd_embedding": {"knowledge_distillation": "on", "teacher": "embedding"},
    "kd_hybrid": {"knowledge_distillation": "on", "teacher": "hybrid"},
    "range_2_15": {"negative_range": "2-15"},
    "range_2_30": {"negative_range": "2-30"},
    "range_2_100": {"negative_range": "2-100"},
    "filter_0.95": {"max_negative_score_fraction": 0.95},
    "lr_2e-5": {"learning_rate": 2e-5},
    "lr_1e-4": {"learning_rate": 1e-4},
    "lr_2e-4": {"learning_rate": 2e-4},
    "warmup_0": {"warmup_ratio": 0.0},
    "warmup_0.3": {"warmup_ratio": 0.3},
    "group_2": {"train_group_size": 2},
    "group_8": {"train_group_size": 8},
    "batch_16": {"per_device_train_batch_size": 16},
    "batch_32": {"per_device_train_batch_size": 32},
    "unfrozen": {"freeze_word_embeddings": False},
    "temperature_0.05": {"temperature": 0.05},
    "temperature_0.01": {"temperature": 0.01},
}


def trial_overrides(name: str) -> dict:
    """The overrides of a trial name such as ``range_2_30+lr_1e-4``."""
    overrides = dict(LEVERS[REFERENCE])
    for lever in name.split("+"):
        if lever not in LEVERS:
            raise KeyError(lever)
        overrides.update(LEVERS[lever])
    return overrides

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _memo_path(work: Path, encoder, formatted_texts: list[str], max_length: int) -> Path:
    digest = hashlib.sha256(f"{encoder.fingerprint('any')}|{max_length}".encode())
    for text in formatted_texts:
        digest.update(text.encode("utf-8") + b"\x00")
    return work / "base_vectors" / f"{digest.hexdigest()[:24]}.npy"


def seed_memo_from_mining(work: Path, mined: Path, split: Path) -> None:
    """Put the pool vectors a mining run saved (checked by their cache key) into the memo."""
    import numpy as np

    from components.embedding import TextEncoder
    from components.embedding_cache import CacheKey, load_passage_embeddings, texts_digest
    from components.model_profiles import resolve_model

    parameters = LOCAL
    model = resolve_model(parameters.student_model)
    model = dataclasses.replace(model, profile=model.profile.with_max_lengths(parameters.query_max_len,
                                                                              parameters.passage_max_len))
    encoder = TextEncoder(model, _encode(parameters))
    texts = [json.loads(line)["text"] for line in (split / "corpus.jsonl").open(encoding="utf-8")]
    vectors = load_passage_embeddings(mined / "base_embeddings",
                                      CacheKey(encoder.fingerprint("passage"), texts_digest(texts)))
    if vectors is None:
        raise SystemExit(f"{mined / 'base_embeddings'} does not hold this model's vectors of {split / 'corpus.jsonl'}")
    path = _memo_path(work, encoder, [model.profile.format_passage(t) for t in texts], model.profile.passage_max_len)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    logger.info("memo seeded with %d pool vectors from %s", len(vectors), mined)


def memoize_base_model_vectors(work: Path) -> None:
    """Study only: the base model encodes a given list of texts once per study.

    Every trial mines, scores and evaluates with the same base model over the same texts;
    on a shared 2-core CPU re-encoding them would cost more than the trials' training. The
    vectors are kept on disk under ``work/base_vectors``, keyed by the formatted texts, the
    length limit and the encoder's fingerprint (model, profile, dtype), so a hit returns
    exactly what the encoder would compute. Fine-tuned models are never memoized.
    """
    import numpy as np

    from components.embedding import TextEncoder
    from components.model_profiles import resolve_model

    base_path = resolve_model(LOCAL.student_model).path
    original = TextEncoder._encode

    def encode(self, texts, max_length, description):
        if self.model_ref.path != base_path:
            return original(self, texts, max_length, description)
        path = _memo_path(work, self, texts, max_length)
        if path.is_file():
            return np.load(path)
        vectors = original(self, texts, max_length, description)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".partial.npy"), vectors)
        os.replace(path.with_suffix(".partial.npy"), path)
        return vectors

    TextEncoder._encode = encode


def _parameters(overrides: dict):
    study_only = {k: v for k, v in overrides.items() if k in ("warmup_ratio", "lexical_weight")}
    return LOCAL.with_overrides(**{k: v for k, v in overrides.items() if k not in study_only}), study_only


def _encode(parameters) -> EncodeConfig:
    return EncodeConfig(batch_size=parameters.encode_batch_size, show_progress=False)


def _split(data_dir: Path, work: Path) -> Path:
    folder = work / "validation_split"
    if not (folder / "test.jsonl").is_file():
        prepare_training_data(data_dir / "train.jsonl", folder,
                              PrepareConfig(test_fraction=VALIDATION_FRACTION, seed=LOCAL.seed),
                              corpus_path=data_dir / "corpus.jsonl")
    return folder


def _mined(split: Path, work: Path, parameters) -> Path:
    key = f"mined_{parameters.negative_range}_n{parameters.negative_number}_f{parameters.max_negative_score_fraction:g}"
    folder = work / key
    if not (folder / "mining_stats.json").is_file():
        config = MineConfig(model=parameters.student_model, range_for_sampling=parse_range(parameters.negative_range),
                            negative_number=parameters.negative_number,
                            max_negative_score_fraction=parameters.max_negative_score_fraction or None,
                            seed=parameters.seed, query_max_len=parameters.query_max_len,
                            passage_max_len=parameters.passage_max_len, encode=_encode(parameters))
        mine_hard_negatives(split / "train.jsonl", folder, config, test_path=split / "test.jsonl",
                            corpus_path=split / "corpus.jsonl")
    return folder


def _validation_pool(split: Path, mined: Path, parameters) -> tuple[Path, Path]:
    """Validation rows (query and positives only) and their candidate pool, written once.

    Encoding the whole 34,293-passage corpus with every trial's model would cost more than
    training it on this CPU. A trial's errors are passages that the base model or the words
    already rank high, so the pool is what either ranks in its top ``VALIDATION_CANDIDATES``
    for any validation query. Figures in it are a little above the whole-corpus ones (fewer
    distractors); trials are compared with each other in the same pool, and the winner is
    confirmed on the whole corpus.
    """
    import numpy as np

    from components.embedding import TextEncoder
    from components.evaluate import normalize_rows
    from components.lexical_retrieval import BM25Index
    from components.model_profiles import resolve_model

    rows_path, pool_path = split / "validation_rows.jsonl", split / "validation_pool.jsonl"
    if pool_path.is_file():
        return rows_path, pool_path
    corpus = [json.loads(line) for line in (split / "corpus.jsonl").open(encoding="utf-8")]
    rows = [json.loads(line) for line in (split / "test.jsonl").open(encoding="utf-8")]
    model = resolve_model(parameters.student_model)
    model = dataclasses.replace(model, profile=model.profile.with_max_lengths(parameters.query_max_len,
                                                                              parameters.passage_max_len))
    encoder = TextEncoder(model, _encode(parameters))
    passages = normalize_rows(encoder.encode_passages([entry["text"] for entry in corpus]))
    queries = normalize_rows(encoder.encode_queries([row["query"] for row in rows]))
    keep = set()
    for start in range(0, len(queries), 256):
        scores = queries[start:start + 256] @ passages.T
        keep.update(np.argpartition(-scores, VALIDATION_CANDIDATES, axis=1)[:, :VALIDATION_CANDIDATES].ravel().tolist())
    index = BM25Index([entry["text"] for entry in corpus])
    for ranking in index.search([row["query"] for row in rows], VALIDATION_CANDIDATES):
        keep.update(int(i) for i in ranking if i >= 0)
    positives = {p for row in rows for p in row["pos"]}
    pool = [entry for i, entry in enumerate(corpus) if i in keep or entry["text"] in positives]
    rows_path.write_text("".join(json.dumps({"query": r["query"], "pos": r["pos"]}, ensure_ascii=False) + "\n"
                                 for r in rows), encoding="utf-8")
    pool_path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in pool), encoding="utf-8")
    logger.info("validation pool: %d of %d corpus passages for %d queries", len(pool), len(corpus), len(rows))
    return rows_path, pool_path


def _subset(mined: Path, count: int) -> Path:
    path = mined / f"train_first_{count}.jsonl"
    if not path.is_file():
        lines = (mined / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        if count > len(lines):
            raise SystemExit(f"--train-queries {count}: the training side of the split has {len(lines)} queries")
        path.write_text("".join(lines[:count]), encoding="utf-8")
    return path


def _scored(rows: Path, parameters, study_only: dict) -> Path:
    extra = {"lexical_weight": study_only["lexical_weight"]} if "lexical_weight" in study_only else {}
    config = ScoreConfig(teacher=parameters.teacher, teacher_model=parameters.teacher_model,
                         teacher_temperature=parameters.teacher_temperature or None, encode=_encode(parameters), **extra)
    folder = rows.parent / f"scored_{rows.stem}_{config.teacher}_{config.temperature:g}_{config.lexical_weight:g}"
    if not (folder / "train.jsonl").is_file():
        score_with_teacher(rows, folder, config)
    return folder / "train.jsonl"


def _train_config(parameters, study_only: dict) -> TrainConfig:
    values = {name: getattr(parameters, name) for name in TRAIN_FIELDS if hasattr(parameters, name)}
    values["model"] = parameters.student_model
    values["logging_steps"] = 25
    values["save_steps"] = 10**6
    if "warmup_ratio" in study_only:
        values["warmup_ratio"] = study_only["warmup_ratio"]
    return TrainConfig(**values)


def _paired(a: list, b: list, metric: str, k: int) -> dict:
    ranks = [[float("inf") if r is None else r for r in ranks] for ranks in (a, b)]
    comparison = compare_paired(per_query_values(ranks[0], metric, k), per_query_values(ranks[1], metric, k))
    return {"delta": round(comparison.delta, 4), "p_value": round(comparison.p_value, 4),
            "ci": [round(comparison.ci_low, 4), round(comparison.ci_high, 4)]}


def run_trial(name: str, overrides: dict, data_dir: Path, work: Path, train_queries: int, epochs: float) -> dict:
    parameters, study_only = _parameters({"num_train_epochs": epochs, **overrides})
    split = _split(data_dir, work)
    started = time.time()
    mined = _mined(split, work, parameters)
    rows = _subset(mined, train_queries)
    if parameters.knowledge_distillation != "off":
        rows = _scored(rows, parameters, study_only)
    prepared_s = time.time() - started

    validation_rows, validation_pool = _validation_pool(split, mined, parameters)
    model_dir = work / "models" / f"{name}_{train_queries}"
    load = os.getloadavg()[0]
    trained = fine_tune(rows, model_dir, _train_config(parameters, study_only))
    train_s = time.time() - started - prepared_s
    evaluation = evaluate_retrieval(
        validation_rows, validation_pool, parameters.student_model, model_dir,
        work / "evaluations" / f"{name}_{train_queries}",
        EvaluateConfig(query_max_len=parameters.query_max_len, passage_max_len=parameters.passage_max_len,
                       lexical_baselines=False, permutations=10_000, encode=_encode(parameters)))
    shutil.rmtree(model_dir, ignore_errors=True)  # 470 MB each; the figures are what the study keeps
    flat, summary = evaluation.flat, trained.summary
    return {
        "trial": name, "train_queries": train_queries, "overrides": overrides, "epochs": epochs,
        "validation_queries": evaluation.metrics["counts"]["queries"],
        "global_pool_passages": evaluation.metrics["counts"]["global_pool_passages"],
        "train_s": round(train_s, 1), "train_runtime_s": summary["train_runtime_s"],
        "train_samples_per_second": summary["train_samples_per_second"], "final_loss": summary["final_loss"],
        "knowledge_distillation": summary["knowledge_distillation"],
        "load_average_1min_at_start": round(load, 2), "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "validation": {name: round(value, 4) for name, value in flat.items()
                       if name.startswith(("global_", "test_", "separation")) and "_at_5_" not in name},
        # The fine-tuned model's rank of each validation query's first positive (the base
        # model's is the same in every trial): trials are compared query by query.
        "per_query_first_rank": {pool: ranks["finetuned"]
                                 for pool, ranks in evaluation.metrics["per_query_first_rank"].items()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _with_reference_comparison(record: dict, records: list[dict]) -> dict:
    reference = next((r for r in records if r["trial"] == REFERENCE and r["train_queries"] == record["train_queries"]
                      and r["epochs"] == record["epochs"]), None)
    if reference is None or record["trial"] == REFERENCE:
        record.pop("versus_reference", None)
        return record
    record["versus_reference"] = {}
    for pool in ("global_pool", "test_pool"):
        mine, theirs = record["per_query_first_rank"][pool], reference["per_query_first_rank"][pool]
        record["versus_reference"][pool] = {f"{metric}@{k}": _paired(theirs, mine, metric, k)
                                            for metric, k in (("recall", 1), ("mrr", 10))}
    return record


def teacher_candidates(data_dir: Path, work: Path, weights: list[float]) -> dict:
    """How well each candidate teacher ranks the whole corpus for the validation queries.

    A distillation teacher is only worth its cost if it ranks better than the student
    already does; this compares the base model, BM25, their reciprocal-rank fusion and the
    hybrid teacher's linear mix (cosine + w x BM25 share) for several weights, as
    retrievers over the global pool (the base model's vectors come from mining's cache).
    """
    import numpy as np

    from components.embedding import TextEncoder
    from components.embedding_cache import CacheKey, load_passage_embeddings, texts_digest
    from components.evaluate import normalize_rows, retrieval_metrics
    from components.lexical_retrieval import BM25Index, reciprocal_rank_fusion
    from components.model_profiles import resolve_model

    parameters, _ = _parameters({"knowledge_distillation": "off"})
    split = _split(data_dir, work)
    mined = _mined(split, work, parameters)
    corpus = [json.loads(line)["text"] for line in (split / "corpus.jsonl").open(encoding="utf-8")]
    rows = [json.loads(line) for line in (split / "test.jsonl").open(encoding="utf-8")]
    where = {text: i for i, text in enumerate(corpus)}
    positives = [{where[p] for p in row["pos"]} for row in rows]
    model = resolve_model(parameters.student_model)
    model = dataclasses.replace(model, profile=model.profile.with_max_lengths(parameters.query_max_len,
                                                                              parameters.passage_max_len))
    encoder = TextEncoder(model, _encode(parameters))
    cached = load_passage_embeddings(mined / "base_embeddings",
                                     CacheKey(encoder.fingerprint("passage"), texts_digest(corpus)))
    if cached is None:
        raise SystemExit(f"no base-model vectors of this corpus in {mined / 'base_embeddings'}")
    passages = normalize_rows(cached)
    queries = normalize_rows(encoder.encode_queries([row["query"] for row in rows], "validation queries"))
    cosine = queries @ passages.T
    index = BM25Index(corpus)
    lexical = np.stack([index.scores(row["query"]) / max(index.score_bound(row["query"]), 1e-9) for row in rows])
    depth = 100
    top = lambda scores: np.argsort(-scores, axis=1, kind="stable")[:, :depth]  # noqa: E731
    dense_ranking, lexical_ranking = top(cosine), top(lexical)
    results = {"validation_queries": len(rows), "dense (base model)": retrieval_metrics(dense_ranking, positives),
               "bm25": retrieval_metrics(lexical_ranking, positives),
               "reciprocal-rank fusion": retrieval_metrics(
                   reciprocal_rank_fusion([dense_ranking, lexical_ranking], depth=10), positives)}
    for weight in weights:
        results[f"cosine + {weight:g} x bm25 share"] = retrieval_metrics(top(cosine + weight * lexical), positives)
    return {name: ({k: round(v, 4) for k, v in value.items()} if isinstance(value, dict) else value)
            for name, value in results.items()}


def _load(output: Path) -> dict:
    if output.is_file():
        return json.loads(output.read_text(encoding="utf-8"))
    return {"benchmark": "recipe_study", "data": "cmrc_drcd_zh", "validation_fraction": VALIDATION_FRACTION,
            "reference_parameters": reference_parameters(), "trials": []}


def reference_parameters() -> dict:
    """The reference trial's pipeline parameters: every trial's overrides apply over these."""
    parameters, _ = _parameters(LEVERS[REFERENCE])
    return dataclasses.asdict(parameters)


def _save(output: Path, study: dict) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_suffix(".json.partial")
    # One line per trial: each holds every validation query's rank, which would otherwise take
    # a line of its own.
    head = json.dumps({k: v for k, v in study.items() if k != "trials"}, ensure_ascii=False, indent=1)
    trials = ",\n".join("  " + json.dumps(trial, ensure_ascii=False) for trial in study.get("trials", []))
    temporary.write_text(head[:-2] + ',\n "trials": [\n' + trials + "\n ]\n}\n", encoding="utf-8")
    json.loads(temporary.read_text(encoding="utf-8"))  # still one JSON document
    os.replace(temporary, output)


def print_table(study: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Recipe study on cmrc_drcd_zh (validation split, global pool)")
    for column in ("trial", "queries", "epochs", "train s", "R@1 base→ft", "MRR@10 base→ft", "p (R@1 vs base)",
                   "ΔR@1 vs reference (p)", "ΔMRR@10 vs reference (p)"):
        table.add_column(column, justify="left" if column == "trial" else "right")
    for r in study["trials"]:
        v = r["validation"]
        versus = r.get("versus_reference", {}).get("global_pool")
        table.add_row(r["trial"], str(r["train_queries"]), f"{r['epochs']:g}", f"{r['train_s']:.0f}",
                      f"{v['global_recall_at_1_base']:.4f}→{v['global_recall_at_1_finetuned']:.4f}",
                      f"{v['global_mrr_at_10_base']:.4f}→{v['global_mrr_at_10_finetuned']:.4f}",
                      f"{v['global_recall_at_1_p_value']:.4f}",
                      f"{versus['recall@1']['delta']:+.4f} ({versus['recall@1']['p_value']:.3f})" if versus else "",
                      f"{versus['mrr@10']['delta']:+.4f} ({versus['mrr@10']['p_value']:.3f})" if versus else "")
    Console().print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "cmrc_drcd_zh")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / "work" / "recipe_study")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "recipe_study.json")
    parser.add_argument("--train-queries", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--trials", nargs="*", default=[], help="trials: reference, or levers joined by + (see --list)")
    parser.add_argument("--list", action="store_true", help="print the levers and exit")
    parser.add_argument("--table", action="store_true", help="print the table of the results so far and exit")
    parser.add_argument("--seed-memo", type=Path, metavar="MINED_FOLDER",
                        help="put a finished mining run's pool vectors into the study's memo and exit")
    parser.add_argument("--teacher-candidates", nargs="*", type=float, metavar="WEIGHT",
                        help="rank the validation queries with each candidate teacher (hybrid weights given) and exit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.list:
        for name, overrides in LEVERS.items():
            print(f"{name}: {overrides}")
        return 0
    study = _load(args.output)
    if args.table:
        print_table(study)
        return 0
    if args.seed_memo:
        seed_memo_from_mining(args.work_dir, args.seed_memo, args.work_dir / "validation_split")
        return 0
    if args.teacher_candidates is not None:
        memoize_base_model_vectors(args.work_dir)
        study["teacher_candidates"] = teacher_candidates(args.data_dir, args.work_dir, args.teacher_candidates)
        _save(args.output, study)
        print(json.dumps(study["teacher_candidates"], indent=1))
        return 0
    unknown = [lever for name in args.trials for lever in name.split("+") if lever not in LEVERS]
    if unknown:
        parser.error(f"unknown levers {unknown}; known: {', '.join(LEVERS)}")
    study["machine"] = machine()
    memoize_base_model_vectors(args.work_dir)
    for name in args.trials:
        logger.info("trial %s (%d training queries, %g epochs)", name, args.train_queries, args.epochs)
        record = run_trial(name, trial_overrides(name), args.data_dir, args.work_dir, args.train_queries, args.epochs)
        study["trials"] = [r for r in study["trials"] if not (r["trial"] == name and r["train_queries"] ==
                                                               args.train_queries and r["epochs"] == args.epochs)]
        study["trials"].append(record)
        study["trials"] = [_with_reference_comparison(r, study["trials"]) for r in study["trials"]]
        _save(args.output, study)
        print_table(study)
    return 0


if __name__ == "__main__":
    sys.exit(main())
