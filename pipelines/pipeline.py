"""The searchtune pipeline: fine-tune an embedding model for product search.

0. Fingerprint the inputs (uncached): what the data locations hold now, so the cache of
   every later step follows the data, not its name.
1. Prepare: validate the training rows (or generate the built-in sample), split them 9:1
   with no query or positive in both splits, build the global pool, write a data report.
2. Mine: hard negatives from the base model's own ranking (FAISS, ranks 2-200, 10 per query).
3. Score: a teacher scores every (query, passage) pair: soft labels for distillation,
   stored as logits on the student's scale (raw score / teacher temperature).
4. Fine-tune: FlagEmbedding's encoder-only embedder under torchrun (DeepSpeed on the cluster),
   in the step's pod or as a PyTorchJob / TrainJob the step launches (``train_executor``).
5. Evaluate: base vs fine-tuned, recall and MRR @1/5/10 in the test and global pools,
   and the positive/negative similarity separation.
6. Gate: promote only on a significant recall@1 gain in both pools, no headline metric falling.
7. Promote (when the gate passes): copy the model to the serving location, upgrade the Helm release.
8. Parity: the served vectors must be the trained model's (pooling, normalization, truncation,
   instructions), on a fixed probe set.

Defaults are the recipe's (``pipelines.parameters.RECIPE``); ``searchtune run --local``
passes the CPU preset.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Metrics

from pipelines.kfp_components import (
    parity_check,
    evaluate_models,
    fine_tune_embedder,
    fingerprint_inputs,
    mine_negatives,
    prepare_data,
    promote_model,
    gate_promotion,
    score_pairs,
)
from pipelines.parameters import RECIPE

PIPELINE_NAME = "searchtune-finetune-embedder"


class PipelineOutputs(NamedTuple):
    report: Markdown
    metrics: Metrics
    gate_report: Markdown
    gate_metrics: Metrics


@dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])
def searchtune_pipeline(
    train_data: str = RECIPE.train_data,
    test_data: str = RECIPE.test_data,
    corpus: str = RECIPE.corpus,
    sample_queries: int = RECIPE.sample_queries,
    sample_seed: int = RECIPE.sample_seed,
    student_model: str = RECIPE.student_model,
    teacher: str = RECIPE.teacher,
    teacher_model: str = RECIPE.teacher_model,
    teacher_temperature: float = RECIPE.teacher_temperature,
    cross_encoder_scores: str = RECIPE.cross_encoder_scores,
    test_fraction: float = RECIPE.test_fraction,
    seed: int = RECIPE.seed,
    skip_invalid: bool = RECIPE.skip_invalid,
    query_max_len: int = RECIPE.query_max_len,
    passage_max_len: int = RECIPE.passage_max_len,
    pooling: str = RECIPE.pooling,
    normalize: str = RECIPE.normalize,
    query_instruction: str = RECIPE.query_instruction,
    passage_instruction: str = RECIPE.passage_instruction,
    negative_range: str = RECIPE.negative_range,
    negative_number: int = RECIPE.negative_number,
    max_negative_score_fraction: float = RECIPE.max_negative_score_fraction,
    train_group_size: int = RECIPE.train_group_size,
    knowledge_distillation: str = RECIPE.knowledge_distillation,
    learning_rate: float = RECIPE.learning_rate,
    temperature: float = RECIPE.temperature,
    num_train_epochs: float = RECIPE.num_train_epochs,
    max_steps: int = RECIPE.max_steps,
    save_steps: int = RECIPE.save_steps,
    per_device_train_batch_size: int = RECIPE.per_device_train_batch_size,
    precision: str = RECIPE.precision,
    deepspeed: bool = RECIPE.deepspeed,
    gradient_checkpointing: bool = RECIPE.gradient_checkpointing,
    freeze_word_embeddings: bool = RECIPE.freeze_word_embeddings,
    nproc_per_node: int = RECIPE.nproc_per_node,
    encode_batch_size: int = RECIPE.encode_batch_size,
    gate_min_recall_at_1_gain: float = RECIPE.gate_min_recall_at_1_gain,
    gate_significance_level: float = RECIPE.gate_significance_level,
    gate_max_metric_drop: float = RECIPE.gate_max_metric_drop,
    serving_uri: str = RECIPE.serving_uri,
    served_model_name: str = RECIPE.served_model_name,
    helm_release: str = RECIPE.helm_release,
    helm_namespace: str = RECIPE.helm_namespace,
    helm_chart: str = RECIPE.helm_chart,
    serving_endpoint: str = RECIPE.serving_endpoint,
    train_executor: str = RECIPE.train_executor,
    cluster_profile: str = RECIPE.cluster_profile,
) -> PipelineOutputs:
    profile = dict(pooling=pooling, normalize=normalize, query_instruction=query_instruction,
                   passage_instruction=passage_instruction)

    # 0. Fingerprint the input data (never cached: it is what makes the rest cache correctly)
    fingerprint = fingerprint_inputs(train_data=train_data, test_data=test_data, corpus=corpus)
    fingerprint.set_caching_options(False).set_display_name("0. fingerprint inputs")

    # 1. Prepare
    prepared = prepare_data(
        train_data=train_data,
        test_data=test_data,
        corpus=corpus,
        input_fingerprint=fingerprint.output,
        sample_queries=sample_queries,
        sample_seed=sample_seed,
        test_fraction=test_fraction,
        seed=seed,
        skip_invalid=skip_invalid,
        student_model=student_model,
        query_max_len=query_max_len,
        passage_max_len=passage_max_len,
        **profile,
    ).set_display_name("1. prepare data")

    # 2. Mine hard negatives
    mined = mine_negatives(
        train_set=prepared.outputs["train_set"],
        test_set=prepared.outputs["test_set"],
        global_pool=prepared.outputs["global_pool"],
        student_model=student_model,
        negative_range=negative_range,
        negative_number=negative_number,
        max_negative_score_fraction=max_negative_score_fraction,
        seed=seed,
        query_max_len=query_max_len,
        passage_max_len=passage_max_len,
        encode_batch_size=encode_batch_size,
        **profile,
    ).set_display_name("2. mine hard negatives")

    # 3. Score pairs with the teacher
    scored = score_pairs(
        mined_train=mined.outputs["mined_train"],
        base_embeddings=mined.outputs["base_embeddings"],
        student_model=student_model,
        teacher=teacher,
        teacher_model=teacher_model,
        teacher_temperature=teacher_temperature,
        cross_encoder_scores=cross_encoder_scores,
        temperature=temperature,
        query_max_len=query_max_len,
        passage_max_len=passage_max_len,
        encode_batch_size=encode_batch_size,
        **profile,
    ).set_display_name("3. teacher scores")

    # 4. Fine-tune
    trained = fine_tune_embedder(
        scored_train=scored.outputs["scored_train"],
        student_model=student_model,
        train_group_size=train_group_size,
        query_max_len=query_max_len,
        passage_max_len=passage_max_len,
        knowledge_distillation=knowledge_distillation,
        learning_rate=learning_rate,
        temperature=temperature,
        num_train_epochs=num_train_epochs,
        max_steps=max_steps,
        save_steps=save_steps,
        per_device_train_batch_size=per_device_train_batch_size,
        precision=precision,
        deepspeed=deepspeed,
        gradient_checkpointing=gradient_checkpointing,
        freeze_word_embeddings=freeze_word_embeddings,
        nproc_per_node=nproc_per_node,
        seed=seed,
        **profile,
        train_executor=train_executor,
        cluster_profile=cluster_profile,
        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        pipeline_task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
    ).set_display_name("4. fine-tune")

    # 5. Evaluate base vs fine-tuned
    evaluated = evaluate_models(
        mined_test=mined.outputs["mined_test"],
        global_pool=prepared.outputs["global_pool"],
        base_embeddings=mined.outputs["base_embeddings"],
        finetuned_model=trained.outputs["finetuned_model"],
        base_model=student_model,
        query_max_len=query_max_len,
        passage_max_len=passage_max_len,
        encode_batch_size=encode_batch_size,
        pooling=pooling,
        normalize=normalize,
        query_instruction=query_instruction,
        passage_instruction=passage_instruction,
    ).set_display_name("5. evaluate")

    # 6. Quality gate
    gate = gate_promotion(
        evaluation_metrics=evaluated.outputs["metrics"],
        min_recall_at_1_gain=gate_min_recall_at_1_gain,
        significance_level=gate_significance_level,
        max_metric_drop=gate_max_metric_drop,
    ).set_display_name("6. quality gate")

    with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
        # 7. Promote
        promoted = promote_model(
            finetuned_model=trained.outputs["finetuned_model"],
            global_pool=prepared.outputs["global_pool"],
            mined_test=mined.outputs["mined_test"],
            base_model=student_model,
            serving_uri=serving_uri,
            served_model_name=served_model_name,
            helm_release=helm_release,
            helm_namespace=helm_namespace,
            helm_chart=helm_chart,
        ).set_display_name("7. promote").set_caching_options(False)

        # 8. Served-vs-trained parity
        parity_check(
            finetuned_model=trained.outputs["finetuned_model"],
            promoted_model=promoted.outputs["promoted_model"],
            serving_endpoint=serving_endpoint,
        ).set_display_name("8. parity").set_caching_options(False)

    return PipelineOutputs(report=evaluated.outputs["report"], metrics=evaluated.outputs["metrics"],
                           gate_report=gate.outputs["gate_report"], gate_metrics=gate.outputs["gate_metrics"])
