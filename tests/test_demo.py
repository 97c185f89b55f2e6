"""sbert demo: the quick run completes through the CLI and writes every stage's output and the report."""

from __future__ import annotations

import json
import shlex

import pytest
import typer
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.tasks.demo import (
    DEMO_ARTIFACTS,
    STAGES,
    prepare_demo_dir,
    train_tfidf_baseline,
)
from sbert_cli.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu", "--precision", "fp32"])
    return out, result


def test_quick_demo_writes_every_stage_and_the_report(quick_demo):
    out, result = quick_demo
    assert result.exit_code == 0, result.output
    for path in ("data/train.txt", "data/dev.txt", "data/class.txt", "mlm-data/manifest.json",
                 "pretrain/metrics.jsonl", "pretrain/curves.png", "classifier/last/model.safetensors",
                 "eval/metrics.json", "eval/misclassified.tsv", "baseline/metrics.json", "report.md"):
        assert (out / path).is_file(), path
    assert (out / "eval/confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC
    assert len((out / "data/train.txt").read_text(encoding="utf-8").splitlines()) == 200  # --quick's sample

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [s["name"] for s in report["stages"]] == list(STAGES)
    assert all(s["seconds"] >= 0 for s in report["stages"])
    assert report["total_seconds"] >= sum(s["seconds"] for s in report["stages"]) - 0.1
    eval_metrics = json.loads((out / "eval/metrics.json").read_text(encoding="utf-8"))
    assert report["dev_accuracy"]["bert"] == eval_metrics["accuracy"]
    assert 0.0 <= report["dev_accuracy"]["tfidf_linear_svm"] <= 1.0
    assert len(report["stages"][STAGES.index("predict")]["predictions"]) == 6
    assert report["settings"]["train_lines"] == 200

    for name in STAGES:  # a heading per stage, and both accuracies side by side in the summary
        assert f"/{len(STAGES)} {name}" in result.output
    summary = result.output.split("summary")[-1]
    assert f"{report['dev_accuracy']['bert']:.4f}" in summary
    assert f"{report['dev_accuracy']['tfidf_linear_svm']:.4f}" in summary
    assert "total" in summary
    assert f"{report['dev_accuracy']['bert']:.4f}" in (out / "report.md").read_text(encoding="utf-8")


def test_demo_commands_are_real_cli_commands(quick_demo):
    """Every 'same as: sbert ...' line parses with the real CLI, so the printed recipe cannot drift from it."""
    out, _ = quick_demo
    assert_real_commands(json.loads((out / "report.json").read_text(encoding="utf-8")))


def assert_real_commands(report: dict) -> None:
    group = typer.main.get_command(app)
    commands = [s["command"] for s in report["stages"] if s["command"]]
    assert len(commands) == len(STAGES) - 1  # all but the scikit-learn baseline
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "sbert"
        sub = group.get_command(None, argv[1])
        assert sub is not None, command
        sub.make_context(argv[1], argv[2:])  # raises on an unknown option or a bad value


def test_demo_refuses_a_non_empty_out_without_force(tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not empty" in result.output and "--force" in result.output
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert not (tmp_path / "data").exists()


def test_force_removes_only_what_a_demo_wrote(tmp_path):
    from sbert_cli.outputs import OutputDir

    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "report.json").write_text("{}", encoding="utf-8")
    (tmp_path / "pretrain" / "last").mkdir(parents=True)
    (tmp_path / "pretrain" / "last" / "config.json").write_text("{}", encoding="utf-8")
    OutputDir(tmp_path).record("report.json")  # what an earlier demo wrote, recorded as it writes
    OutputDir(tmp_path / "pretrain").record("last")  # a stage's own run dir records its files too
    prepare_demo_dir(tmp_path, force=True).release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert "notes.txt" not in DEMO_ARTIFACTS
    with pytest.raises(ConfigError, match="is a file"):
        prepare_demo_dir(tmp_path / "notes.txt", force=True)


def test_tfidf_baseline_scores_the_bundled_dev_set_as_the_readme_says(thucnews_train, thucnews_dev, thucnews_classes):
    from sbert_cli.data.classification import read_label_names

    figures = train_tfidf_baseline(thucnews_train, thucnews_dev, read_label_names(thucnews_classes), seed=42)
    assert figures["accuracy"] == pytest.approx(0.872, abs=0.005)  # the figure the README quotes
    assert sum(map(sum, figures["confusion_matrix"])) == 1000


def test_example_scripts_are_valid():
    """The examples are run by hand (they need a hub or minutes); here they must at least parse."""
    import subprocess
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    scripts = sorted(examples.glob("*.sh"))
    assert {p.name for p in scripts} >= {"full_recipe.sh", "distributed.sh"}
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
    source = examples / "hf_interop.py"
    compile(source.read_text(encoding="utf-8"), str(source), "exec")


@pytest.fixture(scope="module")
def checkpoint_demo(tmp_path_factory):
    """`sbert demo --model` from a tiny random BertModel in HF format: an encoder without an MLM head."""
    from conftest import make_hf_checkpoint

    checkpoint = make_hf_checkpoint(tmp_path_factory.mktemp("hf") / "headless", "base")
    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(app, ["demo", "--model", str(checkpoint), "--quick", "--out", str(out),
                                      "--device", "cpu", "--precision", "fp32"])
    return checkpoint, out, result


def test_demo_from_a_checkpoint_continues_its_pretraining_and_says_so(checkpoint_demo):
    checkpoint, out, result = checkpoint_demo
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [s["name"] for s in report["stages"]] == list(STAGES)
    assert report["starting_model"]["checkpoint"] == str(checkpoint)
    assert report["starting_model"]["description"] == f"checkpoint {checkpoint}"
    assert report["starting_model"]["config"] is None
    new_head = report["starting_model"]["new_mlm_head"]
    assert new_head and all(name.startswith("mlm_head.") for name in new_head)  # BertModel: no cls.predictions
    assert "note: the checkpoint has no MLM head" in result.output
    assert report["precision"] == "fp32" and report["device"] == "cpu"

    stages = {s["name"]: s for s in report["stages"]}
    for name in ("make-mlm-data", "pretrain"):  # the model's vocab; continued pretraining of the model
        argv = shlex.split(stages[name]["command"])
        assert argv[argv.index("--model") + 1] == str(checkpoint) and "--config" not in argv
    for name, situation in (("pretrain", "new MLM head"), ("train-cls", "fine-tuning")):
        # no --lr printed, and none given: the rule chose the rate for the situation, as the command would
        assert "--lr" not in shlex.split(stages[name]["command"])
        assert (stages[name]["lr_source"], stages[name]["lr_situation"]) == ("rule", situation)
    run = json.loads((out / "pretrain" / "run.json").read_text(encoding="utf-8"))
    assert run["model"] == str(checkpoint) and run["config"] is None and run["train"]["epochs"] == 1
    classifier_run = json.loads((out / "classifier" / "run.json").read_text(encoding="utf-8"))
    assert (classifier_run["train"]["epochs"], classifier_run["train"]["batch_size"]) == (1, 32)  # --quick: 1 epoch
    assert_real_commands(report)

    markdown = (out / "report.md").read_text(encoding="utf-8")
    summary = result.output.split("summary")[-1]
    for text in (markdown, summary):
        assert f"checkpoint {checkpoint}" in text
        assert "from scratch" not in text
    assert "from scratch" not in result.output
    assert f"{report['dev_accuracy']['bert']:.4f}" in summary and f"{report['dev_accuracy']['tfidf_linear_svm']:.4f}" in summary


def test_full_demo_from_a_checkpoint_uses_modest_settings():
    from sbert_cli.tasks.demo import FULL, QUICK, starting_from

    full, quick = starting_from("m", FULL), starting_from("m", QUICK)
    assert (full.pretrain_epochs, full.cls_epochs, full.cls_batch_size, full.max_seq_len) == (1, 3, 32, 64)
    assert full.dynamic_masking and full.pretrain_lr is None and full.cls_lr is None and full.config_name is None
    assert (quick.train_lines, quick.pretrain_epochs, quick.cls_epochs) == (200, 1, 1)
    assert starting_from(None, FULL) == FULL


def test_demo_with_a_missing_model_folder_fails_in_one_line_before_writing(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["demo", "--model", str(tmp_path / "no-such-model"), "--out", str(out)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no such model folder" in lines[0], result.output
    assert not out.exists()
