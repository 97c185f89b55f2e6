"""sbert pretrain: lowers held-out MLM loss, masks dynamically and reproducibly, writes model dirs others accept."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
from sbert_cli.data.shards import MLMShards
from sbert_cli.model.model_dir import load_for_task
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.tasks.pretrain import TRAIN_STREAM, MLMSource, masker_for

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
    return BertTokenizer.from_vocab(vocab_path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, thucnews_train):
    path = tmp_path_factory.mktemp("corpus") / "titles.txt"
    lines = thucnews_train.read_text(encoding="utf-8").splitlines()[:1200]
    path.write_text("".join(line.split("\t")[0] + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def masked_data(tmp_path_factory, corpus, tokenizer):
    out = tmp_path_factory.mktemp("mlm") / "masked"
    make_mlm_data([corpus], out, tokenizer, MLMDataSettings(max_seq_len=32, segmenter="none"))
    return out


@pytest.fixture(scope="module")
def unmasked_data(tmp_path_factory, corpus, tokenizer):
    out = tmp_path_factory.mktemp("mlm") / "unmasked"
    make_mlm_data([corpus], out, tokenizer, MLMDataSettings(max_seq_len=32, mask=False, segmenter="none"))
    return out


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_pretraining_lowers_held_out_loss_and_writes_usable_model_dirs(tmp_path, masked_data, hf_cls_dir):
    out = tmp_path / "run"
    result = run("pretrain", "--data", masked_data, "--config", "tiny", "--out", out, "--max-steps", 60,
                 "--batch-size", 32, "--lr", 1e-3, "--eval-fraction", 0.1, "--eval-every", 5, "--no-plot")
    assert result.exit_code == 0, result.output
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert evals[0]["step"] == 5 and evals[-1]["step"] == 60
    assert evals[-1]["loss"] < evals[0]["loss"] - 1.0
    assert evals[-1]["loss"] < np.log(21128)  # better than a uniform guess
    assert {"mlm_accuracy", "perplexity"} <= set(evals[-1])
    assert re.search(r"held-out \((fp32|bf16 autocast)\): loss", result.stdout)
    mlm = load_for_task(out / "last", "mlm")  # what fill-mask loads
    assert mlm.initialized == []
    assert json.loads((out / "last" / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    cls = load_for_task(out / "best", "cls", labels=["a", "b"], allow_new_head=True)  # what train-cls loads
    assert all(k.startswith(("classifier.", "bert.pooler.")) for k in cls.initialized)


def test_continued_pretraining_from_hf_checkpoint_without_mlm_head(tmp_path, masked_data, hf_cls_dir):
    result = run("pretrain", "--data", masked_data, "--model", hf_cls_dir, "--out", tmp_path / "run", "--max-steps", 2,
                 "--batch-size", 8, "--no-plot")
    assert result.exit_code == 0, result.output
    assert "has no MLM head; initialised fresh" in result.stdout
    assert load_for_task(tmp_path / "run" / "last", "mlm").initialized == []


def test_continued_pretraining_from_hf_mlm_checkpoint_reports_no_new_head(tmp_path, masked_data, hf_mlm_dir):
    # transformers' BertForMaskedLM saves no pooler; the MLM head is complete, so nothing is "initialised fresh".
    result = run("pretrain", "--data", masked_data, "--model", hf_mlm_dir, "--out", tmp_path / "run", "--max-steps", 1,
                 "--batch-size", 8, "--no-plot")
    assert result.exit_code == 0, result.output
    assert "initialised fresh" not in result.stdout


def test_dynamic_masks_depend_on_seed_epoch_and_index_only(unmasked_data, tokenizer):
    shards = MLMShards(unmasked_data)
    masker = masker_for(shards, tokenizer)
    source = MLMSource(shards, np.arange(len(shards)), masker, seed=1, stream=TRAIN_STREAM)
    a = source.batch([3, 7, 11], epoch=0, pad_id=0)
    b = source.batch([11, 3], epoch=0, pad_id=0)  # other batch mates, other order

    def predictions(batch, row):
        labels = batch.tensors["masked_labels"][row]
        return batch.tensors["masked_positions"][row][labels != -100].tolist(), labels[labels != -100].tolist()

    assert predictions(a, 0) == predictions(b, 1)
    first_a = a.tensors["input_ids"][0][: int(a.tensors["attention_mask"][0].sum())]
    first_b = b.tensors["input_ids"][1][: int(b.tensors["attention_mask"][1].sum())]
    assert torch.equal(first_a, first_b)
    epochs = [source.batch(list(range(20)), epoch=e, pad_id=0).tensors["masked_positions"] for e in (0, 1)]
    assert not torch.equal(epochs[0], epochs[1])
    original = shards[3].input_ids
    masked = first_a.numpy()
    assert len(masked) == len(original) and (masked != original).any()
    assert a.units == int((a.tensors["masked_labels"] != -100).sum()) > 0


def test_dynamic_masking_trains(tmp_path, unmasked_data):
    result = run("pretrain", "--data", unmasked_data, "--dynamic-masking", "--config", "tiny", "--out", tmp_path / "run",
                 "--max-steps", 3, "--batch-size", 8, "--eval-fraction", 0.05, "--no-plot")
    assert result.exit_code == 0, result.output
    assert "re-masked every epoch" in result.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data", "{unmasked}", "--config", "tiny"], "made with --no-mask; pretrain it with --dynamic-masking"),
        (["--data", "{masked}", "--config", "tiny", "--dynamic-masking"], "already masked"),
        (["--data", "{masked}"], "give --model DIR|REPO to continue pretraining"),
        (["--data", "{masked}", "--config", "tiny", "--eval-fraction", "1.5"], "--eval-fraction must be between 0 and 1"),
        (["--data", "{masked}", "--config", "tiny", "--eval-fraction", "0.1", "--eval-data", "{masked}"], "not both"),
        (["--data", "{masked}", "--config", "tiny", "--masked-lm-prob", "0.2"], "apply to --dynamic-masking"),
        (["--data", "{tmp}", "--config", "tiny"], "no manifest.json"),
        (["--data", "{masked}", "--config", "tiny", "--vocab", "{vocab}"], "made with another vocab"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, masked_data, unmasked_data, vocab_path, args, expected):
    small_vocab = tmp_path / "vocab.txt"
    small_vocab.write_text("".join(line + "\n" for line in vocab_path.read_text(encoding="utf-8").split("\n")[:2000]))  # not splitlines: a token is U+2028
    values = {"{masked}": masked_data, "{unmasked}": unmasked_data, "{tmp}": tmp_path, "{vocab}": small_vocab}
    args = [str(values.get(a, a)) for a in args]
    result = run("pretrain", "--out", tmp_path / "out", "--max-steps", 1, *args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_held_out_figures_equal_sbert_eval_on_the_same_sequences(tmp_path, unmasked_data):
    """One masked-position scorer and one evaluation-masking scheme: pretrain's held-out evaluation of --eval-data
    and `sbert eval` of the same data on the same model report the same figures."""
    from sbert_cli.tasks.evaluate import evaluate
    from sbert_cli.tasks.options import PretrainOptions
    from sbert_cli.tasks.pretrain import pretrain
    from sbert_cli.train.types import TrainConfig

    options = PretrainOptions(data=unmasked_data, config_name="tiny", dynamic_masking=True, eval_data=unmasked_data)
    config = TrainConfig(out_dir=tmp_path / "run", max_steps=2, epochs=None, batch_size=8, lr=1e-3, plot=False,
                         device="cpu", precision="fp32")
    result = pretrain(options, config)
    held_out = result.train.last_eval
    report = evaluate(tmp_path / "run" / "last", unmasked_data, task="mlm", device="cpu", precision="fp32")
    assert report.num_predictions > 0
    assert held_out["mlm_accuracy"] == pytest.approx(report.mlm_accuracy, abs=1e-12)
    assert held_out["mlm_top5_accuracy"] == pytest.approx(report.mlm_top5_accuracy, abs=1e-12)
    assert held_out["loss"] == pytest.approx(report.loss, rel=1e-5)
