"""The HTTP app of `sbert serve`: create_app (FastAPI routes over a ModelService and a DynamicBatcher), the request
and answer models (EmbedRequest, PredictRequest, FillMaskRequest, NerRequest, Embedding, Label, LabelledText,
FoundEntity, TaggedText, ErrorMessage),
the request-body limit (_BodyLimit, 413), the one-line JSON errors (ERROR_RESPONSES, RETRY_AFTER_S; _missing_head: the
404 of an endpoint whose head the model lacks), JSON answers that
survive lone surrogates (_JSON) and the offline /docs page (_docs_page)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from sbert_cli.errors import SbertError
from sbert_cli.serve.batcher import DynamicBatcher, QueueFull
from sbert_cli.serve.service import ModelService, ServeOptions

RETRY_AFTER_S = 1


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


class NerRequest(_Request):
    pass


class Embedding(BaseModel):
    text: str
    embedding: list[float]


class Label(BaseModel):
    label: str
    score: float


class LabelledText(BaseModel):
    text: str
    labels: list[Label]


class FoundEntity(BaseModel):
    text: str = Field(description="texts[i][start:end]")
    label: str
    start: int = Field(description="Character offset of the first character.")
    end: int = Field(description="Character offset after the last character (exclusive).")
    score: float = Field(description="Mean probability of the entity's tags over its words.")


class TaggedText(BaseModel):
    text: str
    entities: list[FoundEntity]


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


class _JSON(JSONResponse):
    """JSON as UTF-8, or with \\u escapes when a text holds a lone surrogate (JSON may carry "\\ud800", which has no
    UTF-8 form): the text comes back as it was sent, never as a 500."""

    def render(self, content) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return _JSON({"error": message}, status_code=status, headers=headers)


def _missing_head(service: ModelService, kind: str) -> str | None:
    """What the model lacks to answer a `kind` request (the head, and how to get one), or None."""
    if kind == "predict" and service.classifier is None:
        return "classification head; train one with sbert train-cls"
    if kind == "ner" and service.tagger is None:
        return "tagging head; train one with sbert train-ner"
    if kind == "fill-mask" and service.mlm is None:
        from sbert_cli.model.model_dir import mlm_head_recipe

        return f"masked-LM head; use a checkpoint that ships one, or train one: {mlm_head_recipe(service.model_name)}"
    return None


def _docs_page(app: FastAPI) -> str:
    """GET /docs: the endpoints, their fields and answers as a plain page, built from the OpenAPI schema; nothing
    is fetched from elsewhere, so it works offline (FastAPI's default page loads swagger-ui from a CDN)."""
    from html import escape

    schema = app.openapi()
    models = schema.get("components", {}).get("schemas", {})
    parts = [f"<h1>{escape(schema['info']['title'])} {escape(schema['info']['version'])}</h1>",
             f"<p>{escape(schema['info'].get('description', ''))}</p>",
             '<p>The full schema: <a href="/openapi.json">/openapi.json</a>. Errors are <code>{"error": "..."}</code> '
             "with a 4xx status (503 with Retry-After when the queue is full).</p>"]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            parts.append(f"<h2><code>{method.upper()} {escape(path)}</code></h2><p>{escape(operation.get('summary', ''))}</p>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            fields = models.get(body.get("$ref", "").rsplit("/", 1)[-1], {}).get("properties", {})
            if fields:
                rows = "".join(f"<tr><td><code>{escape(name)}</code></td><td>{escape(str(field.get('default', 'required')))}"
                               f"</td><td>{escape(field.get('description', ''))}</td></tr>" for name, field in fields.items())
                parts.append(f"<table><tr><th>field</th><th>default</th><th>meaning</th></tr>{rows}</table>")
            codes = ", ".join(f"{code} {escape(answer.get('description', ''))}" for code, answer in operation.get("responses", {}).items())
            parts.append(f"<p>Answers: {codes}</p>")
    style = "body{font-family:sans-serif;max-width:50em;margin:2em auto}td,th{padding:.2em .6em;text-align:left;vertical-align:top}"
    return f"<!doctype html><html><head><meta charset=utf-8><title>sbert serve</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"


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
    413: {"model": ErrorMessage, "description": "Request body too large, or more work than one request may ask (max_work)"},
    422: {"model": ErrorMessage, "description": "Wrong types, empty or too many texts, bad text"},
    503: {"model": ErrorMessage, "description": "Queue full; retry after the Retry-After seconds"},
}


def create_app(service: ModelService, options: ServeOptions | None = None) -> FastAPI:
    """The ASGI app over `service`; the batcher starts and stops with the app's lifespan."""
    from sbert_cli import __version__

    options = options or ServeOptions()
    options.validate()
    batcher = DynamicBatcher(service.run, options.max_batch_size, options.max_wait_ms / 1000, options.max_queue)

    # Requests are weighed (service.work) in one thread of their own, beside the model's: a refusal never waits
    # for a running batch, and the event loop never tokenizes.
    admission = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbert-admission")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()
        admission.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="sbert", version=__version__, lifespan=lifespan, default_response_class=_JSON, docs_url=None, redoc_url=None,
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
        missing = _missing_head(service, kind)
        if missing is not None:
            return _error(404, f"/{kind}: the model {service.model_name} has no {missing}")
        if len(texts) > options.max_texts:
            return _error(422, f"texts: {len(texts)} texts, more than the {options.max_texts} one request may hold; split the request")
        for i, text in enumerate(texts):
            if not text.strip():
                return _error(422, f"texts[{i}]: empty text")
        try:
            work = await asyncio.get_running_loop().run_in_executor(admission, service.work, kind, options_key, texts)
        except SbertError as e:
            return _error(422, str(e))
        if work > options.max_work:
            fewer = {"fill-mask": ", fewer [MASK]s or a lower top_k" + (", or no joint" if options_key[-1] else "")}.get(kind, "")
            return _error(413, f"this request asks the model for {work:,} units of work (tokens it runs plus answers it "
                               f"returns), more than the {options.max_work:,} one request may; send fewer or shorter texts{fewer}")
        try:
            results = await batcher.submit(kind, options_key, texts)
        except QueueFull:
            return _error(503, f"the queue is full ({options.max_queue} texts waiting); retry shortly",
                          {"Retry-After": str(RETRY_AFTER_S)})
        except SbertError as e:
            return _error(422, str(e))
        except asyncio.CancelledError:  # uvicorn cancels what is left when the graceful time on a stop signal is over
            return _error(503, "the server stopped before this request was answered; send it again once it runs")
        return _JSON(results)

    @app.get("/health", summary="Liveness: 200 while the server runs")
    async def health() -> dict:
        return {"status": "ok", "queued_texts": batcher.pending_texts, "running_texts": batcher.running_texts}

    @app.get("/info", summary="The model, its heads and labels, precision and limits")
    async def info() -> dict:
        return {**service.info(), "batching": {"max_batch_size": options.max_batch_size, "max_wait_ms": options.max_wait_ms,
                                                "max_queue": options.max_queue, "max_texts": options.max_texts,
                                                "max_body_bytes": options.max_body_bytes, "max_work": options.max_work}}

    @app.post("/embed", summary="Sentence embeddings", response_model=list[Embedding], responses=ERROR_RESPONSES)
    async def embed(request: EmbedRequest):
        if request.pooling == "pooler" and not service.embedder.has_pooler:
            return _error(422, "pooling: this checkpoint has no pooler weights; use mean or cls")
        return await answer("embed", (request.pooling, request.normalize), request.texts)

    @app.post("/predict", summary="Classify texts: labels with probabilities", response_model=list[LabelledText],
              responses=ERROR_RESPONSES, include_in_schema=service.classifier is not None)
    async def predict(request: PredictRequest):
        return await answer("predict", (request.top_k,), request.texts)

    @app.post("/fill-mask", summary="Top-k tokens (or words) for every [MASK]", responses=ERROR_RESPONSES,
              include_in_schema=service.mlm is not None)
    async def fill_mask(request: FillMaskRequest):
        return await answer("fill-mask", (request.top_k, request.joint), request.texts)

    @app.post("/ner", summary="Named entities: character spans with types and scores", response_model=list[TaggedText],
              responses=ERROR_RESPONSES, include_in_schema=service.tagger is not None)
    async def ner(request: NerRequest):
        return await answer("ner", (), request.texts)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page(app))

    return app
