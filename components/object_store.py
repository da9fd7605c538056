"""Files and folders in S3-compatible storage, moved so that nothing half-written looks complete.

A *folder* (a model, an embedding cache, a checkpoint) travels with a completion marker,
``_SEARCHTUNE_COMPLETE.json``: a manifest of every file with its size and SHA-256, written
after all the files. A reader refuses a folder whose marker is missing, or whose files do
not match it, so an upload cut off in the middle, a copy still under way, or an artifact
store that uploaded files in some other order is never taken for a finished folder. The
same marker seals local folders, which is how a model produced on one pod is checked when
the KFP launcher hands it to the next.

Large objects go through boto3's transfer manager (multipart, parallel parts). Every
request is retried by botocore (standard mode, exponential backoff), and every whole file
is retried again here with backoff for up to ``StorageSettings.retry_seconds``, so a store
that restarts in the middle of a transfer costs a pause, not the run. What still fails
raises :class:`StorageError` with one line naming the URI and the reason, never a secret.

Endpoint and credentials come from the standard variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), as KFP's own
artifact store and the Kubernetes Secret in ``manifests/`` provide them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from components.jsonl_files import atomic_path

logger = logging.getLogger(__name__)

S3_SCHEME = "s3://"
COMPLETION_MARKER = "_SEARCHTUNE_COMPLETE.json"
MARKER_FORMAT = 1

T = TypeVar("T")


class StorageError(ValueError):
    """A transfer that failed for good, in one line: the location and the reason."""


class IncompleteFolderError(StorageError):
    """A folder without its completion marker, or whose files do not match it."""


@dataclass(frozen=True)
class StorageSettings:
    """How transfers run.

    Attributes:
        multipart_threshold_mb: objects above this size move in parts.
        multipart_chunk_mb: size of one part (uploads and downloads). Downloads verify
            checksums part by part as parts land, so smaller parts overlap more of the
            hashing with the transfer (measured in ``benchmarks/s3_io.py``).
        max_concurrency: parts in flight at once, per file.
        request_attempts: botocore's attempts per request (standard retry mode).
        retry_seconds: how long a whole file keeps being retried after a failure (a store
            that restarts within this window costs a pause, not the transfer).
        connect_timeout_s: seconds to open a connection.
        read_timeout_s: seconds to wait for a response.
        verify_checksums: check SHA-256 of every downloaded file against the marker.
    """

    multipart_threshold_mb: int = 16
    multipart_chunk_mb: int = 16
    max_concurrency: int = 8
    request_attempts: int = 5
    retry_seconds: float = 120.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    verify_checksums: bool = True

    def __post_init__(self) -> None:
        if self.multipart_chunk_mb < 5:
            raise ValueError("multipart_chunk_mb must be at least 5 (S3's smallest part)")
        if self.max_concurrency < 1 or self.request_attempts < 1:
            raise ValueError("max_concurrency and request_attempts must be at least 1")
        if self.retry_seconds < 0:
            raise ValueError("retry_seconds must not be negative")


DEFAULT_SETTINGS = StorageSettings()


# --------------------------------------------------------------------------- locations


def is_s3_uri(location: str | os.PathLike) -> bool:
    return str(location).startswith(S3_SCHEME)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``; the key may be empty for a bucket's root."""
    if not is_s3_uri(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key


def join_uri(base: str, *parts: str) -> str:
    """``join_uri("s3://b/runs", "x", "model")`` → ``s3://b/runs/x/model``."""
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts if p])


def _folder_prefix(uri: str) -> tuple[str, str]:
    bucket, key = split_s3_uri(uri)
    return bucket, (key.rstrip("/") + "/") if key else ""


# --------------------------------------------------------------------------- client and errors


_CLIENT_ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                       "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
                       "SEARCHTUNE_S3_ADDRESSING_STYLE")


def s3_client(settings: StorageSettings = DEFAULT_SETTINGS):
    """A boto3 S3 client for the current environment.

    Clients are reused while the variables they were made from are unchanged (making one
    costs about half a second), and a changed variable gets a new one.
    """
    return _client_for(tuple(os.environ.get(name) for name in _CLIENT_ENVIRONMENT), settings)


