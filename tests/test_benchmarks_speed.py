"""The speed benchmarks run (--quick / tiny shapes): bench_train crashed on a TrainConfig without warmup_ratio, and
bench_step_profile drives the trainer's step piece by piece, so a change to the loop can break them unseen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_train_runs_a_tiny_classification_step():
    out = run(str(BENCHMARKS / "bench_train.py"), "--config", "tiny", "--tasks", "cls", "--batch-size", "4",
              "--seq-len", "32", "--short-len", "20", "--steps", "1", "--precision", "fp32")
    assert "sequences/s" in out and "cls " in out.splitlines()[-1]
    assert "half the rows 20 tokens; padding 18.8% of the batch positions" in out  # the mixed-length batch


def test_bench_step_profile_quick_prints_the_breakdown_and_the_machine():
    out = run(str(BENCHMARKS / "bench_step_profile.py"), "--quick", "--threads", "1")
    for line in ("torch 2.", "precision fp32", "whole step (Trainer.train_step", "forward", "backward",
                 "AdamW (fused) + schedule", "host sync", "Python and the rest", "collation thread", "padding:",
                 "single-tensor loop"):
        assert line in out, line
