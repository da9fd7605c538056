"""KFP v2 components: thin shells around the steps in ``components/``.

Each body imports its step inside (KFP ships the function's source, not the module) and
maps artifacts to paths. On a cluster they run in the searchtune image, where the
package is installed; locally ``kfp.local.SubprocessRunner`` runs them in this Python.
"""


import os

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

SEARCHTUNE_IMAGE = os.environ.get("SEARCHTUNE_IMAGE", "ghcr.io/searchtune/searchtune:0.1.0")


@dsl.component(base_image=SEARCHTUNE_IMAGE, install_kfp_package=False)
def fingerprint_inputs(train_data: str, test_data: str, corpus: str) -> str:
    """What the input locations hold now (S3: ETag, size, mtime; files: SHA-256).

    Runs uncached in every run; prepare takes its output as a parameter, so prepare's cache
    key (and everything after it) follows the data, not the URI.
    """
    from components.data_sources import fingerprint_inputs as fingerprint

    return fingerprint([train_data, test_data, corpus])


@dsl.component(base_image=SEARCHTUNE_IMAGE, install_kfp_package=False)
def prepare_data(
    train_data: str,
    test_data: str,
    corpus: str,
    input_fingerprint: str,
    sample_queries: int,
    sample_seed: int,
    test_fraction: float,
    seed: int,
    skip_invalid: bool,
    student_model: str,
    query_max_len: int,
    passage_max_len: int,
    pooling: str,
    normalize: str,
    query_instruction: str,
    passage_instruction: str,
    train_set: Output[Dataset],
    test_set: Output[Dataset],
    global_pool: Output[Dataset],
    data_report: Output[Markdown],
):
    """Validate rows (or generate the built-in sample), split 9:1, build the global pool."""
    import shutil
    import tempfile

    from components.data_sources import resolve_training_inputs
    from components.prepare import PrepareConfig, prepare_training_data
    from components.sample_data import SampleDataConfig
    from pipelines.parameters import step_config

    # Checked before any work; input_fingerprint is here for the cache key only.
    config, sample = step_config(PrepareConfig, locals()), step_config(SampleDataConfig, locals())
    work = tempfile.mkdtemp(prefix="prepare-")
    inputs = resolve_training_inputs(train_data, test_data, corpus, work, sample)
    prepared = prepare_training_data(inputs.train, f"{work}/out", config, test_path=inputs.test,
                                     corpus_path=inputs.corpus)
    for source, artifact in ((prepared.train, train_set), (prepared.test, test_set),
                             (prepared.corpus, global_pool), (prepared.report_markdown, data_report)):
        shutil.move(str(source), artifact.path)
    counts = prepared.report["counts"]
    train_set.metadata.update({"rows": counts["train_queries"], "input_fingerprint": input_fingerprint})
    test_set.metadata.update({"rows": counts["test_queries"]})
    global_pool.metadata.update({"passages": counts["global_pool_passages"]})


@dsl.component(base_image=SEARCHTUNE_IMAGE, install_kfp_package=False)
def mine_negatives(
    train_set: Input[Dataset],
    test_set: Input[Dataset],
    global_pool: Input[Dataset],
    student_model: str,
    negative_range: str,
    negative_number: int,
    max_negative_score_fraction: float,
    seed: int,
    query_max_len: int,
    passage_max_len: int,
    encode_batch_size: int,
    pooling: str,
    normalize: str,
    query_instruction: str,
    passage_instruction: str,
    mined_train: Output[Dataset],
    mined_test: Output[Dataset],
    base_embeddings: Output[Artifact],
):
    """Hard negatives from the base model's ranking; keeps the pool's vectors for evaluation."""
    import shutil
    import tempfile

    from components.mine import MineConfig, mine_hard_negatives
    from pipelines.parameters import step_config

    config = step_config(MineConfig, locals())
    mined = mine_hard_negatives(train_set.path, tempfile.mkdtemp(prefix="mine-"), config,
                                test_path=test_set.path, corpus_path=global_pool.path)
    shutil.move(str(mined.train), mined_train.path)
    shutil.move(str(mined.test), mined_test.path)
    shutil.move(str(mined.base_embeddings), base_embeddings.path)
    mined_train.metadata.update(mined.stats["train"])


