"""Pipeline parameters: derived from the step configs (a test that they agree), and parsed
strictly everywhere: --set, step flags, KFP parameters, the configs themselves."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import get_args, get_origin, get_type_hints

import pytest

from components.config_values import ParameterError, check_value, parse_value
from components.mine import MineConfig
from components.score import ScoreConfig
from components.train import TrainConfig
from pipelines import kfp_components
from pipelines.cli import main
from pipelines.parameters import LOCAL, RECIPE, PipelineParameters, parameter_sources, step_config
from pipelines.pipeline import searchtune_pipeline

# Parameters no step config holds: the data locations, the endpoint parity checks, and the
# cluster profile's YAML text (the launcher parses it).
PIPELINE_ONLY = {"train_data", "test_data", "corpus", "serving_endpoint", "cluster_profile"}
KFP_TYPES = {str, int, float, bool}


def _base_type(annotation):
    """The KFP type a config field's annotation travels as."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is typing.Literal:
        return type(get_args(annotation)[0])
    return annotation


def test_every_parameter_sets_config_fields_and_takes_their_default():
    hints = get_type_hints(PipelineParameters)
    sources = parameter_sources()
    assert set(hints) - set(sources) == PIPELINE_ONLY
    for name, source in sources.items():
        assert hints[name] in KFP_TYPES, name
        default = getattr(RECIPE, name)
        for position, (config, field_name) in enumerate(source.targets):
            field = {f.name: f for f in dataclasses.fields(config)}[field_name]
            annotation = get_type_hints(config)[field_name]
            field_default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            if position == 0:
                assert source.to_parameter(field_default) == default, name
            else:
                # Another step's field either agrees or means "not set" (None, "").
                assert field_default in (source.to_config(default), None, ""), (name, config.__name__)
            check_value(field_name, annotation, source.to_config(default))
            base = _base_type(annotation)
            assert base is hints[name] or (base is int and hints[name] is float) or name in (
                "negative_range",), (name, config.__name__, base)


def test_the_pipeline_takes_exactly_these_parameters_with_these_defaults():
    signature = inspect.signature(searchtune_pipeline.pipeline_func)
    assert list(signature.parameters) == list(RECIPE.as_arguments())
    for name, parameter in signature.parameters.items():
        assert parameter.default == getattr(RECIPE, name), name


def test_component_parameters_are_pipeline_parameters():
    """Each step's component takes the pipeline's own names, so step_config maps them."""
    # The fingerprint is prepare's cache key; the run id and task name are KFP placeholders.
    known = set(RECIPE.as_arguments()) | {"input_fingerprint", "pipeline_run_id", "pipeline_task_name"}
    for component in (kfp_components.prepare_data, kfp_components.mine_negatives, kfp_components.score_pairs,
                      kfp_components.fine_tune_embedder):
        names = set(component.component_spec.inputs or {})
        parameters = {n for n in names if component.component_spec.inputs[n].type in ("String", "Integer", "Float",
                                                                                     "Boolean")}
        assert parameters <= known, (component.name, parameters - known)


def test_step_configs_follow_the_parameters():
    values = LOCAL.with_overrides(pooling="mean", teacher_temperature="0.05", negative_range="3-50").as_arguments()
    mine = step_config(MineConfig, values)
    assert mine.range_for_sampling == (3, 50) and mine.profile.pooling == "mean" and mine.query_max_len == 64
    assert mine.encode.batch_size == LOCAL.encode_batch_size
    score = step_config(ScoreConfig, values)
    assert score.teacher_temperature == 0.05 and score.student_temperature == LOCAL.temperature
    assert step_config(ScoreConfig, RECIPE.as_arguments()).teacher_temperature is None
    train = step_config(TrainConfig, values)
    assert train.model == LOCAL.student_model and train.freeze_word_embeddings is True


@pytest.mark.parametrize("name, value, allowed", [
    ("knowledge_distillation", "true", "one of auto, on, off"),
    ("precision", "FP16", "one of auto, fp16, bf16, fp32"),
    ("deepspeed", "yes", "true or false"),
    ("freeze_word_embeddings", "ON", "true or false"),
    ("max_steps", "1.5", "an integer"),
    ("learning_rate", "nan", "a finite number"),
    ("teacher", "reranker", "one of cross-encoder, embedding, hybrid"),
    ("normalize", "true", "one of auto, on, off"),
])
def test_set_values_are_strict_and_stop_before_kfp_starts(tmp_path, capsys, name, value, allowed):
    run_dir = tmp_path / "run"
    assert main(["run", "--local", "--output-dir", str(run_dir), "--set", f"{name}={value}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"searchtune: error: {name}: {value!r} is not allowed; expected {allowed}"]
    assert not run_dir.exists(), "nothing ran"


def test_step_flags_are_strict(tmp_path, capsys):
    for flag, value in (("--deepspeed", "yes"), ("--precision", "FP16"), ("--knowledge-distillation", "true")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--train-data", "t.jsonl", "--output-dir", str(tmp_path), flag, value])
        assert exit_.value.code == 2
        assert f"argument {flag}: {value!r} is not allowed; expected" in capsys.readouterr().err


def test_parser_accepts_what_it_should():
    assert parse_value("deepspeed", bool, "True") is True and parse_value("deepspeed", bool, "false") is False
    assert parse_value("max_steps", int, "-1") == -1 and parse_value("lr", float, "1e-5") == 1e-5
    assert parse_value("teacher_temperature", float | None, "") is None
    assert LOCAL.with_overrides(deepspeed="true", num_train_epochs="2").num_train_epochs == 2.0
    with pytest.raises(ParameterError):
        PipelineParameters(precision="FP16")
