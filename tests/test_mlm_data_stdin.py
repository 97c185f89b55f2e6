"""make-mlm-data reads standard input as `-`: the same shards as the same text in a file, named <stdin>."""

from __future__ import annotations

import gzip
import io
import json

import pytest
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.data.text_input import TextReader
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.resources import THUCNEWS_TRAIN

THUCNEWS_LINES = THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()


def run_cli(*args, input=None):
    return CliRunner().invoke(app, ["make-mlm-data", *map(str, args)], input=input)


def shard_bytes(out) -> dict[str, bytes]:
    """Every file the run wrote except manifest.json, which records the input names."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.npy"))}


def inputs_of(out) -> list[str]:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))["inputs"]


def test_stdin_alone_gives_the_shards_of_the_same_file_even_with_workers(tmp_path):
    lines = [line.split("\t")[0] for line in THUCNEWS_LINES[:300]]
    text = "\n".join(lines[:150] + ["", "长句子。" * 100, ""] + lines[150:]) + "\n"  # documents, a line to split
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    from_file = run_cli(corpus, "--out", tmp_path / "file", "--seed", 7, "--dupe-factor", 2)
    assert from_file.exit_code == 0, from_file.output
    # --workers 2: the chunks go to a spawned helper, which never opens the input: stdin is read here.
    piped = run_cli("-", "--out", tmp_path / "stdin", "--seed", 7, "--dupe-factor", 2, "--workers", 2,
                    input=text.encode())
    assert piped.exit_code == 0, piped.output
    expected = shard_bytes(tmp_path / "file")
    assert expected and shard_bytes(tmp_path / "stdin") == expected
    assert inputs_of(tmp_path / "stdin") == ["<stdin>"]


def test_stdin_among_files_is_read_in_its_place_and_sniffed_as_tsv(tmp_path):
    first, middle, last = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    first.write_text("\n".join(line.split("\t")[0] for line in THUCNEWS_LINES[:40]) + "\n", encoding="utf-8")
    middle.write_text("\n".join(THUCNEWS_LINES[40:80]) + "\n", encoding="utf-8")  # text<TAB>label: TSV by a look
    last.write_text("\n".join(line.split("\t")[0] for line in THUCNEWS_LINES[80:120]) + "\n", encoding="utf-8")
    assert run_cli(first, middle, last, "--out", tmp_path / "files").exit_code == 0
    mixed = run_cli(first, "-", last, "--out", tmp_path / "mixed", input=middle.read_bytes())
    assert mixed.exit_code == 0, mixed.output
    assert shard_bytes(tmp_path / "mixed") == shard_bytes(tmp_path / "files")
    assert inputs_of(tmp_path / "mixed") == [str(first), "<stdin>", str(last)]


def test_default_output_dir_for_stdin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("-", input="今天天气很好。\n北京是中国的首都。\n")
    assert result.exit_code == 0, result.output
    assert inputs_of(tmp_path / "stdin-mlm") == ["<stdin>"]


@pytest.mark.parametrize(
    "args, data, message",
    [
        (["-"], "好的\n第二行\n".encode() + b"\xff\xfe\n", "<stdin>:3: invalid UTF-8"),
        (["-"], b"", "<stdin>: nothing came on standard input"),
        (["-"], gzip.compress("你好\n".encode()), "<stdin>: gzip-compressed data"),
        (["-", "-"], "你好\n".encode(), "- (standard input) is given twice"),
    ],
    ids=["bad-utf8-names-stdin-line", "empty", "gzip", "twice"],
)
def test_stdin_errors_are_one_line_and_name_stdin(tmp_path, args, data, message):
    result = run_cli(*args, "--out", tmp_path / "out", input=data)
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_text_reader_reads_dash_only_when_given_a_stdin(tmp_path):
    reader = TextReader(["-"], stdin=io.BytesIO("\ufeff甲\n\n乙\r\n".encode()))
    assert list(reader) == [("甲", True), ("乙", True)]
    assert reader.stats.blank_lines == 1 and reader.stats.total_bytes is None
    with pytest.raises(DataError, match="-: no such file"):  # e.g. `similar`'s corpus, read three times
        TextReader(["-"])
    with pytest.raises(ConfigError, match="given twice"):
        TextReader(["-", "-"], stdin=io.BytesIO(b"x\n"))
