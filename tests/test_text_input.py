"""Raw text input: formats, encodings, line ends, and bad lines as file:line errors or counted skips."""

from __future__ import annotations

import gzip
import json

import pytest
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.data.shards import MLMShards
from sbert_cli.data.text_input import TextReader
from sbert_cli.errors import ConfigError, DataError


def read_all(*paths, **options):
    reader = TextReader(list(paths), **options)
    return list(reader), reader.stats


def test_plain_text_blank_lines_separate_documents(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("第一句。\n第二句。\n\n  \n第三句。\n", encoding="utf-8")
    lines, stats = read_all(path)
    assert lines == [("第一句。", True), ("第二句。", False), ("第三句。", True)]
    assert stats.lines == 3 and stats.blank_lines == 2 and stats.skipped_lines == 0


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes("\ufeff你好世界\r\n再见\r\n".encode("utf-8"))
    lines, _ = read_all(path)
    assert [text for text, _ in lines] == ["你好世界", "再见"]


def test_tab_separated_txt_is_read_as_tsv_first_column(tmp_path, thucnews_train):
    path = tmp_path / "head.txt"
    path.write_text("".join(thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)[:3]), encoding="utf-8")
    lines, _ = read_all(path)
    assert lines[0] == ("34家公司变脸 业绩向上修正股九成跑赢大盘", True)
    assert all(starts for _, starts in lines)  # each TSV row is its own document
    second, _ = read_all(path, text_column=1)
    assert [text for text, _ in second] == ["2", "9", "0"]


