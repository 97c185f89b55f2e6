"""sbert train-ner: options in, one library call (tasks/ner.train_tagger), the run and its reports rendered."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from sbert_cli.cli.app import app, console
from sbert_cli.cli.options import Out, training_options, with_options
from sbert_cli.cli.train import ModelConfig, Vocab, model_or_default, rule_help, run_and_report, train_config_from
from sbert_cli.tasks.lr_rule import CRF_LR_SCALE

TAGGING = "Tagging"


@app.command("train-ner")
@with_options(training_options(lr=rule_help("ner")))
def train_ner(
    train_file: Annotated[Path, typer.Option("--train", help="Training file: CoNLL (TOKEN TAG per line, a blank line between sentences; BIO, IOB1, BIOES or BMES tags), JSONL with character offsets, or CLUENER JSON lines.")],
    dev_file: Annotated[Optional[Path], typer.Option("--dev", help="Dev file (same formats): picks the best model by entity F1.")] = None,
    test_file: Annotated[Optional[Path], typer.Option("--test", help="Test file: reported at the end.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model dir or hub repo id to fine-tune (default: hfl/chinese-bert-wwm-ext; none with --config).")] = None,
    config_name: ModelConfig = None,
    vocab: Vocab = None,
    max_seq_len: Annotated[int, typer.Option("--max-seq-len", help="Ids per window; longer sentences are read in overlapping windows, never truncated.")] = 128,
    crf: Annotated[bool, typer.Option("--crf", help="A CRF on top: learned tag transitions, Viterbi decoding.", rich_help_panel=TAGGING)] = False,
    crf_lr_scale: Annotated[float, typer.Option("--crf-lr-scale", help="With --crf: the CRF's lr is this times the peak lr (its scores start at zero and need larger steps).", rich_help_panel=TAGGING)] = CRF_LR_SCALE,
    out: Out = Path("runs/ner"),
    **shared,
) -> None:
    """Fine-tune a BERT tagger (named entities, any character tagging); keeps the best model on dev by entity F1."""
    config = train_config_from({**locals(), **shared})
    from sbert_cli.tasks.ner import DEFAULT_MODEL, NerOptions, train_tagger

    options = NerOptions(train_file=train_file, dev_file=dev_file, test_file=test_file,
                         model=model_or_default(model, config_name, DEFAULT_MODEL), config_name=config_name, vocab=vocab,
                         max_seq_len=max_seq_len, crf=crf, crf_lr_scale=crf_lr_scale)
    from sbert_cli.cli.eval import render_ner

    run_and_report(train_tagger, options, config, render_ner)
