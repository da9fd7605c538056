"""The pipeline's parameters: each one sets a step config's field and takes its default.

``PipelineParameters`` lists the parameters the pipeline takes (name and KFP type). Every
default comes from the step config field the parameter sets (:func:`step_field`), so the
recipe's values live in one place, the step configs; a test checks that every parameter
reaches its fields and that the types agree. :func:`step_config` builds a step's config
from parameter values: ``searchtune run --local`` does it for every step before KFP starts,
and each KFP component body does it for its own step, so a bad value stops with the
parameter's name and its allowed values before any work.

``RECIPE`` is the cluster run as the recipe describes it (bge-large-zh-v1.5, the
bge-reranker-v2-m3 teacher, 512-token inputs, group 8, 5 epochs, fp16, DeepSpeed, two
GPUs). ``LOCAL`` is what ``searchtune run --local`` uses: the same pipeline, scaled to a
2-core CPU with no model hub: the builtin multilingual-e5-small as student, hard negatives
from the base model's ranks 2-30 and no distillation (the recipe study's winner on
cmrc_drcd_zh's validation queries), lengths that fit the sample data, bf16 where the CPU has
it, word embeddings frozen. Its teacher, for a run that turns distillation on, is the hybrid
one (that model's cosine plus a BM25 share: it ranks the validation queries 0.065 recall@1
above the model alone).
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Callable, Mapping, get_type_hints

from components.config_values import ParameterError, check_value, parse_value
from components.embedding import EncodeConfig
from components.evaluate import EvaluateConfig
from components.gate import GateConfig
from components.mine import MineConfig, format_range, parse_range
from components.model_profiles import ProfileOverrides
from components.prepare import PrepareConfig
from components.promote import PromoteConfig
from components.sample_data import SampleDataConfig
from components.score import ScoreConfig
from components.train import TrainConfig
from pipelines.cluster_profile import TrainingProfile

# The step configs the pipeline's parameters build whole, so their own cross-field checks run
# before any step does (EncodeConfig and ProfileOverrides are nested in them). PromoteConfig
# is built by its step, which supplies the serving URI an empty parameter leaves to it.
STEP_CONFIGS = (SampleDataConfig, PrepareConfig, MineConfig, ScoreConfig, TrainConfig, EvaluateConfig, GateConfig)


@dataclass(frozen=True)
class ParameterSource:
    """Which config fields a pipeline parameter sets, and how its KFP value maps to theirs.

    Attributes:
        targets: ``(config class, field name)`` pairs; the first gives the default.
        to_config: the KFP value as the fields' value (e.g. ``"2-200"`` → ``(2, 200)``).
        to_parameter: a field value as the KFP value (the inverse).
    """

    targets: tuple[tuple[type, str], ...]
    to_config: Callable[[Any], Any] = lambda value: value
    to_parameter: Callable[[Any], Any] = lambda value: value


def _field_default(config: type, name: str) -> Any:
    for candidate in fields(config):
        if candidate.name == name:
            if candidate.default is not MISSING:
                return candidate.default
            return candidate.default_factory()  # type: ignore[misc]
    raise AttributeError(f"{config.__name__} has no field {name!r}")


def step_field(*targets: tuple[type, str], to_config: Callable[[Any], Any] | None = None,
               to_parameter: Callable[[Any], Any] | None = None) -> Any:
    """A pipeline parameter that sets ``targets``' fields; its default is the first one's."""
    conversions = {name: f for name, f in (("to_config", to_config), ("to_parameter", to_parameter)) if f}
    source = ParameterSource(targets, **conversions)
    return field(default=source.to_parameter(_field_default(*targets[0])), metadata={"source": source})


def _zero_as_none(value: float) -> float | None:
    return value or None


def _none_as_zero(value: float | None) -> float:
    return 0.0 if value is None else value


# The student model's settings go to every step that encodes with it.
_STUDENT = ((TrainConfig, "model"), (MineConfig, "model"), (PrepareConfig, "model"))
_QUERY_LEN = ((TrainConfig, "query_max_len"), (MineConfig, "query_max_len"), (PrepareConfig, "query_max_len"),
              (ScoreConfig, "query_max_len"), (EvaluateConfig, "query_max_len"))
_PASSAGE_LEN = ((TrainConfig, "passage_max_len"), (MineConfig, "passage_max_len"),
                (PrepareConfig, "passage_max_len"), (ScoreConfig, "passage_max_len"),
                (EvaluateConfig, "passage_max_len"))


@dataclass(frozen=True)
class PipelineParameters:
    """Every pipeline parameter, typed as KFP takes it, defaulting to its step config's value.

    Empty ``train_data`` means the built-in sample data (``sample_queries`` queries).
    Empty ``serving_uri`` keeps the promoted model in the promote step's own artifact;
    ``helm_release`` (with an ``s3://`` ``serving_uri``) upgrades the serving chart; empty
    ``serving_endpoint`` makes the parity step serve the promoted copy itself.
    ``save_steps`` is the checkpoint interval in optimizer steps: a training job that loses a
    node resumes from its newest complete checkpoint, so it loses at most that many steps.
    ``train_executor`` is where fine-tuning runs: ``local`` (torchrun in the step's own
    pod), ``pytorchjob`` (a Kubeflow PyTorchJob) or ``trainjob`` (a Kubeflow Trainer v2
    TrainJob); ``cluster_profile`` is the cluster profile's YAML text for the job (empty:
    the recipe's layout).
    Paths may be local or ``s3://`` URIs. ``max_negative_score_fraction`` 0 turns the
    false-negative filter off; ``teacher_temperature`` 0 means the teacher's default (1 for
    cross-encoder logits, ``temperature`` for embedding cosines). ``pooling``, ``normalize``,
    ``query_instruction`` and ``passage_instruction`` override the student model's profile
    (``auto``: the model's own); the embedding teacher gets them too when it is the student
    model. Each value is checked against the field it sets: an enum takes exactly one of its
    values, a boolean true or false.
    """

    train_data: str = ""
    test_data: str = ""
    corpus: str = ""
    sample_queries: int = step_field((SampleDataConfig, "num_queries"))
    sample_seed: int = step_field((SampleDataConfig, "seed"))
    student_model: str = step_field(*_STUDENT)
    teacher: str = step_field((ScoreConfig, "teacher"))
    teacher_model: str = step_field((ScoreConfig, "teacher_model"))
    teacher_temperature: float = step_field((ScoreConfig, "teacher_temperature"), to_config=_zero_as_none,
                                            to_parameter=_none_as_zero)
    cross_encoder_scores: str = step_field((ScoreConfig, "cross_encoder_scores"))
    test_fraction: float = step_field((PrepareConfig, "test_fraction"))
    seed: int = step_field((TrainConfig, "seed"), (MineConfig, "seed"), (PrepareConfig, "seed"))
    skip_invalid: bool = step_field((PrepareConfig, "skip_invalid"))
    query_max_len: int = step_field(*_QUERY_LEN)
    passage_max_len: int = step_field(*_PASSAGE_LEN)
    pooling: str = step_field((ProfileOverrides, "pooling"))
    normalize: str = step_field((ProfileOverrides, "normalize"))
    query_instruction: str = step_field((ProfileOverrides, "query_instruction"))
    passage_instruction: str = step_field((ProfileOverrides, "passage_instruction"))
    negative_range: str = step_field((MineConfig, "range_for_sampling"), to_config=parse_range,
                                     to_parameter=format_range)
    negative_number: int = step_field((MineConfig, "negative_number"))
    max_negative_score_fraction: float = step_field((MineConfig, "max_negative_score_fraction"),
                                                    to_config=_zero_as_none, to_parameter=_none_as_zero)
    train_group_size: int = step_field((TrainConfig, "train_group_size"))
    knowledge_distillation: str = step_field((TrainConfig, "knowledge_distillation"))
    learning_rate: float = step_field((TrainConfig, "learning_rate"))
    temperature: float = step_field((TrainConfig, "temperature"), (ScoreConfig, "student_temperature"))
    num_train_epochs: float = step_field((TrainConfig, "num_train_epochs"))
    max_steps: int = step_field((TrainConfig, "max_steps"))
    save_steps: int = step_field((TrainConfig, "save_steps"))
    per_device_train_batch_size: int = step_field((TrainConfig, "per_device_train_batch_size"))
    precision: str = step_field((TrainConfig, "precision"))
    deepspeed: bool = step_field((TrainConfig, "deepspeed"))
    gradient_checkpointing: bool = step_field((TrainConfig, "gradient_checkpointing"))
    freeze_word_embeddings: bool = step_field((TrainConfig, "freeze_word_embeddings"))
    nproc_per_node: int = step_field((TrainConfig, "nproc_per_node"))
    encode_batch_size: int = step_field((EncodeConfig, "batch_size"))
    gate_min_recall_at_1_gain: float = step_field((GateConfig, "min_recall_at_1_gain"))
    gate_significance_level: float = step_field((GateConfig, "significance_level"))
    gate_max_metric_drop: float = step_field((GateConfig, "max_metric_drop"))
    serving_uri: str = step_field((PromoteConfig, "serving_uri"))
    served_model_name: str = step_field((PromoteConfig, "served_model_name"))
    helm_release: str = step_field((PromoteConfig, "helm_release"))
    helm_namespace: str = step_field((PromoteConfig, "helm_namespace"))
    helm_chart: str = step_field((PromoteConfig, "helm_chart"))
    serving_endpoint: str = ""
    train_executor: str = step_field((TrainingProfile, "executor"))
    cluster_profile: str = ""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for parameter in fields(self):
            check_value(parameter.name, hints[parameter.name], getattr(self, parameter.name))
        for config in STEP_CONFIGS:
            step_config(config, asdict(self))
        # Every field a parameter sets takes its value: also those of configs built later.
        for name, source in parameter_sources().items():
            for target, field_name in source.targets:
                if target not in STEP_CONFIGS:
                    try:
                        check_value(field_name, get_type_hints(target)[field_name],
                                    source.to_config(getattr(self, name)))
                    except ParameterError as error:
                        raise ParameterError(name, getattr(self, name), error.allowed) from None

    def as_arguments(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides: Any) -> "PipelineParameters":
        """A copy with ``overrides`` in place; string values (``--set``) are parsed strictly.

        Raises:
            ParameterError: an unknown parameter, or a value its field does not accept.
        """
        hints = get_type_hints(type(self))
        unknown = sorted(set(overrides) - set(hints))
        if unknown:
            raise ValueError(f"unknown pipeline parameter {unknown[0]!r}; known: {', '.join(sorted(hints))}")
        return replace(self, **{name: parse_value(name, hints[name], value) for name, value in overrides.items()})


def parameter_sources() -> dict[str, ParameterSource]:
    """Pipeline parameter name → the config fields it sets."""
    return {f.name: f.metadata["source"] for f in fields(PipelineParameters) if "source" in f.metadata}


def step_config(config: type, values: Mapping[str, Any]) -> Any:
    """``config`` built from pipeline parameter ``values`` (extra names are ignored), its
    nested configs (encoder settings, profile overrides) included; unset fields keep their
    defaults. Strings are parsed strictly; a bad value names the pipeline parameter.

    Raises:
        ParameterError: a value the field does not accept.
        ValueError: a combination the config refuses (its own checks).
    """
    hints = get_type_hints(PipelineParameters)
    config_hints = get_type_hints(config)
    arguments: dict[str, Any] = {}
    for name, source in parameter_sources().items():
        if name not in values:
            continue
        for target, field_name in source.targets:
            if target is config:
                try:
                    value = source.to_config(parse_value(name, hints[name], values[name]))
                except ParameterError:
                    raise
                except ValueError as error:
                    raise ValueError(f"{name}: {error}") from None
                try:
                    check_value(field_name, config_hints[field_name], value)
                except ParameterError as error:
                    raise ParameterError(name, values[name], error.allowed) from None
                arguments[field_name] = value
    for nested in fields(config):
        nested_type = config_hints[nested.name]
        if isinstance(nested_type, type) and dataclasses.is_dataclass(nested_type):
            arguments[nested.name] = step_config(nested_type, values)
    return config(**arguments)


RECIPE = PipelineParameters()

LOCAL = RECIPE.with_overrides(
    student_model="builtin:multilingual-e5-small",
    teacher="hybrid",
    teacher_model="builtin:multilingual-e5-small",
    query_max_len=64,
    passage_max_len=128,
    # The recipe study's winner on cmrc_drcd_zh's validation queries (benchmarks/recipe_study.py):
    # negatives from the base model's ranks 2-30 (the passages it confuses with the answer, such
    # as the answer's own paragraph) teach far more than ranks 2-200, and distillation from the
    # local teacher then costs recall@1 rather than adding it.
    negative_range="2-30",
    knowledge_distillation="off",
    train_group_size=4,
    learning_rate=5e-5,
    num_train_epochs=1.0,
    per_device_train_batch_size=8,
    precision="auto",
    deepspeed=False,
    gradient_checkpointing=False,
    freeze_word_embeddings=True,
    nproc_per_node=1,
    train_executor="local",
)

PRESETS: dict[str, PipelineParameters] = {"recipe": RECIPE, "local": LOCAL}
