"""The pipeline's parameters in one typed place: the recipe's values, and the local preset.

``RECIPE`` is the cluster run as the recipe describes it (bge-large-zh-v1.5, the
bge-reranker-v2-m3 teacher, 512-token inputs, group 8, 5 epochs, fp16, DeepSpeed, two
GPUs). ``LOCAL`` is what ``searchtune run --local`` uses: the same pipeline, scaled to a
2-core CPU with no model hub: the builtin multilingual-e5-small as student and teacher,
lengths that fit the sample data, bf16 where the CPU has it, word embeddings frozen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from components.sample_data import SampleDataConfig


@dataclass(frozen=True)
class PipelineParameters:
    """Every pipeline parameter, typed, with the recipe's values as defaults.

    Empty ``train_data`` means the built-in sample data (``sample_queries`` queries).
    Paths may be local or ``s3://`` URIs. ``max_negative_score_fraction`` 0 turns the
    false-negative filter off. ``teacher_temperature`` 0 means the teacher's default (1 for
    cross-encoder logits, ``temperature`` for embedding cosines). ``knowledge_distillation`` is auto/on/off; ``precision``
    is auto/fp16/bf16/fp32.
    """

    train_data: str = ""
    test_data: str = ""
    corpus: str = ""
    sample_queries: int = SampleDataConfig.num_queries
    sample_seed: int = SampleDataConfig.seed
    student_model: str = "BAAI/bge-large-zh-v1.5"
    teacher: str = "cross-encoder"
    teacher_model: str = "BAAI/bge-reranker-v2-m3"
    teacher_temperature: float = 0.0
    cross_encoder_scores: str = "logits"
    test_fraction: float = 0.1
    seed: int = 42
    skip_invalid: bool = False
    query_max_len: int = 512
    passage_max_len: int = 512
    negative_range: str = "2-200"
    negative_number: int = 10
    max_negative_score_fraction: float = 0.0
    train_group_size: int = 8
    knowledge_distillation: str = "auto"
    learning_rate: float = 1e-5
    temperature: float = 0.02
    num_train_epochs: float = 5.0
    max_steps: int = -1
    per_device_train_batch_size: int = 64
    precision: str = "fp16"
    deepspeed: bool = True
    gradient_checkpointing: bool = True
    freeze_word_embeddings: bool = False
    nproc_per_node: int = 2
    encode_batch_size: int = 256

    def as_arguments(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides) -> "PipelineParameters":
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown pipeline parameters: {', '.join(sorted(unknown))}")
        return replace(self, **overrides)


RECIPE = PipelineParameters()

LOCAL = RECIPE.with_overrides(
    student_model="builtin:multilingual-e5-small",
    teacher="embedding",
    teacher_model="builtin:multilingual-e5-small",
    query_max_len=64,
    passage_max_len=128,
    train_group_size=4,
    learning_rate=5e-5,
    num_train_epochs=1.0,
    per_device_train_batch_size=8,
    precision="auto",
    deepspeed=False,
    gradient_checkpointing=False,
    freeze_word_embeddings=True,
    nproc_per_node=1,
)

PRESETS: dict[str, PipelineParameters] = {"recipe": RECIPE, "local": LOCAL}
