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
from sbert_cli.cli.options import TRAINING, Out, set_threads, training_options, with_options
from sbert_cli.cli.progress import TrainingProgress, precision_words
from sbert_cli.tasks.lr_rule import CONTINUE, FINE_TUNE, LABEL_SMOOTHING, NEW_HEAD, SCRATCH, WARMUP_RATIO, rates

ModelConfig = Annotated[Optional[str], typer.Option("--config", help="Start from scratch with a fresh model: tiny, small or base.")]
Vocab = Annotated[Optional[Path], typer.Option("--vocab", help="With --config: vocab.txt (default: the bundled Chinese BERT vocab).")]


def train_config_from(parameters: dict):
    """The TrainConfig of a training command, from its parameters (called with locals() first thing); applies
    --threads before any model is built (see precision.configure_threads)."""
    import dataclasses

    set_threads(parameters["threads"])

    from sbert_cli.train.types import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {k: v for k, v in parameters.items() if k in names}
    return TrainConfig(**options, out_dir=parameters["out"])


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
@with_options(training_options(lr=rule_help("cls")))
def train_cls(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Folder with train.txt, dev.txt, test.txt (text<TAB>label) and class.txt.")] = Path("data"),
    train_file: Annotated[Optional[Path], typer.Option("--train", help="Training file (TSV, CSV with a header, or JSONL); overrides --data-dir.")] = None,
    dev_file: Annotated[Optional[Path], typer.Option("--dev", help="Dev file: picks the best model.")] = None,
    test_file: Annotated[Optional[Path], typer.Option("--test", help="Test file: reported at the end.")] = None,
    labels_file: Annotated[Optional[Path], typer.Option("--labels", help="class.txt: one label name per line (line i = label i).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model dir or hub repo id to fine-tune (default: hfl/chinese-bert-wwm-ext; none with --config).")] = None,
    config_name: ModelConfig = None,
    vocab: Vocab = None,
    max_seq_len: Annotated[int, typer.Option("--max-seq-len", help="Longer texts are truncated to this many tokens.")] = 128,
    metric: Annotated[str, typer.Option("--metric", help="Dev metric that picks OUT/best: accuracy or macro_f1.")] = "accuracy",
    pooling: Annotated[Optional[str], typer.Option("--pooling", help="What the classifier reads: pooler (tanh(dense([CLS])), as transformers), cls (the [CLS] vector) or mean (over tokens; suits sentence-embedding models such as m3e). Default: the model's own, else pooler. Saved in config.json.")] = None,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", help="Label smoothing: the training target spreads x evenly over all labels and puts the rest on the gold one (0: plain cross-entropy). Dev loss is always plain.", rich_help_panel=TRAINING)] = LABEL_SMOOTHING,
    out: Out = Path("runs/cls"),
    **shared,
) -> None:
    """Fine-tune a BERT text classifier; keeps the best model on dev (OUT/best) and the last (OUT/last)."""
    config = train_config_from({**locals(), **shared})
    from sbert_cli.tasks.classification import DEFAULT_MODEL, ClassifierOptions, train_classifier

    model = model_or_default(model, config_name, DEFAULT_MODEL)

    options = ClassifierOptions(
        data_dir=data_dir, train_file=train_file, dev_file=dev_file, test_file=test_file, labels_file=labels_file,
        model=model, config_name=config_name, vocab=vocab, max_seq_len=max_seq_len, metric=metric, pooling=pooling,
        label_smoothing=label_smoothing,
    )
    from sbert_cli.cli.eval import render_classification

    run_and_report(train_classifier, options, config, render_classification)


def run_and_report(train, options, config, render) -> None:
    """Run `train(options, config, callbacks)` with progress on the main process, then its summary and reports."""
    from sbert_cli.train.distributed import is_main_process

    main = is_main_process()
    result = train(options, config, TrainingProgress(console) if main else None)
    if main:
        print_run_summary(result.train)
        print_reports(result, render)


def model_or_default(model: str | None, config_name: str | None, default: str) -> str | None:
    """--model, else `default` unless --config starts from scratch; both given is an error."""
    from sbert_cli.errors import ConfigError

    if model is not None and config_name is not None:
        raise ConfigError("give --model DIR|REPO to fine-tune a checkpoint, or --config tiny|small|base to start from scratch (not both)")
    return model if model is not None or config_name is not None else default


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
@with_options(training_options(lr=rule_help("mlm")))
def pretrain(
    data: Annotated[Path, typer.Option("--data", help="make-mlm-data output dir.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model dir or hub repo id to continue pretraining.")] = None,
    config_name: ModelConfig = None,
    vocab: Vocab = None,
    dynamic_masking: Annotated[bool, typer.Option("--dynamic-masking", help="Re-mask every epoch (needs make-mlm-data --no-mask output).")] = False,
    masked_lm_prob: Annotated[Optional[float], typer.Option("--masked-lm-prob", help="With --dynamic-masking: share of tokens to predict (default: as make-mlm-data, 0.15).")] = None,
    max_predictions: Annotated[Optional[int], typer.Option("--max-predictions", help="With --dynamic-masking: most predictions per sequence.")] = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="make-mlm-data dir for held-out masked-token accuracy and perplexity.")] = None,
    eval_fraction: Annotated[Optional[float], typer.Option("--eval-fraction", help="Hold out this share of --data for evaluation (e.g. 0.01).")] = None,
    out: Out = Path("runs/pretrain"),
    **shared,
) -> None:
    """Masked-LM pretraining on make-mlm-data output, from a checkpoint (--model) or from scratch (--config)."""
    config = train_config_from({**locals(), **shared})
    from sbert_cli.tasks.pretrain import PretrainOptions
    from sbert_cli.tasks.pretrain import pretrain as run_pretrain
    from sbert_cli.train.distributed import is_main_process

    options = PretrainOptions(
        data=data, model=model, config_name=config_name, vocab=vocab, dynamic_masking=dynamic_masking,
        masked_lm_prob=masked_lm_prob, max_predictions=max_predictions, eval_data=eval_data, eval_fraction=eval_fraction,
    )
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
