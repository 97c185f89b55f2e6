"""sbert_cli/evaluate.py and `sbert eval`: figures equal scikit-learn's, report files, JSON schema, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.errors import ConfigError
from sbert_cli.tasks.cls_metrics import classification_metrics, metrics_from_confusion
from sbert_cli.tasks.evaluate import evaluate, infer_task

CLS_KEYS = {
    "task", "model", "data", "num_examples", "accuracy", "macro_f1", "loss", "macro", "micro", "weighted",
    "per_class", "labels", "confusion_matrix", "num_misclassified", "runtime", "files",
}
MLM_KEYS = {
    "task", "model", "data", "source", "seed", "num_sequences", "num_predictions", "mlm_accuracy",
    "mlm_top5_accuracy", "loss", "perplexity", "runtime", "files",
}
RUNTIME_KEYS = {"device", "precision", "batch_size", "seconds", "examples_per_s", "tokens_per_s", "machine"}
MACHINE_KEYS = {"cpu", "cpu_bf16", "cpu_flags", "cpu_count", "usable_cpus", "threads", "torch", "platform", "cuda"}
LABELS = ["finance", "sports", "game"]  # hf_cls_dir's id2label


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory, thucnews_dev, thucnews_classes) -> Path:
    """THUCNews dev lines of the tiny classifier's three labels, with label names, in file order."""
    names = thucnews_classes.read_text(encoding="utf-8").split()
    rows = []
    for line in thucnews_dev.read_text(encoding="utf-8").splitlines():
        text, label = line.split("\t")
        if names[int(label)] in LABELS and sum(r.endswith(names[int(label)]) for r in rows) < 12:
            rows.append(f"{text}\t{names[int(label)]}")
    path = tmp_path_factory.mktemp("cls") / "dev.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cls_result(hf_cls_dir, cls_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "report"
    return evaluate(hf_cls_dir, cls_data, out_dir=out, batch_size=5, device="cpu", precision="fp32"), out


def _assert_equals_sklearn(metrics, gold, predicted, n):
    labels = list(range(n))
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(gold, predicted, average=average, zero_division=0)
        ours = getattr(metrics, average)
        assert (ours.precision, ours.recall, ours.f1) == pytest.approx((p, r, f), abs=1e-12), average
    p, r, f, s = precision_recall_fscore_support(gold, predicted, labels=labels, average=None, zero_division=0)
    assert [c.precision for c in metrics.per_class] == pytest.approx(p.tolist(), abs=1e-12)
    assert [c.recall for c in metrics.per_class] == pytest.approx(r.tolist(), abs=1e-12)
    assert [c.f1 for c in metrics.per_class] == pytest.approx(f.tolist(), abs=1e-12)
    assert [c.support for c in metrics.per_class] == s.tolist()
    assert metrics.confusion_matrix == confusion_matrix(gold, predicted, labels=labels).tolist()
    assert metrics.accuracy == pytest.approx(np.mean(np.asarray(gold) == np.asarray(predicted)))


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_sklearn(seed):
    # Skewed labels, so some classes are never gold, never predicted, or both.
    rng = np.random.default_rng(seed)
    n = 6
    gold = rng.choice(n, size=int(rng.integers(1, 60)), p=[0.5, 0.2, 0.2, 0.1, 0.0, 0.0])
    predicted = np.where(rng.random(len(gold)) < 0.6, gold, rng.choice(n, size=len(gold), p=[0.3, 0.3, 0.1, 0.0, 0.3, 0.0]))
    metrics = classification_metrics(gold, predicted, [f"c{i}" for i in range(n)])
    _assert_equals_sklearn(metrics, gold, predicted, n)
    assert metrics.macro_f1 == metrics.macro.f1


