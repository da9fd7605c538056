"""Pull a finished model folder from S3 for a serving engine, and refuse one it would serve wrongly.

The serving chart's init container runs this (``searchtune pull-model``) before SGLang
starts. The folder must carry searchtune's completion marker (see ``object_store``): a
model still being uploaded, or cut off half-way, is never served.

An embedding model is only right when it is served the way it was trained: the same
pooling, the same normalization, the same instructions. What SGLang does, read from its
source at the version the serving image is built on (0.5.20):

- ``python/sglang/srt/models/bert.py``: ``BertModel`` (and ``Contriever``) with
  ``--is-embedding`` pools with ``Pooler(pooling_type=PoolingType.CLS, normalize=True)``;
- ``python/sglang/srt/models/roberta.py``: ``XLMRobertaModel`` pools with
  ``Pooler(pooling_type=PoolingType.CLS, normalize=True)`` (unless it has a sparse head);
- ``python/sglang/srt/layers/pooler.py``: ``Pooler`` takes the first token's hidden state
  and L2-normalizes it; nothing reads sentence-transformers' ``1_Pooling`` config;
- ``python/sglang/srt/entrypoints/openai/serving_embedding.py``: ``/v1/embeddings``
  tokenizes the input text as sent, with no instruction added.

So CLS-pooled, normalized models (bge) are served as trained, mean-pooled ones (e5) are
not, and any query or passage instruction is the client's job.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from components.model_profiles import resolve_model
from components.object_store import download_folder

logger = logging.getLogger(__name__)

ServingEngine = Literal["sglang"]
SERVING_ENGINES: tuple[str, ...] = ("sglang",)
# Architectures whose SGLang 0.5.20 embedding path is the CLS + normalize pooler above.
SGLANG_CLS_ARCHITECTURES = ("BertModel", "Contriever", "XLMRobertaModel")


class IncompatibleModelError(ValueError):
    """A model the serving engine would serve with other vectors than it was trained to give."""


@dataclass(frozen=True)
class ServingCheck:
    """What serving a model with an engine means for its vectors.

    Attributes:
        refusals: what the engine cannot honour (its vectors would differ from training).
        client_duties: what every client must do itself (instructions to prepend).
        notes: what could not be checked.
    """

    refusals: tuple[str, ...] = ()
    client_duties: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PulledModel:
    """A model folder on local disk, checked for a serving engine.

    Attributes:
        path: the folder.
        check: what serving it means (empty when no engine was named).
    """

    path: Path
    check: ServingCheck


def _sglang_check(model_dir: Path) -> ServingCheck:
    profile = resolve_model(model_dir).profile
    refusals, duties, notes = [], [], []
    if profile.pooling != "cls":
        refusals.append(f"the model pools with {profile.pooling!r}, SGLang's BERT/XLM-R embedding path pools the "
                        "CLS token only")
    if not profile.normalize:
        refusals.append("the model's vectors are not normalized, SGLang's BERT/XLM-R embedding path always "
                        "L2-normalizes them")
    if profile.query_instruction:
        duties.append(f"SGLang adds no instruction: clients must put {profile.query_instruction!r} before every "
                      "query")
    if profile.passage_instruction:
        duties.append(f"SGLang adds no instruction: clients must put {profile.passage_instruction!r} before every "
                      "passage")
    config = model_dir / "config.json"
    architectures = []
    if config.is_file():
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    unknown = [name for name in architectures if name not in SGLANG_CLS_ARCHITECTURES]
    if unknown or not architectures:
        # Other families take other poolers in SGLang (a decoder's last token, for one): what
        # it would serve cannot be shown to match the profile.
        refusals.append(f"config.json names {architectures or 'no architecture'}, and SGLang's embedding pooling "
                        f"is known to match a profile only for {', '.join(SGLANG_CLS_ARCHITECTURES)} (CLS + "
                        "normalize)")
    return ServingCheck(refusals=tuple(refusals), client_duties=tuple(duties), notes=tuple(notes))


def pull_model(uri: str, output: str | Path, serving_engine: ServingEngine | None = None,
               allow_incompatible_profile: bool = False) -> PulledModel:
    """Download a sealed model folder and check that ``serving_engine`` can serve it as trained.

    Args:
        uri: ``s3://bucket/prefix/model/``, written with searchtune's completion marker.
        output: the local folder to create (replaced whole, and only once complete).
        serving_engine: ``sglang`` checks the model's profile against SGLang's pooling;
            None only downloads.
        allow_incompatible_profile: keep a model the engine cannot honour, with a warning,
            instead of refusing it.

    Raises:
        IncompleteFolderError: the folder has no completion marker, or a file in it is missing.
        IncompatibleModelError: the engine would serve other vectors than the model was
            trained to give (the downloaded folder is removed first).
    """
    if serving_engine is not None and serving_engine not in SERVING_ENGINES:
        raise ValueError(f"--serving-engine must be one of {', '.join(SERVING_ENGINES)}, got {serving_engine!r}")
    path = download_folder(uri, output)
    if serving_engine is None:
        return PulledModel(path=path, check=ServingCheck())
    check = _sglang_check(path)
    for duty in check.client_duties:
        logger.warning("%s", duty)
    for note in check.notes:
        logger.warning("%s", note)
    if check.refusals:
        problems = "; ".join(check.refusals)
        if not allow_incompatible_profile:
            # Nothing is left behind that a server could pick up.
            shutil.rmtree(path, ignore_errors=True)
            raise IncompatibleModelError(
                f"{uri}: SGLang cannot serve this model as it was trained: {problems} (serve it with another "
                "engine, or set model.allowIncompatibleProfile=true to serve it anyway)")
        logger.warning("!" * 78)
        logger.warning("SERVING AN INCOMPATIBLE MODEL (allowIncompatibleProfile): %s. Its vectors will differ "
                       "from the ones it was trained and evaluated with.", problems)
        logger.warning("!" * 78)
    return PulledModel(path=path, check=check)