def test_a_stray_tab_does_not_make_plain_text_tsv(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_text("有\t制表符\n没有制表符\n", encoding="utf-8")
    lines, _ = read_all(path)
    assert [text for text, _ in lines] == ["有\t制表符", "没有制表符"]


def test_jsonl_and_gzip(tmp_path):
    path = tmp_path / "data.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"content": "北京欢迎你", "id": 1}, ensure_ascii=False) + "\n")
        f.write(json.dumps({"content": "上海"}, ensure_ascii=False) + "\n")
    lines, _ = read_all(path, text_field="content")
    assert [text for text, _ in lines] == ["北京欢迎你", "上海"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("gbk.txt", "好的\n".encode("utf-8") + "中文".encode("gbk") + b"\n", r"gbk.txt:2: invalid UTF-8.*GBK"),
        ("nul.txt", b"ok\nfine\nbad\x00line\n", r"nul.txt:3: NUL byte"),
        ("rows.tsv", "a\t1\nb\t2\nc\t3\textra\n".encode(), r"rows.tsv:3: expected 2 tab-separated columns.*found 3"),
        ("broken.jsonl", b'{"text": "ok"}\n{"text": "unterminated\n', r"broken.jsonl:2: not valid JSON"),
        ("field.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', r"field.jsonl:2: no 'text' field"),
        ("surrogate.jsonl", b'{"text": "ok"}\n{"text": "\\ud800x"}\n', r"surrogate.jsonl:2: .*lone surrogate"),
    ],
    ids=["gbk", "nul", "tsv-columns", "broken-json", "missing-field", "lone-surrogate"],
)
def test_bad_lines_are_errors_naming_file_and_line_by_default(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_all(path)


def test_skip_counts_bad_lines_and_keeps_the_first_locations(tmp_path):
    path = tmp_path / "messy.tsv"
    path.write_bytes(b"good\t1\n\xb9\xfe\t2\n\nbad\x00\t3\nfine\t4\nx\t5\t6\n")
    lines, stats = read_all(path, on_bad_lines="skip")
    assert [text for text, _ in lines] == ["good", "fine"]
    assert stats.skipped_lines == 4
    assert stats.skipped_by_kind == {"encoding": 2, "empty": 1, "malformed": 1}
    assert stats.skipped_examples[0].startswith(f"{path}:2: invalid UTF-8")
    assert len(stats.skipped_examples) == 4


def test_empty_rows_are_skipped_by_default_and_errors_when_asked(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"text": "一"}\n\n{"text": "  "}\n{"text": "二"}\n', encoding="utf-8")
    lines, stats = read_all(path)
    assert [text for text, _ in lines] == ["一", "二"] and stats.skipped_by_kind == {"empty": 2}
    with pytest.raises(DataError, match=r"gaps.jsonl:2: empty line"):
        read_all(path, on_bad_lines="error")


def test_missing_empty_and_directory_inputs(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        TextReader([tmp_path / "missing.txt"])
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty.txt: the file is empty"):
        TextReader([tmp_path / "empty.txt"])
    with pytest.raises(DataError, match="is a directory"):
        TextReader([tmp_path])
    with pytest.raises(ConfigError):
        TextReader([tmp_path / "x"], on_bad_lines="ignore")


# --- through the CLI: exit code 1 and one line, or a counted skip; never a traceback ---------------


def run_cli(*args):
    return CliRunner().invoke(app, ["make-mlm-data", *map(str, args)])


def assert_one_line_error(result, pattern: str):
    import re

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize(
    "name, content, pattern",
    [
        ("empty.txt", b"", r"empty.txt: the file is empty"),
        ("gbk.txt", "中文句子\n".encode("gbk"), r"gbk.txt:1: invalid UTF-8.*iconv"),
        ("nul.txt", b"ok\n\x00\x00\x00\n", r"nul.txt:2: NUL byte"),
        ("broken.jsonl", b'{"text": "ok"}\n{"text": \n', r"broken.jsonl:2: not valid JSON"),
        ("columns.tsv", "甲\t1\n乙\n".encode(), r"columns.tsv:2: expected 2 tab-separated columns"),
        ("blank.txt", b"\n\n  \n", r"no text to make sequences from"),
    ],
    ids=["empty", "gbk", "nul", "broken-json", "tsv-columns", "only-blank-lines"],
)
def test_cli_bad_input_is_one_line_error(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_bytes(content)
    result = run_cli(path, "--out", tmp_path / "out")
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "out").exists()  # no half-written output left behind


def test_cli_missing_input_and_existing_output(tmp_path):
    assert_one_line_error(run_cli(tmp_path / "nope.txt", "--out", tmp_path / "o"), r"nope.txt: no such file")
    source = tmp_path / "a.txt"
    source.write_text("你好\n", encoding="utf-8")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    assert_one_line_error(run_cli(source, "--out", tmp_path / "taken"), r"taken: .*not empty.*--force")
    assert_one_line_error(run_cli(source, "--vocab", source, "--model", tmp_path), r"--model or --vocab")


def test_cli_skip_reports_counted_bad_lines_with_locations(tmp_path):
    path = tmp_path / "messy.txt"
    path.write_bytes("第一行\n".encode() + "第二行".encode("gbk") + b"\n\x00\n" + "第四行\n".encode())
    result = run_cli(path, "--out", tmp_path / "out", "--on-bad-lines", "skip")
    assert result.exit_code == 0, result.output
    assert "skipped 2 bad lines" in result.stdout and f"{path}:2: invalid UTF-8" in result.stdout
    manifest = MLMShards(tmp_path / "out").manifest
    assert manifest["counts"]["lines"] == 2 and manifest["counts"]["skipped_lines"] == 2


def test_cli_bom_and_crlf_give_the_same_data_as_clean_utf8(tmp_path):
    clean, windows = tmp_path / "clean.txt", tmp_path / "windows.txt"
    clean.write_text("今天天气很好。\nBERT 模型\n", encoding="utf-8")
    windows.write_bytes("\ufeff今天天气很好。\r\nBERT 模型\r\n".encode("utf-8"))
    assert run_cli(clean, "--out", tmp_path / "a", "--no-mask").exit_code == 0
    assert run_cli(windows, "--out", tmp_path / "b", "--no-mask").exit_code == 0
    a, b = MLMShards(tmp_path / "a"), MLMShards(tmp_path / "b")
    assert len(a) == len(b) == 2
    for i in range(2):
        assert a[i].input_ids.tolist() == b[i].input_ids.tolist()
        assert a[i].word_ids.tolist() == b[i].word_ids.tolist()


def test_one_input_layer_reads_arguments_files_gz_and_stdin_alike(tmp_path):
    """iter_texts: what fill-mask, predict and embed read; .gz files for every reader, classification files too."""
    import gzip
    import io

    from sbert_cli.data.classification import read_classification_file
    from sbert_cli.data.text_input import iter_texts
    from sbert_cli.errors import DataError

    with gzip.open(tmp_path / "texts.txt.gz", "wt", encoding="utf-8") as f:
        f.write("第一句\n\n第二句\n")
    assert list(iter_texts([], tmp_path / "texts.txt.gz")) == [("第一句", f"{tmp_path / 'texts.txt.gz'}:1"),
                                                                ("第二句", f"{tmp_path / 'texts.txt.gz'}:3")]
    assert list(iter_texts(["甲", "乙"])) == [("甲", "argument 1"), ("乙", "argument 2")]
    stdin = io.TextIOWrapper(io.BytesIO(b"ok\n\xff\xfe bad\n"), encoding="utf-8")
    with pytest.raises(DataError, match="<stdin>:2: .*UTF-8"):
        list(iter_texts([], "-", stdin))
    with gzip.open(tmp_path / "train.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("股市大涨\tfinance\n球队夺冠\tsports\n")
    data = read_classification_file(tmp_path / "train.tsv.gz")
    assert data.texts == ["股市大涨", "球队夺冠"] and data.label_names == ["finance", "sports"]


# --- issue 21: line ends, bounds and inputs that are no regular file


def test_lines_end_at_lf_crlf_or_a_lone_cr_even_across_read_chunks(monkeypatch):
    import io

    from sbert_cli.data import text_input
    from sbert_cli.data.text_input import iter_raw_lines

    data = b"a\r\nb\rc\nd\r" + b"e" * 10 + b"\r\nf"
    monkeypatch.setattr(text_input, "CHUNK_BYTES", 3)  # CRLF split between two reads must stay one line end
    assert list(iter_raw_lines(io.BytesIO(data), "x")) == [b"a", b"b", b"c", b"d", b"e" * 10, b"f"]
    monkeypatch.setattr(text_input, "CHUNK_BYTES", 1 << 16)
    assert list(iter_raw_lines(io.BytesIO(b"\r\r\n\n"), "x")) == [b"", b"", b""]


def test_old_mac_line_ends_give_one_text_per_line(tmp_path):
    path = tmp_path / "mac.txt"
    path.write_bytes("第一条\r第二条\r第三条\r".encode("utf-8"))
    lines, _ = read_all(path)
    assert [text for text, _ in lines] == ["第一条", "第二条", "第三条"]


def test_a_line_past_the_bound_names_file_and_line_and_the_variable(tmp_path, monkeypatch):
    path = tmp_path / "long.txt"
    path.write_bytes(b"short\n" + b"x" * 5000 + b"\nafter\n")
    monkeypatch.setenv("SBERT_MAX_LINE_BYTES", "4096")
    with pytest.raises(DataError, match=r"long.txt:2: a line longer than 4,096 bytes.*SBERT_MAX_LINE_BYTES"):
        read_all(path)
    monkeypatch.setenv("SBERT_MAX_LINE_BYTES", "8192")  # raised, the same file reads
    assert [text for text, _ in read_all(path)[0]] == ["short", "x" * 5000, "after"]
    monkeypatch.setenv("SBERT_MAX_LINE_BYTES", "-5")
    with pytest.raises(ConfigError, match="SBERT_MAX_LINE_BYTES must be a whole number of bytes"):
        read_all(path)


def test_the_input_budget_counts_decompressed_bytes(tmp_path, monkeypatch):
    path = tmp_path / "many.txt.gz"
    path.write_bytes(gzip.compress(b"ok\n" * 10_000))
    monkeypatch.setenv("SBERT_MAX_INPUT_BYTES", "20000")
    with pytest.raises(DataError, match=r"many.txt.gz: more than 20,000 bytes of text \(decompressed\).*SBERT_MAX_INPUT_BYTES"):
        read_all(path)
    monkeypatch.setenv("SBERT_MAX_INPUT_BYTES", "30000")
    assert read_all(path)[1].lines == 10_000


def test_a_truncated_gz_names_its_line(tmp_path):
    from sbert_cli.data.text_input import iter_texts

    path = tmp_path / "cut.txt.gz"
    path.write_bytes(gzip.compress("".join(f"第{n}行\n" for n in range(5000)).encode("utf-8"))[:2000])
    with pytest.raises(DataError, match=r"cut.txt.gz:\d+: cannot read the file .*cut short"):
        list(iter_texts([], path))


def test_a_fifo_is_read_once_and_is_not_called_empty(tmp_path):
    import os
    import threading

    from sbert_cli.data.text_input import iter_texts

    fifo = tmp_path / "pipe.tsv"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as f:
            f.write("你好\tx\n再见\ty\n".encode("utf-8"))

    for read in (lambda: [text for text, _ in read_all(fifo)[0]], lambda: [text for text, _ in iter_texts([], fifo)]):
        writer = threading.Thread(target=feed)
        writer.start()
        assert read() == ["你好", "再见"]  # the TSV sniffing did not read the pipe a second time
        writer.join()


def test_json_nested_too_deep_is_a_bad_line_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "ok"}\n' + '{"text": ' + "[" * 100_000 + "}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"deep.jsonl:2: not valid JSON \(nested too deeply"):
        read_all(path)
    lines, stats = read_all(path, on_bad_lines="skip")
    assert [text for text, _ in lines] == ["ok"] and stats.skipped_lines == 1


def test_bad_line_advice_names_on_bad_lines_only_where_the_command_has_it(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("a\tb\nc\n", encoding="utf-8")
    with pytest.raises(DataError, match="fix the row or pass `on_bad_lines` skip"):
        read_all(path)
    with pytest.raises(DataError) as refused:
        read_all(path, can_skip=False)
    assert "on_bad_lines" not in str(refused.value) and str(refused.value).endswith("fix the row")
