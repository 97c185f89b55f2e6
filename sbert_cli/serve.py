"""sbert serve: one loaded model behind an HTTP API (FastAPI on uvicorn), with dynamic batching.

    POST /embed      any encoder: {"texts": [...], "pooling": "mean"|"cls"|"pooler", "normalize": true}
    POST /predict    a classifier head: {"texts": [...], "top_k": 1}
    POST /fill-mask  an MLM head: {"texts": [...], "top_k": 5, "joint": false}
    GET  /health, GET /info, GET /docs (OpenAPI)

Answers are JSON arrays with one object per text, each equal to a line of the CLI's JSON output
(`sbert embed --format jsonl`, `sbert predict --json`, `sbert fill-mask --json`): the handlers call the
same task functions. Errors are `{"error": "..."}` with a 4xx status; a full queue is 503 with Retry-After.

Dynamic batching: requests wait in one queue; a single worker takes those that arrived together (up
to max_batch_size texts, waiting at most max_wait_ms after the oldest) and runs each group of
requests with the same endpoint and options as one call, which sorts its texts by length into
batches. The model runs in one worker thread, off the event loop, which only parses, queues and
answers. If a batched call fails, each of its requests is run alone, so one bad text fails only its
own request and nobody receives another request's answer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from sbert_cli.errors import ConfigError, SbertError

log = logging.getLogger("sbert.serve")

ENDPOINTS = {"embed": "/embed", "predict": "/predict", "fill-mask": "/fill-mask"}
RETRY_AFTER_S = 1


@dataclass
class ServeOptions:
    """Limits of the server; the CLI's flags map onto these one to one."""

    max_batch_size: int = 64  # texts per model call
    max_wait_ms: float = 5.0  # how long the oldest waiting request may wait for companions
    max_queue: int = 1024  # texts waiting (not yet running); more is 503
    max_texts: int = 256  # texts in one request
    max_body_bytes: int = 1 << 20  # request body; more is 413
    graceful_timeout_s: float = 30.0  # on SIGINT/SIGTERM: how long in-flight requests may take to finish

    def validate(self) -> None:
        from sbert_cli.limits import BATCH_SIZE_WHY, MAX_BATCH_SIZE, check_range

        check_range("max_batch_size", self.max_batch_size, 1, MAX_BATCH_SIZE, BATCH_SIZE_WHY)
        # Waiting texts and request bodies are held in memory: 10^6 texts or 1 GiB is far past any useful queue.
        check_range("max_queue", self.max_queue, 1, 1_000_000, "waiting texts are held in memory")
        check_range("max_texts", self.max_texts, 1, 1_000_000, "a request's texts are held in memory")
        check_range("max_body_bytes", self.max_body_bytes, 1, 1 << 30, "a request body is held in memory")
        check_range("max_wait_ms", self.max_wait_ms, 0, 10_000, "a request waits this long for company before it runs")
        if self.max_texts > self.max_queue:
            raise ConfigError(f"`max_texts` {self.max_texts} exceeds `max_queue` {self.max_queue}: such a request could never be queued")


# The model -----------------------------------------------------------------------------------------


