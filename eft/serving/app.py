"""The FastAPI application: OpenAI-compatible /v1/embeddings and /v1/models, health, metrics.

Request bodies are parsed in eft/serving/parsing.py (every client mistake is an OpenAI-shaped 4xx);
token-id inputs are decoded as eft/serving/token_ids.py explains.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from eft.serving.backends import Backend, TextTokenizer
from eft.serving.batcher import Closed, DynamicBatcher, Overloaded
from eft.serving.metrics import ServerMetrics
from eft.serving.parsing import ApiError, EmbeddingRequest, parse_json, parse_request
from eft.serving.token_ids import CLIENT_HINT, ModelTokenIds, TiktokenDecoder, TokenIdError, make_decoder

log = logging.getLogger("eft.serving")

# Above this many characters a request is tokenized off the event loop.
_THREAD_TOKENIZE_CHARS = 20_000


@dataclass
class ServerConfig:
    model_name: str | None = None  # served name; default: the manifest's (or the folder's) name
    max_inputs: int = 2048
    max_input_tokens: int | None = None  # default and ceiling: the model's maximum sequence length
    on_too_long: str = "truncate"  # or "error": 400 for an input longer than max_input_tokens
    max_request_bytes: int = 8 * 1024 * 1024
    max_batch_tokens: int = 16384
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 8192
    max_padding: float = 0.25  # start a new forward pass rather than pad more than this fraction
    query_prefix: str | None = None  # override the model's
    passage_prefix: str | None = None
    warmup: bool = True
    token_ids: str = "cl100k_base"  # how token-id inputs are read: see eft/serving/token_ids.py


def error_body(status: int, message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(), status_code=status,
                    media_type="application/json", headers=headers)


def api_error_response(e: ApiError) -> Response:
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return Response(error_body(e.status, e.message, e.type, e.param, e.code), status_code=e.status,
                    media_type="application/json", headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    too_big = ApiError(413, f"request body too large: the limit is {limit} bytes", code="payload_too_large")
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            declared = int(cl)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if declared > limit:
            # Drain (without keeping) a moderately larger body so that the client reads the answer
            # instead of a reset connection; give up on absurd sizes.
            if declared <= 16 * limit:
                async for _ in request.stream():
                    pass
            raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


class ServerState:
    def __init__(self) -> None:
        self.status = "loading"  # loading | ready | failed | draining
        self.error: str | None = None
        self.backend: Backend | None = None
        self.batcher: DynamicBatcher | None = None
        self.tokenizer: TextTokenizer | None = None
        self.limit = 0
        self.name = ""
        self.prefix = {"query": "", "passage": ""}
        self.token_decoder: TiktokenDecoder | ModelTokenIds | None = None  # None: --token-ids reject
        self.frame: tuple[list[int], list[int]] = ([], [])  # the model's special tokens around a text
        self.loaded = threading.Event()


def warm_up(backend: Backend, max_batch: int) -> None:
    L = backend.info.max_length
    for n, width in ((1, 8), (min(8, max_batch), min(64, L)), (2, L)):
        backend.embed([[backend.pad_id + 1] * width] * n)


def create_app(cfg: ServerConfig, loader: Callable[[], Backend] | Backend,
               on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """An app that loads its backend (a loaded Backend, or a function returning one) in the background.

    /health/live answers at once; /health/ready and /v1/embeddings wait for the load and warm-up.
    `on_fatal(message)` is called if loading fails (the CLI stops the server with a non-zero exit).
    """
    metrics = ServerMetrics()
    state = ServerState()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=_load_into, args=(state, cfg, loader, metrics, on_fatal), name="eft-model-load",
                         daemon=True).start()
        yield
        if state.status != "failed":
            state.status = "draining"
        metrics.ready.set(0)
        # In-flight requests are done (uvicorn waited for them); finish what is queued, then stop.
        if state.batcher is not None:
            await asyncio.to_thread(state.batcher.stop)
        if state.backend is not None:
            state.backend.close()

    app = FastAPI(title="eft embedding server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.eft = state
    app.state.metrics = metrics
    app.state.config = cfg

    _add_error_handlers(app, metrics)
    _add_health_routes(app, state, metrics)
    _add_model_routes(app, state)
    _add_embeddings_route(app, state, cfg, metrics)
    return app


def _add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    """Every error, routing ones included, in OpenAI's JSON shape."""
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = {404: f"Unknown path {request.url.path}",
               405: f"Method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return api_error_response(ApiError(exc.status_code, msg))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:  # pragma: no cover
        return api_error_response(ApiError(400, str(exc)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        metrics.errors.labels("internal_error").inc()
        return api_error_response(ApiError(500, "internal server error", code="internal_error"))


def _add_health_routes(app: FastAPI, state: ServerState, metrics: ServerMetrics) -> None:
    """/health/live, /health/ready (what the readiness probe reads) and /metrics."""
    @app.get("/health/live")
    async def live() -> Response:
        return json_response({"status": "alive"})

    @app.get("/health/ready")
    async def ready() -> Response:
        body: dict[str, Any] = {"status": state.status}
        if state.backend is not None:
            body.update(model=state.name, backend=state.backend.describe(), dimension=state.backend.info.dimension,
                        max_input_tokens=state.limit)
        if state.error:
            body["error"] = state.error
        return json_response(body, 200 if state.status == "ready" else 503)

    @app.get("/metrics")
    async def prom() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_model_routes(app: FastAPI, state: ServerState) -> None:
    """/v1/models and /v1/models/{id}."""
    def _model_card() -> dict[str, Any]:
        created = state.backend.info.created if state.backend else 0
        return {"id": state.name, "object": "model", "created": created, "owned_by": "eft"}

    @app.get("/v1/models")
    async def models() -> Response:
        if state.status not in ("ready", "draining"):
            return api_error_response(_not_ready(state))
        return json_response({"object": "list", "data": [_model_card()]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        if state.status not in ("ready", "draining"):
            return api_error_response(_not_ready(state))
        if model_id != state.name:
            return api_error_response(ApiError(404, f"The model '{model_id}' does not exist", param="model",
                                               code="model_not_found"))
        return json_response(_model_card())


def _add_embeddings_route(app: FastAPI, state: ServerState, cfg: ServerConfig, metrics: ServerMetrics) -> None:
    """POST /v1/embeddings: the answer or an OpenAI-shaped error, counted and timed."""
    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            resp = await _embeddings(request, state, cfg, metrics)
            status = 200
        except ApiError as e:
            resp, status = api_error_response(e), e.status
            metrics.errors.labels(e.code).inc()
        except Exception:  # a backend failure: the client gets an OpenAI-shaped 500, the log the traceback
            log.exception("embedding request failed")
            e = ApiError(500, "internal server error while computing embeddings", code="inference_error")
            resp, status = api_error_response(e), 500
            metrics.errors.labels(e.code).inc()
        metrics.requests.labels(str(status)).inc()
        metrics.request_latency.labels(str(status)).observe(time.perf_counter() - t0)
        return resp


def _load_into(state: ServerState, cfg: ServerConfig, loader: Callable[[], Backend] | Backend, metrics: ServerMetrics,
               on_fatal: Callable[[str], None] | None) -> None:
    """Load and warm up the backend (in a thread), then mark the server ready; on failure report it."""
    try:
        backend = loader() if callable(loader) and not isinstance(loader, Backend) else loader
        assert isinstance(backend, Backend)
        max_len = backend.info.max_length
        limit = min(cfg.max_input_tokens or max_len, max_len)
        state.tokenizer = backend.tokenizer if limit == backend.tokenizer.max_length else \
            backend.tokenizer.with_max_length(limit)
        state.limit = limit
        state.name = cfg.model_name or backend.info.name
        state.prefix = {
            "query": backend.info.query_prefix if cfg.query_prefix is None else cfg.query_prefix,
            "passage": backend.info.passage_prefix if cfg.passage_prefix is None else cfg.passage_prefix,
        }
        state.token_decoder = make_decoder(cfg.token_ids, backend.tokenizer.vocab_size)
        state.frame = backend.tokenizer.frame()
        if cfg.warmup:
            t0 = time.perf_counter()
            warm_up(backend, cfg.max_batch_size)
            log.info("warm-up done in %.2fs", time.perf_counter() - t0)
        if state.status != "loading":  # shut down while loading: nothing to serve any more
            backend.close()
            return
        batcher = DynamicBatcher(backend, cfg.max_batch_tokens, cfg.max_batch_size, cfg.max_wait_ms,
                                 cfg.max_queue, metrics, max_padding=cfg.max_padding)
        batcher.start()
        state.backend, state.batcher = backend, batcher
        state.status = "ready"
        metrics.ready.set(1)
        log.info("ready: serving %s as '%s' (dim %d, max %d tokens)", backend.describe(), state.name,
                 backend.info.dimension, limit)
    except Exception as exc:  # reported, then the CLI exits non-zero
        state.status = "failed"
        state.error = str(exc) or type(exc).__name__
        log.error("model load failed: %s", state.error)
        if not isinstance(exc, (ValueError, OSError)) and type(exc).__name__ != "ModelRefused":
            log.debug("load failure", exc_info=True)
        if on_fatal:
            on_fatal(state.error)
    finally:
        state.loaded.set()



def _not_ready(state: ServerState) -> ApiError:
    if state.status == "failed":
        return ApiError(503, f"the model failed to load: {state.error}", code="model_load_failed")
    if state.status == "draining":
        return ApiError(503, "the server is shutting down", code="shutting_down")
    return ApiError(503, "the model is loading; retry shortly", code="model_loading")



async def _embeddings(request: Request, state: ServerState, cfg: ServerConfig, metrics: ServerMetrics) -> Response:
    body = await read_body(request, cfg.max_request_bytes)
    if state.status != "ready":
        raise _not_ready(state)
    backend, batcher = state.backend, state.batcher
    assert backend is not None and batcher is not None
    req = parse_request(parse_json(body), cfg.max_inputs, state.name, backend.info.dimension)
    ids, truncated = await _input_ids(state, cfg, req)
    try:
        emb = await batcher.embed(ids)
    except Overloaded as exc:
        raise ApiError(503, f"server overloaded: {exc}; retry later", code="overloaded") from None
    except Closed:
        raise ApiError(503, "the server is shutting down", code="shutting_down") from None
    n_tokens = sum(len(x) for x in ids)
    metrics.inputs.inc(req.count)
    metrics.tokens.inc(n_tokens)
    if truncated:
        metrics.truncated.inc(truncated)
    return json_response(_embedding_body(emb, req, state.name, n_tokens))


async def _input_ids(state: ServerState, cfg: ServerConfig, req: EmbeddingRequest) -> tuple[list[list[int]], int]:
    """The model's token ids for every input (text or token ids, prefix applied) and how many were cut."""
    tok = state.tokenizer
    assert tok is not None
    prefix = state.prefix.get(req.input_type or "", "")
    reader = state.token_decoder
    try:
        if req.token_ids is not None and isinstance(reader, ModelTokenIds):
            return _frame_model_ids(tok, reader, req.token_ids, prefix, state.frame, state.limit, cfg.on_too_long)
        if req.token_ids is not None:
            if reader is None:
                raise ApiError(400, f"token-id input is turned off on this server (--token-ids reject): send text; "
                               f"{CLIENT_HINT}", param="input", code="token_ids_not_supported")
            big = sum(len(a) for a in req.token_ids) > _THREAD_TOKENIZE_CHARS
            texts = await asyncio.to_thread(_decode, reader, req.token_ids) if big else _decode(reader, req.token_ids)
        else:
            texts = req.texts or []
    except TokenIdError as exc:
        raise ApiError(400, str(exc), param="input", code="invalid_token_id") from None
    if prefix:
        texts = [prefix + t for t in texts]
    if sum(len(t) for t in texts) > _THREAD_TOKENIZE_CHARS:
        return await asyncio.to_thread(_tokenize, tok, texts, state.limit, cfg.on_too_long)
    return _tokenize(tok, texts, state.limit, cfg.on_too_long)


def _decode(reader: TiktokenDecoder, arrays: list[list[int]]) -> list[str]:
    single = len(arrays) == 1
    return [reader.decode(ids, "'input'" if single else f"'input[{i}]'") for i, ids in enumerate(arrays)]


def _embedding_body(emb: np.ndarray, req: EmbeddingRequest, name: str, n_tokens: int) -> dict[str, Any]:
    """OpenAI's response: embeddings cut to `dimensions` (and re-normalised), as floats or base64 float32."""
    if req.dimensions is not None and req.dimensions < emb.shape[1]:
        emb = emb[:, : req.dimensions]
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    if req.encoding_format == "base64":
        le = emb.astype("<f4", copy=False)
        data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(le[i].tobytes()).decode("ascii")}
                for i in range(len(le))]
    else:
        rows = emb.tolist()
        data = [{"object": "embedding", "index": i, "embedding": rows[i]} for i in range(len(rows))]
    return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def _tokenize(tok: TextTokenizer, texts: list[str], limit: int, on_too_long: str) -> tuple[list[list[int]], int]:
    """Token ids (with special tokens) and how many texts were truncated; ApiError in 'error' mode."""
    ids = tok.encode(texts, truncate=False)
    long_ = [i for i, x in enumerate(ids) if len(x) > limit]
    if not long_:
        return ids, 0
    if on_too_long == "error":
        i = long_[0]
        raise ApiError(400, f"'input[{i}]' is {len(ids[i])} tokens long, the maximum is {limit} "
                       f"({len(long_)} input(s) too long); shorten it (this server does not truncate)",
                       param="input", code="input_too_long")
    cut = tok.encode([texts[i] for i in long_], truncate=True)
    for i, row in zip(long_, cut):
        ids[i] = row
    return ids, len(long_)


def _frame_model_ids(tok: TextTokenizer, reader: ModelTokenIds, arrays: list[list[int]], prefix: str,
                     frame: tuple[list[int], list[int]], limit: int, on_too_long: str) -> tuple[list[list[int]], int]:
    """--token-ids model: the client's ids (prefix ids first) between the model's special tokens, cut like text."""
    pre, post = frame
    prefix_ids = tok.encode_bare(prefix) if prefix else []
    room = limit - len(pre) - len(post)
    out, cut = [], 0
    for i, arr in enumerate(arrays):
        where = "'input'" if len(arrays) == 1 else f"'input[{i}]'"
        body = prefix_ids + reader.check(arr, where)
        if len(body) > room:
            if on_too_long == "error":
                raise ApiError(400, f"{where} is {len(body) + len(pre) + len(post)} tokens long, the maximum is "
                               f"{limit}; shorten it (this server does not truncate)", param="input",
                               code="input_too_long")
            body, cut = body[:room], cut + 1
        out.append(pre + body + post)
    return out, cut
