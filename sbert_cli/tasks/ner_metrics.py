"""Entity-level scores over exact character spans: `score_entities` (micro/macro P/R/F1, per type, and where
the errors are), and `entity_errors` (one sentence's unmatched spans sorted into kinds of error).

An entity counts as found only when start, end and type all match (CoNLL's definition, seqeval's strict mode);
tests prove the figures equal seqeval's on the file's scheme. Averages follow seqeval: the macro average is over
the types that occur in the gold or predicted entities, and a ratio of 0/0 is 0.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

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


def score_entities(gold: Sequence[Sequence[Span]], pred: Sequence[Sequence[Span]],
                   labels: Sequence[str] = ()) -> dict:
    """Scores of predicted against gold entities, sentence by sentence: {entity_f1 (micro F1), precision,
    recall, macro_f1, support, predicted, correct, per_label: {type: {precision, recall, f1, support,
    predicted, correct}}, errors: {type: {kind: count}}, type_confusion: {gold type: {predicted type: count}}}.
    `labels` adds rows of zeros for types that occur in neither (they stay out of the macro average)."""
    if len(gold) != len(pred):
        raise ValueError(f"score_entities: {len(gold)} gold sentences but {len(pred)} predicted")
    support: Counter = Counter()
    predicted: Counter = Counter()
    correct: Counter = Counter()
    errors: dict[str, Counter] = {}
    confusion: dict[str, Counter] = {}
    for gold_spans, pred_spans in zip(gold, pred):
        gold_set, pred_set = set(gold_spans), set(pred_spans)
        support.update(s.label for s in gold_set)
        predicted.update(s.label for s in pred_set)
        correct.update(s.label for s in gold_set & pred_set)
        for kind, g, p in entity_errors(sorted(gold_set), sorted(pred_set)):
            errors.setdefault((g or p).label, Counter())[kind] += 1
            if kind == "type":
                confusion.setdefault(g.label, Counter())[p.label] += 1
    seen = sorted(set(support) | set(predicted))
    per_label = {}
    for label in sorted(set(seen) | set(labels)):
        precision, recall = _ratio(correct[label], predicted[label]), _ratio(correct[label], support[label])
        per_label[label] = {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
                            "support": support[label], "predicted": predicted[label], "correct": correct[label]}
    total_correct, total_predicted, total_support = (sum(c.values()) for c in (correct, predicted, support))
    precision, recall = _ratio(total_correct, total_predicted), _ratio(total_correct, total_support)
    return {
        "entity_f1": _f1(precision, recall),
        "precision": precision,
        "recall": recall,
        "macro_f1": sum(per_label[label]["f1"] for label in seen) / len(seen) if seen else 0.0,
        "support": total_support,
        "predicted": total_predicted,
        "correct": total_correct,
        "per_label": per_label,
        "errors": {label: {kind: errors.get(label, Counter())[kind] for kind in ERROR_KINDS} for label in per_label},
        "type_confusion": {label: dict(sorted(row.items())) for label, row in sorted(confusion.items())},
    }