@functools.lru_cache(maxsize=8)
def _client_for(environment: tuple, settings: StorageSettings):
    import boto3
    from botocore.config import Config

    addressing = dict(zip(_CLIENT_ENVIRONMENT, environment))["SEARCHTUNE_S3_ADDRESSING_STYLE"] or "path"
    config = Config(retries={"max_attempts": settings.request_attempts, "mode": "standard"},
                    connect_timeout=settings.connect_timeout_s, read_timeout=settings.read_timeout_s,
                    s3={"addressing_style": addressing})
    return boto3.session.Session().client("s3", config=config)


def _transfer_config(settings: StorageSettings):
    from boto3.s3.transfer import TransferConfig

    mb = 1024 * 1024
    return TransferConfig(multipart_threshold=settings.multipart_threshold_mb * mb,
                          multipart_chunksize=settings.multipart_chunk_mb * mb,
                          max_concurrency=settings.max_concurrency, use_threads=settings.max_concurrency > 1)


_PERMANENT_CODES = {
    "AccessDenied": "access denied: check the credentials and the bucket policy",
    "InvalidAccessKeyId": "the access key is not known to the store: check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check AWS_SECRET_ACCESS_KEY",
    "NoSuchBucket": "the bucket does not exist",
    "NoSuchKey": "no such object",
    "404": "no such object",
    "NotFound": "no such object",
    "403": "access denied: check the credentials and the bucket policy",
    "InvalidBucketName": "invalid bucket name",
    "InvalidRange": "InvalidRange: the object is shorter than expected",
}


def _reason(error: BaseException) -> tuple[str, bool]:
    """A one-line reason for a failed request, and whether retrying could help."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    # boto3's transfer manager re-raises a ClientError as S3UploadFailedError (the original
    # only as __context__): the original code decides whether a retry can help.
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, (ClientError, NoCredentialsError, EndpointConnectionError)):
        cause = cause.__cause__ or cause.__context__
    error = cause or error
    if isinstance(error, NoCredentialsError):
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", False
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _PERMANENT_CODES:
            return _PERMANENT_CODES[code], False
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"the store answered {code or status}", True
    if isinstance(error, EndpointConnectionError):
        return f"cannot reach the S3 endpoint {os.environ.get('AWS_ENDPOINT_URL', '(AWS default)')}", True
    # Connection resets, timeouts and the transfer manager's wrapped errors are transient.
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": "), True


def _with_retries(action: Callable[[], T], location: str, what: str, settings: StorageSettings) -> T:
    """Run ``action``; retry transient failures with backoff for ``settings.retry_seconds``."""
    deadline = time.monotonic() + settings.retry_seconds
    delay = 0.5
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except (StorageError, FileNotFoundError):
            raise
        except Exception as error:  # botocore, s3transfer and socket errors alike
            reason, transient = _reason(error)
            if not transient or time.monotonic() + delay > deadline:
                raise StorageError(f"{location}: {what} failed: {reason}") from None
            logger.warning("%s: %s failed (%s); retry %d in %.1f s", location, what, reason, attempt, delay)
            time.sleep(delay * (1 + 0.2 * random.random()))
            delay = min(delay * 2, 15.0)


class _Progress:
    """Logs a transfer's progress every few seconds (boto3 calls it from its threads)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.started = self.last = time.monotonic()

    def __call__(self, amount: int) -> None:
        self.done += amount
        now = time.monotonic()
        if now - self.last >= 5.0:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9) / 1e6
            logger.info("%s: %.0f%% of %.1f MB (%.1f MB/s)", self.label, 100 * self.done / self.total,
                        self.total / 1e6, rate)

    def rewind(self) -> None:
        self.done = 0


# --------------------------------------------------------------------------- the marker


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(4 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != COMPLETION_MARKER:
            yield path


def folder_manifest(folder: str | os.PathLike) -> dict:
    """The marker's content for a local folder: every file's relative path, size and SHA-256."""
    folder = Path(folder)
    files = {path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
             for path in _local_files(folder)}
    return {"format": MARKER_FORMAT, "files": files, "total_bytes": sum(f["size"] for f in files.values())}


def seal_folder(folder: str | os.PathLike) -> dict:
    """Write the completion marker into a finished local folder (last); returns the manifest."""
    folder = Path(folder)
    manifest = folder_manifest(folder)
    temporary = folder / f".{COMPLETION_MARKER}.partial"
    temporary.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, folder / COMPLETION_MARKER)
    return manifest


