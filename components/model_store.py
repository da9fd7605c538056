"""Put a base model into S3 for a cluster run: the steps' pods have no model hub.

A cluster's step pods and training replicas run with ``HF_HUB_OFFLINE`` and no network
beyond the object store, so the models a run starts from (the student, a cross-encoder
teacher) go into S3 first, once, as sealed folders (``object_store``: every file's size and
checksum in a completion marker written last). Every step then takes the folder's
``s3://`` URI wherever it takes a model name (``model_profiles.locate_model`` downloads
and caches it by content).

The uploaded folder carries the model's resolved profile (``searchtune_profile.json``:
pooling, normalization, instructions, lengths), so a folder under any name means what the
model means; a model without a known profile needs the same overrides as everywhere else.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.encoding_profiles import PROFILE_FILENAME, write_model_profile
from components.model_profiles import BUILTIN_SCHEME, ModelNotFoundError, ProfileOverrides, locate_model, \
    resolve_model
from components.object_store import COMPLETION_MARKER, is_s3_uri, upload_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushedModel:
    """What :func:`push_model` stored."""

    uri: str
    files: int
    total_bytes: int
    cross_encoder: bool


def _model_folder(name: str) -> Path:
    """The local folder holding ``name``: a folder, a builtin model, or a hub snapshot (from
    the cache, else downloaded)."""
    from huggingface_hub import constants, snapshot_download

    if name.startswith(BUILTIN_SCHEME):
        return Path(locate_model(name))
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    try:  # a hub model already in the cache: its whole snapshot, no download
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001  (not cached: fetch it, or say why not)
        if constants.HF_HUB_OFFLINE:
            raise ModelNotFoundError(f"model {name!r}: not a local folder, not in the Hugging Face cache, and "
                                     "HF_HUB_OFFLINE is set: run push-model where the hub is reachable") from None
    try:
        return Path(snapshot_download(name))
    except Exception as error:  # noqa: BLE001  (every hub failure is "cannot get this model")
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(f"model {name!r}: the Hugging Face hub could not provide it: {reason}") from None


def _is_cross_encoder(folder: Path) -> bool:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return any(arch.endswith("ForSequenceClassification") for arch in config.get("architectures") or [])


def push_model(name: str, uri: str, overrides: ProfileOverrides = ProfileOverrides()) -> PushedModel:
    """Upload a model folder, a hub model or a builtin model to ``uri`` as a sealed folder.

    Args:
        name: a local model folder, a Hugging Face id (from the cache, else downloaded), or
            ``builtin:<name>``.
        uri: ``s3://bucket/prefix/<model-name>/``.
        overrides: profile overrides for an embedding model whose profile nothing declares.

    Raises:
        ValueError: ``uri`` is not an ``s3://`` URI.
        ModelNotFoundError: no such model, or not reachable from here.
        UnknownProfileError: an embedding model with no known profile and no overrides.
    """
    if not is_s3_uri(uri):
        raise ValueError(f"--uri: a model for a cluster run goes to S3; give an s3:// URI, not {uri!r}")
    folder = _model_folder(name)
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"model {name!r}: {folder} has no config.json, so it is not a model folder")
    cross_encoder = _is_cross_encoder(folder)
    # The profile the steps will use, resolved here where the model's own name is known.
    profile = None if cross_encoder else resolve_model(name, overrides).profile
    with tempfile.TemporaryDirectory(prefix="push-model-") as scratch:
        # Links, not copies: a large model is read once, by the upload.
        staged = Path(scratch) / folder.name
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder)
            if path.name in (PROFILE_FILENAME, COMPLETION_MARKER) or any(part.startswith(".") for part in relative.parts):
                continue
            target = staged / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), target)
        if profile is not None:
            write_model_profile(staged, profile)
        manifest = upload_folder(staged, uri)
    logger.info("pushed %s → %s: %d files, %.1f MB", name, uri, len(manifest["files"]),
                manifest["total_bytes"] / 1e6)
    return PushedModel(uri=uri, files=len(manifest["files"]), total_bytes=manifest["total_bytes"],
                       cross_encoder=cross_encoder)
