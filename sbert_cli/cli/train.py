"""sbert train-cls, pretrain and plot: options in, one library call, results rendered with rich."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from sbert_cli.cli.app import app, console
from sbert_cli.cli.options import options_of, out_option, set_threads, settings_from, training_options, with_options
from sbert_cli.cli.progress import TrainingProgress, precision_words
from sbert_cli.tasks.lr_rule import CONTINUE, FINE_TUNE, NEW_HEAD, SCRATCH, WARMUP_RATIO, rates
from sbert_cli.tasks.options import ClassifierOptions, PretrainOptions
from sbert_cli.train.types import TrainConfig


def train_config_from(parameters: dict):
    """The TrainConfig of a training command, from its parameters (called first thing); applies --threads before
    any model is built (see precision.configure_threads)."""
    set_threads(parameters["threads"])
    return settings_from(TrainConfig, parameters, out_dir=parameters["out"])


def rule_help(task: str) -> str:
    """The lr rule (tasks/lr_rule.py) in one sentence, for --help."""
    if task in ("cls", "ner"):
        shown = [(SCRATCH, "--config"), (FINE_TUNE, "--model")]
    else:
        shown = [(SCRATCH, "--config"), (NEW_HEAD, "--model without an MLM head"), (CONTINUE, "--model with one")]
    cases = "; ".join(f"{name} ({flag}): {rates(name)}" for name, flag in shown)
    return f"Peak learning rate. Default: chosen by situation, with {WARMUP_RATIO:.0%} warmup — {cases}. The run's first lines say which."


def resume_command() -> str:
    """The command line that started this process, with --resume: what to run to continue."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("__main__.py", "sbert_cli")):
        argv[0:1] = ["python", "-m", "sbert_cli"]
    elif argv:
        argv[0] = Path(argv[0]).name
    from sbert_cli.train.distributed import DistributedEnv

    env = DistributedEnv.from_env()
    if env.distributed:
        nproc = os.environ.get("LOCAL_WORLD_SIZE", str(env.world_size))
        argv = ["torchrun", f"--nproc-per-node={nproc}", "-m", "sbert_cli", *argv[3:]] if argv[:3] == ["python", "-m", "sbert_cli"] else ["torchrun", f"--nproc-per-node={nproc}", *argv]
    argv = [a for a in argv if a != "--force"]
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(argv)



@app.command("train-cls")
@with_options(options_of(ClassifierOptions), out_option(Path("runs/cls")), training_options(lr=rule_help("cls")))
def train_cls(**parameters) -> None:
    """Fine-tune a BERT text classifier; keeps the best model on dev (OUT/best) and the last (OUT/last)."""
    config = train_config_from(parameters)
    from sbert_cli.cli.eval import render_classification
    from sbert_cli.tasks.classification import train_classifier

    run_and_report(train_classifier, settings_from(ClassifierOptions, parameters), config, render_classification)


def run_and_report(train, options, config, render) -> None:
    """Run `train(options, config, callbacks)` with progress on the main process, then its summary and reports."""
    from sbert_cli.train.distributed import is_main_process

    main = is_main_process()
    result = train(options, config, TrainingProgress(console) if main else None)
    if main:
        print_run_summary(result.train)
        print_reports(result, render)


def print_reports(result, render) -> None:
    """A fine-tuning run's closing reports on its kept model (`sbert eval`'s, drawn by `render`), then where it is."""
    for name, evaluation in result.reports.items():  # in the precision the run selected the model with
        console.rule(f"{name} ({result.model_dir.name} model, {precision_words(result.train.precision)})")
        render(evaluation.to_json())
    if result.model_dir is not None:
        console.print(f"model: [bold]{result.model_dir}[/]  (sbert predict --model {result.model_dir} TEXT)")


def print_run_summary(result) -> None:
    """The run's last lines; an interrupted run says how to continue and exits 128 + the signal's number."""
    where = f"{result.device}, {result.precision}" + (f", {result.world_size} processes" if result.world_size > 1 else "")
    state = "interrupted" if result.interrupted else ("stopped early" if result.early_stopped else "done")
    console.print(f"{state}: step {result.step}/{result.total_steps}, epoch {result.epoch:.2f} ({where})", soft_wrap=True)
    if result.best_step is not None and not result.interrupted:
        metric = f"{result.best_metric} " if result.best_metric else ""
        console.print(f"best at step {result.best_step}: {metric}{result.best_value:.4f} "
                      f"({precision_words(result.precision, training=True)}, as evaluated while training)")
    if result.interrupted:
        console.print(f"stopped at step {result.step}; checkpoint saved to {result.checkpoint}", soft_wrap=True)
        console.print(f"resume with: {resume_command()}", soft_wrap=True, markup=False)  # one line, to copy
        raise typer.Exit(128 + (result.stop_signal or 2))


@app.command("pretrain")
@with_options(options_of(PretrainOptions), out_option(Path("runs/pretrain")), training_options(lr=rule_help("mlm")))
def pretrain(**parameters) -> None:
    """Masked-LM pretraining on make-mlm-data output, from a checkpoint (--model) or from scratch (--config)."""
    config = train_config_from(parameters)
    from sbert_cli.tasks.pretrain import pretrain as run_pretrain
    from sbert_cli.train.distributed import is_main_process

    options = settings_from(PretrainOptions, parameters)
    main = is_main_process()
    result = run_pretrain(options, config, TrainingProgress(console) if main else None)
    if not main:
        return
    print_run_summary(result.train)
    if result.train.last_eval:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in result.train.last_eval.items())
        console.print(f"held-out ({precision_words(result.train.precision, training=True)}): {shown}")
    console.print(f"model: [bold]{result.model_dir}[/]  (sbert fill-mask --model {result.model_dir} ...)")


@app.command("plot")
def plot(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run dir written by train-cls or pretrain (with metrics.jsonl).")],
) -> None:
    """Redraw RUN_DIR/curves.png (loss and metrics against step) from RUN_DIR/metrics.jsonl."""
    from sbert_cli.plots import plot_training_curves

    console.print(f"wrote {plot_training_curves(run_dir)}")
