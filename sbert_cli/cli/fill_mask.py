"""sbert fill-mask: the most probable tokens (or whole words, --joint) for every [MASK]."""

from __future__ import annotations

import json
from typing import Optional

import typer

from sbert_cli.cli.app import app, console
from sbert_cli.cli.options import BatchSize, Device, Precision, Threads, set_threads
from sbert_cli.model.hub import (
    DEFAULT_REPO,  # hub imports huggingface_hub only when called, so this stays light
)


@app.command("fill-mask")
def fill_mask_command(
    texts: Optional[list[str]] = typer.Argument(None, metavar="TEXT", help="Texts with [MASK] where tokens are to be predicted."),
    model: str = typer.Option(DEFAULT_REPO, "--model", "-m", help="Model dir (sbert or HF) or hub repo id."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Candidates per mask."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per text instead of tables."),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="Read texts from this file, one per line ('-': stdin)."),
    joint: bool = typer.Option(
        False, "--joint", help="Decode consecutive [MASK]s together and rank whole words (most confident first)."
    ),
    batch_size: BatchSize = 32,
    device: Device = "auto",
    precision: Precision = "auto",
    threads: Threads = None,
    truncate: bool = typer.Option(False, "--truncate", help="Cut a text longer than the model's positions to fit, instead of treating it as a bad line."),
    on_bad_lines: str = typer.Option(
        "error", "--on-bad-lines", help="error or skip: a text without [MASK] or too long for the model stops the run "
        "(after the results before it), or is skipped and counted on stderr."
    ),
) -> None:
    """Predict the tokens behind [MASK]: top-k candidates with probabilities (softmax over the vocab).

    Texts come from the arguments, --file, or stdin (one per line), and are read and answered a few hundred
    at a time, so output starts at once and memory stays flat on long inputs. With --joint, each run of
    consecutive [MASK]s is filled as one word: the most confident position first, then the model is
    run again with it filled in, keeping the best partial words (a beam of at least 8); a word's score
    is the product of the probabilities of its tokens when each was chosen.
    """
    import sys

    from sbert_cli.cli.app import err_console, in_flags
    from sbert_cli.tasks.fill_mask import SkippedTexts, iter_masked_texts, stream_fill_mask

    items = iter_masked_texts(texts or [], file)  # a missing input fails before the model loads
    set_threads(threads)
    skipped = SkippedTexts()
    results = stream_fill_mask(model, items, top_k=top_k, joint=joint, batch_size=batch_size, device=device,
                               precision=precision, truncate=truncate, on_bad_lines=on_bad_lines, skipped=skipped,
                               on_note=lambda note: err_console.print(in_flags(note), markup=False, soft_wrap=True))
    for result in results:
        if as_json:
            sys.stdout.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
        else:
            print_results([result], joint)
        sys.stdout.flush()  # each result as it comes, also through a pipe
    if skipped.count:
        err_console.print(f"skipped {skipped.count:,} text{'s' if skipped.count != 1 else ''}, e.g.:", markup=False)
        for example in skipped.examples:
            err_console.print(f"  {example}", markup=False)


def print_results(results, joint: bool) -> None:
    """Each text in bold, then its table of candidates."""
    from rich.markup import escape

    for result in results:
        console.print(f"[bold]{escape(result.text)}[/]", soft_wrap=True)
        console.print(_table(result, joint))


def _table(result, joint: bool):
    """A row per rank, a column per [MASK] (or per run of [MASK]s with --joint)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    table.add_column("rank", justify="right", style="dim")
    columns = []
    if joint:
        for span in result.spans:
            where = str(span.positions[0]) if len(span.positions) == 1 else f"{span.positions[0]}-{span.positions[-1]}"
            table.add_column(escape(f"[MASK]×{len(span.positions)} @ {where}"))
            columns.append([(c.word, c.score) for c in span.candidates])
    else:
        for mask in result.masks:
            table.add_column(escape(f"[MASK] @ {mask.position}"))
            columns.append([(c.token, c.score) for c in mask.candidates])
    for rank in range(max(len(c) for c in columns)):
        cells = [f"{escape(col[rank][0])}  [cyan]{_score(col[rank][1])}[/]" if rank < len(col) else "" for col in columns]
        table.add_row(str(rank + 1), *cells)
    return table


def _score(probability: float) -> str:
    return f"{probability:.4f}" if probability >= 1e-3 else f"{probability:.1e}"
