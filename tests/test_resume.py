"""Exact resume: interrupted anywhere (SIGINT, SIGTERM, kill -9), a resumed run ends with the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
from sbert_cli.errors import ResumeError
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.tasks.classification import train_classifier
from sbert_cli.tasks.options import ClassifierOptions, PretrainOptions
from sbert_cli.tasks.pretrain import pretrain
from sbert_cli.train.state import checkpoint_dirs
from sbert_cli.train.types import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory, thucnews_train, thucnews_dev):
    folder = tmp_path_factory.mktemp("resume-data")
    train_lines = thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)
    # 150 examples in global batches of 16: 10 steps per epoch, the last one short (6 examples).
    (folder / "train.txt").write_text("".join(train_lines[:150]), encoding="utf-8")
    (folder / "dev.txt").write_text("".join(thucnews_dev.read_text(encoding="utf-8").splitlines(keepends=True)[:40]), encoding="utf-8")
    return folder


def options(data):
    # --config tiny keeps dropout on, so resuming must restore the RNG state too.
    return ClassifierOptions(data_dir=data, config_name="tiny", max_seq_len=32)


def config(out, **changes):
    # CPU: bit-identical results are a CPU fp32 promise (CUDA kernels may sum in varying order).
    settings = dict(out_dir=out, batch_size=8, grad_accum=2, epochs=2, lr=1e-3, eval_every=4, save_every=3,
                    keep_last=2, plot=False, device="cpu", precision="fp32")
    return TrainConfig(**{**settings, **changes})


def weights(out):
    return load_file(str(out / "last" / "model.safetensors"))


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train_classifier(options(data), config(out))
    assert result.train.step == 20 and not result.train.interrupted
    return out


def signal_at(step: int, micro: int, signum=signal.SIGINT, times: int = 1):
    def hook(current_step, micro_index):
        if (current_step, micro_index) == (step, micro):
            for _ in range(times):
                os.kill(os.getpid(), signum)
    return hook


@pytest.mark.parametrize(
    "step, micro, signum",
    [
        (5, 1, signal.SIGINT),  # mid-epoch, between the two micro-batches of a step
        (9, 0, signal.SIGTERM),  # in the last step of epoch 0: stops at the epoch boundary
        (13, 1, signal.SIGINT),  # second epoch, right after an evaluation and a checkpoint
    ],
)
def test_interrupted_run_resumes_bit_identical(tmp_path, data, reference, step, micro, signum):
    out = tmp_path / "run"
    stopped = train_classifier(options(data), config(out), on_micro_batch=signal_at(step, micro, signum))
    assert stopped.train.interrupted and stopped.train.step == step + 1  # the current step is finished, then saved
    assert stopped.train.checkpoint.name == f"step-{step + 1:07d}"
    assert not (out / "last").exists()
    resumed = train_classifier(options(data), config(out, resume=True))
    assert resumed.train.resumed_from.name == f"step-{step + 1:07d}" and resumed.train.step == 20
    assert_identical(weights(reference), weights(out))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert steps == [4, 8, 12, 16, 20]  # every 4 steps, none twice


def test_second_ctrl_c_aborts_at_once(tmp_path, data):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_classifier(options(data), config(out), on_micro_batch=signal_at(4, 0, times=2))
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000003"]  # nothing saved after the abort


def test_resume_with_other_batch_size_or_data_is_refused(tmp_path, data):
    out = tmp_path / "run"
    train_classifier(options(data), config(out, max_steps=3, epochs=None))
    with pytest.raises(ResumeError, match="batch_size was 8, now 4"):
        train_classifier(options(data), config(out, max_steps=3, epochs=None, resume=True, batch_size=4))
    other = tmp_path / "other"
    other.mkdir()
    lines = (data / "train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (other / "train.txt").write_text("".join(lines[:100]), encoding="utf-8")
    with pytest.raises(ResumeError, match=r"the data differs \(train_examples, train_sha256\)"):
        train_classifier(ClassifierOptions(data_dir=other, config_name="tiny", max_seq_len=32),
                         config(out, max_steps=3, epochs=None, resume=True))


def test_resume_with_other_label_smoothing_says_the_run_will_differ(tmp_path, data):
    out = tmp_path / "run"
    train_classifier(options(data), config(out, max_steps=3, epochs=None))
    changed = ClassifierOptions(data_dir=data, config_name="tiny", max_seq_len=32, label_smoothing=0.0)
    result = train_classifier(changed, config(out, max_steps=4, epochs=None, resume=True))
    assert result.train.step == 4
    assert any("label_smoothing changed from 0.1 to 0.0: the run will differ" in m for m in result.train.messages), \
        result.train.messages


def test_pretraining_with_dynamic_masking_resumes_bit_identical(tmp_path, thucnews_train, vocab_path):
    corpus = tmp_path / "titles.txt"
    lines = thucnews_train.read_text(encoding="utf-8").splitlines()[:100]
    corpus.write_text("".join(line.split("\t")[0] + "\n" for line in lines), encoding="utf-8")
    make_mlm_data([corpus], tmp_path / "mlm", BertTokenizer.from_vocab(vocab_path), MLMDataSettings(max_seq_len=32, mask=False, segmenter="none"))
    mlm_options = PretrainOptions(data=tmp_path / "mlm", config_name="tiny", dynamic_masking=True, eval_fraction=0.1)
    settings = dict(batch_size=8, grad_accum=1, epochs=3, lr=1e-3, plot=False, device="cpu", precision="fp32")
    pretrain(mlm_options, TrainConfig(out_dir=tmp_path / "ref", **settings))
    stopped = pretrain(mlm_options, TrainConfig(out_dir=tmp_path / "run", **settings), on_micro_batch=signal_at(16, 0))
    assert stopped.train.interrupted and stopped.train.epoch > 1  # past an epoch boundary: new masks
    pretrain(mlm_options, TrainConfig(out_dir=tmp_path / "run", resume=True, **settings))
    assert_identical(weights(tmp_path / "ref"), weights(tmp_path / "run"))


def test_kill_9_then_resume_from_the_latest_complete_checkpoint(tmp_path, data, reference):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    # The reference settings; how often a run evaluates or saves does not change its weights.
    command = [sys.executable, "-m", "sbert_cli", "train-cls", "--data-dir", str(data), "--config", "tiny",
               "--max-seq-len", "32", "--batch-size", "8", "--grad-accum", "2", "--epochs", "2", "--lr", "1e-3",
               "--save-every", "2", "--no-plot", "--device", "cpu", "--precision", "fp32", "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(checkpoint_dirs(out)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()  # SIGKILL: no handler runs, possibly in the middle of writing a checkpoint
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "last").exists()
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert_identical(weights(reference), weights(out))


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, data):
    out = tmp_path / "run"
    settings = dict(max_steps=9, epochs=None, eval_every=None, save_every=3, precision="fp32")
    stopped = train_classifier(options(data), config(out, **settings), on_micro_batch=signal_at(4, 0))
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000003", "step-0000005"]
    latest = out / "checkpoints" / "step-0000005" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated, as by a full disk
    (out / ".last.tmp-99999").mkdir()  # what a kill -9 during the final save leaves behind
    resumed = train_classifier(options(data), config(out, resume=True, **settings))
    assert stopped.train.interrupted and resumed.train.resumed_from.name == "step-0000003"
    assert any("step-0000005/model.safetensors: cannot be read" in m and "previous checkpoint" in m
               for m in resumed.train.messages)
    assert resumed.train.step == 9 and (out / "last" / "model.safetensors").is_file()
    assert not (out / ".last.tmp-99999").exists()


def test_every_checkpoint_damaged_is_one_line_and_a_finished_run_reports_its_step(tmp_path, data):
    from typer.testing import CliRunner

    from sbert_cli.cli import app

    out = tmp_path / "run"
    argv = ["train-cls", "--data-dir", str(data), "--config", "tiny", "--max-seq-len", "32", "--batch-size", "8",
            "--max-steps", "4", "--save-every", "2", "--no-plot", "--device", "cpu", "--precision", "fp32", "--out", str(out)]
    assert CliRunner().invoke(app, argv).exit_code == 0
    again = CliRunner().invoke(app, [*argv, "--resume"])  # the run had finished: nothing to do, and it says so
    assert again.exit_code == 0 and "done: step 4/4" in again.stdout, again.output
    for checkpoint in checkpoint_dirs(out):
        (checkpoint / "trainer_state.pt").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(app, [*argv, "--resume"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("error: cannot resume:") and result.stderr.count("\n") == 1, result.stderr


def test_second_sigterm_aborts_with_exit_code_143(tmp_path, data):
    from sbert_cli.train.distributed import Interrupted

    out = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped:
        train_classifier(options(data), config(out, precision="fp32"),
                         on_micro_batch=signal_at(4, 0, signal.SIGTERM, times=2))
    assert stopped.value.exit_code == 128 + signal.SIGTERM and "SIGTERM again" in str(stopped.value)


def test_sigterm_exits_143_with_the_resume_command(tmp_path, data):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "sbert_cli", "train-cls", "--data-dir", str(data), "--config", "tiny",
               "--max-seq-len", "32", "--batch-size", "8", "--epochs", "50", "--no-plot", "--device", "cpu",
               "--precision", "fp32", "--out", str(out)]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "resume with:" in stdout and "--resume" in stdout and "Traceback" not in stderr
