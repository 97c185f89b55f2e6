"""--help: every registered command has one (exit 0) and is listed on the top page without importing torch; flags
are shown without a value; the inference options have one vocabulary; usage lines name arguments one way."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from cli_helpers import one_line_error
from sbert_cli.cli import app

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).list_commands(None))


def test_help_lists_every_registered_command_and_does_not_import_torch():
    code = ("import sys; from sbert_cli.cli import app; app(['--help'], prog_name='sbert', standalone_mode=False); "
            "sys.exit('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("Commands")[1]
    assert {"embed", "similar", "serve", "train-cls", "pretrain", "eval", "predict"} <= set(COMMANDS)
    for command in COMMANDS:
        assert f" {command} " in listed, command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_that_exits_0(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: sbert {command}" in result.stdout and "--help" in result.stdout


def test_flags_are_shown_without_a_value_and_every_command_is_named(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    help_text = runner.invoke(app, ["train-cls", "--help"]).stdout
    assert "--force" in help_text and "<bool>" not in help_text
    top = runner.invoke(app, ["--help"]).stdout
    assert "<bool>" not in top
    first_line = [line for line in top.splitlines() if "Chinese BERT toolkit" in line][0]
    for command in ("plot", "fill-mask", "demo"):
        assert command in first_line or command in top.split("Commands")[0], command


def test_one_vocabulary_for_inference_options(monkeypatch, hf_cls_dir):
    """--max-seq-len, -b/--batch-size, --precision, --device and --threads wherever they apply; --max-length still works."""
    monkeypatch.setenv("COLUMNS", "200")
    for command in ("eval", "predict", "fill-mask", "embed", "similar"):
        text = runner.invoke(app, [command, "--help"]).stdout
        for option in ("--batch-size", "-b", "--precision", "--device", "--threads"):
            assert option in text, (command, option)
    for command in ("eval", "predict", "embed", "similar", "serve", "train-cls"):
        text = runner.invoke(app, [command, "--help"]).stdout
        assert "--max-seq-len" in text and "--max-length" not in text, command
    result = runner.invoke(app, ["predict", "-m", str(hf_cls_dir), "--max-length", "8", "--precision", "fp32", "股市大涨"])
    assert result.exit_code == 0, result.output
    one_line_error(runner.invoke(app, ["predict", "-m", str(hf_cls_dir), "--max-seq-len", "1", "股市"]), "--max-seq-len")


def test_usage_lines_name_arguments_one_way(monkeypatch):
    """Usage lines mixed {SRC}, [TEXT...]..., [texts]... and {inputs}...: arguments are now CAPITALS, optional
    ones in [brackets], repeatable ones followed by ... — whatever typer's version would print."""
    monkeypatch.setenv("COLUMNS", "200")
    expected = {"convert-weights": "[OPTIONS] SRC DST", "make-mlm-data": "[OPTIONS] INPUT...",
                "fill-mask": "[OPTIONS] [TEXT]...", "predict": "[OPTIONS] [TEXT]...", "embed": "[OPTIONS] [TEXT]...",
                "similar": "[OPTIONS] QUERY", "download": "[OPTIONS] [REPO_ID]", "plot": "[OPTIONS] RUN_DIR"}
    for command, usage in expected.items():
        text = runner.invoke(app, [command, "--help"]).stdout
        line = next(line for line in text.splitlines() if "Usage:" in line)
        assert line.split(f"sbert {command} ", 1)[1].strip() == usage, line
