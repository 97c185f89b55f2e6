"""sbert_cli/plots.py: training curves from metrics.jsonl and confusion matrices, as valid PNGs."""

from __future__ import annotations

import json

import pytest

from sbert_cli.errors import DataError
from sbert_cli.plots import plot_confusion_matrix, plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = imread(path).shape[:2]
    return width, height


def _write_metrics(run_dir, records):
    run_dir.mkdir(exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _train(step):
    return {"kind": "train", "step": step, "epoch": step / 10, "loss": 2.0 / step, "lr": 1e-4, "tokens_per_s": 1e3}


@pytest.mark.parametrize("task_metrics", [{"accuracy": 0.5, "macro_f1": 0.4}, {"mlm_accuracy": 0.3, "perplexity": 40.0}])
def test_training_curves_png(tmp_path, task_metrics):
    records = [_train(s) for s in range(1, 21)]
    records += [{"kind": "eval", "step": s, "epoch": s / 10, "loss": 1.0, **task_metrics} for s in (10, 20)]
    _write_metrics(tmp_path, records)
    path = plot_training_curves(tmp_path)
    assert path == tmp_path / "curves.png"
    width, height = _png_size(path)
    panels = 3 if "perplexity" in task_metrics else 2  # loss | metrics in [0, 1] | perplexity
    assert width == pytest.approx(5 * panels * 120, rel=0.05) and height > 300


def test_training_curves_train_only(tmp_path):
    _write_metrics(tmp_path, [_train(s) for s in range(1, 4)])
    assert _png_size(plot_training_curves(tmp_path))[0] == pytest.approx(600, rel=0.05)


def test_training_curves_errors_name_file_and_line(tmp_path):
    with pytest.raises(DataError, match="metrics.jsonl: not found"):
        plot_training_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps(_train(1)) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match="metrics.jsonl:2: not valid JSON"):
        plot_training_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no records"):
        plot_training_curves(tmp_path)


def test_confusion_matrix_png(tmp_path):
    path = plot_confusion_matrix([[5, 1, 0], [2, 8, 0], [0, 0, 0]], ["财经", "sports", "game"], tmp_path / "sub" / "cm.png")
    assert path.is_file() and path.stat().st_size > 10_000
    width, height = _png_size(path)
    assert width > 400 and height > 400
    with pytest.raises(ValueError, match="3 labels"):
        plot_confusion_matrix([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "bad.png")
