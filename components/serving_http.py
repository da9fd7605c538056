"""The HTTP side of ``searchtune serve``: the FastAPI app, its errors, metrics and routes.

Kept apart from :mod:`components.serving` (the configuration, the batching worker and the
request rules) so that what only needs :class:`~components.serving.ServeConfig`, such as
the command line in an image without FastAPI, does not import the web stack.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request, Response

from components.embedding import EncodeConfig, TextEncoder
from components.model_profiles import resolve_model
from components.serving import APIError, BatchWorker, EmbeddingService, ServeConfig, served_profile

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the app


class _Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can share a process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("searchtune_http_requests", "HTTP requests by path and status",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("searchtune_http_request_duration_seconds", "HTTP request latency", ["path"],
                                 registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.texts = Counter("searchtune_embedded_texts", "texts embedded", registry=self.registry)
        self.tokens = Counter("searchtune_prompt_tokens", "tokens embedded (special tokens included)",
                              registry=self.registry)
        self.batch_texts = Histogram("searchtune_batch_texts", "texts per forward-pass round",
                                     registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_seconds = Histogram("searchtune_batch_duration_seconds", "model time per round",
                                       registry=self.registry,
                                       buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.queued = Gauge("searchtune_queued_texts", "texts waiting for the model", registry=self.registry)

    def observe_batch(self, texts: int, tokens: int, seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_seconds.observe(seconds)
        self.texts.inc(texts)
        self.tokens.inc(tokens)


_ROUTE_PATHS = ("/v1/embeddings", "/v1/models", "/health", "/ready", "/metrics", "/", "/search")


class _RequestMetricsMiddleware:
    """Counts requests and their latency (plain ASGI: no per-request task overhead)."""

    def __init__(self, app, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        label = path if path in _ROUTE_PATHS else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(label, str(status["code"])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)


def _json_response(content: Any, status: int = 200) -> Response:
    import orjson

    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def _error_response(error: APIError):
    return _json_response(error.body(), error.status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes, whether or not the client
    declared its length (a chunked body has no Content-Length)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"request body of {length} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: ServeConfig):
    """The FastAPI app: loads the model (and the search page's models) before returning."""
    from fastapi.exceptions import RequestValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    # An s3:// model (a promoted copy) is downloaded sealed, once per content.
    model = replace(resolve_model(config.model), name=config.model)
    model = replace(model, profile=served_profile(model, config))
    try:
        encoder = TextEncoder(model, EncodeConfig(batch_size=config.max_batch_texts,
                                                  max_batch_tokens=config.max_batch_tokens,
                                                  precision=config.precision, device=config.device,
                                                  show_progress=False))
    except (OSError, ValueError) as error:  # not a folder, not a valid hub id, not on the hub, unreadable
        raise ValueError(f"serve: cannot load model {config.model!r}: {str(error).splitlines()[0]}") from None
    service = EmbeddingService(config, model, encoder)
    metrics = _Metrics()
    worker = BatchWorker(encoder, config.max_batch_texts, config.max_batch_tokens, config.batch_wait_ms / 1000,
                         observe=metrics.observe_batch)
    metrics.queued.set_function(lambda: worker.pending_texts)

    app = FastAPI(title="searchtune embeddings", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.worker, app.state.metrics = service, worker, metrics

    def check_auth(request: Request) -> None:
        if config.api_key and request.headers.get("authorization", "") != f"Bearer {config.api_key}":
            raise APIError(401, "missing or wrong API key (Authorization: Bearer ...)",
                           error_type="authentication_error", code="invalid_api_key")

    @app.exception_handler(APIError)
    async def api_error(_request, error: APIError):
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, error: StarletteHTTPException):
        messages = {404: "not found: this server has /v1/embeddings, /v1/models, /health, /ready, /metrics",
                    405: "method not allowed"}
        return _error_response(APIError(error.status_code, messages.get(error.status_code, str(error.detail))))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, error: RequestValidationError):
        return _error_response(APIError(400, f"invalid request: {error.errors()[0].get('msg', error)}"))

    @app.exception_handler(Exception)
    async def unexpected_error(_request, error: Exception):
        logger.exception("unexpected error")
        return _error_response(APIError(500, f"internal error: {type(error).__name__}", error_type="server_error"))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        check_auth(request)
        raw = await _read_body(request, config.max_request_bytes)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"could not parse the JSON body of the request: {error}") from None
        except RecursionError:
            raise APIError(400, "could not parse the JSON body of the request: nested too deeply") from None
        parsed = service.parse(body)
        token_ids = await run_in_threadpool(service.tokenize, parsed)
        vectors = await asyncio.wrap_future(worker.submit(token_ids))
        return _json_response(service.response(parsed, vectors, token_ids))

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_auth(request)
        return _json_response({"object": "list", "data": [service.model_card()]})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        check_auth(request)
        if model_id != service.name:
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves {service.name!r}",
                           param="model", code="model_not_found")
        return _json_response(service.model_card())

    @app.get("/health")
    async def health():
        # Liveness: a server whose model worker has stopped can never answer again.
        if not worker.alive:
            return _json_response({"status": "model worker stopped"}, 503)
        return _json_response({"status": "ok"})

    @app.get("/ready")
    async def ready():
        if not worker.alive:
            return _json_response({"status": "model worker stopped"}, 503)
        return _json_response({"status": "ready", "model": service.name})

    @app.get("/metrics")
    async def prometheus_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if config.ui:
        from components.search_page import SearchPage, add_search_page

        add_search_page(app, SearchPage(config.base_model, encoder, service.tokenizer_lock, config.corpus,
                                        config.test_data, config.top_k,
                                        EncodeConfig(precision=config.precision, device=config.device)))

    app.add_middleware(_RequestMetricsMiddleware, metrics=metrics)
    app.router.on_shutdown.append(worker.close)
    logger.info("serving %s as %r: %d dimensions, %s pooling, normalize=%s, max tokens query %d / passage %d",
                model.path, service.name, service.dimension, model.profile.pooling, model.profile.normalize,
                service.limits["query"], service.limits["passage"])
    return app
