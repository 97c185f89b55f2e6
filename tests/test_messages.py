"""The library names fields, the CLI names flags: library messages write an option as `field`; the CLI's error
boundary and note printers (cli/app.py in_flags) turn it into the running command's flag."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sbert_cli.cli.app import app, in_flags
from sbert_cli.errors import ConfigError
from sbert_cli.train.types import TrainConfig

PACKAGE = Path(__file__).resolve().parents[1] / "sbert_cli"
FLAG = re.compile(r"--[a-z][a-z0-9-]*")
COMMAND_LINE = re.compile(r"`sbert [^`]*`")  # a command to run is quoted whole, flags and all


def _command(name: str):
    import typer

    group = typer.main.get_command(app)
    return group.get_command(None, name)


def _strings_in_raises(tree: ast.AST):
    """(line, text) of each string a `raise` builds; an f-string whole, its values as {}."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            in_f_strings = set()
            for inner in ast.walk(node.exc):
                if isinstance(inner, ast.JoinedStr):
                    in_f_strings.update(id(part) for part in inner.values)
                    yield node.lineno, "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in inner.values)
            for inner in ast.walk(node.exc):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str) and id(inner) not in in_f_strings:
                    yield node.lineno, inner.value


def test_library_errors_name_fields_not_flags():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "cli":
            continue
        for line, text in _strings_in_raises(ast.parse(path.read_text(encoding="utf-8"))):
            flags = FLAG.findall(COMMAND_LINE.sub("", text))
            if flags:
                offenders.append(f"{path.relative_to(PACKAGE)}:{line}: {flags} in {text!r}")
    assert not offenders, "\n".join(offenders)


def test_in_flags_uses_the_running_commands_flags():
    message = "`max_seq_len` must be at least 2; `no_mask` data; `config_name` tiny; `batch_size` 0"
    assert in_flags(message, _command("make-mlm-data")).startswith("--max-seq-len must be at least 2; --no-mask data")
    train_cls = in_flags(message, _command("train-cls"))
    assert "--config tiny" in train_cls and "--batch-size 0" in train_cls  # the long flag, not -b
    # A field the running command lacks names the flag of the command that has it (a hint to run that one);
    # anything else stays a bare name.
    assert in_flags("give `eval_data` or `made_up`", _command("train-cls")) == "give --eval-data or made_up"
    # Hidden aliases are never suggested: eval's --max-length is the old spelling of --max-seq-len.
    assert in_flags("`max_seq_len`", _command("eval")) == "--max-seq-len"


def test_the_library_says_fields_the_cli_says_flags(tmp_path):
    with pytest.raises(ConfigError, match=r"^`grad_accum` must be at least 1"):
        TrainConfig(out_dir=tmp_path, grad_accum=0).validate()
    result = subprocess.run([sys.executable, "-m", "sbert_cli", "train-cls", "--config", "tiny", "--grad-accum", "0",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error: --grad-accum must be at least 1"), result.stderr
