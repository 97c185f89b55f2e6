"""sbert embed: one vector per text, to stdout or a file (.npy, .jsonl or .tsv)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from typing_extensions import Annotated

from sbert_cli.cli.app import app, err_console
from sbert_cli.cli.options import INFERENCE, BatchSize, Device, MaxSeqLen, Model, Pooling, Precision, Threads, set_threads
from sbert_cli.cli.progress import progress_bar


FORMATS = ("jsonl", "npy", "tsv")
SUFFIX_FORMATS = {".npy": "npy", ".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv"}


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
    if out is not None:
        from sbert_cli.outputs import check_target

        check_target(out, force)  # exists (without --force), a link, a device: refused before any work
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise ConfigError(f"--out {out}: give a file in an existing folder")
    if out is None and fmt == "npy" and sys.stdout.isatty():
        raise ConfigError("--format npy writes binary data: give --out FILE.npy or redirect stdout")
    items = read_texts(texts or [], file)  # a missing input fails before the model loads
    set_threads(threads)
    embedder = load_embedder(model, pooling=pooling, normalize=normalize, max_seq_len=max_seq_len,
                             batch_size=batch_size, precision=precision, device=device)
    with tempfile.TemporaryDirectory(prefix="sbert-embed-") as scratch, progress_bar("embedding") as progress:
        chunks = embed_stream(embedder, items, progress=progress)
        if fmt == "npy":
            target = out if out is not None else Path(scratch) / "vectors.npy"
            with NpyWriter(target, embedder.dimension, force=force) as writer:
                for _, vectors in chunks:
                    writer.write(vectors)
            rows = writer.rows
            if out is None:
                with open(target, "rb") as f:
                    shutil.copyfileobj(f, sys.stdout.buffer)
                sys.stdout.flush()
        else:
            rows = _write_lines(chunks, fmt, out, embedding_json, force)
    settings = embedder.settings
    what = f"{settings.pooling} pooling, {'normalised' if settings.normalize else 'not normalised'}"
    err_console.print(f"embed: {embedder.runtime.summary('texts')}", soft_wrap=True)
    if out is not None:
        err_console.print(f"wrote {escape(str(out))}: {rows:,} × {embedder.dimension} float32 ({what})", soft_wrap=True)


def _write_lines(chunks, fmt: str, out: Path | None, embedding_json, force: bool = False) -> int:
    """JSON lines or TSV rows to `out` (outputs.new_file: whole or not at all) or stdout; the row count."""
    import contextlib

    from sbert_cli.outputs import new_file

    rows = 0
    with new_file(out, force) if out is not None else contextlib.nullcontext(sys.stdout) as stream:
        for texts, vectors in chunks:
            for text, vector in zip(texts, vectors):
                if fmt == "jsonl":
                    stream.write(json.dumps(embedding_json(text, vector), ensure_ascii=False) + "\n")
                else:
                    clean = " ".join(text.replace("\t", " ").splitlines())
                    stream.write(clean + "\t" + "\t".join(map(str, vector.tolist())) + "\n")
            rows += len(texts)
        stream.flush()
    return rows