class ModelService:
    """One model instance with every head its checkpoint has; its methods run requests synchronously.

    A classifier and an MLM head share one encoder, which /embed uses too.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        max_seq_len: int | None = None,
        precision: str = "auto",
        device: str = "auto",
        batch_size: int = 64,
        pooling: str | None = None,
        normalize: bool | None = None,
    ):
        from sbert_cli.model.model_dir import (
            load_for_task,
            load_tokenizer,
            read_checkpoint,
            resolve_model_dir,
        )
        from sbert_cli.model.precision import prepare_for_inference, resolve_device, resolve_precision
        from sbert_cli.tasks.classification import load_classifier
        from sbert_cli.tasks.embedding import (
            embedder_for,
            embedding_settings,
            read_sentence_transformers_dir,
        )

        self.model_name = str(model)
        model_dir = resolve_model_dir(model)
        st = read_sentence_transformers_dir(model_dir)
        encoder_dir = st.encoder_dir if st is not None else model_dir
        checkpoint = read_checkpoint(encoder_dir)
        self.heads = list(checkpoint.heads)
        settings = embedding_settings(encoder_dir, checkpoint.config, checkpoint.meta, st, pooling, normalize, max_seq_len)
        del checkpoint
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device, inference=True)
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(encoder_dir)
        self.classifier = self.mlm = None
        encoder, initialized = None, []
        if "cls" in self.heads:
            self.classifier = load_classifier(encoder_dir, batch_size=batch_size, precision=self.precision,
                                              device=str(self.device), max_length=settings.max_length)
            encoder = self.classifier.model.bert
        if "mlm" in self.heads:
            loaded = load_for_task(encoder_dir, "mlm")
            self.mlm = loaded.model
            if encoder is None:
                encoder, initialized = self.mlm.bert, loaded.initialized
            else:
                self.mlm.bert = encoder  # one encoder for every head: the same weights, loaded once
            self.mlm.to(self.device).eval()
        if encoder is None:
            loaded = load_for_task(encoder_dir, "base")
            encoder, initialized = loaded.model, loaded.initialized
        encoder.to(self.device).eval()
        # Converted once for the precision (bf16 weights, int8 Linear layers), as eval/predict/embed do; the
        # classifier (and the encoder it shares) already is, and converting again changes nothing.
        for module in (self.mlm, encoder):
            if module is not None:
                prepare_for_inference(module, self.precision)
        self.embedder = embedder_for(encoder, self.tokenizer, encoder_dir, settings, initialized, self.device,
                                     self.precision, batch_size)

    @property
    def endpoints(self) -> list[str]:
        kinds = ["embed"] + ["predict"] * (self.classifier is not None) + ["fill-mask"] * (self.mlm is not None)
        return [ENDPOINTS[k] for k in kinds]

    def info(self) -> dict:
        from sbert_cli import __version__

        return {
            "model": self.model_name,
            "heads": self.heads,
            "endpoints": self.endpoints,
            "labels": self.classifier.label_names if self.classifier is not None else None,
            "device": str(self.device),
            "precision": self.precision,
            "max_seq_len": self.embedder.max_length,
            "embedding": {"dimension": self.embedder.dimension, "pooling": self.embedder.settings.pooling,
                          "normalize": self.embedder.settings.normalize, "has_pooler": self.embedder.has_pooler},
            "sbert_version": __version__,
        }

    def run(self, kind: str, options: tuple, texts: list[str]) -> list[dict]:
        """One JSON object per text, for the endpoint `kind` with its options (see the request models)."""
        if kind == "embed":
            from sbert_cli.tasks.embedding import embedding_json

            pooling, normalize = options
            vectors = self.embedder.embed(texts, pooling, normalize)
            return [embedding_json(text, vector) for text, vector in zip(texts, vectors)]
        if kind == "predict":
            from sbert_cli.tasks.classification import Prediction, top_labels

            (top_k,) = options
            ranked = top_labels(self.classifier.probabilities(texts), self.classifier.label_names, top_k)
            return [Prediction(text, f"texts[{i}]", labels).to_json() for i, (text, labels) in enumerate(zip(texts, ranked))]
        if kind == "fill-mask":
            import torch

            from sbert_cli.model.precision import inference_autocast
            from sbert_cli.tasks.mlm import fill_mask

            top_k, joint = options
            origins = [f"texts[{i}]" for i in range(len(texts))]
            with torch.inference_mode(), inference_autocast(self.precision, self.device):
                results = fill_mask(self.mlm, self.tokenizer, texts, top_k, origins, self.batch_size, joint)
            return [result.to_json() for result in results]
        raise ValueError(f"unknown endpoint {kind!r}")


# Dynamic batching ----------------------------------------------------------------------------------


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    kind: str
    options: tuple
    texts: list[str]
    future: asyncio.Future
    arrived: float  # loop time


@dataclass
class DynamicBatcher:
    """Collects requests into batches and runs them, one batch at a time, in a worker thread.

    `run(kind, options, texts)` returns one result per text; it is called with the texts of all the
    waiting requests that share kind and options.
    """

    run: Callable[[str, tuple, list[str]], list]
    max_batch_size: int
    max_wait_s: float
    max_queue: int
    pending: deque = field(default_factory=deque)
    pending_texts: int = 0
    running_texts: int = 0

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbert-inference")
        self._worker = asyncio.create_task(self._work(), name="sbert-batcher")

    async def stop(self) -> None:
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        for job in self.pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self.pending.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, kind: str, options: tuple, texts: list[str]) -> list:
        """The results for `texts`, in order; QueueFull when max_queue texts are already waiting."""
        if self.pending_texts + len(texts) > self.max_queue:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        job = _Job(kind, options, texts, loop.create_future(), loop.time())
        self.pending.append(job)
        self.pending_texts += len(texts)
        self._wakeup.set()
        return await job.future  # a client that goes away cancels it; the worker then skips the job

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Requests that queued while the last batch ran are already past their deadline: no wait.
            deadline = self.pending[0].arrived + self.max_wait_s
            while self.pending_texts < self.max_batch_size and (timeout := deadline - loop.time()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                except asyncio.TimeoutError:
                    break
            jobs = self._take()
            for group in _groups(jobs):
                self.running_texts = sum(len(job.texts) for job in group)
                outcomes = await loop.run_in_executor(self._executor, self._run_group, group)
                self.running_texts = 0
                for job, outcome in zip(group, outcomes):
                    if job.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        job.future.set_exception(outcome)
                    else:
                        job.future.set_result(outcome)

    def _take(self) -> list[_Job]:
        """The oldest waiting jobs, up to max_batch_size texts (the oldest always, however large)."""
        jobs, texts = [], 0
        while self.pending and (not jobs or texts + len(self.pending[0].texts) <= self.max_batch_size):
            job = self.pending.popleft()
            self.pending_texts -= len(job.texts)
            if not job.future.done():  # not cancelled by a client that went away
                jobs.append(job)
                texts += len(job.texts)
        return jobs

    def _run_group(self, jobs: list[_Job]) -> list[Any]:
        """In the worker thread: one call for the group, or, if that fails, one call per job."""
        texts = [text for job in jobs for text in job.texts]
        try:
            results = self.run(jobs[0].kind, jobs[0].options, texts)
        except Exception as e:
            if len(jobs) == 1:
                return [_logged(e)]
            return [self._run_one(job) for job in jobs]
        outcomes, start = [], 0
        for job in jobs:
            outcomes.append(results[start : start + len(job.texts)])
            start += len(job.texts)
        return outcomes

    def _run_one(self, job: _Job) -> Any:
        try:
            return self.run(job.kind, job.options, job.texts)
        except Exception as e:
            return _logged(e)


def _groups(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs with the same endpoint and options, in arrival order of each group's first job."""
    groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        groups.setdefault((job.kind, job.options), []).append(job)
    return list(groups.values())


