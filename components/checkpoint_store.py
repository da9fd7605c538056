"""Training checkpoints in S3: one sealed folder per node, complete only when every node's is.

Nodes of a job do not share a disk, and each one writes part of a Trainer checkpoint:
the Master the weights, optimizer, scheduler and trainer state, every node the random
state of its own processes (and, under DeepSpeed ZeRO, its optimizer shards). So each
node uploads its own part to::

    <checkpoint_uri>/checkpoint-<step>/node-<rank>-of-<nnodes>/

as a sealed folder (``components.object_store``: completion marker written last). A
checkpoint is *complete* when all ``nnodes`` parts carry their marker; a restarted job
resumes from the newest complete one, so an upload cut off by a dying pod is never used.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.object_store import (
    COMPLETION_MARKER,
    DEFAULT_SETTINGS,
    StorageSettings,
    _folder_prefix,
    _with_retries,
    download_folder,
    join_uri,
    s3_client,
    upload_folder,
)

logger = logging.getLogger(__name__)

_STEP = re.compile(r"^checkpoint-(\d+)/")
_PART_MARKER = re.compile(rf"(?:^|/)checkpoint-(\d+)/node-(\d+)-of-(\d+)/{re.escape(COMPLETION_MARKER)}$")


@dataclass(frozen=True)
class StoredCheckpoint:
    """One checkpoint step in the store and which of its node parts are sealed."""

    step: int
    nnodes: int
    sealed_nodes: frozenset[int]

    @property
    def complete(self) -> bool:
        return self.sealed_nodes >= frozenset(range(self.nnodes))

    @property
    def name(self) -> str:
        return f"checkpoint-{self.step}"


class CheckpointStore:
    """The checkpoints of one training run under an ``s3://`` prefix.

    Args:
        uri: the run's checkpoint prefix (``<checkpoint_root>/<run id>/<task>``).
        settings: transfer settings.
    """

    def __init__(self, uri: str, settings: StorageSettings = DEFAULT_SETTINGS) -> None:
        self.uri = uri.rstrip("/")
        self.settings = settings

    def part_uri(self, step: int, node_rank: int, nnodes: int) -> str:
        return join_uri(self.uri, f"checkpoint-{step}", f"node-{node_rank}-of-{nnodes}")

    def _keys(self, prefix_suffix: str = "") -> list[tuple[str, int]]:
        bucket, prefix = _folder_prefix(self.uri)
        client = s3_client(self.settings)

        def listing() -> list[tuple[str, int]]:
            found = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + prefix_suffix):
                found += [(item["Key"][len(prefix):], int(item["Size"])) for item in page.get("Contents", [])]
            return found
        return _with_retries(listing, self.uri, "listing checkpoints", self.settings)

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every checkpoint step with at least one sealed part, oldest first."""
        return self._parse(self._keys("checkpoint-"))

    @staticmethod
    def _parse(keys: list[tuple[str, int]]) -> list[StoredCheckpoint]:
        parts: dict[tuple[int, int], set[int]] = {}
        for key, _ in keys:
            match = _PART_MARKER.search(key)
            if match:
                step, rank, nnodes = (int(group) for group in match.groups())
                parts.setdefault((step, nnodes), set()).add(rank)
        return sorted((StoredCheckpoint(step, nnodes, frozenset(ranks)) for (step, nnodes), ranks in parts.items()),
                      key=lambda c: (c.step, c.complete))

    def newest_complete(self) -> StoredCheckpoint | None:
        complete = [checkpoint for checkpoint in self.checkpoints() if checkpoint.complete]
        return complete[-1] if complete else None

    def bytes_of(self, step: int) -> int:
        """Bytes stored for one checkpoint step, all node parts and markers."""
        return sum(size for _, size in self._keys(f"checkpoint-{step}/"))

    def upload(self, folder: str | os.PathLike, step: int, node_rank: int, nnodes: int) -> dict:
        """Upload this node's part of a checkpoint, sealed; returns its manifest."""
        return upload_folder(folder, self.part_uri(step, node_rank, nnodes), self.settings)

    def download(self, checkpoint: StoredCheckpoint, node_rank: int, destination: str | os.PathLike) -> Path:
        """The Master's part, overlaid with this node's own part when the checkpoint has one.

        A node whose rank the checkpoint's topology did not have (the job grew) gets the
        Master's part alone: the Trainer then warns that it has no random state for its
        processes and seeds them afresh.
        """
        if not checkpoint.complete:
            raise ValueError(f"{self.uri}/{checkpoint.name} is not complete")
        destination = Path(destination)
        download_folder(self.part_uri(checkpoint.step, 0, checkpoint.nnodes), destination, self.settings)
        (destination / COMPLETION_MARKER).unlink(missing_ok=True)
        if node_rank != 0 and node_rank < checkpoint.nnodes:
            own = Path(tempfile.mkdtemp(prefix="node-part-", dir=destination.parent))
            try:
                download_folder(self.part_uri(checkpoint.step, node_rank, checkpoint.nnodes), own / "part",
                                self.settings)
                for path in sorted((own / "part").rglob("*")):
                    if path.is_file() and path.name != COMPLETION_MARKER:
                        target = destination / path.relative_to(own / "part")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(path, target)
            finally:
                shutil.rmtree(own, ignore_errors=True)
        return destination

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest ``keep`` complete checkpoints; returns the steps deleted.

        Steps newer than the newest complete checkpoint are uploads in progress and stay.
        Markers go first, so a reader never takes a half-deleted checkpoint for complete.
        """
        if keep < 1:
            raise ValueError("keep must be at least 1")
        keys = self._keys("checkpoint-")
        complete = [c.step for c in self._parse(keys) if c.complete]
        if not complete:
            return []
        kept = set(complete[-keep:])
        # Every step with any object, sealed or not: an upload cut off before its marker is garbage too.
        steps = {int(match.group(1)) for key, _ in keys if (match := _STEP.match(key))}
        doomed = sorted(step for step in steps if step < complete[-1] and step not in kept)
        bucket, prefix = _folder_prefix(self.uri)
        client = s3_client(self.settings)
        for step in doomed:
            keys = [key for key, _ in self._keys(f"checkpoint-{step}/")]
            ordered = sorted(keys, key=lambda key: not key.endswith(COMPLETION_MARKER))
            for start in range(0, len(ordered), 1000):
                batch = {"Objects": [{"Key": prefix + key} for key in ordered[start:start + 1000]], "Quiet": True}
                _with_retries(lambda: client.delete_objects(Bucket=bucket, Delete=batch), self.uri,
                              f"deleting checkpoint-{step}", self.settings)
        if doomed:
            logger.info("%s: deleted checkpoint(s) %s, keeping the newest %d complete", self.uri,
                        ", ".join(map(str, doomed)), keep)
        return doomed
