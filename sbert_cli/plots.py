"""PNG plots people read at a glance: training curves from a run dir's metrics.jsonl, and confusion matrices.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, so no global figure state and
no display needed). Label names may be Chinese: the first CJK font installed is used, DejaVu Sans otherwise.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

from sbert_cli.errors import DataError
from sbert_cli.limits import parse_json

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
# Eval metrics in [0, 1] share one panel; perplexity gets its own (log scale).
RATIO_METRICS = ("accuracy", "macro_f1", "mlm_accuracy")
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "Arial Unicode MS")


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file; DataError naming the line for anything that is not a JSON object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        lines = text.splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: not found; point at a run dir written by sbert pretrain or sbert train-cls") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e})") from None
    records = []
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except json.JSONDecodeError as e:
            if line_number == len(lines) and not text.endswith("\n"):  # cut short by a crash: plot the complete lines
                continue
            raise DataError(f"{path}:{line_number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or "step" not in record:
            raise DataError(f"{path}:{line_number}: expected a JSON object with a \"step\"")
        records.append(record)
    return records


def _series(records: list[dict], kind: str, key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def _font_families() -> list[str]:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [name for name in CJK_FONTS if name in installed] + ["DejaVu Sans"]


def _save(figure, path: Path, tight: bool = False) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    from sbert_cli.outputs import new_file

    with warnings.catch_warnings(), new_file(path, force=True, text=False) as stream:  # whole, never through a link
        # Without a CJK font installed, Chinese labels render as boxes; the numbers are what matter.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        figure.savefig(stream, format="png", dpi=120, bbox_inches="tight" if tight else None, pad_inches=0.15)
    return path


def plot_training_curves(run_dir: str | Path) -> Path:
    """Write run_dir/curves.png: train and eval loss, eval metrics (and perplexity) against step."""
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / METRICS_FILE)
    if not records:
        raise DataError(f"{run_dir / METRICS_FILE}: no records yet; plot after the first logging step")
    ratios = [key for key in RATIO_METRICS if _series(records, "eval", key)[0]]
    has_perplexity = bool(_series(records, "eval", "perplexity")[0])
    panels = 1 + bool(ratios) + has_perplexity
    figure = Figure(figsize=(5 * panels, 4), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]

    loss_axis = axes[0]
    for kind, style in (("train", "-"), ("eval", "o-")):
        steps, values = _series(records, kind, "loss")
        if steps:
            loss_axis.plot(steps, values, style, label=f"{kind} loss", markersize=3)
    loss_axis.set(title="loss", xlabel="step")
    loss_axis.legend()
    panel = 1
    if ratios:
        for key in ratios:
            steps, values = _series(records, "eval", key)
            axes[panel].plot(steps, values, "o-", label=key, markersize=3)
        axes[panel].set(title="eval metrics", xlabel="step", ylim=(0, 1))
        axes[panel].legend()
        panel += 1
    if has_perplexity:
        steps, values = _series(records, "eval", "perplexity")
        axes[panel].plot(steps, values, "o-", markersize=3)
        axes[panel].set(title="eval perplexity", xlabel="step", yscale="log")
    for axis in axes:
        axis.grid(alpha=0.3)
    return _save(figure, run_dir / CURVES_FILE)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: str | Path) -> Path:
    """Write a confusion-matrix heatmap (rows gold, columns predicted, colour = share of the gold row) as PNG."""
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64)
    n = len(label_names)
    if counts.shape != (n, n):
        raise ValueError(f"matrix shape {counts.shape} does not match {n} labels")
    # Colour by row share so small classes are as readable as large ones; the cells show counts.
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=float), where=row_totals > 0)
    size = max(4.0, 0.55 * n + 2.5)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of gold row")
    families = _font_families()
    axis.set_xticks(range(n), labels=label_names, rotation=45, ha="right", fontfamily=families)
    axis.set_yticks(range(n), labels=label_names, fontfamily=families)
    axis.set(xlabel="predicted", ylabel="gold", title="confusion matrix")
    if n <= 30:  # beyond that the numbers would not fit in the cells
        for i in range(n):
            for j in range(n):
                axis.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                          color="white" if shares[i, j] > 0.5 else "black")
    # Rotated, possibly long label names: let the saved image grow to hold them.
    return _save(figure, path, tight=True)
