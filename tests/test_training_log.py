"""What training prints when nobody watches a terminal, and how each figure says its precision (issue 21).

With stdout not a terminal (nohup, a job scheduler, `> log`) a bar shows only when it is done: two minutes of
silence, then one line. There, a plain line every `--log-every` steps. Every accuracy printed names the precision
it was computed in.
"""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.cli.progress import TrainingProgress, precision_words

runner = CliRunner()


def test_a_console_that_is_no_terminal_gets_a_line_per_logged_step():
    out = io.StringIO()
    progress = TrainingProgress(Console(file=out, width=200))
    progress.start(0, 6, "bf16")
    for step in range(1, 7):
        progress.step(step, {"loss": 1.0 / step, "lr": 1e-3, "tokens_per_s": 1000.0} if step % 2 == 0 else None)
        if step == 4:
            assert out.getvalue().count("\n") == 2  # written as it goes, not at the end
    progress.evaluated(6, {"loss": 0.5, "accuracy": 0.75}, improved=True)
    progress.end()
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines[:3]] == ["step 2/6", "step 4/6", "step 6/6"]
    assert "loss 0.2500" in lines[1] and "elapsed 0:0" in lines[1] and "ETA" in lines[1]
    assert lines[3].startswith("eval step 6 (bf16 autocast): loss 0.5000  accuracy 0.7500")
    assert "━" not in out.getvalue()  # no bar


def test_a_terminal_still_gets_the_bar():
    out = io.StringIO()
    progress = TrainingProgress(Console(file=out, force_terminal=True, width=120))
    progress.start(0, 4)
    for step in range(1, 5):
        progress.step(step, {"loss": 1.0, "lr": 1e-3, "tokens_per_s": 1000.0})
    progress.end()
    assert "━" in out.getvalue() and "step 2/4" not in out.getvalue()


@pytest.mark.parametrize("precision, training, words", [
    ("fp32", True, "fp32"), ("bf16", True, "bf16 autocast"), ("bf16", False, "bf16 weights"), ("int8", False, "int8 weights"),
])
def test_precision_in_words(precision, training, words):
    assert precision_words(precision, training) == words


def test_train_cls_into_a_log_file_logs_every_log_every_steps_and_names_each_figure_s_precision(tmp_path, thucnews_train,
                                                                                             thucnews_dev, one_thread):
    result = runner.invoke(app, ["train-cls", "--config", "tiny", "--train", str(thucnews_train), "--dev", str(thucnews_dev),
                                 "--max-steps", "6", "--log-every", "2", "--batch-size", "4", "--max-seq-len", "16",
                                 "--eval-every", "3", "--precision", "fp32", "--no-plot", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    steps = re.findall(r"^step (\d+)/6 ", result.stdout, flags=re.M)
    assert steps == ["1", "2", "4", "6"]  # the first step, then every --log-every
    assert re.search(r"^eval step 3 \(fp32\): .*accuracy", result.stdout, flags=re.M)
    assert re.search(r"^best at step \d: accuracy 0\.\d{4} \(fp32, as evaluated while training\)", result.stdout, flags=re.M)
    assert re.search(r"dev \(best model, fp32\)", result.stdout)
