"""What the CLI refuses, and the way out it names: conflicting options, a typo of a local folder, a missing head,
a half-written metrics line, where eval writes its report, a run stopped before its first checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from cli_helpers import one_line_error
from sbert_cli.cli import app
from sbert_cli.errors import ConfigError, ModelLoadError, ResumeError
from sbert_cli.outputs import OutputDir

runner = CliRunner()


def test_config_and_model_together_are_refused(tmp_path):
    (tmp_path / "train.txt").write_text("a\tx\nb\ty\n", encoding="utf-8")
    result = runner.invoke(app, ["train-cls", "--train", str(tmp_path / "train.txt"), "--config", "tiny",
                                 "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    one_line_error(result, "not both")
    assert not (tmp_path / "o").exists()


def test_a_typo_of_a_local_folder_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cls2" / "best").mkdir(parents=True)
    result = runner.invoke(app, ["predict", "-m", "cls2/bset", "股市大涨"])
    one_line_error(result, "cls2/bset: no such model folder", "not a hub repo id")


def test_missing_mlm_head_advises_pretrain(hf_cls_dir):
    from sbert_cli.model.model_dir import load_for_task

    with pytest.raises(ModelLoadError, match="sbert pretrain"):
        load_for_task(hf_cls_dir, "mlm")


def test_plot_skips_a_half_written_last_line(tmp_path):
    records = [{"kind": "train", "step": s, "epoch": s / 10, "loss": 1.0 / s, "lr": 1e-3, "tokens_per_s": 100.0}
               for s in range(1, 6)]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"kind": "train", "st'
    (tmp_path / "metrics.jsonl").write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.png").is_file()


def test_eval_writes_reports_only_where_asked_or_into_the_run_dir(tmp_path, hf_cls_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "dev.txt"
    data.write_text("股市大涨\tfinance\n球队夺冠\tsports\n", encoding="utf-8")
    result = runner.invoke(app, ["eval", "-m", str(hf_cls_dir), "-d", str(data), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.txt"]  # nothing written into the current folder
    run = tmp_path / "run"
    shutil.copytree(hf_cls_dir, run / "best")
    (run / "run.json").write_text("{}")
    for _ in range(2):  # a rerun replaces its own report
        result = runner.invoke(app, ["eval", "-m", str(run / "best"), "-d", str(data), "--precision", "fp32"])
        assert result.exit_code == 0, result.output
    assert (run / "eval-dev" / "metrics.json").is_file()


def test_a_run_stopped_before_its_first_checkpoint_names_the_way_out(tmp_path):
    from sbert_cli.train.state import check_run_dir

    out = OutputDir(tmp_path / "run")
    with out:
        (out.path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
        out.record("metrics.jsonl", "checkpoints")
    with pytest.raises(ConfigError, match="stopped before its first checkpoint: start over with `force`"):
        check_run_dir(out.path, resume=False, force=False)
    with pytest.raises(ResumeError, match="with `force` to start over"):
        check_run_dir(out.path, resume=True, force=False)
    check_run_dir(out.path, resume=False, force=True)
