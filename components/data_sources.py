"""Where the pipeline's input data comes from: a local path, an ``s3://`` URI, or nothing.

Nothing means the built-in sample data (see ``components.sample_data``), so the pipeline
runs with no data at all. ``s3://`` URIs are read with boto3, which takes the endpoint
and credentials from the standard variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...) the way KFP's own artifact store is configured. A location that
cannot be read is a :class:`DataError` naming it and the reason in one line (never a
credential).

:func:`fingerprint_inputs` identifies what the locations hold (S3: ETag, size and
modification time; local files: size and SHA-256), so the pipeline's cache is keyed on the
data, not on its name: a weekly run over an updated object prepares and trains again.
"""

from __future__ import annotations

import hashlib
import json
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


def _s3_client():
    import boto3
    from botocore.config import Config

    # A fresh session reads the current environment; the default one caches it. Few
    # retries and a short connect timeout: an unreachable endpoint is reported, not waited on.
    return boto3.session.Session().client(
        "s3", config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}))


_ACCESS_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}


def _s3_problem(error: Exception) -> str:
    """Why an S3 request failed, in a few words and without any credential."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(error, NoCredentialsError):
        return "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(error, EndpointConnectionError):
        endpoint = error.kwargs.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or "(default)"
        return f"cannot reach the S3 endpoint {endpoint} (AWS_ENDPOINT_URL)"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return "no such object"
        if code == "NoSuchBucket":
            return "no such bucket"
        if code in _ACCESS_CODES:
            return f"access denied ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
        return f"S3 error {code}"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")


def _s3_errors():
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def fetch_input(location: str, work_dir: str | os.PathLike) -> Path:
    """A local copy (or the path itself) of a data file named by path or ``s3://`` URI.

    Raises:
        DataError: naming the location, when a local file does not exist or an S3 object
            cannot be read (unreachable endpoint, no such bucket or key, access denied).
    """
    if location.startswith(S3_SCHEME):
        bucket, key = _split(location)
        target = Path(work_dir) / "inputs" / bucket / key
        try:
            with atomic_path(target) as temporary:
                _s3_client().download_file(bucket, key, str(temporary))
        except _s3_errors() as error:
            raise DataError(location, 0, "", _s3_problem(error)) from None
        logger.info("fetched %s", location)
        return target
    return _local_file(location)


def _local_file(location: str) -> Path:
    path = Path(location).expanduser()
    if path.is_dir():
        raise DataError(path, 0, "", "is a folder, not a file")
    if not path.is_file():
        raise DataError(path, 0, "", "file not found")
    return path


def _split(uri: str) -> tuple[str, str]:
    try:
        return split_s3_uri(uri)
    except ValueError:
        raise DataError(uri, 0, "", "not an s3://bucket/key URI") from None


def _fingerprint_one(location: str) -> dict | None:
    if not location:
        return None
    if location.startswith(S3_SCHEME):
        bucket, key = _split(location)
        try:
            head = _s3_client().head_object(Bucket=bucket, Key=key)
        except _s3_errors() as error:
            raise DataError(location, 0, "", _s3_problem(error)) from None
        return {"uri": location, "etag": head.get("ETag"), "size": head.get("ContentLength"),
                "last_modified": str(head.get("LastModified"))}
    path = _local_file(location)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def fingerprint_inputs(locations: list[str]) -> str:
    """A digest of what the data locations hold now (empty ones included as empty).

    S3 objects are identified by ETag, size and modification time (a HEAD request, no
    download); local files by size and SHA-256 of their bytes.

    Raises:
        DataError: naming a location that cannot be read.
    """
    described = [_fingerprint_one(location) for location in locations]
    for location, description in zip(locations, described):
        if description:
            logger.info("input %s: %s", location, description)
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode("utf-8")).hexdigest()[:32]


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
