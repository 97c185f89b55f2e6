"""train-ner: a tiny tagger learns, with and without the CRF; dev is scored as `sbert eval` scores; the CRF's own
lr; exact resume; what run.json and sbert.json record."""

from __future__ import annotations

import json
import os
import random
import signal

import pytest
import torch
from safetensors.torch import load_file

from sbert_cli.errors import ConfigError
from sbert_cli.tasks.ner import train_tagger
from sbert_cli.tasks.options import NerOptions
from sbert_cli.train.types import Callbacks, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PEOPLE = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄晓明"]
PLACES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉"]
ORGS = ["清华大学", "华为公司", "人民日报", "中国银行", "新华社"]
TEMPLATES = ["{PER}昨天去了{LOC}。", "{PER}在{ORG}工作。", "{ORG}位于{LOC}。", "今天{LOC}天气很好。",
             "我和{PER}在{LOC}见面，他来自{ORG}。"]


def synthesize(n: int, seed: int) -> str:
    """n CoNLL sentences (BIO) from the templates and name lists above."""
    rng = random.Random(seed)
    lists = {"PER": PEOPLE, "LOC": PLACES, "ORG": ORGS}
    sentences = []
    for _ in range(n):
        template, lines, i = rng.choice(TEMPLATES), [], 0
        while i < len(template):
            if template[i] == "{":
                j = template.index("}", i)
                kind = template[i + 1 : j]
                word = rng.choice(lists[kind])
                lines += [f"{c} {'B' if k == 0 else 'I'}-{kind}" for k, c in enumerate(word)]
                i = j + 1
            else:
                lines.append(f"{template[i]} O")
                i += 1
        sentences.append("\n".join(lines) + "\n")
    return "\n".join(sentences)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner-data")
    (folder / "train.txt").write_text(synthesize(96, 0), encoding="utf-8")
    (folder / "dev.txt").write_text(synthesize(24, 1), encoding="utf-8")
    return folder


def options(data, **changes):
    # max_seq_len 16: the longer template takes two windows, so the window path is trained and merged too.
    return NerOptions(**{"train_file": data / "train.txt", "dev_file": data / "dev.txt", "config_name": "tiny",
                         "max_seq_len": 16, **changes})


def config(out, **changes):
    settings = dict(out_dir=out, batch_size=16, epochs=3, lr=2e-3, plot=False, device="cpu", precision="fp32")
    return TrainConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def crf_run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("ner-crf") / "run"
    return out, train_tagger(options(data, crf=True), config(out, epochs=4))


def test_a_tiny_crf_tagger_learns_and_dev_is_scored_as_eval_scores(crf_run):
    out, result = crf_run
    assert result.labels == ["LOC", "ORG", "PER"] and result.scheme == "BIO"
    assert result.tag_names[:5] == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    report = result.reports["dev"].to_json()
    assert report["task"] == "ner" and report["entity_f1"] > 0.5
    # The dev score that picked OUT/best is the one `sbert eval` computes on it: one decoding path.
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max((e for e in evals if e["kind"] == "eval"), key=lambda e: e["entity_f1"])
    assert report["entity_f1"] == pytest.approx(best["entity_f1"], abs=1e-9)
    assert report["precision"] == pytest.approx(best["precision"], abs=1e-9)


def test_run_and_model_dir_record_the_tagger(crf_run):
    out, result = crf_run
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "ner" and run["crf"] is True and run["scheme"] == "BIO"
    assert run["crf_lr_scale"] == 100 and run["crf_lr"] == pytest.approx(0.2)
    meta = json.loads((out / "best" / "sbert.json").read_text())
    assert meta["task"] == "ner" and meta["crf"] is True and meta["labels"] == ["LOC", "ORG", "PER"]
    assert meta["heads"] == ["ner"]
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["id2label"]["1"] == "B-LOC" and len(config["id2label"]) == 13
    assert config["architectures"] == ["BertForTokenClassification"]
    weights = load_file(str(out / "best" / "model.safetensors"))
    assert weights["crf.transitions"].shape == (13, 13) and weights["classifier.weight"].shape == (13, 64)
    assert weights["crf.transitions"].abs().max() > 0.1  # trained at its own, larger rate


def test_without_crf_the_tagger_learns_too(tmp_path, data):
    result = train_tagger(options(data), config(tmp_path / "run", epochs=4))
    assert result.reports["dev"].to_json()["entity_f1"] > 0.5
    assert "crf.transitions" not in load_file(str(tmp_path / "run" / "best" / "model.safetensors"))


