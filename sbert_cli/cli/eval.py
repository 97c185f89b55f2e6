"""sbert eval: a classification report and confusion matrix, masked-token accuracy and perplexity, or a tagger's
entity scores, read at a glance (render_classification is also train-cls's and the demo's report, render_ner
train-ner's).

Results go to stdout (a rich report, or JSON with --json); the progress bar and throughput go to stderr,
so stdout stays clean for pipes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click
import typer
from rich.markup import escape
from rich.text import Text

from sbert_cli.cli.app import app, console, err_console
from sbert_cli.cli.options import MODEL_RUN_OPTIONS, set_threads, with_options
from sbert_cli.cli.progress import precision_words, progress_bar
from sbert_cli.limits import MASKING_SEED


@app.command("eval")
@with_options(MODEL_RUN_OPTIONS)
def eval_command(
    model: str = typer.Option(..., "--model", "-m", help="Model dir (sbert or Hugging Face format) or hub repo id."),
    data: Path = typer.Option(..., "--data", "-d", help="cls: labelled TSV/CSV/JSONL file. mlm: make-mlm-data folder or raw text file. ner: entity file (CoNLL, JSONL, CLUENER)."),
    task: Optional[str] = typer.Option(None, "--task", help="cls, mlm or ner; inferred from the model dir when not given."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json (cls: also confusion_matrix.png, misclassified.tsv; ner: wrong_sentences.tsv); a rerun replaces its own report. Default: RUN/eval-<data name> for a run's best/ or last/, else no files."),
    force: bool = typer.Option(False, "--force", hidden=True, help="Accepted for compatibility: a report replaces its own earlier files."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object instead of tables."),
    seed: int = typer.Option(MASKING_SEED, "--seed", help="mlm: masking seed for raw text (make-mlm-data's default) and --no-mask shards."),
    **run,
) -> None:
    """Evaluate a model: classification report and confusion matrix (cls), masked-token accuracy and perplexity (mlm), or entity precision, recall and F1 (ner)."""
    from sbert_cli.tasks.evaluate import default_out_dir, evaluate

    set_threads(run["threads"])
    with progress_bar("evaluating") as progress:
        result = evaluate(
            model, data, task=task, out_dir=out or default_out_dir(model, data), force=force, batch_size=run["batch_size"],
            precision=run["precision"], device=run["device"], max_length=run["max_seq_len"] or run["max_length"], seed=seed,
            progress=progress,
        )
    summary = result.to_json()
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    elif result.task == "cls":
        render_classification(summary)
    elif result.task == "ner":
        render_ner(summary)
    else:
        _render_mlm(summary)
    unit = {"cls": "examples", "ner": "sentences"}.get(result.task, "sequences")
    err_console.print(f"eval: {result.runtime.summary(unit)}")


def scores_table(first_column: str, rows: list[tuple[str, dict]]):
    """Precision, recall, F1 and support per (name, figures) row, then a section line for the averages to follow."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column(first_column)
    for name in ("precision", "recall", "f1", "support"):
        table.add_column(name, justify="right")
    for name, row in rows:
        table.add_row(Text(name), *(f"{row[k]:.4f}" for k in ("precision", "recall", "f1")), f"{row['support']:,}")
    table.add_section()
    return table


def render_classification(summary: dict) -> None:
    console.print(
        f"[bold]{escape(summary['model'])}[/] on [bold]{escape(summary['data'])}[/]: {summary['num_examples']:,} examples, "
        f"{precision_words(summary['runtime']['precision'])}",
        soft_wrap=True,
    )
    report = scores_table("label", [(row["label"], row) for row in summary["per_class"]])
    report.add_row("[bold]accuracy[/]", "", "", f"[bold]{summary['accuracy']:.4f}[/]", f"{summary['num_examples']:,}")
    for average in ("macro", "micro", "weighted"):
        figures = summary[average]
        style = "bold" if average == "macro" else ""
        report.add_row(
            f"[{style}]{average} avg[/]" if style else f"{average} avg",
            *(f"{figures[k]:.4f}" for k in ("precision", "recall")),
            f"[{style}]{figures['f1']:.4f}[/]" if style else f"{figures['f1']:.4f}",
            f"{summary['num_examples']:,}",
        )
    console.print(report)
    console.print(f"loss {summary['loss']:.4f}")
    console.print(_confusion_table(summary["confusion_matrix"], summary["labels"]))
    files = summary["files"]
    if files:
        console.print(Text(
            f"wrote {files['metrics']}, {files['confusion_matrix']}, "
            f"{files['misclassified']} ({summary['num_misclassified']:,} misclassified)"
        ), soft_wrap=True)
    else:
        console.print(f"{summary['num_misclassified']:,} misclassified; --out DIR writes the report files")


