"""Where this process sits in a torchrun job, and how a run is stopped by a signal.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a single process. SIGINT and SIGTERM
ask the loop to stop at the end of the current step (every rank votes, so all stop together).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch

from sbert_cli.errors import ConfigError
from sbert_cli.model.precision import resolve_device


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


def device_for(env: DistributedEnv, name: str) -> torch.device:
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


def all_reduce_sum(tensor: torch.Tensor, env: DistributedEnv) -> torch.Tensor:
    if env.distributed:
        torch.distributed.all_reduce(tensor)
    return tensor


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second signal (either) aborts at once.

    The abort raises Interrupted, which the CLI turns into exit code 128 + the signal's number.
    """

    def __init__(self, announce: bool):
        self.requested = False
        self.signal: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            raise Interrupted(signum, f"{name} again: stopped at once, without saving; the last checkpoint is kept")
        if self.announce:
            sys.stderr.write(f"\n{name}: finishing the current step, then saving a checkpoint ({name} again to abort)\n")
        self.requested, self.signal = True, signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Interrupted(KeyboardInterrupt):
    """A second stop signal: the run ends at once; the CLI prints the message and exits with 128 + signum."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


@contextlib.contextmanager
def process_group(env: DistributedEnv, device: torch.device, timeout_s: float):
    """The torchrun process group for this run (gloo on CPU, nccl on GPU); nothing for a single process."""
    started = env.distributed and not torch.distributed.is_initialized()
    if started:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    finished = False
    try:
        if env.distributed:
            torch.distributed.barrier()  # every rank has checked OUT before rank 0 writes to it
        yield
        finished = True
    finally:
        if started and torch.distributed.is_initialized():
            try:
                if finished:
                    # Every rank is done with the group (rank 0 also with its last writes) before any tears it down.
                    torch.distributed.barrier()
                # What still refers to the group (a DDP reducer in a reference cycle) goes now, while the
                # interpreter is whole: torn down during interpreter exit, a rank may abort (`terminate called
                # without an active exception`) after the run has succeeded.
                gc.collect()
            finally:
                torch.distributed.destroy_process_group()
                gc.collect()
