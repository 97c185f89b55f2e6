"""The loop's host syncs: a single process reads nothing back from the device per step; the loss is read once per
log window with the same numbers; a diverged loss still stops the run at its step, before any checkpoint holds it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sbert_cli.errors import SbertError
from sbert_cli.model.bert import build_model
from sbert_cli.model.config import preset
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.resources import CHINESE_VOCAB
from sbert_cli.train.loop import Trainer, train
from sbert_cli.train.state import checkpoint_dirs
from sbert_cli.train.types import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def make_task(thucnews_train, examples: int = 64):
    from sbert_cli.data.classification import read_classification_file
    from sbert_cli.tasks.classification import ClassificationTask, encode_split

    tokenizer = BertTokenizer.from_vocab(CHINESE_VOCAB)
    data = read_classification_file(thucnews_train)
    data.texts, data.labels = data.texts[:examples], data.labels[:examples]
    return ClassificationTask(encode_split(data, tokenizer, 32), None, tokenizer, "accuracy", 32)


def make_model(task):
    torch.manual_seed(0)
    return build_model(preset("tiny", vocab_size=len(task.tokenizer)).with_labels(task.label_names), "cls")


def test_a_single_process_step_reads_nothing_back_from_the_device(tmp_path, thucnews_train, monkeypatch):
    task = make_task(thucnews_train)
    trainer = Trainer(make_model(task), task, TrainConfig(out_dir=tmp_path, batch_size=8, max_steps=4, lr=1e-3),
                      device=torch.device("cpu"), precision="fp32")
    reads = []
    for name in ("__float__", "__bool__", "item", "tolist", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            import sys

            if sys._getframe(1).f_code.co_filename.endswith("train/loop.py"):  # the loop's own reads, not the model's
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    stats = trainer.train_step(list(range(8)))
    assert reads == []
    assert isinstance(stats.loss_sum, torch.Tensor) and stats.units == 8 and stats.stop is False


def test_the_logged_loss_is_the_windows_mean_of_the_step_losses(tmp_path, thucnews_train):
    records = {}
    for log_every in (1, 3):
        task = make_task(thucnews_train)
        out = tmp_path / f"log-{log_every}"
        train(make_model(task), task, TrainConfig(out_dir=out, batch_size=8, max_steps=4, lr=1e-3, log_every=log_every,
                                                  precision="fp32", device="cpu", plot=False))
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        records[log_every] = {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}
    each, windows = records[1], records[3]
    assert sorted(windows) == [1, 3, 4]
    assert windows[1] == each[1] and windows[4] == each[4]  # one-step windows: the same number, exactly
    assert math.isclose(windows[3], (each[2] + each[3]) / 2, rel_tol=1e-12)  # 8 examples per step


def test_a_diverged_loss_stops_at_its_step_before_a_checkpoint_holds_it(tmp_path, thucnews_train):
    task = make_task(thucnews_train)
    loss_sum, calls = task.loss_sum, []

    def nan_from_step_3(model, batch):
        calls.append(1)
        loss = loss_sum(model, batch)
        return loss * float("nan") if len(calls) >= 3 else loss

    task.loss_sum = nan_from_step_3
    config = TrainConfig(out_dir=tmp_path, batch_size=8, max_steps=8, lr=1e-3, log_every=10, save_every=2,
                         precision="fp32", device="cpu", plot=False)
    with pytest.raises(SbertError, match=r"^step 3: the loss is nan, training diverged; resume from the last checkpoint"):
        train(make_model(task), task, config)
    assert [path.name for path in checkpoint_dirs(tmp_path)] == ["step-0000002"]  # not step 4, whose weights are NaN