def _parse_marker(text: str, location: str) -> dict:
    try:
        manifest = json.loads(text)
        if manifest.get("format") != MARKER_FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError
        return manifest
    except ValueError:
        raise IncompleteFolderError(f"{location}: {COMPLETION_MARKER} is not a searchtune completion marker") from None


def require_complete_folder(folder: str | os.PathLike, verify_checksums: bool = False) -> dict:
    """Check a local folder against its marker; returns the manifest.

    Raises:
        IncompleteFolderError: no marker, a listed file missing or of another size (or
            checksum, when asked).
    """
    folder = Path(folder)
    marker = folder / COMPLETION_MARKER
    if not marker.is_file():
        raise IncompleteFolderError(f"{folder}: no completion marker ({COMPLETION_MARKER}): the folder is "
                                    "incomplete or was not written by searchtune")
    manifest = _parse_marker(marker.read_text(encoding="utf-8"), str(folder))
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise IncompleteFolderError(f"{folder}: {name} is listed in the completion marker but missing")
        if path.stat().st_size != entry["size"]:
            raise IncompleteFolderError(f"{folder}: {name} has {path.stat().st_size} bytes, the marker says "
                                        f"{entry['size']}")
        if verify_checksums and _sha256(path) != entry["sha256"]:
            raise IncompleteFolderError(f"{folder}: {name} does not match its checksum in the marker")
    return manifest


def is_complete_folder(location: str | os.PathLike, settings: StorageSettings = DEFAULT_SETTINGS) -> bool:
    """True when a local folder or ``s3://`` prefix carries a valid completion marker."""
    try:
        if is_s3_uri(location):
            _read_s3_marker(str(location), settings)
        else:
            require_complete_folder(location)
        return True
    except IncompleteFolderError:
        return False


# --------------------------------------------------------------------------- single objects


def describe_object(uri: str, settings: StorageSettings = DEFAULT_SETTINGS) -> dict:
    """``{"etag", "size", "last_modified"}`` of one object: what its content is keyed on."""
    bucket, key = split_s3_uri(uri)
    client = s3_client(settings)
    try:
        head = _with_retries(lambda: client.head_object(Bucket=bucket, Key=key), uri, "reading its metadata",
                             settings)
    except StorageError as error:
        # A HEAD answer has no body: a missing bucket and a missing key both read 404.
        if "no such object" in str(error) and not _bucket_exists(client, bucket):
            raise StorageError(f"{uri}: reading its metadata failed: the bucket does not exist") from None
        raise
    return {"etag": head["ETag"].strip('"'), "size": int(head["ContentLength"]),
            "last_modified": head["LastModified"].isoformat()}


