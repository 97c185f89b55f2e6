"""The learning-rate rule (tasks/lr_rule.py): the rate each situation gets, --lr winning over it, and the run's record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.cli.train import rule_help
from sbert_cli.tasks.lr_rule import (
    CONTINUE,
    FINE_TUNE,
    NEW_HEAD,
    SCRATCH,
    choose_lr,
    short,
    situation_of,
    with_chosen_lr,
)
from sbert_cli.train.types import TrainConfig


@pytest.mark.parametrize(
    "task, from_scratch, fresh, hidden, situation, lr",
    [
        ("cls", True, ["all parameters (--config)"], 64, SCRATCH, 2e-3),  # --config tiny
        ("cls", True, ["all parameters (--config)"], 256, SCRATCH, 5e-4),  # --config small
        ("mlm", True, ["all parameters (--config)"], 768, SCRATCH, 1e-4),  # --config base
        ("cls", False, ["classifier.bias", "classifier.weight"], 64, FINE_TUNE, 2e-3),  # the demo's pretrained tiny BERT
        ("cls", False, ["classifier.bias", "classifier.weight"], 256, FINE_TUNE, 1e-4),
        ("cls", False, ["classifier.bias", "classifier.weight"], 768, FINE_TUNE, 2e-5),  # BERT-base
        ("cls", False, ["classifier.bias", "classifier.weight"], 512, FINE_TUNE, 2e-4),  # m3e-small
        ("cls", False, [], 768, FINE_TUNE, 2e-5),  # a classifier with the same labels, trained further
        ("mlm", False, ["mlm_head.bias", "mlm_head.dense.weight"], 512, NEW_HEAD, 5e-4),  # a head-less checkpoint (m3e-small)
        ("mlm", False, ["mlm_head.bias", "mlm_head.dense.weight"], 768, NEW_HEAD, 1e-4),
        ("mlm", False, [], 768, CONTINUE, 5e-5),  # continued pretraining
    ],
)
def test_the_rule_by_situation_and_width(task, from_scratch, fresh, hidden, situation, lr):
    assert situation_of(task, from_scratch, fresh) == situation
    assert choose_lr(task, hidden, from_scratch, fresh) == lr


def test_scratch_rates_are_far_above_fine_tuning_rates():
    """The bug this rule fixes: a from-scratch model at a fine-tuning rate learns nothing in a few epochs."""
    for hidden in (256, 768):
        assert choose_lr("cls", hidden, True, []) >= 5 * choose_lr("cls", hidden, False, ["classifier.weight"])


def test_chosen_only_when_not_given(tmp_path):
    config, choice = with_chosen_lr(TrainConfig(out_dir=tmp_path), "cls", 64, True, [])
    assert (config.lr, config.warmup_ratio) == (2e-3, 0.1) and choice.chosen
    assert choice.describe() == "lr 2e-3 (from scratch; `lr` to change)"
    assert choice.to_json() == {"lr": 2e-3, "warmup_ratio": 0.1, "situation": "from scratch", "source": "rule"}
    config, choice = with_chosen_lr(TrainConfig(out_dir=tmp_path, lr=3e-4, warmup_ratio=0.0), "cls", 64, True, [])
    assert (config.lr, config.warmup_ratio) == (3e-4, 0.0) and not choice.chosen
    assert choice.describe() == "lr 3e-4 (`lr`)"
    TrainConfig(out_dir=tmp_path).validate()  # None means "choose", not an error


def test_short_and_help():
    assert [short(x) for x in (1e-3, 2e-5, 2.5e-5, 0.1)] == ["1e-3", "2e-5", "2.5e-5", "1e-1"]
    assert "from scratch (--config): 2e-3 up to hidden 128" in rule_help("cls")
    assert "new MLM head (--model without an MLM head): 5e-4 up to hidden 512, else 1e-4" in rule_help("mlm")


def test_train_cls_reports_and_records_the_chosen_lr(tmp_path, thucnews_train, thucnews_classes, one_thread):
    lines = thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "train.txt").write_text("".join(lines[:40]), encoding="utf-8")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-cls", "--train", str(tmp_path / "train.txt"), "--labels", str(thucnews_classes),
                                      "--config", "tiny", "--out", str(out), "--max-steps", "2", "--no-plot",
                                      "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    first_lines = result.stdout.splitlines()[:3]
    assert "lr 2e-3 (from scratch; --lr to change)" in first_lines, first_lines
    run = json.loads(Path(out / "run.json").read_text())
    assert run["lr_choice"] == {"lr": 2e-3, "warmup_ratio": 0.1, "situation": "from scratch", "source": "rule"}
    assert run["train"]["lr"] == 2e-3
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # 2 steps, warmup round(0.1 * 2) = 0: the first step runs at the peak rate
    assert records[0]["lr"] == pytest.approx(2e-3)


def test_pretrain_from_a_headless_checkpoint_chooses_the_new_head_rate(tmp_path, thucnews_train, vocab_path, hf_cls_dir,
                                                                      one_thread):
    from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
    from sbert_cli.model.tokenizer import BertTokenizer

    corpus = tmp_path / "titles.txt"
    corpus.write_text("".join(line.split("\t")[0] + "\n" for line in thucnews_train.read_text(encoding="utf-8").splitlines()[:64]),
                      encoding="utf-8")
    make_mlm_data([corpus], tmp_path / "data", BertTokenizer.from_vocab(vocab_path),
                  MLMDataSettings(max_seq_len=32, mask=False, segmenter="none"))
    result = CliRunner().invoke(app, ["pretrain", "--model", str(hf_cls_dir), "--data", str(tmp_path / "data"),
                                      "--dynamic-masking", "--max-steps", "1", "--batch-size", "8", "--out", str(tmp_path / "run"),
                                      "--no-plot"])
    assert result.exit_code == 0, result.output
    assert "lr 5e-4 (new MLM head; --lr to change)" in result.stdout
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["lr_choice"]["situation"] == NEW_HEAD and run["train"]["lr"] == 5e-4
