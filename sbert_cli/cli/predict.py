"""sbert predict: label names with probabilities (a classifier) or entities (a tagger, sbert train-ner), as a table
(entities highlighted), TSV or JSON lines (render_predictions_table is also the demo's). Predictions go to stdout;
the progress bar and throughput to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer
from rich.text import Text

from sbert_cli.cli.app import app, console, err_console
from sbert_cli.cli.options import MODEL_RUN_OPTIONS, set_threads, with_options
from sbert_cli.cli.progress import progress_bar


@app.command("predict")
@with_options(MODEL_RUN_OPTIONS)
def predict_command(
    texts: Optional[List[str]] = typer.Argument(None, metavar="TEXT", help="Texts to classify (or use --file, or pipe one text per line)."),
    model: str = typer.Option(..., "--model", "-m", help="Classifier (or tagger) model dir or hub repo id."),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="Texts to classify: one per line, text<TAB>label, CSV or JSONL; - for stdin."),
    top_k: int = typer.Option(1, "--top-k", "-k", help="Labels to show per text, most probable first."),
    output_format: Optional[str] = typer.Option(None, "--format", help="table, tsv or jsonl (default: table on a terminal, tsv in a pipe)."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: {\"text\": ..., \"labels\": [{\"label\": ..., \"score\": ...}]}; a tagger's: {\"text\": ..., \"entities\": [{\"text\", \"label\", \"start\", \"end\", \"score\"}]}."),
    **run,
) -> None:
    """Classify texts: label names with probabilities; or, with a tagger, find their entities."""
    from sbert_cli.errors import ConfigError
    from sbert_cli.tasks.cls_predict import load_classifier, predict_stream, read_inputs

    if as_json and output_format not in (None, "jsonl"):
        raise ConfigError(f"--json and --format {output_format} disagree; give one of them")
    output_format = "jsonl" if as_json else output_format or ("table" if console.is_terminal else "tsv")
    if output_format not in ("table", "tsv", "jsonl"):
        raise ConfigError(f"--format must be table, tsv or jsonl, not {output_format!r}")
    inputs = read_inputs(texts or [], file)  # before loading the model: a missing input fails fast
    set_threads(run["threads"])
    from sbert_cli.tasks.ner_predict import is_tagger

    if is_tagger(model):
        if top_k != 1:
            raise ConfigError("--top-k is for classifiers; a tagger returns every entity it finds")
        return _predict_entities(model, inputs, output_format, run)
    classifier = load_classifier(model, batch_size=run["batch_size"], precision=run["precision"], device=run["device"],
                                 max_length=run["max_seq_len"] or run["max_length"])
    with progress_bar("predicting", inputs.total) as progress:
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


def _predict_entities(model: str, inputs, output_format: str, run: dict) -> None:
    """predict with a tagger: each text with its entities highlighted, TSV (text, then start-end:LABEL:entity
    fields) or JSON lines."""
    from sbert_cli.tasks.ner_predict import load_tagger, predict_stream

    tagger = load_tagger(model, batch_size=run["batch_size"], precision=run["precision"], device=run["device"],
                         max_seq_len=run["max_seq_len"] or run["max_length"])
    with progress_bar("tagging", inputs.total) as progress:
        predictions = predict_stream(tagger, ((item.text, item.source) for item in inputs.items), progress=progress)
        for prediction in predictions:
            if output_format == "table":
                console.print(highlighted(prediction.text, prediction.entities, tagger.labels), soft_wrap=True)
                continue
            if output_format == "jsonl":
                line = json.dumps(prediction.to_json(), ensure_ascii=False)
            else:
                spans = [f"{e.start}-{e.end}:{e.label}:{_one_line(e.text)}" for e in prediction.entities]
                line = "\t".join([_one_line(prediction.text)] + spans)
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    blank = inputs.read.blank_lines
    if blank:
        err_console.print(f"note: skipped {blank} blank line{'s' if blank != 1 else ''} (no text to tag)", markup=False)
    err_console.print(f"predict: {tagger.runtime.summary('texts')}")


ENTITY_STYLES = ("bold cyan", "bold magenta", "bold green", "bold yellow", "bold blue", "bold red")


def highlighted(text: str, entities: list, labels: list[str]) -> Text:
    """The text with each entity in its type's colour, followed by the type in brackets."""
    styles = {label: ENTITY_STYLES[i % len(ENTITY_STYLES)] for i, label in enumerate(labels)}
    line, position = Text(), 0
    for entity in entities:
        line.append(text[position : entity.start])
        line.append(entity.text, style=styles.get(entity.label, "bold"))
        line.append(f"[{entity.label}]", style="dim")
        position = entity.end
    line.append(text[position:])
    return line


def _one_line(text: str) -> str:
    return " ".join(text.replace("\t", " ").splitlines())


def _prediction_line(prediction, output_format: str) -> str:
    if output_format == "jsonl":
        return json.dumps(prediction.to_json(), ensure_ascii=False)
    return "\t".join([_one_line(prediction.text)] + [f"{label}\t{score:.4f}" for label, score in prediction.labels])


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