def _bucket_exists(client, bucket: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return True
    except ClientError as error:
        return str(error.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound")


def download_file(uri: str, destination: str | os.PathLike, settings: StorageSettings = DEFAULT_SETTINGS) -> Path:
    """Download one object to ``destination`` (renamed into place only when whole)."""
    bucket, key = split_s3_uri(uri)
    if not key or key.endswith("/"):
        raise StorageError(f"{uri}: names a folder, not an object")
    client = s3_client(settings)
    destination = Path(destination)
    size = describe_object(uri, settings)["size"]
    progress = _Progress(f"download {uri}", size)
    with atomic_path(destination) as staged:
        def attempt() -> None:
            progress.rewind()
            client.download_file(bucket, key, str(staged), Config=_transfer_config(settings), Callback=progress)
        _with_retries(attempt, uri, "download", settings)
        if staged.stat().st_size != size:
            raise StorageError(f"{uri}: downloaded {staged.stat().st_size} bytes, the store holds {size}")
    return destination


def upload_file(source: str | os.PathLike, uri: str, settings: StorageSettings = DEFAULT_SETTINGS) -> str:
    """Upload one file (multipart above the threshold); S3 makes it visible only when whole."""
    bucket, key = split_s3_uri(uri)
    if not key or key.endswith("/"):
        raise StorageError(f"{uri}: names a folder, not an object")
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: file not found")
    client = s3_client(settings)
    progress = _Progress(f"upload {uri}", source.stat().st_size)

    def attempt() -> None:
        progress.rewind()
        client.upload_file(str(source), bucket, key, Config=_transfer_config(settings), Callback=progress)
    _with_retries(attempt, uri, "upload", settings)
    return uri


def read_object(uri: str, settings: StorageSettings = DEFAULT_SETTINGS) -> bytes:
    """The whole content of one small object (a JSON file, a marker)."""
    bucket, key = split_s3_uri(uri)
    client = s3_client(settings)
    return _with_retries(lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read(), uri, "reading",
                         settings)


def list_objects(uri: str, settings: StorageSettings = DEFAULT_SETTINGS) -> list[str]:
    """The ``s3://`` URIs of every object under a prefix (a folder: give it with or without ``/``)."""
    bucket, prefix = _folder_prefix(uri)
    return [f"{S3_SCHEME}{bucket}/{key}" for key in _list_keys(s3_client(settings), bucket, prefix, uri, settings)]


# --------------------------------------------------------------------------- folders


def _list_keys(client, bucket: str, prefix: str, uri: str, settings: StorageSettings) -> list[str]:
    def listing() -> list[str]:
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys
    return _with_retries(listing, uri, "listing", settings)


def sealed_manifest(uri: str, settings: StorageSettings = DEFAULT_SETTINGS) -> dict:
    """The manifest in a sealed ``s3://`` folder's completion marker (its files, sizes, checksums).

    Raises:
        IncompleteFolderError: the folder has no completion marker.
    """
    return _read_s3_marker(uri, settings)


def _read_s3_marker(uri: str, settings: StorageSettings) -> dict:
    from botocore.exceptions import ClientError

    bucket, prefix = _folder_prefix(uri)
    client = s3_client(settings)

    def read() -> dict | None:
        try:
            body = client.get_object(Bucket=bucket, Key=prefix + COMPLETION_MARKER)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return _parse_marker(body.decode("utf-8"), uri)
    manifest = _with_retries(read, uri, "reading the completion marker", settings)
    if manifest is None:
        raise IncompleteFolderError(f"{uri}: no completion marker ({COMPLETION_MARKER}): the folder is "
                                    "incomplete, still being written, or not a searchtune folder")
    return manifest


def upload_folder(source: str | os.PathLike, uri: str, settings: StorageSettings = DEFAULT_SETTINGS) -> dict:
    """Upload a local folder to an ``s3://`` prefix; the completion marker goes last.

    An earlier folder at the same prefix loses its marker first (readers then refuse it
    until this upload completes) and keeps no stale files. Returns the manifest.
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: folder not found")
    bucket, prefix = _folder_prefix(uri)
    client = s3_client(settings)
    sizes = {path.relative_to(source).as_posix(): path.stat().st_size for path in _local_files(source)}
    # The checksums are needed only for the marker, at the end: hashing runs beside the
    # upload (hashlib releases the GIL) instead of costing a pass of its own first.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest") as hashing:
        pending_manifest = hashing.submit(folder_manifest, source)
        _with_retries(lambda: client.delete_object(Bucket=bucket, Key=prefix + COMPLETION_MARKER), uri,
                      "removing the old completion marker", settings)
        stale = [key for key in _list_keys(client, bucket, prefix, uri, settings) if key[len(prefix):] not in sizes]
        for start in range(0, len(stale), 1000):
            batch = {"Objects": [{"Key": key} for key in stale[start:start + 1000]], "Quiet": True}
            _with_retries(lambda: client.delete_objects(Bucket=bucket, Delete=batch), uri, "removing stale files",
                          settings)
        started = time.monotonic()
        for number, name in enumerate(sizes, start=1):
            upload_file(source / name, f"{S3_SCHEME}{bucket}/{prefix}{name}", settings)
            logger.debug("uploaded %d/%d: %s", number, len(sizes), name)
        manifest = pending_manifest.result()
    if {name: entry["size"] for name, entry in manifest["files"].items()} != sizes:
        raise StorageError(f"{source}: the folder changed while it was uploaded; not sealed")
    body = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    _with_retries(lambda: client.put_object(Bucket=bucket, Key=prefix + COMPLETION_MARKER, Body=body), uri,
                  "writing the completion marker", settings)
    elapsed = time.monotonic() - started
    logger.info("uploaded %s → %s: %d files, %.1f MB in %.1f s", source, uri, len(manifest["files"]),
                manifest["total_bytes"] / 1e6, elapsed)
    return manifest


def _download_parts(client, uri: str, size: int, target: Path, settings: StorageSettings) -> str | None:
    """Download one object of known size in ranged parts, in parallel; returns its SHA-256.

    Parts land roughly in order, and the checksum follows the finished prefix in this
    thread while later parts are still in flight, so verifying costs little beyond the
    transfer itself. A failed part is retried alone, with backoff.
    """
    bucket, key = split_s3_uri(uri)
    part = max(settings.multipart_chunk_mb << 20, 1)
    starts = list(range(0, size, part)) or [0]
    progress = _Progress(f"download {uri}", size)
    with target.open("wb") as handle:
        handle.truncate(size)

    def fetch(start: int) -> None:
        end = min(start + part, size) - 1

        def attempt() -> None:
            request = {"Bucket": bucket, "Key": key}
            if size:
                request["Range"] = f"bytes={start}-{end}"
            body = client.get_object(**request)["Body"]
            written = 0
            with target.open("r+b") as out:
                out.seek(start)
                for block in body.iter_chunks(1 << 20):
                    out.write(block)
                    written += len(block)
            if written != (end - start + 1 if size else 0):
                raise ConnectionError(f"part {start}-{end}: {written} bytes arrived")
            progress(written)
        _with_retries(attempt, uri, "download", settings)

    digest = hashlib.sha256() if settings.verify_checksums else None
    with ThreadPoolExecutor(max_workers=min(settings.max_concurrency, len(starts)),
                            thread_name_prefix="download") as pool:
        futures = [pool.submit(fetch, start) for start in starts]
        try:
            with target.open("rb") as written:
                for start, future in zip(starts, futures):
                    future.result()
                    if digest is not None:
                        written.seek(start)
                        remaining = min(part, size - start)
                        while remaining > 0:
                            block = written.read(min(4 << 20, remaining))
                            digest.update(block)
                            remaining -= len(block)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return digest.hexdigest() if digest is not None else None


def download_folder(uri: str, destination: str | os.PathLike, settings: StorageSettings = DEFAULT_SETTINGS) -> Path:
    """Download a sealed ``s3://`` folder; ``destination`` appears only when whole and checked.

    Raises:
        IncompleteFolderError: no completion marker, or a listed file missing or different.
    """
    manifest = _read_s3_marker(uri, settings)
    bucket, prefix = _folder_prefix(uri)
    destination = Path(destination)
    started = time.monotonic()
    client = s3_client(settings)
    with atomic_path(destination) as staged:
        staged.mkdir()
        for name, entry in manifest["files"].items():
            target = staged / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                digest = _download_parts(client, f"{S3_SCHEME}{bucket}/{prefix}{name}", entry["size"], target,
                                         settings)
            except StorageError as error:
                if "no such object" in str(error) or "InvalidRange" in str(error):
                    raise IncompleteFolderError(f"{uri}: {name} is listed in the completion marker but missing "
                                                "or shorter") from None
                raise
            if target.stat().st_size != entry["size"]:
                raise IncompleteFolderError(f"{uri}: {name} has {target.stat().st_size} bytes, the marker says "
                                            f"{entry['size']}")
            if digest is not None and digest != entry["sha256"]:
                raise IncompleteFolderError(f"{uri}: {name} does not match its checksum in the marker")
        (staged / COMPLETION_MARKER).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    logger.info("downloaded %s → %s: %d files, %.1f MB in %.1f s", uri, destination, len(manifest["files"]),
                manifest["total_bytes"] / 1e6, time.monotonic() - started)
    return destination


def copy_folder(source: str | os.PathLike, destination: str | os.PathLike,
                settings: StorageSettings = DEFAULT_SETTINGS) -> str:
    """Copy a folder between local paths and ``s3://`` prefixes, in any direction, sealed.

    A local source without a marker is sealed on the way (it is the caller's finished
    folder); an ``s3://`` source must already be complete. Returns the destination.
    """
    source, destination = str(source), str(destination)
    if is_s3_uri(source) and is_s3_uri(destination):
        staging = Path(os.environ.get("TMPDIR", "/tmp")) / f"searchtune-copy-{os.getpid()}-{time.time_ns()}"
        try:
            download_folder(source, staging, settings)
            upload_folder(staging, destination, settings)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    elif is_s3_uri(source):
        download_folder(source, destination, settings)
    else:
        if not Path(source).is_dir():
            raise FileNotFoundError(f"{source}: folder not found")
        if is_s3_uri(destination):
            upload_folder(source, destination, settings)
        else:
            with atomic_path(destination) as staged:
                shutil.copytree(source, staged, ignore=shutil.ignore_patterns(COMPLETION_MARKER))
                seal_folder(staged)
    return destination
