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
    from components.object_store import seal_folder
    from pipelines.parameters import step_config

    config = step_config(MineConfig, locals())
    mined = mine_hard_negatives(train_set.path, tempfile.mkdtemp(prefix="mine-"), config,
                                test_path=test_set.path, corpus_path=global_pool.path)
    shutil.move(str(mined.train), mined_train.path)
    shutil.move(str(mined.test), mined_test.path)
    shutil.move(str(mined.base_embeddings), base_embeddings.path)
    # The marker goes last: evaluate refuses a cache the artifact store did not hand over whole.
    seal_folder(base_embeddings.path)
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
    from components.object_store import require_complete_folder
    from components.score import METADATA_FILENAME, ScoreConfig, score_with_teacher
    from pipelines.parameters import step_config

    # mine's vectors are reused only from a folder that was written whole.
    require_complete_folder(base_embeddings.path)
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
    save_steps: int,
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
    train_executor: str = "local",
    cluster_profile: str = "",
    pipeline_run_id: str = "",
    pipeline_task_name: str = "",
):
    """FlagEmbedding fine-tuning under torchrun: in this pod (``local``), or as a PyTorchJob or
    TrainJob this step creates, follows and cleans up (the job's Master seals the model at
    this artifact's own URI, which evaluate then receives unchanged)."""
    import json

    if train_executor == "local":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "train_executor=local trains with torchrun in this step's own pod, but its image has no torch: "
                "the pipeline was compiled for a cluster job (the cluster profile's training.executor); "
                "recompile with training.executor: local to train in the train image, or keep the compiled executor"
            ) from None
        from components.object_store import seal_folder
        from components.train import TrainConfig, fine_tune
        from pipelines.parameters import step_config

        summary = fine_tune(scored_train.path, finetuned_model.path, step_config(TrainConfig, locals())).summary
        seal_folder(finetuned_model.path)
    else:
        # The launcher image has no torch: the replicas build and check the TrainConfig.
        from pipelines.job_launcher import fine_tune_on_cluster

        flags = dict(model=student_model, train_group_size=train_group_size, query_max_len=query_max_len,
                     passage_max_len=passage_max_len, knowledge_distillation=knowledge_distillation,
                     learning_rate=learning_rate, temperature=temperature, num_train_epochs=num_train_epochs,
                     max_steps=max_steps, save_steps=save_steps,
                     per_device_train_batch_size=per_device_train_batch_size,
                     precision=precision, deepspeed=deepspeed, gradient_checkpointing=gradient_checkpointing,
                     freeze_word_embeddings=freeze_word_embeddings, nproc_per_node=nproc_per_node, seed=seed,
                     pooling=pooling, normalize=normalize, query_instruction=query_instruction,
                     passage_instruction=passage_instruction)
        # Nothing is written at finetuned_model.path, so the KFP launcher uploads nothing over
        # the sealed folder at finetuned_model.uri.
        summary = fine_tune_on_cluster(train_executor, cluster_profile, flags, scored_train.uri, finetuned_model.uri,
                                       pipeline_run_id, pipeline_task_name).summary
    profile = summary.get("profile") or {}
    finetuned_model.metadata.update({"base_model": student_model, "framework": "FlagEmbedding",
                                     "train_executor": train_executor,
                                     "knowledge_distillation": summary.get("knowledge_distillation"),
                                     "normalize": profile.get("normalize"), "pooling": profile.get("pooling")})
    if summary.get("final_loss") is not None:  # None on a PyTorchJob node other than the first
        training_metrics.log_metric("final_train_loss", float(summary["final_loss"]))
    if summary.get("rows_short_of_negatives") is not None:
        training_metrics.log_metric("rows_short_of_negatives", float(summary["rows_short_of_negatives"]))
    if summary.get("train_runtime_s") is not None:
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
    import json
    import shutil
    import tempfile

    from components.object_store import require_complete_folder

    # Before any model loads: a half-uploaded cache or model fails the step in one line.
    require_complete_folder(base_embeddings.path)
    require_complete_folder(finetuned_model.path)

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
    # The same flat metrics as a file: kfp.local reuses a cached task only while every output
    # artifact's file exists, and searchtune compare reads them from a run's pipeline root.
    with open(metrics.path, "w", encoding="utf-8") as handle:
        json.dump(metrics.metadata, handle, indent=2)
    shutil.move(str(result.report_md_path), report.path)
    shutil.move(str(result.report_html_path), report_html.path)
    shutil.move(str(result.metrics_path), results.path)


