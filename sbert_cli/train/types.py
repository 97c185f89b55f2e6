"""What the training loop and its callers share, without torch (so the CLI's --help and progress bar import no torch):
TrainConfig (a run's settings, valid when constructed), the task protocol (Task, Batch), Callbacks (how the loop
reports progress), TrainResult; SCHEDULES, LOWER_IS_BETTER, WARMUP_RATIO; `option` (a field's command-line flags,
help and --help panel: the options are declared once, on TrainConfig's fields).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from sbert_cli.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

WARMUP_RATIO = 0.1  # the warmup share of every task's rule (tasks/lr_rule.py)
SCHEDULES = ("linear", "cosine", "constant")
LOWER_IS_BETTER = ("loss", "perplexity")


# The --help panels the options are shown in.
TRAINING, RUN, HARDWARE = "Training", "Run dir, checkpoints and evaluation", "Device and precision"


def option(help: str, *flags: str, panel: str = TRAINING) -> dict:
    """A TrainConfig field's command-line option: its flags, --help text and panel. cli/options.py generates the
    training commands' options from these and the fields' types and defaults, so each is declared here once."""
    return {"help": help, "flags": flags, "panel": panel}


@dataclass
class TrainConfig:
    """A training run's settings, valid once constructed (a bad field is a ConfigError naming it). lr None means the
    task chooses it by situation (tasks/lr_rule.with_chosen_lr) before training; the loop refuses a None lr.

    Each field is also a command-line option (`option`: flags, help, panel); the fields' order is --help's.
    """

    out_dir: Path = field(metadata=option("Run dir: checkpoints/, best/, last/, metrics.jsonl, curves.png.", "--out", "-o", panel=RUN))
    lr: float | None = field(default=None, metadata=option(
        "Peak learning rate. Default: chosen by situation (tasks/lr_rule.py).", "--lr"))
    epochs: int | None = field(default=3, metadata=option(
        "Passes over the training data (--max-steps overrides).", "--epochs"))
    max_steps: int | None = field(default=None, metadata=option("Stop after this many optimizer steps.", "--max-steps"))
    batch_size: int = field(default=32, metadata=option(
        "Examples per process and micro-batch; the global batch is this x --grad-accum x processes.", "--batch-size", "-b"))
    grad_accum: int = field(default=1, metadata=option("Micro-batches accumulated per optimizer step.", "--grad-accum"))
    weight_decay: float = field(default=0.01, metadata=option(
        "AdamW weight decay (never on biases and LayerNorm).", "--weight-decay"))
    warmup_ratio: float = field(default=WARMUP_RATIO, metadata=option(
        "Linear warmup over this share of the steps.", "--warmup-ratio"))
    warmup_steps: int | None = field(default=None, metadata=option(
        "Linear warmup steps (overrides --warmup-ratio).", "--warmup-steps"))
    schedule: str = field(default="linear", metadata=option("After warmup: linear, cosine or constant.", "--schedule"))
    max_grad_norm: float | None = field(default=1.0, metadata=option(
        "Clip the gradient norm (0: no clipping).", "--max-grad-norm"))
    seed: int = field(default=42, metadata=option("Seeds data order, dropout, masking and new weights.", "--seed"))
    eval_every: int | None = field(default=None, metadata=option(
        "Evaluate every N steps (default: each epoch).", "--eval-every", panel=RUN))
    save_every: int | None = field(default=None, metadata=option(
        "Checkpoint every N steps (default: at each evaluation / epoch).", "--save-every", panel=RUN))
    keep_last: int = field(default=2, metadata=option("Checkpoints kept under OUT/checkpoints.", "--keep-last", panel=RUN))
    patience: int | None = field(default=None, metadata=option(
        "Stop after N evaluations without improvement.", "--patience", panel=RUN))
    log_every: int = field(default=10, metadata=option("Log loss, lr and tokens/s every N steps.", "--log-every", panel=RUN))
    resume: bool = field(default=False, metadata=option(
        "Continue from the latest checkpoint in --out (same data, batch size and processes).", "--resume", panel=RUN))
    force: bool = field(default=False, metadata=option(
        "Start over in a non-empty --out, removing only what an earlier run wrote there.", "--force", panel=RUN))
    plot: bool = field(default=True, metadata=option("Draw OUT/curves.png at the end.", "--plot/--no-plot", panel=RUN))
    precision: str = field(default="auto", metadata=option(
        "auto (bf16 where the CPU/GPU does it natively, else fp32), fp32, bf16, fp16 (CUDA). Runs eager: torch.compile "
        "measured no faster on these models and recompiles per batch length, so it is not used (run.json: torch_compile).",
        "--precision", panel=HARDWARE))
    device: str = field(default="auto", metadata=option(
        "auto, cpu, cuda or cuda:N (under torchrun: the local rank's GPU).", "--device", panel=HARDWARE))
    dist_timeout_s: float = field(default=600.0, metadata=option(
        "Seconds a process waits for the others (torchrun) before giving up.", "--dist-timeout", panel=HARDWARE))

    def __post_init__(self) -> None:
        if self.max_steps is not None:
            self.epochs = None  # max_steps overrides epochs
        if self.max_grad_norm == 0:
            self.max_grad_norm = None  # no clipping
        self.validate()

    def validate(self) -> None:
        """Refuse a field the trainer cannot run with (ConfigError naming it); runs on construction."""
        for f in fields(self):
            if getattr(self, f.name) is None and "None" not in str(f.type):
                raise ConfigError(f"`{f.name}` must be given, not None")
        positive = dict(batch_size=self.batch_size, grad_accum=self.grad_accum, log_every=self.log_every, keep_last=self.keep_last)
        positive.update({k: v for k, v in dict(epochs=self.epochs, max_steps=self.max_steps, eval_every=self.eval_every,
                                                  save_every=self.save_every, patience=self.patience).items() if v is not None})
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"`{name}` must be at least 1, got {value}")
        from sbert_cli import limits

        limits.check_range("batch_size", self.batch_size, 1, limits.MAX_BATCH_SIZE,
                           f"{limits.BATCH_SIZE_WHY}; for bigger batches raise `grad_accum`")
        limits.check_range("grad_accum", self.grad_accum, 1, limits.MAX_GRAD_ACCUM, limits.GRAD_ACCUM_WHY)
        for name, value, low in (("max_steps", self.max_steps, 1), ("warmup_steps", self.warmup_steps, 0)):
            if value is not None:
                limits.check_range(name, value, low, limits.MAX_STEPS, limits.STEPS_WHY)
        if self.epochs is not None:
            limits.check_range("epochs", self.epochs, 1, limits.MAX_EPOCHS, "more passes than that take years on any data")
        limits.check_seed(self.seed)
        limits.check_range("dist_timeout_s", self.dist_timeout_s, 1, 7 * 24 * 3600, "seconds, up to a week")
        for name, value in (("weight_decay", self.weight_decay), ("max_grad_norm", self.max_grad_norm)):
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"`{name}` must be a finite number, got {value}")
        if self.epochs is None and self.max_steps is None:
            raise ConfigError("give `epochs` or `max_steps`")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"`lr` must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"`weight_decay` must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"`warmup_ratio` must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"`warmup_steps` must be >= 0, got {self.warmup_steps}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"`schedule` {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"`max_grad_norm` must be positive, got {self.max_grad_norm}")
        if self.resume and self.force:
            raise ConfigError("`resume` continues a run and `force` starts over; give one of them")


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor]
    units: int  # what the loss is summed over: examples, or real masked tokens
    tokens: int  # real (non-padding) tokens


class Task(ABC):
    """What the loop needs from a task: data, a summed loss, and evaluation reduced from sums."""

    model_task: str  # "cls" or "mlm": the head the saved model dirs carry
    tokenizer: Any
    best_metric: str = "loss"  # picks OUT/best; see LOWER_IS_BETTER
    eval_data_fields: str = "evaluation data"  # the options that give it, for messages (`dev`)

    @abstractmethod
    def train_lengths(self) -> Sequence[int]:
        """Tokens per training example."""

    @abstractmethod
    def train_batch(self, indices: list[int], epoch: int) -> Batch: ...

    @abstractmethod
    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The loss summed (not averaged) over the batch's loss units."""

    def eval_lengths(self) -> Sequence[int] | None:
        """Tokens per evaluation example, or None when there is nothing to evaluate on."""
        return None

    def eval_batch(self, indices: list[int]) -> Batch:
        raise NotImplementedError

    def eval_sums(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """A 1-D float64 tensor of sums over the batch; sums add up across batches and processes."""
        raise NotImplementedError

    def eval_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        """Metrics (including "loss") from the summed eval_sums."""
        raise NotImplementedError

    def evaluated(self, improved: bool) -> None:
        """Called after each evaluation with whether its model became OUT/best (a task that keeps what it predicted
        for its closing report keeps the best evaluation's; see ClassificationTask)."""

    def fingerprint(self) -> dict:
        """What identifies the training data: a resumed run must have the same."""
        return {}

    def soft_settings(self) -> dict:
        """Task settings a resumed run may change, with a note saying so (as it may change the lr)."""
        return {}

    def save_meta(self) -> dict:
        """Extra sbert.json fields for saved model dirs."""
        return {}

    def lr_scales(self) -> dict[str, float]:
        """Parameter-name prefixes trained at a multiple of the peak lr (a tagger's CRF: {"crf.": 100})."""
        return {}


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    total_steps: int
    epoch: float
    interrupted: bool = False
    early_stopped: bool = False
    best_step: int | None = None
    best_value: float | None = None
    best_metric: str | None = None  # what best_value measures (the task's best_metric)
    last_eval: dict[str, float] | None = None
    checkpoint: Path | None = None
    resumed_from: Path | None = None
    device: str = "cpu"
    precision: str = "fp32"
    world_size: int = 1
    stop_signal: int | None = None  # the signal that interrupted the run
    messages: list[str] = field(default_factory=list)


class Callbacks:
    """How the loop reports progress: every method does nothing here; the CLI's progress bar overrides them.

    Only the main process (rank 0) is given the caller's callbacks; the others report to this silent base.
    """

    def start(self, step: int, total_steps: int, precision: str = "fp32") -> None:
        """Training starts (or resumes) at optimizer step `step` of `total_steps`, computing (and evaluating) in
        `precision` (fp32, or bf16/fp16 autocast over fp32 weights)."""

    def step(self, step: int, stats: dict | None) -> None:
        """Optimizer step `step` is done; stats (loss, lr, tokens_per_s) on logged steps, else None."""

    def evaluated(self, step: int, metrics: dict[str, float], improved: bool) -> None:
        """An evaluation at `step`; improved: it is the best so far (OUT/best was rewritten)."""

    def message(self, text: str) -> None:
        """A line worth showing (notes, what was resumed, where the curves went)."""

    def end(self) -> None:
        """The loop is over (finished, stopped early or interrupted); the result follows."""
