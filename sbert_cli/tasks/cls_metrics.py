"""Classification metrics, computed from a confusion matrix in one place (torch-free): `sbert eval`, train-cls's dev
evaluations and the demo's baseline all come here, so their figures agree.

In it: confusion_matrix (from label ids), metrics_from_confusion (every figure from the matrix),
classification_metrics (both in one call), and the result types ClassificationMetrics, ClassMetrics, Averages.
Accuracy; macro, micro and weighted precision/recall/F1; per-class figures. Averages follow scikit-learn's
defaults: over the labels that occur in the gold or predicted labels, 0 where a ratio is 0/0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sbert_cli.errors import DataError


@dataclass
class Averages:
    precision: float
    recall: float
    f1: float

    def to_json(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}


@dataclass
class ClassMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)  # label, precision, recall, f1, support


@dataclass
class ClassificationMetrics:
    labels: list[str]
    num_examples: int
    accuracy: float
    macro: Averages
    micro: Averages
    weighted: Averages
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]]  # rows gold, columns predicted, both in `labels` order

    @property
    def macro_f1(self) -> float:
        return self.macro.f1


def _ratio(numerator, denominator):
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def confusion_matrix(gold: Sequence[int], predicted: Sequence[int], num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts, rows gold, columns predicted, from label ids."""
    gold = np.asarray(gold, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    return np.bincount(gold * num_labels + predicted, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def classification_metrics(gold: Sequence[int], predicted: Sequence[int], label_names: Sequence[str]) -> ClassificationMetrics:
    """All classification figures from gold and predicted label ids (indices into label_names)."""
    return metrics_from_confusion(confusion_matrix(gold, predicted, len(label_names)), label_names)


def metrics_from_confusion(confusion, label_names: Sequence[str]) -> ClassificationMetrics:
    """All classification figures from a confusion matrix (rows gold, columns predicted; counts, any numeric
    dtype): the one computation behind `sbert eval` and train-cls's dev evaluations."""
    matrix = np.rint(np.asarray(confusion, dtype=np.float64)).astype(np.int64)
    total = int(matrix.sum())
    if total == 0:
        raise DataError("no examples to evaluate")
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted_counts = matrix.sum(axis=0)
    precision = _ratio(true_positives, predicted_counts)
    recall = _ratio(true_positives, support)
    f1 = _ratio(2 * true_positives, support + predicted_counts)
    present = (support + predicted_counts) > 0  # scikit-learn averages over the labels seen in gold or predictions
    weights = support[present]

    def average(values) -> float:
        return float(values[present].mean())

    def weighted(values) -> float:
        return float((values[present] * weights).sum() / weights.sum())

    tp, predicted_total, gold_total = true_positives[present].sum(), predicted_counts[present].sum(), support[present].sum()
    micro_precision, micro_recall = float(_ratio(tp, predicted_total)), float(_ratio(tp, gold_total))
    return ClassificationMetrics(
        labels=list(label_names),
        num_examples=total,
        accuracy=int(true_positives.sum()) / total,
        macro=Averages(average(precision), average(recall), average(f1)),
        micro=Averages(micro_precision, micro_recall, float(_ratio(2 * tp, predicted_total + gold_total))),
        weighted=Averages(weighted(precision), weighted(recall), weighted(f1)),
        per_class=[
            ClassMetrics(name, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i, name in enumerate(label_names)
        ],
        confusion_matrix=matrix.tolist(),
    )
