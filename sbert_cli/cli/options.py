"""Options declared once and shared by the commands they apply to: the training group (train-cls, pretrain).

A command names its own options and takes `**shared`; `with_options(GROUP)` appends the group's options to
the signature Typer reads, so every command spells and documents them the same way.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typing_extensions import Annotated

TRAINING = "Training"
RUN = "Run dir, checkpoints and evaluation"
HARDWARE = "Device and precision"
THREADS_HELP = ("CPU threads (default: OMP_NUM_THREADS when set, else the usable cores that other processes leave free "
                "when the command starts).")


def _option(*names: str, help: str, panel: str | None = None, **kwargs) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, **kwargs)


# name: (type, option, default). The options train-cls and pretrain share.
TRAINING_OPTIONS: dict[str, tuple[Any, Any, Any]] = {
    "epochs": (Optional[int], _option("--epochs", help="Passes over the training data (default 3; --max-steps overrides).", panel=TRAINING), None),
    "max_steps": (Optional[int], _option("--max-steps", help="Stop after this many optimizer steps.", panel=TRAINING), None),
    "batch_size": (int, _option("--batch-size", "-b", help="Examples per process and micro-batch; the global batch is this x --grad-accum x processes.", panel=TRAINING), 32),
    "grad_accum": (int, _option("--grad-accum", help="Micro-batches accumulated per optimizer step.", panel=TRAINING), 1),
    "weight_decay": (float, _option("--weight-decay", help="AdamW weight decay (never on biases and LayerNorm).", panel=TRAINING), 0.01),
    "warmup_ratio": (Optional[float], _option("--warmup-ratio", help="Linear warmup over this share of the steps (default: chosen with the lr, 0.1).", panel=TRAINING), None),
    "warmup_steps": (Optional[int], _option("--warmup-steps", help="Linear warmup steps (overrides --warmup-ratio).", panel=TRAINING), None),
    "schedule": (str, _option("--schedule", help="After warmup: linear, cosine or constant.", panel=TRAINING), "linear"),
    "max_grad_norm": (float, _option("--max-grad-norm", help="Clip the gradient norm (0: no clipping).", panel=TRAINING), 1.0),
    "seed": (int, _option("--seed", help="Seeds data order, dropout, masking and new weights.", panel=TRAINING), 42),
    "eval_every": (Optional[int], _option("--eval-every", help="Evaluate every N steps (default: each epoch).", panel=RUN), None),
    "save_every": (Optional[int], _option("--save-every", help="Checkpoint every N steps (default: at each evaluation / epoch).", panel=RUN), None),
    "keep_last": (int, _option("--keep-last", help="Checkpoints kept under OUT/checkpoints.", panel=RUN), 2),
    "patience": (Optional[int], _option("--patience", help="Stop after N evaluations without improvement.", panel=RUN), None),
    "log_every": (int, _option("--log-every", help="Log loss, lr and tokens/s every N steps.", panel=RUN), 10),
    "resume": (bool, _option("--resume", help="Continue from the latest checkpoint in --out (same data, batch size and processes).", panel=RUN), False),
    "force": (bool, _option("--force", help="Start over in a non-empty --out, removing only what an earlier run wrote there.", panel=RUN), False),
    "plot": (bool, _option("--plot/--no-plot", help="Draw OUT/curves.png at the end.", panel=RUN), True),
    "precision": (str, _option("--precision", help="auto (bf16 where the CPU/GPU does it natively, else fp32), fp32, bf16, fp16 (CUDA).", panel=HARDWARE), "auto"),
    "device": (str, _option("--device", help="auto, cpu, cuda or cuda:N (under torchrun: the local rank's GPU).", panel=HARDWARE), "auto"),
    "threads": (Optional[int], _option("--threads", help=THREADS_HELP + " Under torchrun: per process.", panel=HARDWARE), None),
    "dist_timeout": (float, _option("--dist-timeout", help="Seconds a process waits for the others (torchrun) before giving up.", panel=HARDWARE), 600.0),
}


def with_options(*groups: dict[str, tuple[Any, Any, Any]]) -> Callable:
    """Add the groups' options to a Typer command that takes `**shared`; Typer reads the combined signature."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option])
            for group in groups for name, (kind, option, default) in group.items()
        ]

        @functools.wraps(command)
        def wrapper(**kwargs):
            return command(**kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + added)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        return wrapper

    return decorate


Out = Annotated[Path, typer.Option("--out", "-o", help="Run dir: checkpoints/, best/, last/, metrics.jsonl, curves.png.", rich_help_panel=RUN)]


# The inference commands' options (eval, predict, fill-mask, embed, similar, serve): one spelling, one help.
INFERENCE = "Model and inference"
PRECISION_HELP = "auto (bf16 where the hardware does it natively, else fp32), fp32, bf16 or fp16 (CUDA only)."
# bf16 weights are converted once at load; int8 pays off at BERT-base size, not tiny models.
INFERENCE_PRECISION_HELP = PRECISION_HELP.removesuffix(".") + ", or int8 (CPU: dynamic quantization of the Linear layers)."
Precision = Annotated[str, typer.Option("--precision", help=INFERENCE_PRECISION_HELP, rich_help_panel=INFERENCE)]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel=INFERENCE)]
Threads = Annotated[Optional[int], typer.Option("--threads", help=THREADS_HELP, rich_help_panel=INFERENCE)]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Texts per forward pass.", rich_help_panel=INFERENCE)]
MaxSeqLen = Annotated[Optional[int], typer.Option("--max-seq-len", help="Truncate texts to this many tokens (default: the length the model was trained with, else its positions).", rich_help_panel=INFERENCE)]
# 0.1 spelled it --max-length in eval and predict; kept, hidden, for one release.
MaxLengthAlias = Annotated[Optional[int], typer.Option("--max-length", hidden=True)]
# embed, similar and serve: the model and its pooling.
Model = Annotated[str, typer.Option("--model", "-m", help="Model dir (sbert, Hugging Face or sentence-transformers) or hub repo id.", rich_help_panel=INFERENCE)]
Pooling = Annotated[Optional[str], typer.Option("--pooling", help="mean (over real tokens), cls or pooler. Default: a sentence-transformers dir's own, else mean.", rich_help_panel=INFERENCE)]


def set_threads(threads: int | None) -> None:
    """--threads, applied before any model runs (see precision.configure_threads)."""
    from sbert_cli.model.precision import configure_threads

    configure_threads(threads)


def _group(**entries: tuple[Any, Any]) -> dict[str, tuple[Any, Any, Any]]:
    """A with_options group from (Annotated alias, default) pairs."""
    import typing

    return {name: (*typing.get_args(alias), default) for name, (alias, default) in entries.items()}


# eval and predict: a model run over many texts.
MODEL_RUN_OPTIONS = _group(batch_size=(BatchSize, 64), precision=(Precision, "auto"), device=(Device, "auto"),
                           threads=(Threads, None), max_seq_len=(MaxSeqLen, None), max_length=(MaxLengthAlias, None))
