"""The one training loop. It knows nothing of MLM or classification: a `Task` supplies batches, the loss and metrics.

Per optimizer step the loop takes one *global* batch (batch_size x grad_accum x world_size examples,
from the seeded length-bucketed order), gives each process its share as grad_accum micro-batches,
and normalises the summed loss by the global number of loss units (examples, or masked tokens), so
that accumulation and any number of processes compute the same gradient as one big batch.

Checkpoints (OUT/checkpoints/step-N) are sbert model dirs plus trainer_state.pt: optimizer,
scheduler, grad scaler, data position and every RNG state of every rank. Resuming recomputes the
epoch's batch order from the seed and skips what was done, so a resumed run is bit-identical.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import random
import shlex
import shutil
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from sbert_cli.checkpoint import remove_outputs, replace_dir
from sbert_cli.data.batching import bucketed_batches, length_sorted_batches, split_batch
from sbert_cli.errors import ConfigError, ResumeError, SbertError
from sbert_cli.precision import autocast, grad_scaler, resolve_device, resolve_precision

STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 1
SCHEDULES = ("linear", "cosine", "constant")
LOWER_IS_BETTER = ("loss", "perplexity")
# Files and folders a run writes into OUT; --force removes these and nothing else.
RUN_ARTIFACTS = ("checkpoints", "best", "last", "metrics.jsonl", "curves.png", "run.json", "eval-dev", "eval-test")


@dataclass
class TrainConfig:
    out_dir: Path
    batch_size: int = 32  # per process and micro-batch
    grad_accum: int = 1
    epochs: int | None = 3
    max_steps: int | None = None  # overrides epochs
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None  # overrides warmup_ratio
    schedule: str = "linear"
    max_grad_norm: float | None = 1.0
    seed: int = 42
    precision: str = "auto"
    device: str = "auto"
    eval_every: int | None = None  # optimizer steps; None: at the end of each epoch
    save_every: int | None = None  # optimizer steps; None: at each evaluation / epoch end
    keep_last: int = 2
    patience: int | None = None  # evaluations without improvement before stopping
    log_every: int = 10
    resume: bool = False
    force: bool = False
    dist_timeout_s: float = 600.0
    plot: bool = True

    def validate(self) -> None:
        positive = dict(batch_size=self.batch_size, grad_accum=self.grad_accum, log_every=self.log_every, keep_last=self.keep_last)
        positive.update({k: v for k, v in dict(epochs=self.epochs, max_steps=self.max_steps, eval_every=self.eval_every,
                                                  save_every=self.save_every, patience=self.patience).items() if v is not None})
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.epochs is None and self.max_steps is None:
            raise ConfigError("give --epochs or --max-steps")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"--max-grad-norm must be positive, got {self.max_grad_norm}")
        if self.resume and self.force:
            raise ConfigError("--resume continues a run and --force starts over; give one of them")


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

    def fingerprint(self) -> dict:
        """What identifies the training data: a resumed run must have the same."""
        return {}

    def save_meta(self) -> dict:
        """Extra sbert.json fields for saved model dirs."""
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
    last_eval: dict[str, float] | None = None
    checkpoint: Path | None = None
    resumed_from: Path | None = None
    device: str = "cpu"
    precision: str = "fp32"
    world_size: int = 1
    messages: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits in a torchrun job (RANK, LOCAL_RANK, WORLD_SIZE), or a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> "DistributedEnv":
        try:
            return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
        except ValueError:
            raise ConfigError("RANK/LOCAL_RANK/WORLD_SIZE must be integers; launch with torchrun") from None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a torchrun job: the one that prints and writes."""
    return DistributedEnv.from_env().is_main


def _device_for(env: DistributedEnv, name: str) -> torch.device:
    device = resolve_device(name)
    if env.distributed and device.type == "cuda":
        if torch.cuda.device_count() <= env.local_rank:
            raise ConfigError(f"rank {env.rank}: LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", env.local_rank)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def _all_reduce_sum(tensor: torch.Tensor, env: DistributedEnv) -> torch.Tensor:
    if env.distributed:
        torch.distributed.all_reduce(tensor)
    return tensor


