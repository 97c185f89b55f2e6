"""sbert embed, similar and serve: the model used from other programs, as vectors or over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from typing_extensions import Annotated

from sbert_cli.cli.app import app, console, err_console
from sbert_cli.cli.options import INFERENCE, BatchSize, Device, MaxSeqLen, Precision, Threads, set_threads
from sbert_cli.cli.report import _progress_bar

FORMATS = ("jsonl", "npy", "tsv")
SUFFIX_FORMATS = {".npy": "npy", ".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv"}

# Options the three commands share, declared once.
Model = Annotated[str, typer.Option("--model", "-m", help="Model dir (sbert, Hugging Face or sentence-transformers) or hub repo id.", rich_help_panel=INFERENCE)]
Pooling = Annotated[Optional[str], typer.Option("--pooling", help="mean (over real tokens), cls or pooler. Default: a sentence-transformers dir's own, else mean.", rich_help_panel=INFERENCE)]


def _output_format(out: Path | None, output_format: str | None) -> str:
    from sbert_cli.errors import ConfigError

    if output_format is not None and output_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {output_format!r}")
    if out is None:
        return output_format or "jsonl"
    by_suffix = SUFFIX_FORMATS.get(out.suffix.lower())
    if output_format is not None and by_suffix is not None and output_format != by_suffix:
        raise ConfigError(f"--out {out} and --format {output_format} disagree; give one of them")
    if output_format is None and by_suffix is None:
        raise ConfigError(f"--out {out}: name it .npy, .jsonl or .tsv, or give --format")
    return output_format or by_suffix


@app.command("embed")
def embed_command(
    texts: Annotated[Optional[List[str]], typer.Argument(metavar="TEXT", help="Texts to embed (or use --file, or pipe one text per line).")] = None,
    model: Model = ...,
    file: Annotated[Optional[str], typer.Option("--file", "-f", help="Texts: one per line (.txt), TSV (first column), JSONL (\"text\"), .gz too; - for stdin.")] = None,
    pooling: Pooling = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="L2-normalise the vectors. Default: a sentence-transformers dir's own, else normalise.", rich_help_panel=INFERENCE)] = None,
    max_seq_len: MaxSeqLen = None,
    batch_size: BatchSize = 32,
    precision: Precision = "auto",
    device: Device = "auto",
    threads: Threads = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write here: .npy (float32, one row per text, in input order), .jsonl or .tsv.")] = None,
    output_format: Annotated[Optional[str], typer.Option("--format", help="jsonl ({\"text\", \"embedding\"} per line), npy or tsv (text, then the values). Default: from --out, else jsonl on stdout.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
) -> None:
    """Sentence embeddings: one vector per text (mean pooling over real tokens by default, L2-normalised).

    A sentence-transformers model dir (modules.json) is followed: its pooling and normalisation, so the
    vectors equal sentence-transformers' encode(). Large inputs stream in length-sorted chunks.
    """
    import shutil
    import tempfile

    from sbert_cli.errors import ConfigError
    from sbert_cli.tasks.embedding import (
        NpyWriter,
        embed_stream,
        embedding_json,
        load_embedder,
        read_texts,
    )

    fmt = _output_format(out, output_format)
    if out is not None and out.exists() and not force:
        raise ConfigError(f"{out}: exists; pass --force to replace it, or choose another --out")
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise ConfigError(f"--out {out}: give a file in an existing folder")
    if out is None and fmt == "npy" and sys.stdout.isatty():
        raise ConfigError("--format npy writes binary data: give --out FILE.npy or redirect stdout")
    items = read_texts(texts or [], file)  # a missing input fails before the model loads
    set_threads(threads)
    embedder = load_embedder(model, pooling=pooling, normalize=normalize, max_seq_len=max_seq_len,
                             batch_size=batch_size, precision=precision, device=device)
    with tempfile.TemporaryDirectory(prefix="sbert-embed-") as scratch, _progress_bar("embedding") as progress:
        chunks = embed_stream(embedder, items, progress=progress)
        if fmt == "npy":
            target = out if out is not None else Path(scratch) / "vectors.npy"
            with NpyWriter(target, embedder.dimension) as writer:
                for _, vectors in chunks:
                    writer.write(vectors)
            rows = writer.rows
            if out is None:
                with open(target, "rb") as f:
                    shutil.copyfileobj(f, sys.stdout.buffer)
                sys.stdout.flush()
        else:
            rows = _write_lines(chunks, fmt, out, embedding_json)
    settings = embedder.settings
    what = f"{settings.pooling} pooling, {'normalised' if settings.normalize else 'not normalised'}"
    err_console.print(f"embed: {embedder.runtime.summary('texts')}", soft_wrap=True)
    if out is not None:
        err_console.print(f"wrote {escape(str(out))}: {rows:,} × {embedder.dimension} float32 ({what})", soft_wrap=True)


def _write_lines(chunks, fmt: str, out: Path | None, embedding_json) -> int:
    """JSON lines or TSV rows to `out` (through a temp file, renamed at the end) or stdout; the row count."""
    import os

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}" if out is not None else None
    stream = open(tmp, "w", encoding="utf-8") if tmp is not None else sys.stdout
    rows = 0
    try:
        for texts, vectors in chunks:
            for text, vector in zip(texts, vectors):
                if fmt == "jsonl":
                    stream.write(json.dumps(embedding_json(text, vector), ensure_ascii=False) + "\n")
                else:
                    clean = " ".join(text.replace("\t", " ").splitlines())
                    stream.write(clean + "\t" + "\t".join(map(str, vector.tolist())) + "\n")
            rows += len(texts)
        stream.flush()
    except BaseException:
        if tmp is not None:
            stream.close()
            tmp.unlink(missing_ok=True)
        raise
    if tmp is not None:
        stream.close()
        os.replace(tmp, out)
    return rows


@app.command("similar")
def similar_command(
    query: Annotated[str, typer.Argument(metavar="QUERY", help="The text to search for.")],
    model: Model = ...,
    file: Annotated[Path, typer.Option("--file", "-f", help="The corpus: one text per line (.txt), TSV (first column), JSONL (\"text\"), .gz too.")] = ...,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Texts to show, most similar first.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines: {\"rank\", \"index\", \"score\", \"text\"}.")] = False,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Keep the corpus vectors beside it (FILE.sbert-KEY.npy, keyed by model, settings and the file's hash) and reuse them.")] = True,
    pooling: Pooling = None,
    max_seq_len: MaxSeqLen = None,
    batch_size: BatchSize = 32,
    precision: Precision = "auto",
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """The texts of a corpus most similar to QUERY (cosine similarity of their embeddings)."""
    from rich.table import Table
    from rich.text import Text

    from sbert_cli.tasks.embedding import load_embedder
    from sbert_cli.tasks.search import similar

    set_threads(threads)
    embedder = load_embedder(model, pooling=pooling, max_seq_len=max_seq_len, batch_size=batch_size,
                             precision=precision, device=device)
    with _progress_bar("embedding the corpus") as progress:
        result = similar(query, file, embedder, top_k=top_k, use_cache=cache, progress=progress)
    if as_json:
        for match in result.matches:
            print(json.dumps(match.to_json(), ensure_ascii=False))
    else:
        table = Table(box=None, pad_edge=False)
        table.add_column("rank", justify="right", style="dim")
        table.add_column("score", justify="right")
        table.add_column("text", overflow="fold")
        for match in result.matches:
            table.add_row(str(match.rank), f"{match.score:.4f}", Text(match.text))
        console.print(table)
    if result.cache is not None:
        state = "reused" if result.cache_hit else "wrote"
        err_console.print(f"similar: {result.corpus_size:,} texts; {state} {escape(str(result.cache))}", soft_wrap=True)


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
    pooling: Pooling = None,
    max_seq_len: MaxSeqLen = None,
    precision: Precision = "auto",
    device: Device = "auto",
    threads: Threads = None,
) -> None:
    """An HTTP server for the model: POST /embed, /predict (classifier), /fill-mask (MLM head); GET /health, /info, /docs.

    Requests that arrive together run as one length-sorted batch. Ctrl-C or SIGTERM stops accepting
    connections, finishes the requests in flight, and exits 0.
    """
    from sbert_cli.serve import ServeOptions, serve

    options = ServeOptions(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                           max_texts=max_texts, max_body_bytes=max_body_bytes)

    def started(service, url: str) -> None:
        info = service.info()
        err_console.print(
            f"serving {escape(service.model_name)} on {url} ({info['device']}, {info['precision']}, max length "
            f"{info['max_seq_len']}, batches of up to {max_batch_size} texts, waiting up to {max_wait_ms:g} ms)",
            soft_wrap=True,
        )
        err_console.print(f"  endpoints: {', '.join(['POST ' + e for e in info['endpoints']])}, GET /health, GET /info, docs at {url}/docs", soft_wrap=True)
        err_console.print("  Ctrl-C or SIGTERM: finish the requests in flight and stop", soft_wrap=True)

    set_threads(threads)
    serve(model, host, port, options, on_started=started, max_seq_len=max_seq_len, precision=precision,
          device=device, pooling=pooling)
    err_console.print("stopped")
