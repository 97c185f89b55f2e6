"""Classification readers: formats, label handling, and errors that name file and line."""

from __future__ import annotations

import json

import pytest

from sbert_cli.data.classification import read_classification_file, read_label_names
from sbert_cli.errors import DataError


def write(path, text: str, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_thucnews_with_class_file(thucnews_train, thucnews_classes):
    names = read_label_names(thucnews_classes)
    data = read_classification_file(thucnews_train, names, allow_new_labels=False)
    assert len(data) == 9000 and data.label_names == names and data.pairs is None
    assert data.texts[0].startswith("34家公司变脸") and data.labels[0] == 2 and data.line_numbers[0] == 1
    assert sorted(set(data.labels)) == list(range(10))


def test_label_ids_do_not_depend_on_file_order(tmp_path):
    rows = ["好\tsports", "坏\tfinance", "中\tgame"]
    a = read_classification_file(write(tmp_path / "a.txt", "\n".join(rows)))
    b = read_classification_file(write(tmp_path / "b.txt", "\n".join(sorted(rows, key=lambda r: r[-1]))))
    assert a.label_names == b.label_names == ["finance", "game", "sports"]
    assert [a.label_names[i] for i in a.labels] == ["sports", "finance", "game"]


def test_integer_labels_without_class_file_sort_numerically(tmp_path):
    data = read_classification_file(write(tmp_path / "t.tsv", "a\t10\nb\t2\nc\t1\n"))
    assert data.label_names == ["1", "2", "10"] and data.labels == [2, 1, 0]
    dev = read_classification_file(write(tmp_path / "d.tsv", "x\t1\n"), data.label_names, allow_new_labels=False)
    assert dev.labels == [0]  # "1" is a name here, not the index 1


def test_bom_crlf_blank_lines_and_pairs(tmp_path):
    path = write(tmp_path / "p.tsv", "\ufeff今天\t明天\tyes\r\n\r\n昨天\t后天\tno\r\n")
    data = read_classification_file(path)
    assert data.texts == ["今天", "昨天"] and data.pairs == ["明天", "后天"]
    assert data.line_numbers == [1, 3] and data.label_names == ["no", "yes"]


def test_csv_and_jsonl(tmp_path):
    csv_data = read_classification_file(write(tmp_path / "t.csv", 'label,text\nsports,"a, b"\nfinance,c\n'))
    assert csv_data.texts == ["a, b", "c"] and csv_data.labels == [1, 0]
    lines = [json.dumps({"text": "甲", "label": 1}), json.dumps({"sentence": "乙", "label": 0})]
    js = read_classification_file(write(tmp_path / "t.jsonl", "\n".join(lines)), ["neg", "pos"], allow_new_labels=False)
    assert js.texts == ["甲", "乙"] and js.labels == [1, 0]


def test_unlabelled_file_for_prediction(tmp_path):
    data = read_classification_file(write(tmp_path / "u.txt", "一\n二\n"), ["a", "b"], require_labels=False)
    assert data.labels is None and data.texts == ["一", "二"] and data.label_names == ["a", "b"]


@pytest.mark.parametrize(
    "name, content, kwargs, message",
    [
        ("cols.txt", "a\t1\nb\t2\t3\n", {}, "cols.txt:2: 3 tab-separated column(s)"),
        ("missing.txt", "a\t1\nb\t\n", {}, "missing.txt:2: missing label"),
        ("onecol.txt", "a\nb\n", {}, "onecol.txt:1: expected text<TAB>label"),
        ("empty.txt", "", {}, "empty.txt: no examples"),
        ("gbk.txt", "好\t1\n".encode("utf-8") + "坏\t1\n".encode("gbk"), {}, "gbk.txt:2: not valid UTF-8"),
        ("nul.txt", "a\t1\nb\x00\t1\n", {}, "nul.txt:2: contains NUL"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": \n', {}, "bad.jsonl:2: not valid JSON"),
        ("short.csv", "text,label\na,1\nb\n", {}, "short.csv:3: 1 column(s)"),
        ("emptytext.txt", "a\t1\n \t2\n", {}, "emptytext.txt:2: empty text"),
    ],
)
def test_errors_name_file_and_line(tmp_path, name, content, kwargs, message):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as e:
        read_classification_file(path, **kwargs)
    assert message in str(e.value)


def test_dev_label_unseen_in_train(tmp_path):
    train = read_classification_file(write(tmp_path / "train.txt", "a\tsports\nb\tfinance\n"))
    write(tmp_path / "dev.txt", "c\tsports\nd\tweather\n")
    with pytest.raises(DataError, match=r"dev.txt:2: label 'weather' not in the training labels"):
        read_classification_file(tmp_path / "dev.txt", train.label_names, allow_new_labels=False)


def test_label_out_of_class_file(tmp_path, thucnews_classes):
    names = read_label_names(thucnews_classes)
    write(tmp_path / "t.txt", "a\t3\nb\t10\n")
    with pytest.raises(DataError, match=r"t.txt:2: label '10' not in class.txt"):
        read_classification_file(tmp_path / "t.txt", names, allow_new_labels=False, label_source="class.txt")


def test_class_file_duplicates(tmp_path):
    with pytest.raises(DataError, match=r"class.txt:3: label 'a' is listed twice"):
        read_label_names(write(tmp_path / "class.txt", "a\nb\na\n"))