def _confusion_table(matrix: list[list[int]], labels: list[str]):
    from rich.table import Table

    table = Table(title="confusion matrix (rows gold, columns predicted)", title_justify="left", box=None)
    table.add_column("gold \\ predicted")
    for j, _ in enumerate(labels):
        table.add_column(str(j), justify="right")  # indices keep the table narrow; rows carry the names
    for i, (name, row) in enumerate(zip(labels, matrix)):
        cells = []
        for j, count in enumerate(row):
            if i == j:
                cells.append(f"[green]{count}[/]")
            elif count:
                cells.append(f"[red]{count}[/]")
            else:
                cells.append("[dim]0[/]")
        table.add_row(Text(f"{i} {name}"), *cells)
    return table


def render_ner(summary: dict) -> None:
    """A tagger's report (also train-ner's): entity precision, recall and F1 per type, micro and macro, and the
    errors by kind."""
    from rich.table import Table

    console.print(
        f"[bold]{escape(summary['model'])}[/] on [bold]{escape(summary['data'])}[/]: {summary['num_sentences']:,} "
        f"sentences, {summary['support']:,} entities (exact spans; the file's scheme {summary['scheme']}), "
        f"{precision_words(summary['runtime']['precision'])}",
        soft_wrap=True,
    )
    report = scores_table("type", list(summary["per_label"].items()))
    report.add_row("[bold]micro avg[/]", f"{summary['precision']:.4f}", f"{summary['recall']:.4f}",
                   f"[bold]{summary['entity_f1']:.4f}[/]", f"{summary['support']:,}")
    report.add_row("macro avg", "", "", f"{summary['macro_f1']:.4f}", f"{summary['support']:,}")
    console.print(report)
    errors = Table(title="errors per type (type: same span, other type; boundary: overlapping, same type)",
                   title_justify="left", box=None, pad_edge=False)
    errors.add_column("type")
    kinds = list(next(iter(summary["errors"].values()), {}))
    for kind in kinds:
        errors.add_column(kind.replace("_", " "), justify="right")
    for label, row in summary["errors"].items():
        errors.add_row(Text(label), *(f"[red]{row[k]}[/]" if row[k] else "[dim]0[/]" for k in kinds))
    console.print(errors)
    wrong = f"{summary['num_wrong_sentences']:,} sentences with a wrong or missed entity"
    if summary["files"]:
        console.print(Text(f"wrote {summary['files']['metrics']}, {summary['files']['wrong_sentences']} ({wrong})"),
                      soft_wrap=True)
    else:
        console.print(f"{wrong}; --out DIR writes the report files")


def _render_mlm(summary: dict) -> None:
    from rich.table import Table

    masked_by = "masked by make-mlm-data" if summary["seed"] is None else f"masked here with seed {summary['seed']}"
    console.print(
        f"[bold]{escape(summary['model'])}[/] on [bold]{escape(summary['data'])}[/]: {summary['num_sequences']:,} sequences, "
        f"{summary['num_predictions']:,} masked tokens ({masked_by}), {precision_words(summary['runtime']['precision'])}",
        soft_wrap=True,
    )
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column()
    table.add_column(justify="right")
    table.add_row("top-1 accuracy", f"{summary['mlm_accuracy']:.4f}")
    table.add_row("top-5 accuracy", f"{summary['mlm_top5_accuracy']:.4f}")
    table.add_row("loss", f"{summary['loss']:.4f}")
    table.add_row("perplexity", f"{summary['perplexity']:.2f}")
    console.print(table)
    if summary["files"]:
        console.print(Text(f"wrote {summary['files']['metrics']}"))
