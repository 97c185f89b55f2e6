"""Progress bars: TrainingProgress (the training loop's Callbacks, rendered with rich on the main process) and
progress_bar (the inference commands' bar on stderr, as the library's progress callback).

The ETA comes from the last steps only (a moving window), so slow first steps (allocation, a cold
cache) do not inflate it for the whole run; a throughput that collapses to a quarter of its best is
reported once, with what usually causes it.
"""

from __future__ import annotations

import collections
import contextlib
import time

from rich.console import Console

from sbert_cli.train.types import Callbacks

WINDOW_STEPS = 20  # steps in the ETA's moving window
COLLAPSE_RATIO = 0.25  # tokens/s below this share of the best logged rate counts as a collapse
COLLAPSE_AFTER = 3  # logged rates seen before a collapse may be called


class TrainingProgress(Callbacks):
    """Callbacks that draw a progress bar and print the loop's messages on `console`; on a console that is not a
    terminal (nohup, a job scheduler, `> log`), where a bar only shows once it is done, a plain line every logged step
    (`log_every`) instead, flushed as it is written."""

    def __init__(self, console: Console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"), console=console,
        )
        self.bar_id = None
        self.total = 0
        self.window: collections.deque = collections.deque(maxlen=WINDOW_STEPS + 1)
        self.best_rate = 0.0
        self.rates_seen = 0
        self.warned = False
        self.cpu_use = None  # precision.CpuUse from start(): what other processes take of our cores
        self.others_busy = 0.0
        self.plain = not console.is_terminal  # lines, not a bar
        self.started = time.perf_counter()
        self.precision = "fp32"  # how evaluations are computed, in words (precision_words)

    def start(self, step: int, total_steps: int, precision: str = "fp32") -> None:
        self.total = total_steps
        self.precision = precision_words(precision, training=True)
        self.bar_id = self.progress.add_task("train", total=total_steps, completed=step, stats="", eta="?")
        self.started = time.perf_counter()
        self.window.append((self.started, step))
        from sbert_cli.model.precision import CpuUse

        self.cpu_use = CpuUse()
        if not self.plain:
            self.progress.start()

    def step(self, step: int, stats: dict | None) -> None:
        self.window.append((time.perf_counter(), step))
        fields = {"eta": self.eta(step)}
        if stats is not None:
            fields["stats"] = f"loss {stats['loss']:.4f}  lr {stats['lr']:.2e}  {stats['tokens_per_s']:,.0f} tok/s"
            if self.plain:
                self.line(f"step {step}/{self.total}  {fields['stats']}  elapsed {_clock(time.perf_counter() - self.started)}"
                          f"  ETA {fields['eta']}")
            self.watch_rate(stats["tokens_per_s"])
        self.progress.update(self.bar_id, completed=step, **fields)

    def line(self, text: str) -> None:
        """One line, out at once (a file is block-buffered: a log would otherwise fill in bursts)."""
        self.console.print(text, soft_wrap=True)
        self.console.file.flush()

    def eta(self, step: int) -> str:
        if len(self.window) < 3:  # the first step is no guide (warm-up); wait for two more
            return "?"
        (t0, s0), (t1, s1) = self.window[1], self.window[-1]
        if s1 <= s0:
            return "?"
        return _clock((self.total - step) * (t1 - t0) / (s1 - s0))

    def watch_rate(self, rate: float) -> None:
        self.rates_seen += 1
        if self.cpu_use is not None:
            self.others_busy = self.cpu_use.others_busy()  # since the last logged rate
        if self.rates_seen > COLLAPSE_AFTER and not self.warned and rate < COLLAPSE_RATIO * self.best_rate:
            self.warned = True
            self.message(
                f"note: throughput fell from {self.best_rate:,.0f} to {rate:,.0f} tokens/s; another process is probably "
                f"competing for the CPU cores{self.threads_hint()}"
            )
        if self.rates_seen > 1:  # the first logged rate includes warm-up
            self.best_rate = max(self.best_rate, rate)

    def threads_hint(self) -> str:
        """"(1 of 2 cores free: try --threads 1 ...)" when fewer cores are free than torch uses (one process)."""
        import os

        import torch

        from sbert_cli.model.precision import usable_cpus

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the other ranks are busy on purpose
            return ""
        cores, threads = usable_cpus(), torch.get_num_threads()
        free = cores - round(self.others_busy)
        if 1 <= free < threads:
            return (f" ({free} of {cores} cores free, {threads} threads waiting on each other: `threads` {free} "
                    "on a rerun, or resume with it, runs steadier)")
        return ""

    def evaluated(self, step: int, metrics: dict, improved: bool) -> None:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self.message(f"eval step {step} ({self.precision}): {shown}" + ("  [green]best[/]" if improved else ""))

    def message(self, text: str) -> None:
        from sbert_cli.cli.app import in_flags

        text = in_flags(text)  # the loop's notes name fields (`lr`); say them as this command's flags
        if text.startswith("note:"):
            text = "[yellow]note:[/]" + text[len("note:"):]
        self.line(text)

    def end(self) -> None:
        if not self.plain:
            self.progress.stop()


def precision_words(precision: str, training: bool = False) -> str:
    """How a figure was computed, to print beside it: in training bf16/fp16 are autocast over fp32 weights; at
    inference bf16 and int8 are the weights themselves (so the same model may differ in the last digits)."""
    if precision in ("bf16", "fp16") and training:
        return f"{precision} autocast"
    return {"bf16": "bf16 weights", "fp16": "fp16 autocast", "int8": "int8 weights"}.get(precision, precision)


def _clock(seconds: float) -> str:
    """H:MM:SS."""
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None):
    """A progress bar on stderr (hidden when stderr is not a terminal); yields the library's progress callback."""
    from sbert_cli.cli.app import err_console

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not err_console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(done: int, new_total: int | None) -> None:
            if new_total is not None:
                bar.update(task, total=new_total)
            bar.advance(task, done)

        yield advance