def test_training_dev_metrics_are_evals_figures_from_the_summed_confusion_matrix():
    # train-cls sums a float64 confusion matrix over batches and processes (ClassificationTask.eval_sums); the same
    # function as `sbert eval` turns it into figures, so best/ is picked on the numbers eval reports.
    import torch

    from sbert_cli.tasks.classification import ClassificationTask

    rng = np.random.default_rng(0)
    gold, predicted = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    task = ClassificationTask.__new__(ClassificationTask)
    task.num_labels, task.label_names = 3, ["a", "b", "c"]
    confusion = torch.zeros(9, dtype=torch.float64).index_add_(0, torch.from_numpy(gold * 3 + predicted), torch.ones(50, dtype=torch.float64))
    figures = task.eval_metrics(torch.cat([torch.tensor([5.0, 50.0], dtype=torch.float64), confusion]))
    expected = classification_metrics(gold, predicted, task.label_names)
    assert figures == {"loss": 0.1, "accuracy": expected.accuracy, "macro_f1": expected.macro_f1}
    assert metrics_from_confusion(confusion.view(3, 3).numpy(), task.label_names) == expected


def test_eval_figures_equal_sklearn_on_its_predictions(cls_result, cls_data):
    result, _ = cls_result
    gold = [LABELS.index(line.split("\t")[1]) for line in cls_data.read_text(encoding="utf-8").splitlines()]
    assert result.metrics.num_examples == len(gold) == len(result.predictions)
    _assert_equals_sklearn(result.metrics, gold, result.predictions, len(LABELS))
    assert [c.label for c in result.metrics.per_class] == LABELS


def test_eval_writes_png_tsv_and_metrics_json(cls_result, cls_data):
    result, out = cls_result
    png = out / "confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    lines = (out / "misclassified.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "line\ttext\tgold\tpredicted\tprobability"
    assert len(lines) - 1 == result.to_json()["num_misclassified"] == sum(
        g != p for g, p in zip([LABELS.index(x.split("\t")[1]) for x in cls_data.read_text().splitlines()], result.predictions)
    )
    source = cls_data.read_text(encoding="utf-8").splitlines()
    probabilities = []
    for row in lines[1:]:
        line, text, gold, predicted, probability = row.split("\t")
        assert source[int(line) - 1] == f"{text}\t{gold}"  # the line number points at the example
        assert gold != predicted and predicted in LABELS
        probabilities.append(float(probability))
    assert probabilities == sorted(probabilities, reverse=True)  # most confident mistakes first
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(result.to_json()))


def test_cls_json_schema_is_stable(cls_result):
    summary = cls_result[0].to_json()
    assert set(summary) == CLS_KEYS
    assert set(summary["runtime"]) == RUNTIME_KEYS
    assert set(summary["runtime"]["machine"]) == MACHINE_KEYS and summary["runtime"]["machine"]["threads"] >= 1
    assert set(summary["files"]) == {"metrics", "confusion_matrix", "misclassified"}
    for average in ("macro", "micro", "weighted"):
        assert set(summary[average]) == {"precision", "recall", "f1"}
    assert all(set(row) == {"label", "precision", "recall", "f1", "support"} for row in summary["per_class"])
    assert summary["macro_f1"] == summary["macro"]["f1"] and summary["task"] == "cls"


def test_eval_refuses_to_overwrite_a_users_file(hf_cls_dir, cls_data, tmp_path):
    # A report is derived: a rerun replaces its own files (issue 13); a file sbert did not write is never replaced.
    (tmp_path / "metrics.json").write_text("mine")
    with pytest.raises(ConfigError, match="holds files sbert did not write"):
        evaluate(hf_cls_dir, cls_data, out_dir=tmp_path, device="cpu")
    assert (tmp_path / "metrics.json").read_text() == "mine"


def test_infer_task(hf_cls_dir, hf_mlm_dir, tmp_path):
    assert infer_task(hf_cls_dir) == "cls"
    assert infer_task(hf_mlm_dir) == "mlm"
    assert infer_task(hf_cls_dir, tmp_path) == "mlm"  # a folder of data can only be make-mlm-data output


def test_infer_task_both_heads_asks_for_task(hf_mlm_dir, tmp_path):
    import torch

    from sbert_cli.model.model_dir import model_meta, read_checkpoint, write_model_dir
    from sbert_cli.model.tokenizer import BertTokenizer

    ck = read_checkpoint(hf_mlm_dir)
    config = ck.config.with_labels(["a", "b"])
    state = {**ck.state, "classifier.weight": torch.zeros(2, config.hidden_size), "classifier.bias": torch.zeros(2)}
    both = write_model_dir(tmp_path / "both", config.to_dict(), state, BertTokenizer.from_model_dir(hf_mlm_dir),
                           meta=model_meta("pretrain", state, source=None))
    with pytest.raises(ConfigError, match="`task` cls or `task` mlm"):
        infer_task(both)