@dsl.component(base_image=SEARCHTUNE_IMAGE, install_kfp_package=False)
def gate_promotion(
    evaluation_metrics: Input[Metrics],
    min_recall_at_1_gain: float,
    significance_level: float,
    max_metric_drop: float,
    gate_metrics: Output[Metrics],
    gate_report: Output[Markdown],
) -> bool:
    """Promote only on a significant recall@1 gain in both pools with no headline metric falling.

    Returns the decision as the single ``Output`` parameter (what kfp.local resolves in a
    condition; a named output is not).
    """
    import shutil
    import tempfile

    from components.gate import GateConfig, decide_promotion

    decision = decide_promotion(dict(evaluation_metrics.metadata), tempfile.mkdtemp(prefix="gate-"),
                                GateConfig(min_recall_at_1_gain=min_recall_at_1_gain,
                                           significance_level=significance_level, max_metric_drop=max_metric_drop))
    for name, value in decision.run_metrics.items():
        gate_metrics.log_metric(name, value)
    shutil.move(str(decision.report_path), gate_report.path)
    return decision.promote


@dsl.component(base_image=SEARCHTUNE_IMAGE, install_kfp_package=False)
def promote_model(
    finetuned_model: Input[Model],
    global_pool: Input[Dataset],
    mined_test: Input[Dataset],
    base_model: str,
    serving_uri: str,
    served_model_name: str,
    helm_release: str,
    helm_namespace: str,
    helm_chart: str,
    promoted_model: Output[Model],
    promotion: Output[Markdown],
):
    """Copy the model to the serving location (default: this artifact); upgrade the Helm release."""
    import os
    import shlex

    from components.promote import PromoteConfig, promote_model as promote

    # Without a serving location the promoted copy lives in this step's own artifact.
    os.makedirs(promoted_model.path, exist_ok=True)
    result = promote(finetuned_model.path, PromoteConfig(
        serving_uri=serving_uri or promoted_model.path, served_model_name=served_model_name,
        helm_release=helm_release, helm_namespace=helm_namespace, helm_chart=helm_chart))
    page = shlex.join(["--ui", "--base-model", base_model, "--corpus", global_pool.path, "--test-data",
                       mined_test.path])
    command = f"{result.serve_command} {page}"
    promoted_model.metadata.update({"model_uri": result.model_uri, "version": result.version,
                                    "served_model_name": served_model_name, "serve_command": command})
    lines = [f"# Promoted: `{result.model_uri}`", "", "Serve it here, with the search page:", "",
             f"    {command}", ""]
    if helm_release:
        lines.append(f"Helm release `{helm_release}` (namespace `{helm_namespace}`) upgraded to revision "
                     f"{result.helm_revision}.")
    with open(promotion.path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


@dsl.component(base_image=SEARCHTUNE_IMAGE, install_kfp_package=False)
def parity_check(
    finetuned_model: Input[Model],
    promoted_model: Input[Model],
    serving_endpoint: str,
    parity_metrics: Output[Metrics],
    parity_report: Output[Markdown],
):
    """Served vectors vs the trained model's; without an endpoint, serves the promoted copy here."""
    import contextlib
    import shutil
    import tempfile

    from components.parity import ParityConfig, check_serving_parity
    from components.serving import ServeConfig, ServerProcess

    name = promoted_model.metadata["served_model_name"]
    work = tempfile.mkdtemp(prefix="parity-")
    # The copy served here runs in fp32, as the reference does: parity checks what serving
    # changes (pooling, normalization, truncation, instructions), not this CPU's bf16 rounding.
    server = (contextlib.nullcontext() if serving_endpoint else
              ServerProcess(ServeConfig(model=promoted_model.metadata["model_uri"], served_model_name=name, port=0,
                                        precision="fp32"),
                            log_path=f"{work}/server.log"))
    with server:
        # A ParityError fails the step; its message names what differs.
        result = check_serving_parity(finetuned_model.path, serving_endpoint or server.base_url, f"{work}/out",
                                      ParityConfig(served_model_name=name))
    cosines = [row["cosine"] for row in result.probes]
    parity_metrics.log_metric("parity_min_cosine", float(min(cosines)))
    parity_metrics.log_metric("parity_probes", float(len(cosines)))
    shutil.move(str(result.report_path), parity_report.path)
