"""Tagging inference: exact character offsets on mixed text, the decoding rule against enumeration, long texts in
windows, the Python API, eval scoring what predict returns, and transformers reading an exported tagger."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from sbert_cli.data.ner import Span, tag_names, word_offsets
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.resources import CHINESE_VOCAB
from sbert_cli.tasks.ner import train_tagger
from sbert_cli.tasks.options import NerOptions
from sbert_cli.tasks.ner_predict import (
    constraints_for,
    decode_words,
    entities_of,
    evaluate_tagger,
    load_tagger,
)
from sbert_cli.train.types import TrainConfig
from tests.test_train_ner import synthesize

pytestmark = pytest.mark.usefixtures("one_thread")

TAGS = tag_names(["LOC", "ORG", "PER"])


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer.from_vocab(CHINESE_VOCAB)


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner-predict")
    (folder / "train.txt").write_text(synthesize(96, 0), encoding="utf-8")
    (folder / "dev.txt").write_text(synthesize(16, 1), encoding="utf-8")
    out = folder / "run"
    # max_seq_len 16: the longest template takes two windows, so the tagger learns windows as predict cuts them.
    options = NerOptions(folder / "train.txt", None, config_name="tiny", max_seq_len=16, crf=True)
    train_tagger(options, TrainConfig(out, batch_size=16, epochs=4, lr=2e-3, plot=False, device="cpu", precision="fp32"))
    return out / "last", folder / "dev.txt"


def test_entities_cover_exactly_their_text_on_mixed_script(tokenizer):
    text = "我用iPhone 15在北京花了１２３元，ＡＢＣ公司\u200b的Ｔｏｍ说OK"
    offsets = word_offsets(tokenizer, text)
    words = [text[s:e] for s, e in offsets]
    assert "iPhone" in words and "１２３" in words
    tags = ["O"] * len(offsets)
    tags[words.index("iPhone")] = "S-ORG"
    b = words.index("北")
    tags[b : b + 2] = ["B-LOC", "E-LOC"]
    start = words.index("１２３")
    tags[start : start + 2] = ["B-ORG", "E-ORG"]  # a digit run and the character after it
    a = words.index("ａｂｃ") if "ａｂｃ" in words else words.index("ＡＢＣ")
    tags[a : a + 3] = ["B-ORG", "I-ORG", "E-ORG"]
    probs = np.linspace(0.5, 1.0, len(offsets)).astype(np.float32)
    found = entities_of(text, offsets, [TAGS.index(t) for t in tags], probs, TAGS)
    assert [(e.text, e.label) for e in found] == [("iPhone", "ORG"), ("北京", "LOC"), ("１２３元", "ORG"), ("ＡＢＣ公司", "ORG")]
    for e in found:
        assert text[e.start : e.end] == e.text
        assert min(probs) <= e.score <= 1.0
    assert found[1].score == pytest.approx(float(probs[b : b + 2].mean()))


def test_without_a_crf_the_decoded_path_is_the_most_probable_well_formed_one():
    tags = tag_names(["X"])  # O B-X I-X E-X S-X
    constraints = constraints_for(tags)
    start_ok, trans_ok, end_ok = (c.tolist() for c in (constraints.start_ok, constraints.trans_ok, constraints.end_ok))
    rng = np.random.default_rng(0)
    for n in (1, 2, 4):
        scores = rng.normal(size=(n, len(tags))).astype(np.float32) * 3
        log_p = torch.log_softmax(torch.from_numpy(scores), -1).numpy()
        valid = [p for p in itertools.product(range(len(tags)), repeat=n)
                 if start_ok[p[0]] and end_ok[p[-1]] and all(trans_ok[a][b] for a, b in zip(p, p[1:]))]
        best = max(valid, key=lambda p: sum(log_p[t, j] for t, j in enumerate(p)))
        (decoded,), (probs,) = decode_words([scores], None, constraints)
        assert tuple(decoded) == best
        np.testing.assert_allclose(probs, np.exp([log_p[t, j] for t, j in enumerate(best)]), rtol=1e-5)


def test_a_trained_tagger_finds_entities_and_the_api_matches(tagger_dir):
    import sbert_cli

    model_dir, _ = tagger_dir
    tagger = load_tagger(model_dir, device="cpu", precision="fp32")
    assert tagger.crf and tagger.labels == ["LOC", "ORG", "PER"]
    found = sbert_cli.ner("张伟昨天去了北京。", tagger)
    assert [(e.text, e.label) for e in found] == [("张伟", "PER"), ("北京", "LOC")]
    texts = ["王芳在华为公司工作。", "", "   ", "今天上海天气很好。"]
    many = sbert_cli.ner(texts, model_dir, device="cpu", precision="fp32")
    assert [[(e.text, e.label) for e in row] for row in many] == [[("王芳", "PER"), ("华为公司", "ORG")], [], [], [("上海", "LOC")]]
    assert json.loads(json.dumps(found[0].to_json())) == {"text": "张伟", "label": "PER", "start": 0, "end": 2,
                                                          "score": round(found[0].score, 6)}


class LookupTagger(torch.nn.Module):
    """Tag scores from each token alone: 北 B-LOC, 京 E-LOC, the rest O, so windows and their merge are all that
    can lose or duplicate an entity."""

    crf = None

    def __init__(self, tokenizer):
        super().__init__()
        self.table = torch.zeros(len(tokenizer), len(TAGS))
        self.table[:, 0] = 5.0
        self.table[tokenizer.vocab["北"], TAGS.index("B-LOC")] = 10.0
        self.table[tokenizer.vocab["京"], TAGS.index("E-LOC")] = 10.0

    def forward(self, input_ids, attention_mask=None):
        return self.table[input_ids]


@pytest.mark.parametrize("max_seq_len", [5, 16, 512])
def test_long_texts_are_read_in_windows_without_losing_or_doubling_entities(tokenizer, max_seq_len):
    from sbert_cli.tasks.inference import Runtime
    from sbert_cli.tasks.ner_predict import Tagger

    text = "张伟昨天去了北京。iPhone在北京" * 9  # 162 characters, 243 at most ids
    tagger = Tagger(LookupTagger(tokenizer), tokenizer, TAGS, ["LOC", "ORG", "PER"], torch.device("cpu"), "fp32", 4,
                    max_seq_len, Runtime("cpu", "fp32", 4))
    found = tagger.entities([text])[0]
    starts = [i for i in range(len(text)) if text.startswith("北京", i)]
    assert [(e.start, e.end, e.text, e.label) for e in found] == [(i, i + 2, "北京", "LOC") for i in starts]


def test_eval_scores_exactly_what_predict_returns(tagger_dir, tmp_path):
    from sbert_cli.data.ner import read_ner_file
    from sbert_cli.tasks.ner_metrics import score_entities

    model_dir, dev = tagger_dir
    tagger = load_tagger(model_dir, device="cpu", precision="fp32")
    evaluation = evaluate_tagger(tagger, dev, str(model_dir))
    data = read_ner_file(dev, labels=tagger.labels)
    predicted = tagger.entities([e.text for e in data.examples])
    want = score_entities([list(e.spans) for e in data.examples],
                          [[Span(p.start, p.end, p.label) for p in row] for row in predicted])
    report = evaluation.to_json()
    assert report["task"] == "ner" and report["entity_f1"] == want["entity_f1"]
    assert report["per_label"] == want["per_label"] and report["errors"] == want["errors"]
    assert report["num_sentences"] == 16 and report["scheme"] == "BIO"
    wrong = [e.origin for e, row in zip(data.examples, predicted)
             if {(s.start, s.end, s.label) for s in e.spans} != {(p.start, p.end, p.label) for p in row}]
    assert [w.origin for w in evaluation.wrong] == wrong
    from sbert_cli.tasks.evaluate import write_wrong_sentences

    path = write_wrong_sentences(evaluation.wrong, tmp_path / "wrong.tsv")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "origin\ttext\tgold\tpredicted" and len(lines) == 1 + len(wrong)


def test_transformers_reads_an_exported_tagger_and_sbert_reads_it_back(tagger_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    from sbert_cli.tasks.convert import convert_weights
    from sbert_cli.model.model_dir import load_for_task

    model_dir, _ = tagger_dir
    summary = convert_weights(model_dir, tmp_path / "hf", to="hf")
    assert summary.architecture == "BertForTokenClassification" and summary.heads == ["ner"]
    ours = load_for_task(model_dir, "ner").model
    theirs, info = transformers.AutoModelForTokenClassification.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and all(k.startswith(("crf.", "bert.pooler.")) for k in info["unexpected_keys"])
    ids = torch.tensor([[101, 2476, 2399, 1343, 749, 1266, 776, 102]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs.eval()(ids).logits, atol=1e-5, rtol=1e-5)
    assert theirs.config.id2label[1] == "B-LOC"
    # The export has no sbert.json: config.json's architectures make it a tagger, its CRF comes along.
    back = load_tagger(tmp_path / "hf", device="cpu", precision="fp32")
    assert back.crf and back.entities(["张伟昨天去了北京。"]) == load_tagger(model_dir, device="cpu", precision="fp32").entities(["张伟昨天去了北京。"])


def test_a_text_classifier_is_not_a_tagger(tmp_path, hf_cls_dir):
    from sbert_cli.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"is a text classifier \(train-cls\), not a tagger"):
        load_tagger(hf_cls_dir, device="cpu")


def cli(*args, **kwargs):
    from typer.testing import CliRunner

    from sbert_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def test_cli_predict_tags_arguments_stdin_and_files_alike(tagger_dir, tmp_path):
    model_dir, _ = tagger_dir
    run = ("--model", model_dir, "--device", "cpu", "--precision", "fp32")
    lines = cli("predict", *run, "--json", "张伟昨天去了北京。", "王芳在华为公司工作。")
    assert lines.exit_code == 0, lines.output
    rows = [json.loads(line) for line in lines.stdout.splitlines()]
    assert rows[0]["text"] == "张伟昨天去了北京。" and [e["text"] for e in rows[0]["entities"]] == ["张伟", "北京"]
    piped = cli("predict", *run, "--json", input="张伟昨天去了北京。\n\n王芳在华为公司工作。\n")
    assert [json.loads(line) for line in piped.stdout.splitlines()] == rows
    assert "skipped 1 blank line (no text to tag)" in piped.stderr
    table = cli("predict", *run, "--format", "table", "张伟昨天去了北京。")
    assert table.stdout.strip() == "张伟[PER]昨天去了北京[LOC]。"  # colours when on a terminal
    tsv = cli("predict", *run, "张伟昨天去了北京。")  # a pipe: TSV
    assert tsv.stdout == "张伟昨天去了北京。\t0-2:PER:张伟\t6-8:LOC:北京\n"
    wrong = cli("predict", *run, "--top-k", "2", "张伟")
    assert wrong.exit_code == 1 and "--top-k is for classifiers" in wrong.stderr


def test_cli_eval_reports_entity_scores(tagger_dir, tmp_path):
    model_dir, dev = tagger_dir
    result = cli("eval", "--model", model_dir, "--data", dev, "--json", "--out", tmp_path / "report", "--device", "cpu",
                 "--precision", "fp32")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["task"] == "ner" and set(report["per_label"]) == {"LOC", "ORG", "PER"}
    assert {"entity_f1", "precision", "recall", "macro_f1", "errors", "num_wrong_sentences"} <= set(report)
    assert (tmp_path / "report" / "wrong_sentences.tsv").is_file()
    shown = cli("eval", "--model", model_dir, "--data", dev, "--device", "cpu", "--precision", "fp32")
    assert shown.exit_code == 0 and "micro avg" in shown.stdout and "boundary" in shown.stdout
