"""The one training loop. It knows nothing of MLM or classification: a `Task` supplies batches, the loss and metrics.

Per optimizer step the loop takes one *global* batch (batch_size x grad_accum x world_size examples,
from the seeded shuffled order), gives each process its share as grad_accum micro-batches,
and normalises the summed loss by the global number of loss units (examples, or masked tokens), so
that accumulation and any number of processes compute the same gradient as one big batch.

Checkpoints (state.py) hold the optimizer, scheduler, grad scaler, data position and every RNG state of
every rank. Resuming recomputes the epoch's batch order from the seed and skips what was done, so a
resumed run is bit-identical.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from sbert_cli.data.batching import length_sorted_batches, shuffled_batches, split_batch
from sbert_cli.errors import ConfigError, ResumeError, SbertError
from sbert_cli.model.precision import autocast, grad_scaler, resolve_precision
from sbert_cli.outputs import OutputDir
from sbert_cli.train.distributed import DistributedEnv, StopRequest, all_reduce_sum, device_for, process_group
from sbert_cli.train.state import (
    METRICS_FILE,
    STATE_FORMAT,
    append_metrics,
    check_resume_compatible,
    checkpoint_dirs,
    prepare_run_dir,
    read_checkpoint_state,
    rng_state,
    set_rng_state,
    truncate_metrics,
    write_checkpoint,
)
from sbert_cli.train.types import LOWER_IS_BETTER, Batch, Callbacks, Task, TrainConfig, TrainResult

# ----------------------------------------------------------------------------- optimizer and schedule


def optimizer_groups(model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None,
                     lr: float | None = None) -> list[dict]:
    """AdamW groups: weight decay on weight matrices and embeddings, none on biases and LayerNorm. Parameters named
    with a prefix of `lr_scales` (Task.lr_scales) get groups of their own after these two, at `lr` times the scale."""
    no_decay: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.LayerNorm) or name == "bias":
                no_decay.add(id(param))
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    scaled = {prefix: [p for name, p in named if name.startswith(prefix)] for prefix in (lr_scales or {})}
    taken = {id(p) for members in scaled.values() for p in members}
    params = [p for _, p in named if id(p) not in taken]
    groups = [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]
    for prefix, members in scaled.items():
        for decay in (True, False):
            part = [p for p in members if (id(p) not in no_decay) == decay]
            if part:
                groups.append({"params": part, "weight_decay": weight_decay if decay else 0.0, "lr": lr * lr_scales[prefix]})
    return groups


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


# ----------------------------------------------------------------------------- the loop


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return Batch({k: v.to(device, non_blocking=True) for k, v in batch.tensors.items()}, batch.units, batch.tokens)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _is_better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def train(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    callbacks: Callbacks | None = None,
    run_info: dict | None = None,
    on_micro_batch: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train `model` on `task`; writes OUT/metrics.jsonl, checkpoints, OUT/best (when evaluating) and OUT/last.

    callbacks: how progress is reported (rank 0 only; None: silent). run_info: extra settings recorded
    in OUT/run.json. on_micro_batch(step, micro_index) is called before each micro-batch (for tests and
    instrumentation). The caller checks OUT first (state.check_run_dir, before it loads data and model, so a
    taken OUT fails in a second); `config` was validated when it was built.
    """
    env = DistributedEnv.from_env()
    device = device_for(env, config.device)
    precision = resolve_precision(config.precision, device)
    callbacks = callbacks if callbacks is not None and env.is_main else Callbacks()
    with process_group(env, device, config.dist_timeout_s):
        trainer = Trainer(model, task, config, env, device, precision, on_micro_batch)
        if config.resume:
            trainer.resume()
        else:
            trainer.seed()
        try:
            return trainer.fit(callbacks, run_info or {})
        finally:
            # DDP's reducer holds the process group, and the trainer sits in a reference cycle (its scheduler's
            # lambda): dropped here, the group is really gone when process_group destroys it, not torn down by
            # the garbage collector at some later point, perhaps at interpreter exit.
            trainer.ddp_model = None


class StepStats(NamedTuple):
    """One optimizer step, summed over all processes."""

    loss_sum: torch.Tensor  # a float64 scalar on the device, read back once per log window (_LogWindow)
    units: int  # loss units (examples, or masked tokens)
    tokens: int  # real tokens
    lr: float  # the learning rate the step used
    stop: bool  # some process was asked to stop