def test_cli_json_prints_one_object_with_the_schema(hf_cls_dir, cls_data, tmp_path):
    result = CliRunner().invoke(
        app, ["eval", "-m", str(hf_cls_dir), "-d", str(cls_data), "--out", str(tmp_path / "r"), "--json", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary) == CLS_KEYS and 0 <= summary["accuracy"] <= 1
    assert "examples/s" in result.stderr and "examples/s" not in result.stdout


def test_cli_renders_report_tables(hf_cls_dir, cls_data, tmp_path):
    result = CliRunner().invoke(app, ["eval", "-m", str(hf_cls_dir), "-d", str(cls_data), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    for expected in ("macro avg", "weighted avg", "accuracy", "confusion matrix", "2 game", "misclassified.tsv"):
        assert expected in result.stdout


def _assert_one_line_error(result, *fragments):
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def _eval(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def test_error_missing_data_file(hf_cls_dir, tmp_path):
    _assert_one_line_error(_eval("-m", hf_cls_dir, "-d", tmp_path / "nope.tsv", "-o", tmp_path / "r"), "nope.tsv")


def test_error_bad_line_names_file_and_line(hf_cls_dir, tmp_path):
    data = tmp_path / "bad.tsv"
    data.write_text("体育新闻\tsports\n只有一列没有标签\tgame\textra\n", encoding="utf-8")
    _assert_one_line_error(_eval("-m", hf_cls_dir, "-d", data, "-o", tmp_path / "r"), f"{data}:2")


def test_error_unknown_label_names_file_and_line(hf_cls_dir, tmp_path):
    data = tmp_path / "unknown.tsv"
    data.write_text("体育新闻\tsports\n房价上涨\trealty\n", encoding="utf-8")
    _assert_one_line_error(_eval("-m", hf_cls_dir, "-d", data, "-o", tmp_path / "r"), f"{data}:2", "'realty'")


def test_error_model_without_classifier_head(hf_mlm_dir, cls_data, tmp_path):
    result = _eval("-m", hf_mlm_dir, "-d", cls_data, "--task", "cls", "-o", tmp_path / "r")
    _assert_one_line_error(result, str(hf_mlm_dir))
    assert not (tmp_path / "r").exists()


def test_error_bad_task(hf_cls_dir, cls_data, tmp_path):
    _assert_one_line_error(_eval("-m", hf_cls_dir, "-d", cls_data, "--task", "pos", "-o", tmp_path / "r"), "--task")


# --- masked LM ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_text(tmp_path_factory, thucnews_train) -> Path:
    lines = [line.split("\t")[0] for line in thucnews_train.read_text(encoding="utf-8").splitlines()[:24]]
    path = tmp_path_factory.mktemp("mlm") / "raw.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _make_shards(raw_text, out, tokenizer_dir, **settings):
    from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
    from sbert_cli.model.model_dir import load_tokenizer

    return make_mlm_data([raw_text], out, load_tokenizer(tokenizer_dir), MLMDataSettings(**settings)).out


def test_mlm_on_raw_text_equals_mlm_on_make_mlm_data_output(hf_mlm_dir, raw_text, tmp_path):
    shards = _make_shards(raw_text, tmp_path / "shards", hf_mlm_dir, seed=7)
    on_text = evaluate(hf_mlm_dir, raw_text, seed=7, out_dir=tmp_path / "a", device="cpu", precision="fp32")
    on_shards = evaluate(hf_mlm_dir, shards, out_dir=tmp_path / "b", batch_size=7, device="cpu", precision="fp32")
    assert (on_text.source, on_text.seed, on_shards.source, on_shards.seed) == ("text", 7, "shards", None)
    assert on_text.num_predictions == on_shards.num_predictions > 0
    assert on_text.loss == pytest.approx(on_shards.loss, rel=1e-5)
    assert on_text.mlm_top5_accuracy == on_shards.mlm_top5_accuracy
    summary = json.loads((tmp_path / "a" / "metrics.json").read_text(encoding="utf-8"))
    assert set(summary) == MLM_KEYS and set(summary["runtime"]) == RUNTIME_KEYS
    assert summary["perplexity"] == pytest.approx(np.exp(summary["loss"]))


def test_mlm_loss_and_accuracy_equal_transformers(hf_mlm_dir, raw_text, tmp_path):
    import torch
    import transformers

    from sbert_cli.data.batching import pad_batch
    from sbert_cli.data.shards import MLMShards

    shards_dir = _make_shards(raw_text, tmp_path / "shards", hf_mlm_dir)
    ours = evaluate(hf_mlm_dir, shards_dir, batch_size=16, device="cpu", precision="fp32")
    reference = transformers.BertForMaskedLM.from_pretrained(hf_mlm_dir).eval()
    examples = list(MLMShards(shards_dir))
    input_ids, attention_mask = pad_batch([e.input_ids for e in examples], 0)
    with torch.inference_mode():  # one padded forward for all sequences
        logits = reference(input_ids=input_ids, attention_mask=attention_mask).logits
    rows = torch.cat([torch.full((len(e.masked_positions),), i) for i, e in enumerate(examples)])
    columns = torch.cat([torch.as_tensor(e.masked_positions, dtype=torch.long) for e in examples])
    labels = torch.cat([torch.as_tensor(e.masked_labels, dtype=torch.long) for e in examples])
    logits = logits[rows, columns]  # (P, V)
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    best = logits.topk(5, dim=-1).indices
    top1 = int((best[:, 0] == labels).sum())
    top5 = int((best == labels[:, None]).any(dim=-1).sum())
    assert ours.num_predictions == len(losses)
    assert ours.loss == pytest.approx(float(losses.mean()), rel=1e-5)
    assert (ours.mlm_accuracy, ours.mlm_top5_accuracy) == (top1 / len(losses), top5 / len(losses))


def test_mlm_accuracy_counts_hits(hf_mlm_dir, raw_text, tmp_path):
    # A model that predicts the token it sees is right exactly on the predictions left unchanged.
    import torch

    from sbert_cli.data.shards import MLMShards
    from sbert_cli.model.model_dir import load_tokenizer
    from sbert_cli.tasks.pretrain import eval_source, score_masked

    class CopyInput(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, token_type_ids=None, masked_positions=None):
            seen = torch.gather(input_ids, 1, masked_positions)
            return torch.nn.functional.one_hot(seen, 21128).float() * 10

    shards = MLMShards(_make_shards(raw_text, tmp_path / "s", hf_mlm_dir, mask_token_prob=0.5, random_token_prob=0.0))
    source = eval_source(shards, load_tokenizer(hf_mlm_dir), seed=0)
    _, count, correct, correct_top5 = score_masked(CopyInput(), source, 0, 8, torch.device("cpu"), "fp32")
    counts = shards.manifest["counts"]
    assert count == counts["masked"] and correct == correct_top5 == counts["masked_unchanged"] > 0


def test_mlm_on_unmasked_shards_masks_independently_of_batching(hf_mlm_dir, raw_text, tmp_path):
    shards = _make_shards(raw_text, tmp_path / "s", hf_mlm_dir, mask=False)
    one = evaluate(hf_mlm_dir, shards, seed=3, batch_size=5, device="cpu", precision="fp32")
    many = evaluate(hf_mlm_dir, shards, seed=3, batch_size=24, device="cpu", precision="fp32")
    other_seed = evaluate(hf_mlm_dir, shards, seed=4, batch_size=24, device="cpu", precision="fp32")
    assert one.seed == 3 and one.num_predictions == many.num_predictions > 0
    assert one.loss == pytest.approx(many.loss, rel=1e-5)
    assert other_seed.loss != pytest.approx(many.loss, rel=1e-7)


def test_mlm_cli_json(hf_mlm_dir, raw_text, tmp_path):
    result = CliRunner().invoke(app, ["eval", "-m", str(hf_mlm_dir), "-d", str(raw_text), "-o", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == MLM_KEYS
    assert "sequences/s" in result.stderr
