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

The package: service.py (ServeOptions, ModelService), batcher.py (DynamicBatcher, QueueFull), app.py (create_app,
the request and answer models, the body limit, errors), runner.py (bind_socket, make_server, serve).
"""

from sbert_cli.serve.app import create_app
from sbert_cli.serve.batcher import DynamicBatcher, QueueFull
from sbert_cli.serve.runner import bind_socket, make_server, serve
from sbert_cli.serve.service import ENDPOINTS, ModelService, ServeOptions

__all__ = ["ENDPOINTS", "DynamicBatcher", "ModelService", "QueueFull", "ServeOptions", "bind_socket", "create_app",
           "make_server", "serve"]