class Trainer:
    """One training run: the model, optimizer and schedule, where it is in the data, and what it has written.

    `train()` builds it and calls `fit`; `train_step` alone is what a benchmark times.
    """

    def __init__(self, model: nn.Module, task: Task, config: TrainConfig, env: DistributedEnv | None = None,
                 device: torch.device | None = None, precision: str | None = None, on_micro_batch=None):
        if config.lr is None:  # a task fills it in (tasks/lr_rule.with_chosen_lr); a direct caller must give it
            raise ConfigError("`lr` is None: give a learning rate (or train through a task, which chooses one)")
        env = env or DistributedEnv()
        device = device or device_for(env, config.device)
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
            raise ConfigError(f"`patience` stops on evaluation results: give {task.eval_data_fields}")
        self.settings = {
            "strict": {"data": task.fingerprint(), "batch_size": config.batch_size, "grad_accum": config.grad_accum,
                       "world_size": env.world_size, "seed": config.seed},
            "soft": {"lr": config.lr, "weight_decay": config.weight_decay, "schedule": config.schedule,
                     "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                     "max_grad_norm": config.max_grad_norm, "precision": precision, **task.soft_settings()},
        }

        self.model = model.to(device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(optimizer_groups(model, config.weight_decay, task.lr_scales(), config.lr), lr=config.lr,
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
        self.outputs: OutputDir | None = None  # OUT, locked by the main process while it writes
        self.callbacks = Callbacks()
        self.result = TrainResult(self.out_dir, 0, self.total_steps, 0.0, device=str(device), precision=precision,
                                  world_size=env.world_size)

    # -- state

    def resume(self) -> None:
        """Load the latest checkpoint that reads back whole; a damaged newer one is skipped with a note."""
        damaged = []
        for checkpoint in reversed(checkpoint_dirs(self.out_dir)):
            try:
                state, weights = read_checkpoint_state(checkpoint, self.device)
                self.model.load_state_dict(weights)
                break
            except ResumeError as e:
                damaged.append(str(e))
        else:
            raise ResumeError(f"cannot resume: {damaged[0]}; no earlier checkpoint reads back either"
                              if damaged else f"no checkpoint under {self.out_dir / 'checkpoints'}")
        self.result.messages += [f"{problem}; resuming from the previous checkpoint" for problem in damaged]
        self.result.messages += check_resume_compatible(state["settings"], self.settings, checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.next_batch = state["step"], state["epoch"], state["next_batch"]
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.evals_without_improvement = state["evals_without_improvement"]
        set_rng_state(state["rng"][self.env.rank])
        self.last_saved_step = self.last_eval_step = self.step
        self.result.step, self.result.resumed_from = self.step, checkpoint
        self.result.epoch = self.epoch + self.next_batch / self.steps_per_epoch

    def seed(self) -> None:
        # Dropout differs across ranks, as it would across the examples of one big batch.
        seed = self.config.seed + self.env.rank
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

    def trainer_state(self) -> dict:
        """Everything but the weights, for trainer_state.pt. A collective when distributed: every rank calls it."""
        rng = rng_state(self.device)
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
            self.result.checkpoint = write_checkpoint(self.outputs, self.model, self.task, state, self.config.keep_last)
        self.last_saved_step = self.step

    def save_model(self, name: str, **meta) -> None:
        """OUT/NAME (best, last) as an sbert model dir, replacing the earlier one whole."""
        from sbert_cli.model.model_dir import save_model_dir

        if self.env.is_main:
            tmp = self.out_dir / f".{name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            save_model_dir(self.model, tmp, self.task.tokenizer, self.task.model_task, source="sbert train",
                           extra_meta={"step": self.step, **meta, **self.task.save_meta()})
            self.outputs.replace(tmp, name)

    def write_run_record(self, run_info: dict) -> None:
        from sbert_cli.model.precision import describe_machine
        from sbert_cli.outputs import write_text

        record = {
            "task": self.task.model_task, **run_info, "train": {**asdict(self.config), "out_dir": str(self.out_dir)},
            "device": str(self.device), "precision": self.precision, "world_size": self.env.world_size,
            "global_batch_size": self.global_batch, "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "torch": torch.__version__,
            "torch_compile": False,  # eager by rule: see --precision's help and docs/benchmarks.md
            "machine": describe_machine(),  # CPU model and native bf16, threads: what the run's numbers came from
        }
        text = json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n"
        write_text(self.out_dir / "run.json", text, force=True)  # whole or the earlier one, never half (outputs.py)
        self.outputs.record("run.json")

    # -- the loop

    def evaluate(self, epoch_float: float) -> None:
        task = self.task
        metrics = evaluate_task(self.model, task, self.config.batch_size, self.device, self.precision, self.env)
        improved = _is_better(metrics[task.best_metric], self.best_value, task.best_metric)
        if improved:
            self.best_value, self.best_step, self.evals_without_improvement = metrics[task.best_metric], self.step, 0
        else:
            self.evals_without_improvement += 1
        task.evaluated(improved)
        self.last_eval_step = self.step
        self.result.last_eval = metrics
        if self.env.is_main:
            append_metrics(self.out_dir, {"kind": "eval", "step": self.step, "epoch": round(epoch_float, 4), **metrics})
        self.callbacks.evaluated(self.step, metrics, improved)
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
        total_units, total_tokens = sum(b.units for b, w in micro if w), sum(b.tokens for b, w in micro if w)
        if env.distributed:  # every process needs the global counts before its backward
            counts = torch.tensor([total_units, total_tokens], dtype=torch.float64, device=device)
            total_units, total_tokens = all_reduce_sum(counts, env).tolist()
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
        # The loss stays on the device: a single process reads nothing back here. Distributed, one small all-reduce
        # sums the logged loss and votes on stopping, so that every process stops at the same step.
        stop_requested = stop is not None and stop.requested
        if env.distributed:
            tail = torch.stack([loss_sum, torch.tensor(float(stop_requested), dtype=torch.float64, device=device)])
            tail = all_reduce_sum(tail, env)
            loss_sum, stop_requested = tail[0], bool(tail[1] > 0)
        return StepStats(loss_sum, int(total_units), int(total_tokens), lr, stop_requested)

    def fit(self, callbacks: Callbacks, run_info: dict) -> TrainResult:
        """The whole run, top to bottom: prepare OUT, then epochs of steps (evaluating and checkpointing when
        due) until the last step, an early stop or a signal; then OUT/last and the curves."""
        config, env, result = self.config, self.env, self.result
        self.callbacks = callbacks
        if env.is_main:
            self.outputs = prepare_run_dir(self.out_dir, config.resume, config.force)
            if config.resume:
                truncate_metrics(self.out_dir, self.step)
            self.outputs.record(METRICS_FILE)  # appended to from the first logged step on
            self.write_run_record(run_info)
        try:
            if env.distributed:
                torch.distributed.barrier()  # OUT is ready before any rank trains
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
            for note in result.messages:
                callbacks.message(f"note: {note}")
            if result.resumed_from is not None:
                callbacks.message(f"resuming from {result.resumed_from} (step {self.step} of {self.total_steps})")
            callbacks.start(self.step, self.total_steps, self.precision)
            log = _LogWindow()
            # One thread collates the next step's batches (tokens, dynamic masks) while this step computes.
            with StopRequest(announce=env.is_main) as stop, ThreadPoolExecutor(1, thread_name_prefix="collate") as collator:
                while self.step < self.total_steps and not (result.interrupted or result.early_stopped):
                    self.run_epoch(stop, collator, log)
            callbacks.end()
            if not result.interrupted:
                self.save_model("last")
            result.best_value, result.best_step, result.best_metric = self.best_value, self.best_step, self.task.best_metric
            if env.is_main and config.plot:
                self.plot_curves()
            return result
        finally:
            if self.outputs is not None:
                self.outputs.release()

    def run_epoch(self, stop: StopRequest, collator: ThreadPoolExecutor, log: "_LogWindow") -> None:
        """Steps through the rest of this epoch's batches (from next_batch), or until the run must stop."""
        config, result, callbacks = self.config, self.result, self.callbacks
        batches = shuffled_batches(len(self.lengths), self.global_batch, config.seed, self.epoch)
        upcoming = collator.submit(self.micro_batches, batches[self.next_batch], self.epoch)
        while self.next_batch < len(batches) and self.step < self.total_steps:
            micro = upcoming.result()
            if self.next_batch + 1 < len(batches) and self.step + 1 < self.total_steps:
                upcoming = collator.submit(self.micro_batches, batches[self.next_batch + 1], self.epoch)
            loss_sum, units, tokens, lr, stop_voted = self.train_step(batches[self.next_batch], stop, micro)
            self.step += 1
            self.next_batch += 1
            epoch_float = self.epoch + self.next_batch / len(batches)
            end_of_epoch = self.next_batch == len(batches)
            if end_of_epoch:
                self.epoch, self.next_batch = self.epoch + 1, 0
            result.step, result.epoch = self.step, epoch_float
            log.add(self.step, loss_sum, units, tokens)
            finished = self.step == self.total_steps
            if self.step % config.log_every == 0 or self.step == 1 or finished or stop_voted:
                self.check_loss(log)
                record = {"kind": "train", "step": self.step, "epoch": round(epoch_float, 4), **log.flush(), "lr": lr}
                if self.env.is_main:
                    append_metrics(self.out_dir, record)
                callbacks.step(self.step, record)
            else:
                callbacks.step(self.step, None)

            due_eval = self.evaluating and (
                (config.eval_every is not None and self.step % config.eval_every == 0)
                or (config.eval_every is None and end_of_epoch) or finished)
            if due_eval and self.last_eval_step != self.step:
                self.check_loss(log)
                self.evaluate(epoch_float)
                if config.patience is not None and self.evals_without_improvement >= config.patience:
                    result.early_stopped = True
                    callbacks.message(f"early stop: no better {self.task.best_metric} in {config.patience} evaluations")
            due_save = ((config.save_every is not None and self.step % config.save_every == 0)
                        or (config.save_every is None and (due_eval or end_of_epoch))
                        or finished or result.early_stopped or stop_voted)
            if due_save and self.last_saved_step != self.step:
                self.check_loss(log)
                self.save_checkpoint()
            result.interrupted = stop_voted
            if stop_voted:
                result.stop_signal = stop.signal or signal.SIGTERM  # another rank's signal: torchrun sends SIGTERM
            if stop_voted or result.early_stopped or end_of_epoch:
                return  # a new epoch has its own batch order

    def check_loss(self, log: "_LogWindow") -> None:
        """Stop on a NaN or infinite loss in the log window, naming its step. Called at each log line and before
        each evaluation or checkpoint, so no checkpoint holds diverged weights."""
        bad = log.first_non_finite() if self.precision != "fp16" else None  # fp16's scaler skips such steps itself
        if bad is not None:
            step, loss = bad
            raise SbertError(f"step {step}: the loss is {loss}, training diverged; resume from the last checkpoint "
                             f"with a lower `lr` (now {self.config.lr}), or use `precision` fp32")

    def plot_curves(self) -> None:
        from sbert_cli.plots import CURVES_FILE, plot_training_curves

        try:
            self.callbacks.message(f"training curves: {plot_training_curves(self.out_dir)}")
            self.outputs.record(CURVES_FILE)
        except Exception as e:  # the model is saved; a plotting problem must not fail the run
            self.callbacks.message(f"note: could not draw the training curves ({e}); retry with: sbert plot {self.out_dir}")


class _LogWindow:
    """Loss, loss units and real tokens since the last log line, and the time they took.

    Each step's loss sum stays on the device (a float64 scalar) and is read back once per window, not once per step,
    so the device never waits for the host between log lines. The window's sum is the same float64 additions in the
    same order as when each step was read back, so the logged numbers are unchanged.
    """

    def __init__(self):
        self.loss, self.units, self.tokens, self.started = 0.0, 0, 0, time.perf_counter()
        self.steps: list[tuple[int, torch.Tensor]] = []  # (step, loss sum), to name a diverged step

    def add(self, step: int, loss_sum: torch.Tensor, units: int, tokens: int) -> None:
        self.loss, self.units, self.tokens = self.loss + loss_sum, self.units + units, self.tokens + tokens
        self.steps.append((step, loss_sum))

    def first_non_finite(self) -> tuple[int, float] | None:
        """(step, loss sum) of the window's first NaN or infinite loss, or None."""
        if math.isfinite(float(self.loss)):
            return None
        for step, loss_sum in self.steps:
            if not math.isfinite(value := float(loss_sum)):
                return step, value
        return None

    def flush(self) -> dict:
        loss = float(self.loss)  # the window's one host sync: before the clock, so the window's work is done
        now = time.perf_counter()
        record = {"loss": loss / max(self.units, 1), "tokens_per_s": self.tokens / max(now - self.started, 1e-9)}
        self.loss, self.units, self.tokens, self.started, self.steps = 0.0, 0, 0, now, []
        return record


@torch.no_grad()
def evaluate_task(model: nn.Module, task: Task, batch_size: int, device: torch.device, precision: str,
                  env: DistributedEnv = DistributedEnv()) -> dict[str, float]:
    """Task metrics on its evaluation data; batches are shared out across ranks and the sums all-reduced."""
    model = unwrap(model)
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
    sums = all_reduce_sum(sums, env)
    model.train(was_training)
    return task.eval_metrics(sums.cpu())
