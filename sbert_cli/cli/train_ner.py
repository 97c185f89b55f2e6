"""sbert train-ner: options in, one library call (tasks/ner.train_tagger), the run and its reports rendered."""

from __future__ import annotations

from pathlib import Path

from sbert_cli.cli.app import app
from sbert_cli.cli.options import options_of, out_option, settings_from, training_options, with_options
from sbert_cli.cli.train import rule_help, run_and_report, train_config_from
from sbert_cli.tasks.options import NerOptions


@app.command("train-ner")
@with_options(options_of(NerOptions), out_option(Path("runs/ner")), training_options(lr=rule_help("ner")))
def train_ner(**parameters) -> None:
    """Fine-tune a BERT tagger (named entities, any character tagging); keeps the best model on dev by entity F1."""
    config = train_config_from(parameters)
    from sbert_cli.cli.eval import render_ner
    from sbert_cli.tasks.ner import train_tagger

    run_and_report(train_tagger, settings_from(NerOptions, parameters), config, render_ner)
