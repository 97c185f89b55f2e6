"""Options shared by the commands they apply to: the training group (train-cls, pretrain, train-ner), generated
from TrainConfig's fields (training_options, TRAINING_OPTIONS, Out), and the inference options (Precision, Device,
Threads, BatchSize, MaxSeqLen, Model, Pooling; MODEL_RUN_OPTIONS for eval and predict).

A command names its own options and takes `**shared`; `with_options(GROUP)` appends the group's options to
the signature Typer reads, so every command spells and documents them the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typing_extensions import Annotated

from sbert_cli.train.types import HARDWARE, RUN, TRAINING, TrainConfig

THREADS_HELP = ("CPU threads (default: OMP_NUM_THREADS when set, else the usable cores that other processes leave free "
                "when the command starts).")


def _option(*names: str, help: str, panel: str | None = None, **kwargs) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, **kwargs)


def _field_option(f: dataclasses.Field, kind: Any, help: str | None = None) -> tuple[Any, Any, Any]:
    """(type, typer option, default) of a dataclass field that carries an `option` in its metadata; a field
    without a default is a required option."""
    meta = f.metadata
    default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
    return kind, _option(*meta["flags"], help=help or meta["help"], panel=meta["panel"]), default


def options_of(settings: type, skip: tuple[str, ...] = (), **helps: str) -> dict[str, tuple[Any, Any, Any]]:
    """A with_options group generated from a settings dataclass (TrainConfig, tasks/options.py's): each field's
    flags, help and panel (its `option` metadata), type and default, in field order. `helps` replaces a field's help."""
    hints = typing.get_type_hints(settings)
    return {f.name: _field_option(f, hints[f.name], helps.get(f.name))
            for f in dataclasses.fields(settings) if f.name not in skip}


def settings_from(settings: type, parameters: dict, **given: Any):
    """The `settings` dataclass built from a command's parameters (the fields it has), `given` overriding."""
    names = {f.name for f in dataclasses.fields(settings)}
    return settings(**{**{k: v for k, v in parameters.items() if k in names}, **given})


def training_options(**helps: str) -> dict[str, tuple[Any, Any, Any]]:
    """The options train-cls, pretrain and train-ner share, generated from TrainConfig's fields (flags, help, panel,
    type, default: train/types.py declares each once), in field order, with --threads (not a TrainConfig field)
    after --device. `helps` replaces a field's help (lr: the command's own rule); --out is each command's `out_option`."""
    options: dict[str, tuple[Any, Any, Any]] = {}
    for name, entry in options_of(TrainConfig, skip=("out_dir",), **helps).items():
        options[name] = entry
        if name == "device":
            options["threads"] = (Optional[int], _option("--threads", help=THREADS_HELP + " Under torchrun: per process.", panel=HARDWARE), None)
    return options


TRAINING_OPTIONS = training_options()


def with_options(*groups: dict[str, tuple[Any, Any, Any]]) -> Callable:
    """Add the groups' options to a Typer command that takes `**shared`; Typer reads the combined signature. An
    option the command declares itself replaces the group's."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        declared = {p.name for p in own}
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option])
            for group in groups for name, (kind, option, default) in group.items() if name not in declared
        ]

        @functools.wraps(command)
        def wrapper(**kwargs):
            return command(**kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + added)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        return wrapper

    return decorate


def out_option(default: Path) -> dict[str, tuple[Any, Any, Any]]:
    """--out (TrainConfig.out_dir's flags and help) with the command's own default (runs/cls, runs/ner, ...)."""
    _, option, _ = options_of(TrainConfig)["out_dir"]
    return {"out": (Path, option, default)}


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
