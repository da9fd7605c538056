"""Where the pipeline's input data comes from: a local path, an ``s3://`` URI, or nothing.

Nothing means the built-in sample data (see ``components.sample_data``), so the pipeline
runs with no data at all. ``s3://`` URIs are read with boto3, which takes the endpoint
and credentials from the standard variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...) the way KFP's own artifact store is configured.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from components.jsonl_files import DataError, atomic_path
from components.sample_data import SampleDataConfig, generate_sample_data

logger = logging.getLogger(__name__)

S3_SCHEME = "s3://"


@dataclass(frozen=True)
class TrainingInputs:
    """Local paths of the step's inputs; ``test`` and ``corpus`` may be absent."""

    train: Path
    test: Path | None
    corpus: Path | None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``."""
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not bucket or not key:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key


def fetch_input(location: str, work_dir: str | os.PathLike) -> Path:
    """A local copy (or the path itself) of a data file named by path or ``s3://`` URI.

    Raises:
        DataError: when a local file does not exist.
    """
    if location.startswith(S3_SCHEME):
        import boto3

        bucket, key = split_s3_uri(location)
        target = Path(work_dir) / "inputs" / bucket / key
        with atomic_path(target) as temporary:
            # A fresh session reads the current environment; the default one caches it.
            boto3.session.Session().client("s3").download_file(bucket, key, str(temporary))
        logger.info("fetched %s", location)
        return target
    path = Path(location).expanduser()
    if not path.is_file():
        raise DataError(path, 0, "", "file not found")
    return path


def resolve_training_inputs(
    train_data: str,
    test_data: str,
    corpus: str,
    work_dir: str | os.PathLike,
    sample: SampleDataConfig = SampleDataConfig(),
) -> TrainingInputs:
    """Local paths for the prepare step; an empty ``train_data`` generates the sample.

    Args:
        train_data: path or ``s3://`` URI of training rows; empty for the built-in sample.
        test_data: optional test split (empty: split the training rows 9:1).
        corpus: optional ``{"id","text"}`` passages added to the global pool.
        work_dir: where downloads and the sample go.
        sample: the sample generator's settings, used when ``train_data`` is empty.
    """
    if not train_data:
        if test_data:
            raise ValueError("a test file was given without training data")
        files = generate_sample_data(Path(work_dir) / "sample", sample)
        return TrainingInputs(train=files.rows, test=None,
                              corpus=fetch_input(corpus, work_dir) if corpus else files.corpus)
    return TrainingInputs(
        train=fetch_input(train_data, work_dir),
        test=fetch_input(test_data, work_dir) if test_data else None,
        corpus=fetch_input(corpus, work_dir) if corpus else None,
    )