@dsl.component(base_image=SEARCHTUNE_IMAGE, install_kfp_package=False)
def score_pairs(
    mined_train: Input[Dataset],
    base_embeddings: Input[Artifact],
    student_model: str,
    teacher: str,
    teacher_model: str,
    teacher_temperature: float,
    cross_encoder_scores: str,
    temperature: float,
    query_max_len: int,
    passage_max_len: int,
    encode_batch_size: int,
    pooling: str,
    normalize: str,
    query_instruction: str,
    passage_instruction: str,
    scored_train: Output[Dataset],
):
    """Teacher scores for every (query, passage) pair: the soft labels for distillation."""
    import dataclasses
    import json
    import shutil
    import tempfile

    from components.model_profiles import ProfileOverrides
    from components.score import METADATA_FILENAME, ScoreConfig, score_with_teacher
    from pipelines.parameters import step_config

    config = step_config(ScoreConfig, locals())
    if teacher_model != student_model:
        # The profile overrides describe the student; another teacher keeps its own profile.
        config = dataclasses.replace(config, profile=ProfileOverrides())
    scored = score_with_teacher(mined_train.path, tempfile.mkdtemp(prefix="score-"), config,
                                pool_embeddings=base_embeddings.path)
    metadata = json.loads((scored.parent / METADATA_FILENAME).read_text(encoding="utf-8"))
    shutil.move(str(scored), scored_train.path)
    # What the scores mean (teacher, temperature, scale) travels with the artifact.
    scored_train.metadata.update({key: value for key, value in metadata.items() if key != "config"})


@dsl.component(base_image=SEARCHTUNE_IMAGE, install_kfp_package=False)
def fine_tune_embedder(
    scored_train: Input[Dataset],
    student_model: str,
    train_group_size: int,
    query_max_len: int,
    passage_max_len: int,
    knowledge_distillation: str,
    learning_rate: float,
    temperature: float,
    num_train_epochs: float,
    max_steps: int,
    per_device_train_batch_size: int,
    precision: str,
    deepspeed: bool,
    gradient_checkpointing: bool,
    freeze_word_embeddings: bool,
    nproc_per_node: int,
    seed: int,
    pooling: str,
    normalize: str,
    query_instruction: str,
    passage_instruction: str,
    finetuned_model: Output[Model],
    training_metrics: Output[Metrics],
):
    """FlagEmbedding fine-tuning under torchrun (one node; PyTorchJob on the cluster)."""
    import json

    from components.train import TrainConfig, fine_tune
    from pipelines.parameters import step_config

    config = step_config(TrainConfig, locals())
    result = fine_tune(scored_train.path, finetuned_model.path, config)
    summary = result.summary
    finetuned_model.metadata.update({"base_model": student_model, "framework": "FlagEmbedding",
                                     "knowledge_distillation": summary["knowledge_distillation"],
                                     "normalize": summary["profile"]["normalize"],
                                     "pooling": summary["profile"]["pooling"]})
    if summary["final_loss"] is not None:  # None on a PyTorchJob node other than the first
        training_metrics.log_metric("final_train_loss", float(summary["final_loss"]))
    training_metrics.log_metric("rows_short_of_negatives", float(summary["rows_short_of_negatives"]))
    if summary["train_runtime_s"] is not None:
        training_metrics.log_metric("train_runtime_s", float(summary["train_runtime_s"]))
    # kfp.local reuses a cached task only while every output artifact's file exists; a
    # Metrics artifact lives in its metadata, so its file holds the same values.
    with open(training_metrics.path, "w", encoding="utf-8") as handle:
        json.dump(training_metrics.metadata, handle, indent=2)


@dsl.component(base_image=SEARCHTUNE_IMAGE, install_kfp_package=False)
def evaluate_models(
    mined_test: Input[Dataset],
    global_pool: Input[Dataset],
    base_embeddings: Input[Artifact],
    finetuned_model: Input[Model],
    base_model: str,
    query_max_len: int,
    passage_max_len: int,
    encode_batch_size: int,
    pooling: str,
    normalize: str,
    query_instruction: str,
    passage_instruction: str,
    metrics: Output[Metrics],
    report: Output[Markdown],
    report_html: Output[HTML],
    results: Output[Artifact],
):
    """Base vs fine-tuned: recall/MRR@1/5/10 in the test and global pools, separation."""
    import shutil
    import tempfile

    from components.evaluate import EvaluateConfig, evaluate_retrieval
    from pipelines.parameters import step_config

    config = step_config(EvaluateConfig, locals())
    result = evaluate_retrieval(mined_test.path, global_pool.path, base_model, finetuned_model.path,
                                tempfile.mkdtemp(prefix="evaluate-"), config,
                                base_passage_embeddings=base_embeddings.path)
    for name, value in result.flat.items():
        # KFP metrics must be numbers; separation is NaN when no test row has negatives.
        if value == value:
            metrics.log_metric(name, float(value))
    # kfp.local reuses a cached task only while every output artifact's file exists.
    shutil.copy(str(result.metrics_path), metrics.path)
    shutil.move(str(result.report_md_path), report.path)
    shutil.move(str(result.report_html_path), report_html.path)
    shutil.move(str(result.metrics_path), results.path)
