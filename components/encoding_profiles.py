"""How an embedding model encodes text, and how a model folder records it.

A :class:`ModelProfile` is everything a step needs to encode text the way a model was
trained to (pooling, instructions, normalization, lengths). This module holds the
profiles of the model families searchtune knows and the files that declare a profile in
a model folder (``searchtune_profile.json`` plus the sentence-transformers files), and
nothing that resolves model names: :mod:`components.model_profiles` does that, and
:mod:`components.builtin_models` builds folders that carry a profile.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

Pooling = Literal["cls", "mean"]

BGE_ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："
BGE_EN_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
E5_QUERY_PREFIX = "query: "
E5_PASSAGE_PREFIX = "passage: "

PROFILE_FILENAME = "searchtune_profile.json"


@dataclass(frozen=True)
class ModelProfile:
    """Everything a step needs to encode text the way a model was trained to.

    Attributes:
        pooling: ``cls`` (bge) or ``mean`` over the attention mask (e5).
        normalize: L2-normalize embeddings, so inner product is cosine similarity.
        query_instruction: text put before every query (bge's Chinese instruction, e5's
            ``query: ``).
        query_instruction_format: how instruction and query are joined, FlagEmbedding style.
        passage_instruction: text put before every passage (e5's ``passage: ``; empty for bge).
        passage_instruction_format: how instruction and passage are joined.
        query_max_len: tokens kept of a query (instruction included).
        passage_max_len: tokens kept of a passage.
    """

    pooling: Pooling = "cls"
    normalize: bool = True
    query_instruction: str = ""
    query_instruction_format: str = "{}{}"
    passage_instruction: str = ""
    passage_instruction_format: str = "{}{}"
    query_max_len: int = 512
    passage_max_len: int = 512

    def __post_init__(self) -> None:
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        for name in ("query_instruction_format", "passage_instruction_format"):
            if getattr(self, name).count("{}") != 2:
                raise ValueError(f"{name} must contain two '{{}}' placeholders")
        if self.query_max_len < 1 or self.passage_max_len < 1:
            raise ValueError("max lengths must be positive")

    def format_query(self, text: str, instruction: str | None = None) -> str:
        """The query as the model reads it; ``instruction`` (a row's ``prompt``) replaces
        the profile's query instruction, as FlagEmbedding's training data does."""
        instruction = self.query_instruction if instruction is None else instruction
        if not instruction:
            return text
        return self.query_instruction_format.format(instruction, text)

    def format_passage(self, text: str) -> str:
        if not self.passage_instruction:
            return text
        return self.passage_instruction_format.format(self.passage_instruction, text)

    def with_max_lengths(self, query_max_len: int | None, passage_max_len: int | None) -> "ModelProfile":
        """A copy with max lengths overridden where a value is given."""
        return replace(
            self,
            query_max_len=query_max_len or self.query_max_len,
            passage_max_len=passage_max_len or self.passage_max_len,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelProfile":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


BGE_ZH_PROFILE = ModelProfile(pooling="cls", query_instruction=BGE_ZH_QUERY_INSTRUCTION)
BGE_EN_PROFILE = ModelProfile(pooling="cls", query_instruction=BGE_EN_QUERY_INSTRUCTION)
E5_PROFILE = ModelProfile(
    pooling="mean",
    query_instruction=E5_QUERY_PREFIX,
    passage_instruction=E5_PASSAGE_PREFIX,
)

def read_model_profile(model_dir: str | os.PathLike) -> ModelProfile | None:
    """The profile saved in a model folder, or None if there is none."""
    path = Path(model_dir) / PROFILE_FILENAME
    if not path.is_file():
        return None
    return ModelProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))


def write_model_profile(model_dir: str | os.PathLike, profile: ModelProfile) -> None:
    """Save the profile and the sentence-transformers files that declare it.

    FlagEmbedding saves only the transformer; sentence-transformers then guesses mean
    pooling and no normalization. Writing modules.json, 1_Pooling and 2_Normalize makes
    transformers, FlagEmbedding and sentence-transformers agree on the same vectors.
    """
    model_dir = Path(model_dir)
    (model_dir / PROFILE_FILENAME).write_text(
        json.dumps(profile.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if profile.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (model_dir / "2_Normalize").mkdir(exist_ok=True)
    (model_dir / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")

    hidden_size = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    (model_dir / "1_Pooling").mkdir(exist_ok=True)
    pooling_config = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": profile.pooling == "cls",
        "pooling_mode_mean_tokens": profile.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2) + "\n",
                                                         encoding="utf-8")
    (model_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": profile.passage_max_len, "do_lower_case": False}, indent=2) + "\n",
        encoding="utf-8",
    )
    st_config = {
        "prompts": {"query": profile.format_query(""), "document": profile.format_passage("")},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if profile.normalize else "dot",
    }
    (model_dir / "config_sentence_transformers.json").write_text(json.dumps(st_config, ensure_ascii=False,
                                                                            indent=2) + "\n", encoding="utf-8")