# ----------------------------------------------------------------------------- optimizer and schedule


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices and embeddings, none on biases and LayerNorm."""
    no_decay: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.LayerNorm) or name == "bias":
                no_decay.add(id(param))
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): linear warmup, then linear/cosine decay or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return max(0.0, 1.0 - progress)


# ----------------------------------------------------------------------------- run dir and checkpoints


def check_run_dir(out_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to write into a run dir that holds earlier results unless resuming or forced (reads only)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file; give a folder for the run")
    if resume:
        if latest_checkpoint(out_dir) is None:
            raise ResumeError(f"--resume: no checkpoint under {out_dir / 'checkpoints'} to resume from; drop --resume to start a new run")
        return
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ConfigError(
            f"--out {out_dir}: is not empty; continue it with --resume, overwrite its results with --force, or choose another --out"
        )


def _prepare_run_dir(out_dir: Path, resume: bool, force: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if force and not resume:
        remove_outputs(out_dir, RUN_ARTIFACTS)
    checkpoints = out_dir / "checkpoints"
    if checkpoints.is_dir():
        for leftover in checkpoints.glob(".*"):  # temp dirs of a save that was killed
            shutil.rmtree(leftover, ignore_errors=True)


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = checkpoint_dirs(out_dir)
    return found[-1] if found else None


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(out_dir: Path, model: nn.Module, task: Task, trainer_state: dict, keep_last: int) -> Path:
    """Write OUT/checkpoints/step-N atomically (a temp dir renamed into place), then prune to keep_last."""
    from sbert_cli.checkpoint import save_model

    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{trainer_state['step']:07d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, task.tokenizer, task.model_task, source="sbert checkpoint", extra_meta={"step": trainer_state["step"], **task.save_meta()})
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save(trainer_state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    replace_dir(tmp, final)
    _fsync_dir(root)
    for old in checkpoint_dirs(out_dir)[:-keep_last]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(checkpoint: Path) -> dict:
    """trainer_state.pt of a checkpoint (tensors and plain types only: weights_only=True)."""
    try:
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which
        raise ResumeError(f"{checkpoint / STATE_FILE}: cannot be read ({e}); delete this checkpoint to resume from an earlier one") from None
    if state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{checkpoint}: trainer state format {state.get('format')} is not {STATE_FORMAT}")
    return state


def _check_resume_compatible(saved: dict, current: dict, checkpoint: Path) -> list[str]:
    """Refuse changes that make resuming meaningless; return notes for changes that only alter the outcome."""
    problems = []
    for key, value in current["strict"].items():
        before = saved["strict"].get(key)
        if before == value:
            continue
        if isinstance(value, dict) and isinstance(before, dict):  # name what differs, not two long dicts
            differing = sorted(k for k in value.keys() | before.keys() if value.get(k) != before.get(k))
            problems.append(f"the {key} differs ({', '.join(differing)})")
        else:
            problems.append(f"{key} was {before!r}, now {value!r}")
    if problems:
        raise ResumeError(
            f"cannot resume from {checkpoint}: {'; '.join(problems)}. Resume with the same data, batch size and "
            "number of processes, or start a new run with another --out"
        )
    return [
        f"{key} changed from {saved['soft'].get(key)!r} to {value!r}: the run will differ from an uninterrupted one"
        for key, value in current["soft"].items()
        if saved["soft"].get(key) != value
    ]


# ----------------------------------------------------------------------------- signals


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second SIGINT aborts at once."""

    def __init__(self, announce: bool):
        self.requested = False
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested and self.announce:
            name = signal.Signals(signum).name
            sys.stderr.write(f"\n{name}: finishing the current step, then saving a checkpoint (Ctrl-C again to abort)\n")
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def resume_command() -> str:
    """The command line that started this process, with --resume: what to run to continue."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("__main__.py", "sbert_cli")):
        argv[0:1] = ["python", "-m", "sbert_cli"]
    elif argv:
        argv[0] = Path(argv[0]).name
    env = DistributedEnv.from_env()
    if env.distributed:
        nproc = os.environ.get("LOCAL_WORLD_SIZE", str(env.world_size))
        argv = ["torchrun", f"--nproc-per-node={nproc}", "-m", "sbert_cli", *argv[3:]] if argv[:3] == ["python", "-m", "sbert_cli"] else ["torchrun", f"--nproc-per-node={nproc}", *argv]
    argv = [a for a in argv if a != "--force"]
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(argv)


# ----------------------------------------------------------------------------- the loop


class _Reporter:
    """Progress bar and console lines on the main process; silent elsewhere."""

    def __init__(self, console, total: int, start: int):
        self.console = console
        self.progress = None
        if console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task_id = self.progress.add_task("train", total=total, completed=start, stats="")

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def advance(self, step: int, stats: str | None) -> None:
        if self.progress is not None:
            fields = {"stats": stats} if stats is not None else {}
            self.progress.update(self.task_id, completed=step, **fields)

    def print(self, message: str, soft_wrap: bool = False) -> None:
        if self.console is not None:
            self.console.print(message, soft_wrap=soft_wrap)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return Batch({k: v.to(device, non_blocking=True) for k, v in batch.tensors.items()}, batch.units, batch.tokens)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _append_metrics(out_dir: Path, record: dict) -> None:
    with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _truncate_metrics(out_dir: Path, step: int) -> None:
    """Drop records the interrupted run logged after its last checkpoint; the resumed run logs them again."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _is_better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def train(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    console=None,
    run_info: dict | None = None,
    on_micro_batch: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train `model` on `task`; writes OUT/metrics.jsonl, checkpoints, OUT/best (when evaluating) and OUT/last.

    console: a rich Console for the progress bar and messages (None: silent); only rank 0 uses it.
    run_info: extra settings recorded in OUT/run.json. on_micro_batch(step, micro_index) is called
    before each micro-batch (for tests and instrumentation).
    """
    config.validate()
    env = DistributedEnv.from_env()
    device = _device_for(env, config.device)
    precision = resolve_precision(config.precision, device)
    out_dir = Path(config.out_dir)
    if not env.is_main:
        console = None
    check_run_dir(out_dir, config.resume, config.force)

    if env.distributed and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=config.dist_timeout_s))
        started_process_group = True
    else:
        started_process_group = False
    try:
        if env.distributed:
            torch.distributed.barrier()  # every rank has checked OUT before rank 0 writes to it
        return _train(model, task, config, console, run_info or {}, on_micro_batch, env, device, precision, out_dir)
    finally:
        if started_process_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class StepStats(NamedTuple):
    """One optimizer step, summed over all processes."""

    loss_sum: float
    units: int  # loss units (examples, or masked tokens)
    tokens: int  # real tokens
    lr: float  # the learning rate the step used
    stop: bool  # some process was asked to stop


class Trainer:
    """One training run: the model, optimizer and schedule, where it is in the data, and what it has written.

    `train()` drives it; `train_step` alone is what a benchmark times.
    """

    def __init__(self, model: nn.Module, task: Task, config: TrainConfig, console=None, env: DistributedEnv | None = None,
                 device: torch.device | None = None, precision: str | None = None, on_micro_batch=None):
        env = env or DistributedEnv()
        device = device or _device_for(env, config.device)
        precision = precision or resolve_precision(config.precision, device)
        self.task, self.config, self.env, self.device, self.precision = task, config, env, device, precision
        self.on_micro_batch = on_micro_batch
        self.out_dir = Path(config.out_dir)
        self.lengths = np.asarray(task.train_lengths(), dtype=np.int64)
        if len(self.lengths) == 0:
            raise ConfigError("the training data is empty")
        self.global_batch = config.batch_size * config.grad_accum * env.world_size
        self.steps_per_epoch = math.ceil(len(self.lengths) / self.global_batch)
        self.total_steps = config.max_steps if config.max_steps is not None else config.epochs * self.steps_per_epoch
        warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_ratio * self.total_steps)
        self.warmup_steps = min(warmup, self.total_steps)
        eval_lengths = task.eval_lengths()
        self.evaluating = eval_lengths is not None and len(eval_lengths) > 0
        if config.patience is not None and not self.evaluating:
            raise ConfigError("--patience stops on evaluation results: give evaluation data (train-cls --dev, pretrain --eval-data or --eval-fraction)")
        self.settings = {
            "strict": {"data": task.fingerprint(), "batch_size": config.batch_size, "grad_accum": config.grad_accum,
                       "world_size": env.world_size, "seed": config.seed},
            "soft": {"lr": config.lr, "weight_decay": config.weight_decay, "schedule": config.schedule,
                     "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                     "max_grad_norm": config.max_grad_norm, "precision": precision},
        }

        self.model = model.to(device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(optimizer_groups(model, config.weight_decay), lr=config.lr,
                                           betas=(0.9, 0.999), eps=1e-8, fused=device.type in ("cpu", "cuda"))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.warmup_steps, self.total_steps, config.schedule))
        self.scaler = grad_scaler(precision, device)
        self.ddp_model = model  # wrapped once the weights are final (after resume)

        # Position: `step` optimizer steps done; the next batch is batch `next_batch` of epoch `epoch`.
        self.step, self.epoch, self.next_batch = 0, 0, 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.evals_without_improvement = 0
        self.last_saved_step: int | None = None
        self.last_eval_step: int | None = None
        self.reporter = _Reporter(console, self.total_steps, 0)
        self.result = TrainResult(self.out_dir, 0, self.total_steps, 0.0, device=str(device), precision=precision,
                                  world_size=env.world_size)

    # -- state

    def resume(self) -> None:
        from safetensors.torch import load_file

        checkpoint = latest_checkpoint(self.out_dir)
        state = load_trainer_state(checkpoint)
        self.result.messages += _check_resume_compatible(state["settings"], self.settings, checkpoint)
        weights = load_file(str(checkpoint / "model.safetensors"), device=str(self.device))
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.next_batch = state["step"], state["epoch"], state["next_batch"]
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.evals_without_improvement = state["evals_without_improvement"]
        _set_rng_state(state["rng"][self.env.rank])
        self.last_saved_step = self.last_eval_step = self.step
        self.result.resumed_from = checkpoint

    def seed(self) -> None:
        # Dropout differs across ranks, as it would across the examples of one big batch.
        seed = self.config.seed + self.env.rank
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

    def trainer_state(self) -> dict:
        """Everything but the weights, for trainer_state.pt. A collective when distributed: every rank calls it."""
        rng = _rng_state(self.device)
        if self.env.distributed:
            rng_states: list = [None] * self.env.world_size
            torch.distributed.all_gather_object(rng_states, rng)
        else:
            rng_states = [rng]
        return {
            "format": STATE_FORMAT, "step": self.step, "epoch": self.epoch, "next_batch": self.next_batch,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_states, "best_value": self.best_value,
            "best_step": self.best_step, "evals_without_improvement": self.evals_without_improvement,
            "settings": self.settings,
        }

    def save_checkpoint(self) -> None:
        state = self.trainer_state()
        if self.env.is_main:
            self.result.checkpoint = save_checkpoint(self.out_dir, self.model, self.task, state, self.config.keep_last)
        self.last_saved_step = self.step

    def save_model(self, name: str, **meta) -> None:
        from sbert_cli.checkpoint import save_model

        if self.env.is_main:
            save_model(self.model, self.out_dir / name, self.task.tokenizer, self.task.model_task, source="sbert train",
                       extra_meta={"step": self.step, **meta, **self.task.save_meta()})

    def write_run_record(self, run_info: dict) -> None:
        record = {
            "task": self.task.model_task, **run_info, "train": {**asdict(self.config), "out_dir": str(self.out_dir)},
            "device": str(self.device), "precision": self.precision, "world_size": self.env.world_size,
            "global_batch_size": self.global_batch, "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "torch": torch.__version__,
        }
        text = json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n"
        (self.out_dir / "run.json").write_text(text, encoding="utf-8")

    # -- the loop

    def evaluate(self, epoch_float: float) -> None:
        task = self.task
        metrics = evaluate_task(self.model, task, self.config.batch_size, self.device, self.precision, self.env)
        improved = _is_better(metrics[task.best_metric], self.best_value, task.best_metric)
        if improved:
            self.best_value, self.best_step, self.evals_without_improvement = metrics[task.best_metric], self.step, 0
        else:
            self.evals_without_improvement += 1
        self.last_eval_step = self.step
        self.result.last_eval = metrics
        if self.env.is_main:
            _append_metrics(self.out_dir, {"kind": "eval", "step": self.step, "epoch": round(epoch_float, 4), **metrics})
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self.reporter.print(f"eval step {self.step}: {shown}" + ("  [green]best[/]" if improved else ""))
        if improved:
            self.save_model("best", **{task.best_metric: metrics[task.best_metric]})

    def micro_batches(self, global_batch: list[int], epoch: int) -> list[tuple[Batch, float]]:
        """This process's share of a global batch: grad_accum (batch, loss weight) pairs, collated on the CPU."""
        config, env = self.config, self.env
        pieces = split_batch(global_batch, env.world_size * config.grad_accum)
        mine = pieces[env.rank * config.grad_accum : (env.rank + 1) * config.grad_accum]
        # An empty share (of a short last batch) still runs forward and backward, weighted 0, so that
        # every process joins DDP's gradient all-reduce.
        return [(self.task.train_batch(p, epoch), 1.0) if p else (self.task.train_batch(global_batch[:1], epoch), 0.0)
                for p in mine]

    def train_step(self, global_batch: list[int], stop: StopRequest | None = None,
                   micro: list[tuple[Batch, float]] | None = None) -> StepStats:
        """One optimizer step over this process's share of a global batch (a list of example indices).

        micro: the share, already collated (see micro_batches). A stop asked for (by a signal) while the
        step runs is voted on at its end.
        """
        config, env, device, task, model = self.config, self.env, self.device, self.task, self.ddp_model
        if micro is None:
            micro = self.micro_batches(global_batch, self.epoch)
        counts = torch.tensor([sum(b.units for b, w in micro if w), sum(b.tokens for b, w in micro if w)], dtype=torch.float64)
        total_units, total_tokens = _all_reduce_sum(counts.to(device), env).tolist()
        # DDP averages gradients over processes; scaling by world_size / global units makes that the global mean.
        scale = env.world_size / max(total_units, 1.0)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for index, (batch, weight) in enumerate(micro):
            if self.on_micro_batch is not None:
                self.on_micro_batch(self.step, index)
            sync = index == len(micro) - 1 or not env.distributed
            with contextlib.nullcontext() if sync else model.no_sync():
                batch = _to_device(batch, device)
                with autocast(self.precision, device):
                    summed = task.loss_sum(model, batch)
                self.scaler.scale(summed.float() * (scale * weight)).backward()
            loss_sum += summed.detach().double() * weight
        if config.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        # One small all-reduce for the logged loss and the stop vote, so that every process stops at the same step.
        stop_requested = stop is not None and stop.requested
        tail = torch.stack([loss_sum, torch.tensor(float(stop_requested), dtype=torch.float64, device=device)])
        tail = _all_reduce_sum(tail, env)
        return StepStats(float(tail[0]), int(total_units), int(total_tokens), lr, bool(tail[1] > 0))

    def run(self, stop: "StopRequest") -> TrainResult:
        result = self.result
        log = _LogWindow()
        self.reporter.advance(self.step, None)
        # One thread collates the next step's batches (tokens, dynamic masks) while this step computes.
        with ThreadPoolExecutor(1, thread_name_prefix="collate") as collator:
            self._run_epochs(stop, collator, log)
        if not result.interrupted:
            self.save_model("last")
        result.best_value, result.best_step = self.best_value, self.best_step
        return result

    def _run_epochs(self, stop: StopRequest, collator: ThreadPoolExecutor, log: _LogWindow) -> None:
        config, result = self.config, self.result
        while self.step < self.total_steps and not (result.interrupted or result.early_stopped):
            batches = bucketed_batches(self.lengths, self.global_batch, config.seed, self.epoch)
            upcoming = collator.submit(self.micro_batches, batches[self.next_batch], self.epoch)
            while self.next_batch < len(batches) and self.step < self.total_steps:
                micro = upcoming.result()
                if self.next_batch + 1 < len(batches) and self.step + 1 < self.total_steps:
                    upcoming = collator.submit(self.micro_batches, batches[self.next_batch + 1], self.epoch)
                loss_sum, units, tokens, lr, stop_voted = self.train_step(batches[self.next_batch], stop, micro)
                if not math.isfinite(loss_sum) and self.precision != "fp16":  # fp16's scaler skips such steps itself
                    raise SbertError(
                        f"step {self.step + 1}: the loss is {loss_sum}, training diverged; resume from the last "
                        f"checkpoint with a lower --lr (now {config.lr}), or use --precision fp32"
                    )
                self.step += 1
                self.next_batch += 1
                epoch_float = self.epoch + self.next_batch / len(batches)
                end_of_epoch = self.next_batch == len(batches)
                if end_of_epoch:
                    self.epoch, self.next_batch = self.epoch + 1, 0
                result.step, result.epoch = self.step, epoch_float
                log.add(loss_sum, units, tokens)
                finished = self.step == self.total_steps
                if self.step % config.log_every == 0 or self.step == 1 or finished or stop_voted:
                    record = {"kind": "train", "step": self.step, "epoch": round(epoch_float, 4), **log.flush(), "lr": lr}
                    if self.env.is_main:
                        _append_metrics(self.out_dir, record)
                    self.reporter.advance(self.step, f"loss {record['loss']:.4f}  lr {lr:.2e}  {record['tokens_per_s']:,.0f} tok/s")
                else:
                    self.reporter.advance(self.step, None)

                due_eval = self.evaluating and (
                    (config.eval_every is not None and self.step % config.eval_every == 0)
                    or (config.eval_every is None and end_of_epoch) or finished)
                if due_eval and self.last_eval_step != self.step:
                    self.evaluate(epoch_float)
                    if config.patience is not None and self.evals_without_improvement >= config.patience:
                        result.early_stopped = True
                        self.reporter.print(f"early stop: no better {self.task.best_metric} in {config.patience} evaluations")
                due_save = ((config.save_every is not None and self.step % config.save_every == 0)
                            or (config.save_every is None and (due_eval or end_of_epoch))
                            or finished or result.early_stopped or stop_voted)
                if due_save and self.last_saved_step != self.step:
                    self.save_checkpoint()
                result.interrupted = stop_voted
                if stop_voted or result.early_stopped or end_of_epoch:
                    break  # a new epoch has its own batch order


