"""The training progress callbacks (cli/progress.py): the collapse note and the --threads hint it carries."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from sbert_cli.cli.progress import TrainingProgress


class FakeCpuUse:
    def __init__(self, busy: float):
        self.busy = busy

    def others_busy(self, wait_s: float = 0.0) -> float:
        return self.busy


def _run(monkeypatch, busy: float, threads: int, cores: int = 2) -> str:
    monkeypatch.setattr("sbert_cli.model.precision.usable_cpus", lambda: cores)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = io.StringIO()
    progress = TrainingProgress(Console(file=out, width=300, soft_wrap=True))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        progress.start(0, 100)
        progress.cpu_use = FakeCpuUse(busy)
        for step, rate in enumerate([900.0, 1000.0, 1000.0, 1000.0, 1000.0, 100.0, 100.0], start=1):
            progress.step(step, {"loss": 1.0, "lr": 1e-3, "tokens_per_s": rate})
        progress.end()
    finally:
        torch.set_num_threads(previous)
    return out.getvalue()


def test_a_collapse_is_noted_once_with_a_threads_hint_when_cores_are_taken(monkeypatch):
    text = _run(monkeypatch, busy=1.0, threads=2)
    assert text.count("note: throughput fell from 1,000 to 100 tokens/s") == 1, text
    assert "1 of 2 cores free, 2 threads waiting on each other: --threads 1 on a rerun" in text, text


def test_no_threads_hint_when_the_threads_already_fit_the_free_cores(monkeypatch):
    text = _run(monkeypatch, busy=1.0, threads=1)
    assert "note: throughput fell" in text and "--threads" not in text, text
    assert "--threads" not in _run(monkeypatch, busy=0.0, threads=2)


def test_training_takes_threads_and_records_them(tmp_path, thucnews_train):
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "sbert_cli", "train-cls", "--config", "tiny", "--train", str(thucnews_train),
               "--max-steps", "1", "--threads", "1", "--precision", "fp32", "--no-plot", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "run.json").read_text())["machine"]["threads"] == 1
