"""sbert eval and sbert predict: reports and predictions people read at a glance.

Results go to stdout (a rich report, or JSON with --json); progress bars and throughput go to stderr,
so stdout stays clean for pipes.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer
from rich.markup import escape
from rich.text import Text

from sbert_cli.cli.app import app, console, err_console
from sbert_cli.cli.options import MODEL_RUN_OPTIONS, set_threads, with_options
from sbert_cli.limits import MASKING_SEED

@contextlib.contextmanager
def _progress_bar(description: str, total: int | None = None):
    """A progress bar on stderr (hidden when stderr is not a terminal); yields the library's progress callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not err_console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(done: int, new_total: int | None) -> None:
            if new_total is not None:
                bar.update(task, total=new_total)
            bar.advance(task, done)

        yield advance


@app.command("eval")
@with_options(MODEL_RUN_OPTIONS)
def eval_command(
    model: str = typer.Option(..., "--model", "-m", help="Model dir (sbert or Hugging Face format) or hub repo id."),
    data: Path = typer.Option(..., "--data", "-d", help="cls: labelled TSV/CSV/JSONL file. mlm: make-mlm-data folder or raw text file."),
    task: Optional[str] = typer.Option(None, "--task", help="cls or mlm; inferred from the model dir when not given."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json (cls: also confusion_matrix.png, misclassified.tsv); a rerun replaces its own report. Default: RUN/eval-<data name> for a run's best/ or last/, else no files."),
    force: bool = typer.Option(False, "--force", hidden=True, help="Accepted for compatibility: a report replaces its own earlier files."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object instead of tables."),
    seed: int = typer.Option(MASKING_SEED, "--seed", help="mlm: masking seed for raw text (make-mlm-data's default) and --no-mask shards."),
    **run,
) -> None:
    """Evaluate a model: classification report and confusion matrix (cls), or masked-token accuracy and perplexity (mlm)."""
    from sbert_cli.tasks.evaluate import default_out_dir, evaluate

    set_threads(run["threads"])
    with _progress_bar("evaluating") as progress:
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
    else:
        _render_mlm(summary)
    unit = "examples" if result.task == "cls" else "sequences"
    err_console.print(f"eval: {result.runtime.summary(unit)}")


def render_classification(summary: dict) -> None:
    from rich.table import Table

    console.print(
        f"[bold]{escape(summary['model'])}[/] on [bold]{escape(summary['data'])}[/]: {summary['num_examples']:,} examples",
        soft_wrap=True,
    )
    report = Table(box=None, pad_edge=False)
    report.add_column("label")
    for name in ("precision", "recall", "f1", "support"):
        report.add_column(name, justify="right")
    for row in summary["per_class"]:
        report.add_row(Text(row["label"]), *(f"{row[k]:.4f}" for k in ("precision", "recall", "f1")), f"{row['support']:,}")
    report.add_section()
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


def _render_mlm(summary: dict) -> None:
    from rich.table import Table

    masked_by = "masked by make-mlm-data" if summary["seed"] is None else f"masked here with seed {summary['seed']}"
    console.print(
        f"[bold]{escape(summary['model'])}[/] on [bold]{escape(summary['data'])}[/]: {summary['num_sequences']:,} sequences, "
        f"{summary['num_predictions']:,} masked tokens ({masked_by})",
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


@app.command("predict")
@with_options(MODEL_RUN_OPTIONS)
def predict_command(
    texts: Optional[List[str]] = typer.Argument(None, metavar="TEXT", help="Texts to classify (or use --file, or pipe one text per line)."),
    model: str = typer.Option(..., "--model", "-m", help="Classifier model dir or hub repo id."),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="Texts to classify: one per line, text<TAB>label, CSV or JSONL; - for stdin."),
    top_k: int = typer.Option(1, "--top-k", "-k", help="Labels to show per text, most probable first."),
    output_format: Optional[str] = typer.Option(None, "--format", help="table, tsv or jsonl (default: table on a terminal, tsv in a pipe)."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: {\"text\": ..., \"labels\": [{\"label\": ..., \"score\": ...}]}."),
    **run,
) -> None:
    """Classify texts: label names with probabilities."""
    from sbert_cli.errors import ConfigError
    from sbert_cli.tasks.cls_predict import load_classifier, predict_stream, read_inputs

    if as_json and output_format not in (None, "jsonl"):
        raise ConfigError(f"--json and --format {output_format} disagree; give one of them")
    output_format = "jsonl" if as_json else output_format or ("table" if console.is_terminal else "tsv")
    if output_format not in ("table", "tsv", "jsonl"):
        raise ConfigError(f"--format must be table, tsv or jsonl, not {output_format!r}")
    inputs = read_inputs(texts or [], file)  # before loading the model: a missing input fails fast
    set_threads(run["threads"])
    classifier = load_classifier(model, batch_size=run["batch_size"], precision=run["precision"], device=run["device"],
                                 max_length=run["max_seq_len"] or run["max_length"])
    with _progress_bar("predicting", inputs.total) as progress:
        predictions = predict_stream(classifier, inputs.items, top_k, progress=progress)
        if output_format == "table":
            render_predictions_table(list(predictions), top_k)
        else:
            for prediction in predictions:
                sys.stdout.write(_prediction_line(prediction, output_format) + "\n")
            sys.stdout.flush()
    blank = inputs.read.blank_lines
    if blank:  # on stderr: stdout keeps one prediction per text
        err_console.print(f"note: skipped {blank} blank line{'s' if blank != 1 else ''} (no text to classify)", markup=False)
    err_console.print(f"predict: {classifier.runtime.summary('texts')}")


def _prediction_line(prediction, output_format: str) -> str:
    if output_format == "jsonl":
        return json.dumps(prediction.to_json(), ensure_ascii=False)
    text = " ".join(prediction.text.replace("\t", " ").splitlines())
    return "\t".join([text] + [f"{label}\t{score:.4f}" for label, score in prediction.labels])


def render_predictions_table(predictions: list, top_k: int) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("text", overflow="fold")
    table.add_column("label" if top_k == 1 else "labels")
    if top_k == 1:
        table.add_column("score", justify="right")
    for prediction in predictions:
        if top_k == 1:
            label, score = prediction.labels[0]
            table.add_row(Text(prediction.text), Text(label), f"{score:.4f}")
        else:
            table.add_row(Text(prediction.text), Text("  ".join(f"{label} {score:.4f}" for label, score in prediction.labels)))
    console.print(table)
