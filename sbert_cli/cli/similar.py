"""sbert similar: the texts of a corpus closest to a query, with the corpus vectors cached beside it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from typing_extensions import Annotated

from sbert_cli.cli.app import app, console, err_console
from sbert_cli.cli.options import BatchSize, Device, MaxSeqLen, Model, Pooling, Precision, Threads, set_threads
from sbert_cli.cli.progress import progress_bar


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
    with progress_bar("embedding the corpus") as progress:
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
