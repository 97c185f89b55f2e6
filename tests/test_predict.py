"""sbert_cli/predict.py and `sbert predict`: agreement with eval, order restored, formats, inputs, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.tasks.cls_predict import TextInput, load_classifier, predict_stream, read_inputs
from sbert_cli.tasks.evaluate import evaluate_classifier

LABELS = ["finance", "sports", "game"]
TEXTS = ["中国足球队昨晚3比0战胜对手", "股市", "新款网络游戏今日公测，玩家排队等候进入服务器体验全新副本", "房价"]


@pytest.fixture(scope="module")
def classifier(hf_cls_dir):
    return load_classifier(hf_cls_dir, batch_size=3, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    lines = [f"{text}\t{LABELS[i % 3]}" for i, text in enumerate(TEXTS * 3)]
    path = tmp_path_factory.mktemp("predict") / "data.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_top1_agrees_with_eval_predictions(classifier, data_file):
    evaluation = evaluate_classifier(classifier, data_file)
    inputs = read_inputs([], data_file)
    predicted = [p.labels[0][0] for p in predict_stream(classifier, inputs.items, chunk_size=5)]
    assert predicted == [LABELS[i] for i in evaluation.predictions]


def test_length_sorted_batches_restore_input_order(classifier):
    batched = classifier.probabilities(TEXTS)
    one_by_one = np.concatenate([classifier.probabilities([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)  # padding and reordering change nothing
    assert np.allclose(batched.sum(axis=1), 1, atol=1e-5)


def test_encoding_matches_the_tokenizer_with_truncation(hf_cls_dir):
    short = load_classifier(hf_cls_dir, max_length=8, device="cpu")
    texts = TEXTS + ["Hello World！😀 你好 [MASK] café", "a\nb 中文"]
    sequences, type_ids = short._encode(texts, None)
    assert [list(map(int, s)) for s in sequences] == short.tokenizer.encode(texts, max_length=8) and type_ids is None
    pairs = ["体育"] * len(texts)
    sequences, type_ids = short._encode(texts, pairs)
    assert [list(s) for s in sequences] == short.tokenizer.encode(texts, max_length=8, pairs=pairs)
    assert all(len(t) == len(s) <= 8 and t[-1] == 1 for s, t in zip(sequences, type_ids))


def test_top_k_sorted_and_chunking_changes_nothing(classifier):
    items = [TextInput(t, f"argument {i}") for i, t in enumerate(TEXTS, 1)]
    whole = list(predict_stream(classifier, items, top_k=5))
    chunked = list(predict_stream(classifier, items, top_k=5, chunk_size=1))
    for a, b in zip(whole, chunked, strict=True):
        assert [label for label, _ in a.labels] == [label for label, _ in b.labels]
        assert [s for _, s in a.labels] == pytest.approx([s for _, s in b.labels], abs=1e-5)
    for prediction in whole:
        scores = [score for _, score in prediction.labels]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)  # top_k clamps to the label count
        assert {label for label, _ in prediction.labels} == set(LABELS)


def _predict(*args, input=None):
    return CliRunner().invoke(app, ["predict", *map(str, args)], input=input)


def test_cli_jsonl_schema(hf_cls_dir):
    result = _predict("-m", hf_cls_dir, "--json", "-k", "2", *TEXTS[:2])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["text"] for row in rows] == TEXTS[:2]
    for row in rows:
        assert set(row) == {"text", "labels"}
        assert len(row["labels"]) == 2 and all(set(x) == {"label", "score"} for x in row["labels"])
        assert row["labels"][0]["score"] >= row["labels"][1]["score"]
    assert "texts/s" in result.stderr  # throughput on stderr, stdout stays JSON lines


def test_cli_reads_stdin_and_writes_tsv(hf_cls_dir):
    result = _predict("-m", hf_cls_dir, "--format", "tsv", input="\n".join(TEXTS) + "\n\n")  # blank lines skipped
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == TEXTS
    assert all(len(row) == 3 and row[1] in LABELS and 0 <= float(row[2]) <= 1 for row in rows)


@pytest.mark.parametrize("output", [["--format", "tsv"], ["--json"]])
def test_cli_says_once_on_stderr_how_many_blank_lines_it_skipped(hf_cls_dir, tmp_path, output):
    plain = _predict("-m", hf_cls_dir, "--precision", "fp32", *output, input="\n".join(TEXTS) + "\n")
    assert plain.exit_code == 0, plain.output
    assert "blank line" not in plain.stderr
    with_blanks = "\n" + TEXTS[0] + "\n  \n" + "\n".join(TEXTS[1:]) + "\n\n"  # 3 blank lines, one only spaces
    piped = _predict("-m", hf_cls_dir, "--precision", "fp32", *output, input=with_blanks)
    assert piped.exit_code == 0, piped.output
    assert piped.stdout == plain.stdout  # one prediction per text, as without the blank lines
    assert piped.stderr.count("note: skipped 3 blank lines (no text to classify)") == 1, piped.stderr
    one_blank = tmp_path / "texts.txt"  # --file goes through the classification reader: counted there too
    one_blank.write_text("\n".join(TEXTS[:2]) + "\n\n" + "\n".join(TEXTS[2:]) + "\n", encoding="utf-8")
    from_file = _predict("-m", hf_cls_dir, "--precision", "fp32", *output, "--file", one_blank)
    assert from_file.exit_code == 0, from_file.output
    assert from_file.stdout == plain.stdout
    assert "note: skipped 1 blank line (no text to classify)" in from_file.stderr


def test_cli_file_table(hf_cls_dir, data_file):
    result = _predict("-m", hf_cls_dir, "--file", data_file, "--format", "table")
    assert result.exit_code == 0, result.output
    assert "score" in result.stdout and TEXTS[1] in result.stdout


def test_read_inputs_errors(tmp_path):
    with pytest.raises(DataError, match="argument 2: empty text"):
        read_inputs(["体育", "  "])
    with pytest.raises(ConfigError, match="not both"):
        read_inputs(["体育"], tmp_path / "x.txt")
    blank = tmp_path / "blank.txt"
    blank.write_text("体育\tsports\n\tgame\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{blank}:2"):
        read_inputs([], blank)


def _assert_one_line_error(result, fragment):
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_cli_errors(hf_cls_dir, hf_mlm_dir, tmp_path):
    _assert_one_line_error(_predict("-m", hf_cls_dir, input=""), "no texts")
    _assert_one_line_error(_predict("-m", hf_cls_dir, input="\n \n"), "no texts")
    _assert_one_line_error(_predict("-m", hf_cls_dir, "--file", tmp_path / "missing.txt"), "missing.txt")
    _assert_one_line_error(_predict("-m", hf_mlm_dir, "体育"), "train-cls")
    _assert_one_line_error(_predict("-m", hf_cls_dir, "--format", "xml", "体育"), "--format")