def _logged(error: Exception) -> Exception:
    if not isinstance(error, SbertError):
        log.error("inference failed:\n%s", "".join(traceback.format_exception(error)))
    return error


# HTTP ----------------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[str] = Field(min_length=1, description="The texts, each non-empty.")


class EmbedRequest(_Request):
    pooling: Optional[Literal["mean", "cls", "pooler"]] = Field(None, description="Default: the model's (see /info).")
    normalize: Optional[bool] = Field(None, description="L2-normalise; default: the model's (see /info).")


class PredictRequest(_Request):
    top_k: int = Field(1, ge=1, description="Labels per text, most probable first.")


class FillMaskRequest(_Request):
    top_k: int = Field(5, ge=1, le=1000, description="Candidates per [MASK].")
    joint: bool = Field(False, description="Decode each run of consecutive [MASK]s as one word.")


class Embedding(BaseModel):
    text: str
    embedding: list[float]


class Label(BaseModel):
    label: str
    score: float


class LabelledText(BaseModel):
    text: str
    labels: list[Label]


class ErrorMessage(BaseModel):
    error: str


class BodyTooLarge(HTTPException):
    pass


class _BodyLimit:
    """413 for a body over the limit: by its Content-Length at once, or when a chunked body passes it.

    Bodies are read as JSON whatever their Content-Type, so `curl -d '{...}'` (form-encoded) works too.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is over {self.max_bytes:,} bytes; send fewer or shorter texts per request"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse({"error": message}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        if scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        received = 0

        async def limited_receive():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(413, message)
            return event

        await self.app(scope, limited_receive, send)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(error: RequestValidationError) -> tuple[int, str]:
    problems = error.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return 400, "the request body is not valid JSON"
    parts = []
    for p in problems[:3]:
        where = ".".join(str(x) for x in p.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {p.get('msg', 'invalid')}")
    return 422, "; ".join(parts)


ERROR_RESPONSES = {
    400: {"model": ErrorMessage, "description": "Invalid JSON"},
    404: {"model": ErrorMessage, "description": "The model has no head for this endpoint"},
    413: {"model": ErrorMessage, "description": "Request body too large"},
    422: {"model": ErrorMessage, "description": "Wrong types, empty or too many texts, bad text"},
    503: {"model": ErrorMessage, "description": "Queue full; retry after the Retry-After seconds"},
}


def create_app(service: ModelService, options: ServeOptions | None = None) -> FastAPI:
    """The ASGI app over `service`; the batcher starts and stops with the app's lifespan."""
    from sbert_cli import __version__

    options = options or ServeOptions()
    options.validate()
    batcher = DynamicBatcher(service.run, options.max_batch_size, options.max_wait_ms / 1000, options.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="sbert", version=__version__, lifespan=lifespan,
        description=f"Model `{service.model_name}` (heads: {', '.join(service.heads) or 'none'}). "
        "Each answer is a JSON array with one object per text, in the order of `texts`.",
    )
    app.state.batcher = batcher
    app.add_middleware(_BodyLimit, max_bytes=options.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError):
        return _error(*_validation_message(error))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException):
        message = str(error.detail)
        if error.status_code in (404, 405) and not isinstance(error, BodyTooLarge):
            served = ", ".join(f"POST {e}" for e in service.endpoints)
            message = f"{request.method} {request.url.path}: {message.lower()}; this server answers {served}, GET /health, GET /info (docs: /docs)"
        return _error(error.status_code, message, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        return _error(500, f"internal error: {type(error).__name__}: {error}")

    async def answer(kind: str, options_key: tuple, texts: list[str]) -> JSONResponse:
        if len(texts) > options.max_texts:
            return _error(422, f"texts: {len(texts)} texts, more than the {options.max_texts} one request may hold; split the request")
        for i, text in enumerate(texts):
            if not text.strip():
                return _error(422, f"texts[{i}]: empty text")
        try:
            results = await batcher.submit(kind, options_key, texts)
        except QueueFull:
            return _error(503, f"the queue is full ({options.max_queue} texts waiting); retry shortly",
                          {"Retry-After": str(RETRY_AFTER_S)})
        except SbertError as e:
            return _error(422, str(e))
        return JSONResponse(results)

    def head_missing(endpoint: str, what: str, how: str) -> JSONResponse:
        return _error(404, f"{endpoint}: the model {service.model_name} has no {what}; {how}")

    @app.get("/health", summary="Liveness: 200 while the server runs")
    async def health() -> dict:
        return {"status": "ok", "queued_texts": batcher.pending_texts, "running_texts": batcher.running_texts}

    @app.get("/info", summary="The model, its heads and labels, precision and limits")
    async def info() -> dict:
        return {**service.info(), "batching": {"max_batch_size": options.max_batch_size, "max_wait_ms": options.max_wait_ms,
                                                "max_queue": options.max_queue, "max_texts": options.max_texts,
                                                "max_body_bytes": options.max_body_bytes}}

    @app.post("/embed", summary="Sentence embeddings", response_model=list[Embedding], responses=ERROR_RESPONSES)
    async def embed(request: EmbedRequest):
        if request.pooling == "pooler" and not service.embedder.has_pooler:
            return _error(422, "pooling: this checkpoint has no pooler weights; use mean or cls")
        return await answer("embed", (request.pooling, request.normalize), request.texts)

    @app.post("/predict", summary="Classify texts: labels with probabilities", response_model=list[LabelledText],
              responses=ERROR_RESPONSES, include_in_schema=service.classifier is not None)
    async def predict(request: PredictRequest):
        if service.classifier is None:
            return head_missing("/predict", "classification head", "train one with sbert train-cls")
        return await answer("predict", (request.top_k,), request.texts)

    @app.post("/fill-mask", summary="Top-k tokens (or words) for every [MASK]", responses=ERROR_RESPONSES,
              include_in_schema=service.mlm is not None)
    async def fill_mask(request: FillMaskRequest):
        if service.mlm is None:
            return head_missing("/fill-mask", "masked-LM head", "use a checkpoint that ships one or train it with sbert pretrain")
        for i, text in enumerate(request.texts):
            if "[MASK]" not in text:
                return _error(422, f"texts[{i}]: no [MASK] in {text[:80]!r}; write [MASK] where a token should be predicted")
        return await answer("fill-mask", (request.top_k, request.joint), request.texts)

    return app


# Running -------------------------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or ConfigError naming the problem (port in use, bad host)."""
    from sbert_cli.limits import check_range

    check_range("port", port, 0, 65535, "TCP ports are 16-bit; 0 picks a free one")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"`host` {host}: cannot listen there ({e})") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ConfigError(f"{host}:{port}: cannot listen ({e.strerror}); choose another `port` or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


def make_server(app: FastAPI, graceful_timeout_s: float = 30.0, on_started: Callable[[], None] | None = None):
    """A uvicorn server for `app`; `server.run(sockets=[sock])` serves until SIGINT/SIGTERM.

    On a signal (or `server.handle_exit(signal.SIGTERM, None)` from another thread) it stops accepting
    connections, lets in-flight requests finish (at most graceful_timeout_s), shuts the batcher down,
    and returns normally: the process exits 0.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # uvicorn re-raises the signal once it has shut down, which ends the process with it (exit
            # 130 or 143); a graceful stop is a normal exit here, so only the flags are set.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for in-flight requests
            self.should_exit = True

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and on_started is not None:
                on_started()

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s, server_header=False)
    return Server(config)


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    options: ServeOptions | None = None,
    on_started: Callable[[ModelService, str], None] | None = None,
    **model_options,
) -> None:
    """Load `model`, listen on host:port and serve until SIGINT/SIGTERM. model_options go to ModelService."""
    options = options or ServeOptions()
    options.validate()
    sock = bind_socket(host, port)  # before loading: a taken port fails in a second, not after the model loads
    try:
        service = ModelService(model, batch_size=options.max_batch_size, **model_options)
        app = create_app(service, options)
        bound_host, bound_port = sock.getsockname()[:2]
        url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
        server = make_server(app, options.graceful_timeout_s,
                             on_started=(lambda: on_started(service, url)) if on_started else None)
        server.run(sockets=[sock])
        if not server.started:
            raise ConfigError(f"the server on {url} did not start; see the messages above")
    finally:
        sock.close()