def test_the_crf_trains_at_its_own_rate(tmp_path, data):
    from sbert_cli.train import loop

    seen = []
    original = loop.Trainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.extend((tuple(p.shape), group["lr"]) for group in self.optimizer.param_groups for p in group["params"])

    loop.Trainer.__init__ = spy
    try:
        result = train_tagger(options(data, crf=True, crf_lr_scale=10, dev_file=None),
                              config(tmp_path / "run", max_steps=1, epochs=None, lr=1e-3, warmup_steps=0))
    finally:
        loop.Trainer.__init__ = original
    assert result.train.step == 1
    fast = sorted(shape for shape, lr in seen if lr != pytest.approx(1e-3))
    assert fast == [(13,), (13,), (13, 13)]  # crf.start_scores, crf.end_scores, crf.transitions
    assert [lr for _, lr in seen if lr != pytest.approx(1e-3)] == pytest.approx([1e-2] * 3)


def signal_at(step: int, micro: int):
    def hook(current_step, micro_index):
        if (current_step, micro_index) == (step, micro):
            os.kill(os.getpid(), signal.SIGINT)
    return hook


def test_an_interrupted_crf_run_resumes_bit_identical(tmp_path, data):
    # --config tiny keeps dropout on, so resuming must restore the RNG state too; 96 sentences in global batches
    # of 16 windows or so: 7 steps an epoch.
    settings = dict(epochs=2, batch_size=8, grad_accum=2, save_every=3)
    crf = options(data, crf=True, dev_file=None)
    reference = tmp_path / "reference"
    train_tagger(crf, config(reference, **settings))
    out = tmp_path / "run"
    stopped = train_tagger(crf, config(out, **settings), on_micro_batch=signal_at(5, 1))
    assert stopped.train.interrupted and stopped.train.step == 6
    resumed = train_tagger(crf, config(out, resume=True, **settings))
    assert resumed.train.resumed_from.name == "step-0000006" and not resumed.train.interrupted
    a, b = load_file(str(reference / "last" / "model.safetensors")), load_file(str(out / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and "crf.transitions" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_with_or_without_the_crf_is_refused(tmp_path, data):
    from sbert_cli.errors import ResumeError

    out = tmp_path / "run"
    train_tagger(options(data, crf=True, dev_file=None), config(out, max_steps=2, epochs=None))
    with pytest.raises(ResumeError, match="it was trained with a CRF; resume with `crf`"):
        train_tagger(options(data, dev_file=None), config(out, max_steps=2, epochs=None, resume=True))


@pytest.mark.parametrize("change, message", [
    (dict(max_seq_len=2), "`max_seq_len` must be at least 3"),
    (dict(crf_lr_scale=0.0), "`crf_lr_scale` must be a positive number"),
    (dict(vocab="vocab.txt", config_name=None, model="x"), "`vocab` goes with `config_name`"),
])
def test_bad_options_are_one_line_errors(tmp_path, data, change, message):
    with pytest.raises(ConfigError, match=message):
        train_tagger(options(data, **change), config(tmp_path / "run"))


def test_the_cli_prints_scheme_and_labels_first_and_the_eval_report_last(tmp_path):
    from typer.testing import CliRunner

    from sbert_cli.cli import app
    from sbert_cli.resources import NER_SAMPLE_DEV, NER_SAMPLE_TRAIN

    out = tmp_path / "run"  # the bundled sample (BMES), a tiny BERT from scratch
    result = CliRunner().invoke(app, ["train-ner", "--train", str(NER_SAMPLE_TRAIN), "--dev", str(NER_SAMPLE_DEV),
                                      "--config", "tiny", "--crf", "--out", str(out), "--epochs", "2", "--batch-size", "32",
                                      "--max-seq-len", "64", "--no-plot", "--precision", "fp32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "scheme BMES" in lines[0] and "3 entity types: LOC, ORG, PER" in lines[0]
    assert any("CRF lr" in line and "crf_lr_scale" not in line for line in lines[:4])  # the CLI names flags: --crf-lr-scale
    assert "dev (best model, fp32)" in result.stdout and "micro avg" in result.stdout
    assert (out / "eval-dev" / "wrong_sentences.tsv").is_file()
    report = json.loads((out / "eval-dev" / "metrics.json").read_text())
    assert report["task"] == "ner" and report["scheme"] == "BMES"
    assert report["entity_f1"] > 0.6  # measured 0.94 (a fifth of dev has entities train never shows)


def test_from_a_checkpoint_the_tagger_head_is_new_and_the_rate_is_a_fine_tuning_one(tmp_path, data, hf_mlm_dir):
    messages = []

    class Lines(Callbacks):
        def message(self, text):
            messages.append(text)

    result = train_tagger(options(data, config_name=None, model=str(hf_mlm_dir), crf=True, dev_file=None),
                          config(tmp_path / "run", max_steps=2, epochs=None, lr=None), Lines())
    assert "classifier.weight" in result.new_head and "crf.*" in result.new_head
    assert any(line.startswith("lr 2e-3 (fine-tuning") for line in messages)  # hidden 32: the narrow-model row
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["lr_choice"]["situation"] == "fine-tuning" and run["model"] == str(hf_mlm_dir)
