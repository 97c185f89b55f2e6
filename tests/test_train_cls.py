"""sbert train-cls end to end: it learns, writes the run dir, and refuses bad input with one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.model.model_dir import load_for_task

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, expected: str):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, thucnews_train, thucnews_dev, thucnews_classes):
    """A tiny BERT trained from scratch on the THUCNews sample (dev 1000 titles, 10 classes)."""
    folder = tmp_path_factory.mktemp("cls-run")
    out = folder / "run"
    test_file = folder / "test.txt"
    test_file.write_text("".join(thucnews_dev.read_text(encoding="utf-8").splitlines(keepends=True)[:100]), encoding="utf-8")
    result = run(
        "train-cls", "--train", thucnews_train, "--dev", thucnews_dev, "--test", test_file, "--labels", thucnews_classes,
        "--config", "tiny", "--out", out, "--max-steps", 360, "--batch-size", 16, "--lr", 1e-3, "--max-seq-len", 32,
        "--eval-every", 120, "--log-every", 20, "--precision", "fp32",
    )
    assert result.exit_code == 0, result.output
    return out, result


def test_tiny_model_learns_thucnews_far_above_chance(trained):
    out, result = trained
    dev = json.loads((out / "eval-dev" / "metrics.json").read_text())
    assert dev["accuracy"] > 0.25  # chance is 0.1 (360 steps from scratch; 0.285 in shuffled order, seed 42)
    assert "dev (best model, " in result.stdout and "entertainment" in result.stdout
    assert (out / "eval-test" / "confusion_matrix.png").is_file()


def test_run_dir_layout_and_metrics_schema(trained):
    out, _ = trained
    assert {p.name for p in out.iterdir()} >= {"best", "last", "checkpoints", "metrics.jsonl", "curves.png", "run.json"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert set(train_records[0]) == {"kind", "step", "epoch", "loss", "lr", "tokens_per_s"}
    assert [r["step"] for r in evals] == [120, 240, 360]
    assert {"loss", "accuracy", "macro_f1"} <= set(evals[0]) and evals[-1]["loss"] < evals[0]["loss"]
    best_step = max(evals, key=lambda r: r["accuracy"])["step"]
    assert json.loads((out / "best" / "sbert.json").read_text())["step"] == best_step
    loaded = load_for_task(out / "best", "cls")
    assert loaded.model.config.labels[:3] == ["finance", "realty", "stocks"]
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["label2id"]["entertainment"] == 9
    assert config["architectures"] == ["BertForSequenceClassification"]  # the class transformers should build
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["precision"] == "fp32" and run_info["global_batch_size"] == 16
    assert run_info["torch_compile"] is False  # the rule --precision's help states
    machine = run_info["machine"]  # what the figures came from: CPU model, native bf16, threads
    assert machine["cpu"] and isinstance(machine["cpu_bf16"], bool) and machine["threads"] >= 1


def test_plot_redraws_the_curves(trained):
    out, _ = trained
    (out / "curves.png").unlink()
    result = run("plot", out)
    assert result.exit_code == 0 and (out / "curves.png").stat().st_size > 0


def test_data_dir_layout_and_checkpoint_model(tmp_path, monkeypatch, hf_mlm_dir, thucnews_train, thucnews_classes):
    """`sbert train-cls` in a folder holding data/train.txt, dev.txt and class.txt, from an HF checkpoint without a head."""
    data = tmp_path / "data"
    data.mkdir()
    lines = thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "train.txt").write_text("".join(lines[:64]), encoding="utf-8")
    (data / "dev.txt").write_text("".join(lines[64:96]), encoding="utf-8")
    (data / "class.txt").write_text(thucnews_classes.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = run("train-cls", "--model", hf_mlm_dir, "--epochs", 1, "--batch-size", 16, "--max-seq-len", 32, "--no-plot")
    assert result.exit_code == 0, result.output
    assert "new classification head" in result.stdout
    assert (tmp_path / "runs" / "cls" / "best" / "model.safetensors").is_file()
    # the run dir is not overwritten by accident
    again = run("train-cls", "--model", hf_mlm_dir, "--epochs", 1)
    one_line_error(again, "is not empty; continue it with --resume")


@pytest.fixture
def files(tmp_path, thucnews_train):
    lines = thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "train.txt").write_text("".join(lines[:30]), encoding="utf-8")
    (tmp_path / "dev.txt").write_text("".join(lines[30:40]) + "新标签\tweather\n", encoding="utf-8")
    (tmp_path / "bad.txt").write_text("一\t1\n二\t2\t3\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data-dir", "{tmp}/nowhere"], "no such folder"),
        (["--train", "{tmp}/bad.txt"], "bad.txt:2: 3 tab-separated column(s)"),
        (["--train", "{tmp}/train.txt", "--dev", "{tmp}/dev.txt"], "dev.txt:11: label 'weather' not in the training labels"),
        (["--train", "{tmp}/train.txt", "--metric", "auc"], "--metric 'auc'"),
        (["--train", "{tmp}/train.txt", "--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
        (["--train", "{tmp}/train.txt", "--precision", "int8", "--device", "cpu"], "int8 is for inference only"),
        (["--train", "{tmp}/train.txt", "--max-seq-len", "1000"], "exceeds the model's 512 positions"),
        (["--train", "{tmp}/train.txt", "--resume"], "no checkpoint under"),
        (["--train", "{tmp}/train.txt", "--resume", "--force"], "give one of them"),
        (["--train", "{tmp}/train.txt", "--grad-accum", "0"], "--grad-accum must be at least 1"),
        (["--train", "{tmp}/train.txt", "--model", "{tmp}/train.txt"], "is a file"),
        (["--train", "{tmp}/train.txt", "--patience", "2"], "--patience stops on evaluation results"),
        (["--train", "{tmp}/train.txt", "--label-smoothing", "1"], "--label-smoothing must be at least 0 and below 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(files, args, expected):
    args = [a.replace("{tmp}", str(files)) for a in args]
    if "--model" not in args:
        args += ["--config", "tiny"]
    result = run("train-cls", "--out", files / "out", "--epochs", 1, *args)
    one_line_error(result, expected)
    assert not (files / "out" / "checkpoints").exists()


def test_existing_results_are_not_overwritten(files):
    out = files / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = run("train-cls", "--train", files / "train.txt", "--config", "tiny", "--out", out, "--epochs", 1)
    one_line_error(result, "overwrite its results with --force")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # --force replaces what a run writes, and only that
    for steps in (2, 1):
        result = run("train-cls", "--train", files / "train.txt", "--config", "tiny", "--out", out, "--max-steps", steps,
                     "--force", "--no-plot")
        assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "keep me"
    assert '"step": 2' not in (out / "metrics.jsonl").read_text()


def test_train_cls_learns_at_its_default_options(tmp_path, thucnews_train, thucnews_dev, thucnews_classes):
    """--config tiny with no --lr: the lr rule picks a from-scratch rate, and the model learns (chance is 0.1)."""
    lines = thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "train.txt").write_text("".join(lines[:3000]), encoding="utf-8")
    (tmp_path / "dev.txt").write_text("".join(thucnews_dev.read_text(encoding="utf-8").splitlines(keepends=True)[:300]), encoding="utf-8")
    out = tmp_path / "run"
    result = run("train-cls", "--train", tmp_path / "train.txt", "--dev", tmp_path / "dev.txt", "--labels", thucnews_classes,
                 "--config", "tiny", "--out", out, "--precision", "fp32", "--no-plot")
    assert result.exit_code == 0, result.output
    assert "lr 2e-3 (from scratch; --lr to change)" in result.stdout
    dev = json.loads((out / "eval-dev" / "metrics.json").read_text())
    assert dev["accuracy"] > 0.3, dev["accuracy"]


def test_mean_pooling_is_saved_and_reloads_the_same(tmp_path, files):
    import torch

    out = tmp_path / "run"
    result = run("train-cls", "--train", files / "train.txt", "--config", "tiny", "--out", out, "--max-steps", 2,
                 "--pooling", "mean", "--no-plot", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "last" / "config.json").read_text())["classifier_pooling"] == "mean"
    assert json.loads((out / "run.json").read_text())["pooling"] == "mean"
    model = load_for_task(out / "last", "cls").model
    assert model.config.classifier_pooling == "mean"
    input_ids = torch.tensor([[101, 1266, 776, 102, 0], [101, 1266, 102, 0, 0]])
    attention_mask = (input_ids != 0).long()
    with torch.no_grad():
        hidden = model.bert.encode(input_ids, attention_mask)
        mean = torch.stack([hidden[0, :4].mean(0), hidden[1, :3].mean(0)])
        torch.testing.assert_close(model(input_ids, attention_mask), model.classifier(mean))
    # the default writes nothing new into config.json, so transformers' BertForSequenceClassification sees the same model
    default = tmp_path / "default"
    assert run("train-cls", "--train", files / "train.txt", "--config", "tiny", "--out", default, "--max-steps", 1,
               "--no-plot").exit_code == 0
    assert "classifier_pooling" not in json.loads((default / "last" / "config.json").read_text())


def test_bad_pooling_is_one_line(files):
    result = run("train-cls", "--train", files / "train.txt", "--config", "tiny", "--out", files / "out", "--pooling", "max")
    one_line_error(result, "--pooling 'max': use one of pooler, cls, mean")


def test_caseless_vocab_under_do_lower_case_false_trains_lower_cased(tmp_path, files):
    """bert-base-chinese's and m3e's config says do_lower_case false over a vocab without capitals; sbert
    lower-cases (so "NBA" is a word, not [UNK]), says so once, and saves do_lower_case true for transformers."""
    from conftest import make_hf_checkpoint

    from sbert_cli.model.model_dir import load_tokenizer

    model = make_hf_checkpoint(tmp_path / "cased-config", "base")
    (model / "tokenizer_config.json").write_text('{"do_lower_case": false, "tokenizer_class": "BertTokenizer"}', encoding="utf-8")
    result = run("train-cls", "--model", model, "--train", files / "train.txt", "--out", tmp_path / "run",
                 "--max-steps", 1, "--batch-size", 8, "--max-seq-len", 16, "--no-plot", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("has no capital letters") == 1
    saved = tmp_path / "run" / "last"
    assert json.loads((saved / "tokenizer_config.json").read_text())["do_lower_case"] is True
    tokenizer = load_tokenizer(saved)
    assert tokenizer.case_note is None and tokenizer.tokenize("QDII") == tokenizer.tokenize("qdii")


def test_label_smoothing_shapes_the_training_loss_only(files, vocab_path):
    """The training loss is cross-entropy against smoothed targets (x spread over all labels, the rest on the gold
    one); the dev loss stays plain cross-entropy, so dev losses compare across settings. Default 0.1, in run.json."""
    import torch
    from torch import nn

    from sbert_cli.data.classification import read_classification_file, read_label_names
    from sbert_cli.model.tokenizer import BertTokenizer
    from sbert_cli.tasks.classification import ClassificationTask, collate, encode_split

    names = ["finance", "sports", "game"]
    (files / "three.txt").write_text("股市大涨\tfinance\n球队夺冠\tsports\n新游戏上线\tgame\n", encoding="utf-8")
    (files / "three-classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    data = read_classification_file(files / "three.txt", read_label_names(files / "three-classes.txt"), allow_new_labels=False)
    split = encode_split(data, BertTokenizer.from_vocab(vocab_path), 16)
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]])

    class Fixed(nn.Module):
        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            return logits

    batch = collate(split, [0, 1, 2], 0)
    gold = torch.tensor([0, 1, 2])
    assert batch.tensors["labels"].tolist() == gold.tolist()
    targets = torch.full((3, 3), 0.3 / 3) + 0.7 * torch.eye(3)[gold]  # smoothing 0.3: gold 0.8, others 0.1
    smoothed = -(targets * logits.log_softmax(-1)).sum()
    plain = nn.functional.cross_entropy(logits, gold, reduction="sum")
    task = ClassificationTask(split, split, None, "accuracy", 16, label_smoothing=0.3)
    torch.testing.assert_close(task.loss_sum(Fixed(), batch), smoothed)
    torch.testing.assert_close(task.eval_sums(Fixed(), batch)[0].float(), plain)
    assert not torch.isclose(smoothed, plain)

    for given, expected in (([], 0.1), (["--label-smoothing", "0"], 0.0)):
        out = files / f"smoothing-{expected}"
        result = run("train-cls", "--train", files / "train.txt", "--config", "tiny", "--out", out, "--max-steps", 1,
                     "--no-plot", *given)
        assert result.exit_code == 0, result.output
        assert json.loads((out / "run.json").read_text())["label_smoothing"] == expected


def test_closing_dev_report_reuses_the_best_evaluation_and_equals_a_fresh_eval(tmp_path, monkeypatch, thucnews_train,
                                                                             thucnews_dev, thucnews_classes):
    # At fp32 on the CPU the run's evaluation of OUT/best computed what `sbert eval` computes (same weights, tokens,
    # batches, kernels): the closing dev report takes those probabilities instead of running the model again, and
    # is the same, to the last digit, as a fresh evaluation of OUT/best. The test split is still run.
    import numpy as np

    from sbert_cli.tasks import cls_predict
    from sbert_cli.tasks.classification import train_classifier
    from sbert_cli.tasks.evaluate import evaluate
    from sbert_cli.tasks.options import ClassifierOptions
    from sbert_cli.train.types import TrainConfig

    train_file, dev_file = tmp_path / "train.txt", tmp_path / "dev.txt"
    train_file.write_text("".join(thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)[:300]), encoding="utf-8")
    dev_file.write_text("".join(thucnews_dev.read_text(encoding="utf-8").splitlines(keepends=True)[:120]), encoding="utf-8")
    calls = []
    real = cls_predict.Classifier.probabilities
    monkeypatch.setattr(cls_predict.Classifier, "probabilities", lambda self, texts, *a, **k: calls.append(len(texts)) or real(self, texts, *a, **k))
    options = ClassifierOptions(train_file=train_file, dev_file=dev_file, test_file=dev_file, labels_file=thucnews_classes,
                                config_name="tiny", max_seq_len=24)
    config = TrainConfig(out_dir=tmp_path / "run", lr=2e-3, max_steps=24, batch_size=16, eval_every=8, precision="fp32",
                         device="cpu", plot=False)
    result = train_classifier(options, config)
    assert calls == [120]  # the test split only
    reused = result.reports["dev"]
    fresh = evaluate(result.model_dir, dev_file, batch_size=16, precision="fp32", device="cpu")
    assert result.model_dir.name == "best"
    assert reused.predictions == fresh.predictions and reused.loss == fresh.loss
    shown = lambda e: {k: v for k, v in e.to_json().items() if k not in ("runtime", "files", "model")}
    assert shown(reused) == shown(fresh)
    assert [(m.line_number, m.predicted, m.probability) for m in reused.misclassified] == \
           [(m.line_number, m.predicted, m.probability) for m in fresh.misclassified]
    assert reused.runtime.examples == 120 and reused.runtime.seconds > 0
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    best = max(evals, key=lambda r: r["accuracy"])  # the first of equals: the loop keeps a strictly better one
    assert np.isclose(reused.metrics.accuracy, best["accuracy"])