class _LogWindow:
    """Loss, loss units and real tokens since the last log line, and the time they took."""

    def __init__(self):
        self.loss, self.units, self.tokens, self.started = 0.0, 0, 0, time.perf_counter()

    def add(self, loss_sum: float, units: int, tokens: int) -> None:
        self.loss, self.units, self.tokens = self.loss + loss_sum, self.units + units, self.tokens + tokens

    def flush(self) -> dict:
        now = time.perf_counter()
        record = {"loss": self.loss / max(self.units, 1), "tokens_per_s": self.tokens / max(now - self.started, 1e-9)}
        self.loss, self.units, self.tokens, self.started = 0.0, 0, 0, now
        return record


def _train(model, task, config, console, run_info, on_micro_batch, env, device, precision, out_dir) -> TrainResult:
    trainer = Trainer(model, task, config, console, env, device, precision, on_micro_batch)
    if config.resume:
        trainer.resume()
    else:
        trainer.seed()
    if env.is_main:
        _prepare_run_dir(out_dir, config.resume, config.force)
        if config.resume:
            _truncate_metrics(out_dir, trainer.step)
        trainer.write_run_record(run_info)
    if env.distributed:
        torch.distributed.barrier()
        device_ids = [device.index] if device.type == "cuda" else None
        trainer.ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    for note in trainer.result.messages:
        trainer.reporter.print(f"[yellow]note:[/] {note}")
    if trainer.result.resumed_from is not None:
        trainer.reporter.print(f"resuming from {trainer.result.resumed_from} (step {trainer.step} of {trainer.total_steps})")
    with StopRequest(announce=env.is_main) as stop, trainer.reporter:
        result = trainer.run(stop)
    if env.is_main and config.plot:
        try:
            from sbert_cli.plots import plot_training_curves

            trainer.reporter.print(f"training curves: {plot_training_curves(out_dir)}")
        except Exception as e:  # the model is saved; a plotting problem must not fail the run
            trainer.reporter.print(f"[yellow]note:[/] could not draw the training curves ({e}); retry with: sbert plot {out_dir}")
    if result.interrupted:
        trainer.reporter.print(f"stopped at step {result.step}; checkpoint saved to {result.checkpoint}")
        trainer.reporter.print(f"resume with: {resume_command()}", soft_wrap=True)  # one line, to copy
    return result


@torch.no_grad()
def evaluate_task(model: nn.Module, task: Task, batch_size: int, device: torch.device, precision: str,
                  env: DistributedEnv = DistributedEnv()) -> dict[str, float]:
    """Task metrics on its evaluation data; batches are shared out across ranks and the sums all-reduced."""
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    batches = length_sorted_batches(task.eval_lengths(), batch_size)
    sums = None
    for indices in batches[env.rank :: env.world_size]:
        batch = _to_device(task.eval_batch(indices), device)
        with autocast(precision, device):
            part = task.eval_sums(model, batch).to(torch.float64)
        sums = part if sums is None else sums + part
    if sums is None:  # more ranks than batches: this rank contributes zeros of the right shape
        probe = _to_device(task.eval_batch(batches[0][:1]), device)
        with autocast(precision, device):
            sums = torch.zeros_like(task.eval_sums(model, probe), dtype=torch.float64)
    sums = _all_reduce_sum(sums, env)
    model.train(was_training)
    return task.eval_metrics(sums.cpu())
