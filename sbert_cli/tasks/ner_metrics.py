"""Entity-level scores over exact character spans: `score_entities` (micro/macro P/R/F1, per type, and where
the errors are); `entity_counts` and `scores_from_counts`, the same scores from sums a training loop can add up
across batches and processes; `entity_errors` (one sentence's unmatched spans sorted into kinds of error).

An entity counts as found only when start, end and type all match (CoNLL's definition, seqeval's strict mode);
tests prove the figures equal seqeval's on the file's scheme. Averages follow seqeval: the macro average is over
the types that occur in the gold or predicted entities, and a ratio of 0/0 is 0.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from sbert_cli.data.ner import Span

ERROR_KINDS = ("type", "boundary", "boundary_and_type", "missed", "spurious")


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def entity_errors(gold: Sequence[Span], pred: Sequence[Span]) -> list[tuple[str, Span | None, Span | None]]:
    """(kind, gold span, predicted span) for each entity of one sentence that is not an exact match: `type` (same
    span, other type), `boundary` (overlaps a gold entity of its type, other edges), `boundary_and_type`
    (overlaps one of another type), `missed` (a gold entity nothing overlaps), `spurious` (a prediction that
    overlaps no gold entity). A gold entity is explained once, in that order of kinds."""
    exact = set(gold) & set(pred)
    gold_left = [g for g in gold if g not in exact]
    pred_left = [p for p in pred if p not in exact]
    used: set[Span] = set()
    errors: list[tuple[str, Span | None, Span | None]] = []
    for g in gold_left:
        overlapping = [p for p in pred_left if p.start < g.end and g.start < p.end]
        same_span = [p for p in overlapping if (p.start, p.end) == (g.start, g.end)]
        same_type = [p for p in overlapping if p.label == g.label]
        if same_span:
            errors.append(("type", g, same_span[0]))
        elif same_type:
            errors.append(("boundary", g, same_type[0]))
        elif overlapping:
            errors.append(("boundary_and_type", g, overlapping[0]))
        else:
            errors.append(("missed", g, None))
        used.update(overlapping)
    errors.extend(("spurious", None, p) for p in pred_left if p not in used)
    return errors


def entity_counts(gold: Sequence[Sequence[Span]], pred: Sequence[Sequence[Span]], labels: Sequence[str]) -> np.ndarray:
    """(len(labels), 3) float64: per type, exact-span matches, predicted and gold entities, summed over sentences:
    the form a training loop adds up across batches and processes (`scores_from_counts` turns it into scores)."""
    if len(gold) != len(pred):
        raise ValueError(f"entity_counts: {len(gold)} gold sentences but {len(pred)} predicted")
    row = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), 3), dtype=np.float64)
    for gold_spans, pred_spans in zip(gold, pred):
        gold_set, pred_set = set(gold_spans), set(pred_spans)
        for column, spans in enumerate((gold_set & pred_set, pred_set, gold_set)):
            for span in spans:
                counts[row[span.label], column] += 1
    return counts


def scores_from_counts(counts: np.ndarray, labels: Sequence[str]) -> dict:
    """{entity_f1 (micro F1), precision, recall, macro_f1, support, predicted, correct, per_label} from
    entity_counts' rows; the macro average is over the types with a gold or predicted entity."""
    per_label = {}
    for label, (correct, predicted, support) in zip(labels, counts.tolist()):
        precision, recall = _ratio(correct, predicted), _ratio(correct, support)
        per_label[label] = {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
                            "support": int(support), "predicted": int(predicted), "correct": int(correct)}
    correct, predicted, support = counts.sum(0).tolist() if len(counts) else (0, 0, 0)
    precision, recall = _ratio(correct, predicted), _ratio(correct, support)
    seen = [row["f1"] for row in per_label.values() if row["support"] or row["predicted"]]
    return {"entity_f1": _f1(precision, recall), "precision": precision, "recall": recall,
            "macro_f1": sum(seen) / len(seen) if seen else 0.0,
            "support": int(support), "predicted": int(predicted), "correct": int(correct), "per_label": per_label}


def score_entities(gold: Sequence[Sequence[Span]], pred: Sequence[Sequence[Span]],
                   labels: Sequence[str] = ()) -> dict:
    """Scores of predicted against gold entities, sentence by sentence: scores_from_counts' fields, plus
    errors: {type: {kind: count}} (see entity_errors) and type_confusion: {gold type: {predicted type: count}}.
    `labels` adds rows of zeros for types that occur in neither (they stay out of the macro average)."""
    if len(gold) != len(pred):
        raise ValueError(f"score_entities: {len(gold)} gold sentences but {len(pred)} predicted")
    errors: dict[str, Counter] = {}
    confusion: dict[str, Counter] = {}
    for gold_spans, pred_spans in zip(gold, pred):
        for kind, g, p in entity_errors(sorted(set(gold_spans)), sorted(set(pred_spans))):
            errors.setdefault((g or p).label, Counter())[kind] += 1
            if kind == "type":
                confusion.setdefault(g.label, Counter())[p.label] += 1
    types = sorted(set(labels) | {s.label for spans in (*gold, *pred) for s in spans})
    scores = scores_from_counts(entity_counts(gold, pred, types), types)
    scores["errors"] = {label: {kind: errors.get(label, Counter())[kind] for kind in ERROR_KINDS} for label in types}
    scores["type_confusion"] = {label: dict(sorted(row.items())) for label, row in sorted(confusion.items())}
    return scores
