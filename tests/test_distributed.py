"""torchrun: 2 processes (gloo) match 1 process with the same global batch; a dead rank does not hang the others."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
from sbert_cli.errors import ResumeError
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.tasks.classification import train_classifier
from sbert_cli.tasks.options import ClassifierOptions
from sbert_cli.train.types import TrainConfig

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory, thucnews_train, thucnews_dev):
    folder = tmp_path_factory.mktemp("ddp-data")
    lines = thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)
    # 81 examples in global batches of 8: the last batch has one example, so one rank gets none of it.
    (folder / "train.txt").write_text("".join(lines[:81]), encoding="utf-8")
    (folder / "dev.txt").write_text("".join(thucnews_dev.read_text(encoding="utf-8").splitlines(keepends=True)[:21]), encoding="utf-8")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
            "-m", "sbert_cli", *map(str, args)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, data, hf_mlm_dir):
    out = tmp_path_factory.mktemp("ddp") / "run"
    # per process: 2 examples x 2 accumulation steps; global batch 8
    result = subprocess.run(
        torchrun("train-cls", "--data-dir", data, "--model", hf_mlm_dir, "--out", out, "--epochs", 2, "--batch-size", 2,
                 "--grad-accum", 2, "--lr", 1e-3, "--max-seq-len", 32, "--eval-every", 5, "--no-plot", "--device", "cpu",
                 "--precision", "fp32"),
        env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, data, hf_mlm_dir, two_process_run):
    out, result = two_process_run
    torch.set_num_threads(1)
    single = train_classifier(
        ClassifierOptions(data_dir=data, model=str(hf_mlm_dir), max_seq_len=32),
        TrainConfig(out_dir=tmp_path / "single", batch_size=8, epochs=2, lr=1e-3, eval_every=5, plot=False, device="cpu",
                    precision="fp32"),
    )
    assert single.train.step == 22
    a = load_file(str(out / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "last" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    # The same evaluations, computed from sums shared across the two processes.
    evals = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (out, tmp_path / "single")]
    accuracies = [[r["accuracy"] for r in records if r["kind"] == "eval"] for records in evals]
    assert accuracies[0] == accuracies[1] and len(accuracies[0]) == 5


def test_only_rank_0_prints_and_writes(two_process_run):
    out, result = two_process_run
    assert result.stdout.count("done: step 22/22") == 1 and "2 processes" in result.stdout
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert not list(out.glob("**/.*tmp*"))
    assert "terminate called" not in result.stderr  # no rank aborts at exit (benchmarks/torchrun_clean_exit.sh: many runs)


def test_resuming_with_another_number_of_processes_is_refused(data, hf_mlm_dir, two_process_run):
    out, _ = two_process_run
    with pytest.raises(ResumeError, match="world_size was 2, now 1"):
        train_classifier(ClassifierOptions(data_dir=data, model=str(hf_mlm_dir), max_seq_len=32),
                         TrainConfig(out_dir=out, batch_size=2, grad_accum=2, epochs=2, lr=1e-3, resume=True, plot=False, device="cpu"))


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _rank(pid: int) -> int | None:
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds worker processes through /proc")
def test_pretraining_runs_distributed_and_a_dead_rank_makes_the_others_exit(tmp_path, thucnews_train, vocab_path):
    corpus = tmp_path / "titles.txt"
    lines = thucnews_train.read_text(encoding="utf-8").splitlines()[:200]
    corpus.write_text("".join(line.split("\t")[0] + "\n" for line in lines), encoding="utf-8")
    make_mlm_data([corpus], tmp_path / "mlm", BertTokenizer.from_vocab(vocab_path),
                  MLMDataSettings(max_seq_len=32, mask=False, segmenter="none"))
    out = tmp_path / "run"
    log = open(tmp_path / "torchrun.log", "w")
    process = subprocess.Popen(
        torchrun("pretrain", "--data", tmp_path / "mlm", "--dynamic-masking", "--config", "tiny", "--out", out,
                 "--epochs", 1000, "--batch-size", 4, "--log-every", 1, "--no-plot", "--dist-timeout", 30, "--device", "cpu"),
        env=ENV, stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        deadline = time.monotonic() + 120
        metrics = out / "metrics.jsonl"
        while (not metrics.is_file() or len(metrics.read_text().splitlines()) < 3) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, (tmp_path / "torchrun.log").read_text()[-3000:]  # DDP pretraining takes steps
        workers = {_rank(pid): pid for pid in _children(process.pid)}
        os.kill(workers[1], signal.SIGKILL)
        killed_at = time.monotonic()
        process.wait(timeout=90)
        assert process.returncode != 0
        assert time.monotonic() - killed_at < 90
        with pytest.raises(ProcessLookupError):
            os.kill(workers[0], 0)  # rank 0 is gone too
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
