"""The generic training loop's parts: schedule, optimizer groups, run dir rules, checkpoints, loss normalisation."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from sbert_cli.errors import ConfigError, ResumeError
from sbert_cli.model.bert import build_model
from sbert_cli.model.config import preset
from sbert_cli.tasks.classification import train_classifier
from sbert_cli.tasks.options import ClassifierOptions
from sbert_cli.cli.train import resume_command
from sbert_cli.train.loop import lr_factor, optimizer_groups
from sbert_cli.train.types import Task, TrainConfig
from sbert_cli.train.state import check_run_dir, checkpoint_dirs, latest_checkpoint, load_trainer_state

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, thucnews_train, thucnews_dev):
    folder = tmp_path_factory.mktemp("cls-data")
    train_lines = thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)
    dev_lines = thucnews_dev.read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "train.txt").write_text("".join(train_lines[:96]), encoding="utf-8")
    (folder / "dev.txt").write_text("".join(dev_lines[:40]), encoding="utf-8")
    return folder


def test_lr_schedule_warms_up_then_decays_without_a_zero_step():
    factors = [lr_factor(s, 4, 20, "linear") for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in zip(factors[4:], factors[5:])) and factors[4] == 1.0 and factors[-1] > 0
    cosine = [lr_factor(s, 0, 10, "cosine") for s in range(10)]
    assert cosine[0] == 1.0 and math.isclose(cosine[5], 0.5) and cosine[-1] > 0
    assert lr_factor(15, 2, 20, "constant") == 1.0


def test_no_weight_decay_on_biases_and_layer_norm():
    model = build_model(preset("tiny", vocab_size=100).with_labels(["a", "b"]), "cls")
    decay, no_decay = optimizer_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert decayed | not_decayed == set(names.values()) and not decayed & not_decayed
    assert "bert.layers.0.attention.query.weight" in decayed and "bert.embeddings.word_embeddings.weight" in decayed
    assert "bert.layers.0.attention_norm.weight" in not_decayed and "classifier.bias" in not_decayed
    assert all(n.endswith("bias") or "norm" in n for n in not_decayed)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(resume=True, force=True), "give one of them"),
        (dict(epochs=0), "`epochs` must be at least 1"),
        (dict(grad_accum=0), "`grad_accum` must be at least 1"),
        (dict(schedule="step"), "`schedule` 'step'"),
        (dict(lr=-1.0), "`lr` must be a positive number"),
        (dict(warmup_ratio=1.5), "`warmup_ratio`"),
        (dict(warmup_ratio=None), "`warmup_ratio` must be given, not None"),
        (dict(batch_size=None), "`batch_size` must be given, not None"),
    ],
)
def test_config_is_refused_when_constructed_naming_the_field(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(out_dir=tmp_path, **changes)


def test_a_config_with_only_an_lr_trains_and_one_without_is_refused_by_the_trainer(tmp_path):
    from sbert_cli.train.loop import Trainer

    config = TrainConfig(out_dir=tmp_path, lr=2e-5, max_steps=20)  # as benchmarks build it: warmup_ratio has a value
    assert config.warmup_ratio == 0.1
    assert Trainer(torch.nn.Linear(2, 2), _ConstantTask(), config, device=torch.device("cpu"), precision="fp32").warmup_steps == 2
    with pytest.raises(ConfigError, match="`lr` is None"):
        Trainer(torch.nn.Linear(2, 2), _ConstantTask(), TrainConfig(out_dir=tmp_path), device=torch.device("cpu"), precision="fp32")


class _ConstantTask(Task):
    model_task = "cls"
    tokenizer = None

    def train_lengths(self):
        return [4] * 20

    def train_batch(self, indices, epoch):
        raise NotImplementedError

    def loss_sum(self, model, batch):
        raise NotImplementedError


def test_run_dir_rules(tmp_path):
    check_run_dir(tmp_path / "new", resume=False, force=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty; continue it with `resume`"):
        check_run_dir(tmp_path, resume=False, force=False)
    check_run_dir(tmp_path, resume=False, force=True)
    with pytest.raises(ResumeError, match="no checkpoint under"):
        check_run_dir(tmp_path, resume=True, force=False)


def test_resume_command_appends_resume(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/x/sbert", "train-cls", "--out", "runs/a b", "--force"])
    assert resume_command() == "sbert train-cls --out 'runs/a b' --resume"


def test_checkpoints_are_model_dirs_with_a_weights_only_state(tmp_path, small_data, hf_mlm_dir):
    options = ClassifierOptions(data_dir=small_data, model=str(hf_mlm_dir), max_seq_len=32)
    config = TrainConfig(out_dir=tmp_path / "run", batch_size=8, epochs=1, save_every=3, keep_last=2, eval_every=4,
                         lr=1e-3, plot=False)
    (tmp_path / "run" / "checkpoints" / ".step-0000099.tmp-1").mkdir(parents=True)  # a save killed midway
    with pytest.raises(ConfigError):  # the half-written leftover makes --out non-empty
        train_classifier(options, config)
    config.force = True
    result = train_classifier(options, config)
    assert result.train.step == 12
    found = checkpoint_dirs(tmp_path / "run")
    assert [p.name for p in found] == ["step-0000009", "step-0000012"]  # keep_last=2, the leftover removed
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))
    latest = latest_checkpoint(tmp_path / "run")
    state = torch.load(latest / "trainer_state.pt", weights_only=True)
    assert state["step"] == 12 and state["epoch"] == 1 and state["next_batch"] == 0
    assert {"optimizer", "scheduler", "scaler", "rng", "settings"} <= set(state)
    assert load_trainer_state(latest)["rng"][0]["torch"].dtype == torch.uint8
    weights = load_file(str(latest / "model.safetensors"))
    last = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert all(torch.equal(weights[k], last[k]) for k in last)
    (latest / "trainer_state.pt").write_bytes(b"truncated")
    with pytest.raises(ResumeError, match="cannot be read"):
        load_trainer_state(latest)


def test_accumulation_and_batch_split_give_the_same_step(tmp_path, small_data, hf_mlm_dir):
    """Loss is normalised by the global batch: 1 x 16 and 4 x 4 micro-batches reach the same weights."""
    options = ClassifierOptions(data_dir=small_data, model=str(hf_mlm_dir), max_seq_len=32)
    weights = []
    for batch_size, accum in ((16, 1), (4, 4)):
        out = tmp_path / f"b{batch_size}"
        train_classifier(options, TrainConfig(out_dir=out, batch_size=batch_size, grad_accum=accum, max_steps=6,
                                              lr=1e-3, plot=False, device="cpu", precision="fp32"))
        weights.append(load_file(str(out / "last" / "model.safetensors")))
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], atol=1e-5, rtol=1e-4)


def test_patience_stops_early_and_keeps_the_best(tmp_path, small_data, hf_mlm_dir):
    options = ClassifierOptions(data_dir=small_data, model=str(hf_mlm_dir), max_seq_len=32)
    # An lr too small to change the dev accuracy: the second evaluation is no better than the first.
    result = train_classifier(options, TrainConfig(out_dir=tmp_path / "run", batch_size=8, epochs=3, lr=1e-12,
                                                   eval_every=1, patience=1, plot=False))
    assert result.train.early_stopped and result.train.step == 2 and result.train.best_step == 1
    assert (tmp_path / "run" / "last").is_dir() and result.model_dir.name == "best"


def test_bf16_autocast_trains_on_cpu(tmp_path, small_data, hf_mlm_dir):
    options = ClassifierOptions(data_dir=small_data, model=str(hf_mlm_dir), max_seq_len=32)
    result = train_classifier(options, TrainConfig(out_dir=tmp_path / "run", batch_size=16, max_steps=2, lr=1e-3,
                                                   precision="bf16", device="cpu", plot=False))
    assert result.train.precision == "bf16" and math.isfinite(result.train.last_eval["loss"])
    weights = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())  # fp32 master weights


def test_the_shared_training_types_and_the_progress_bar_import_no_torch():
    import subprocess
    import sys

    code = "import sys, sbert_cli.train.types, sbert_cli.cli.progress; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
