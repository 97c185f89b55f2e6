"""Dynamic batching for `sbert serve`: DynamicBatcher (one queue, one worker thread; requests that arrive together
run as one model call, and a failed call is retried one request at a time), QueueFull (503), the queued job (_Job)
and its grouping by endpoint and options."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from sbert_cli.errors import SbertError

log = logging.getLogger("sbert.serve")


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    kind: str
    options: tuple
    texts: list[str]
    future: asyncio.Future
    arrived: float  # loop time


@dataclass
class DynamicBatcher:
    """Collects requests into batches and runs them, one batch at a time, in a worker thread.

    `run(kind, options, texts)` returns one result per text; it is called with the texts of all the
    waiting requests that share kind and options.
    """

    run: Callable[[str, tuple, list[str]], list]
    max_batch_size: int
    max_wait_s: float
    max_queue: int
    pending: deque = field(default_factory=deque)
    pending_texts: int = 0
    running_texts: int = 0

    @property
    def abandoned_texts(self) -> int:
        """Texts of a model call still running in the worker thread: after stop(), work that will never be answered."""
        running = getattr(self, "_running", None)
        return self.running_texts if running is not None and not running.done() else 0

    async def start(self) -> None:
        self._running = None  # the worker thread's current call (a concurrent.futures.Future)
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbert-inference")
        self._worker = asyncio.create_task(self._work(), name="sbert-batcher")

    async def stop(self) -> None:
        """Stop taking jobs and fail those still waiting. A model call still running is not waited for: a thread
        cannot be interrupted, and uvicorn has already given in-flight requests their graceful time. `running_texts`
        then says how much work is abandoned; runner.serve ends the process in that case."""
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        for job in self.pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self.pending.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, kind: str, options: tuple, texts: list[str]) -> list:
        """The results for `texts`, in order; QueueFull when max_queue texts are already waiting."""
        if self.pending_texts + len(texts) > self.max_queue:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        job = _Job(kind, options, texts, loop.create_future(), loop.time())
        self.pending.append(job)
        self.pending_texts += len(texts)
        self._wakeup.set()
        return await job.future  # a client that goes away cancels it; the worker then skips the job

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Requests that queued while the last batch ran are already past their deadline: no wait.
            deadline = self.pending[0].arrived + self.max_wait_s
            while self.pending_texts < self.max_batch_size and (timeout := deadline - loop.time()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                except asyncio.TimeoutError:
                    break
            jobs = self._take()
            for group in _groups(jobs):
                self.running_texts = sum(len(job.texts) for job in group)
                self._running = self._executor.submit(self._run_group, group)
                outcomes = await asyncio.wrap_future(self._running)
                self.running_texts = 0
                for job, outcome in zip(group, outcomes):
                    if job.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        job.future.set_exception(outcome)
                    else:
                        job.future.set_result(outcome)

    def _take(self) -> list[_Job]:
        """The oldest waiting jobs, up to max_batch_size texts (the oldest always, however large)."""
        jobs, texts = [], 0
        while self.pending and (not jobs or texts + len(self.pending[0].texts) <= self.max_batch_size):
            job = self.pending.popleft()
            self.pending_texts -= len(job.texts)
            if not job.future.done():  # not cancelled by a client that went away
                jobs.append(job)
                texts += len(job.texts)
        return jobs

    def _run_group(self, jobs: list[_Job]) -> list[Any]:
        """In the worker thread: one call for the group, or, if that fails, one call per job."""
        texts = [text for job in jobs for text in job.texts]
        try:
            results = self.run(jobs[0].kind, jobs[0].options, texts)
        except Exception as e:
            if len(jobs) == 1:
                return [_logged(e)]
            return [self._run_one(job) for job in jobs]
        outcomes, start = [], 0
        for job in jobs:
            outcomes.append(results[start : start + len(job.texts)])
            start += len(job.texts)
        return outcomes

    def _run_one(self, job: _Job) -> Any:
        try:
            return self.run(job.kind, job.options, job.texts)
        except Exception as e:
            return _logged(e)


def _groups(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs with the same endpoint and options, in arrival order of each group's first job."""
    groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        groups.setdefault((job.kind, job.options), []).append(job)
    return list(groups.values())


def _logged(error: Exception) -> Exception:
    if not isinstance(error, SbertError):
        log.error("inference failed:\n%s", "".join(traceback.format_exception(error)))
    return error
