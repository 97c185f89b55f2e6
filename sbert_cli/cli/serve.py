"""sbert serve: the model over HTTP (the server itself is the sbert_cli.serve package)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from typing_extensions import Annotated

from sbert_cli.cli.app import app, err_console
from sbert_cli.cli.options import Device, MaxSeqLen, Model, Pooling, Precision, Threads, set_threads


@app.command("serve")
def serve_command(
    model: Model = ...,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port (0: any free port).")] = 8000,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Texts run together in one model call (1: no batching).")] = 64,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="How long a request may wait for others to batch with.")] = 5.0,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Texts that may wait; beyond, requests get 503 with Retry-After.")] = 1024,
    max_texts: Annotated[int, typer.Option("--max-texts", help="Texts in one request; more is a 422.")] = 256,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Request body limit; more is a 413.")] = 1 << 20,
    max_work: Annotated[Optional[int], typer.Option("--max-work", help="Work one request may ask for, weighed before it is queued: tokens run through the model (a joint fill-mask runs its text once per [MASK] and beam row) plus candidates returned; more is a 413. Default: see GET /info.")] = None,
    pooling: Pooling = None,
    max_seq_len: MaxSeqLen = None,
    precision: Precision = "auto",
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """An HTTP server for the model: POST /embed, /predict (classifier), /fill-mask (MLM head), /ner (tagger); GET /health, /info, /docs.

    Requests that arrive together run as one length-sorted batch. Ctrl-C or SIGTERM stops accepting
    connections, finishes the requests in flight, and exits 0; a model call still running after the graceful
    30 s is abandoned, and the process exits 1.
    """
    from sbert_cli.serve import ServeOptions, serve

    options = ServeOptions(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                           max_texts=max_texts, max_body_bytes=max_body_bytes,
                           **({"max_work": max_work} if max_work is not None else {}))

    def started(service, url: str) -> None:
        info = service.info()
        err_console.print(
            f"serving {escape(service.model_name)} on {url} ({info['device']}, {info['precision']}, max length "
            f"{info['max_seq_len']}, batches of up to {max_batch_size} texts, waiting up to {max_wait_ms:g} ms)",
            soft_wrap=True,
        )
        err_console.print(f"  endpoints: {', '.join(['POST ' + e for e in info['endpoints']])}, GET /health, GET /info, docs at {url}/docs", soft_wrap=True)
        err_console.print(f"  Ctrl-C or SIGTERM: finish the requests in flight (up to {options.graceful_timeout_s:g} s) and stop",
                          soft_wrap=True)

    set_threads(threads)
    serve(model, host, port, options, on_started=started, max_seq_len=max_seq_len, precision=precision,
          device=device, pooling=pooling)
    err_console.print("stopped")
