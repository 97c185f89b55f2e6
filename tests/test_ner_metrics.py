"""Entity scores: exact spans, the error kinds, and equality with seqeval (strict, the file's scheme)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbert_cli.data.ner import Span, file_tags_from_spans, read_ner_file
from sbert_cli.tasks.ner_metrics import entity_errors, score_entities


def test_scores_by_hand():
    gold = [[Span(0, 2, "PER"), Span(3, 5, "LOC")], [Span(0, 4, "ORG")], []]
    pred = [[Span(0, 2, "PER"), Span(3, 5, "ORG")], [Span(0, 3, "ORG"), Span(5, 6, "PER")], [Span(1, 2, "LOC")]]
    scores = score_entities(gold, pred, labels=["LOC", "ORG", "PER", "TIME"])
    assert (scores["correct"], scores["predicted"], scores["support"]) == (1, 5, 3)
    assert scores["precision"] == pytest.approx(1 / 5) and scores["recall"] == pytest.approx(1 / 3)
    assert scores["entity_f1"] == pytest.approx(2 * (1 / 5) * (1 / 3) / (1 / 5 + 1 / 3))
    assert scores["per_label"]["PER"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1,
                                          "predicted": 2, "correct": 1}
    assert scores["per_label"]["TIME"]["support"] == 0  # asked for, in no file: a row, but not in the macro average
    assert scores["macro_f1"] == pytest.approx((0 + 0 + 2 / 3) / 3)
    assert scores["errors"]["LOC"] == {"type": 1, "boundary": 0, "boundary_and_type": 0, "missed": 0, "spurious": 1}
    assert scores["errors"]["ORG"]["boundary"] == 1 and scores["errors"]["PER"]["spurious"] == 1
    assert scores["type_confusion"] == {"LOC": {"ORG": 1}}


def test_counts_add_up_across_batches_to_the_same_scores():
    from sbert_cli.tasks.ner_metrics import entity_counts, scores_from_counts

    gold = [[Span(0, 2, "PER"), Span(3, 5, "LOC")], [Span(0, 4, "ORG")], []]
    pred = [[Span(0, 2, "PER"), Span(3, 5, "ORG")], [Span(0, 3, "ORG"), Span(5, 6, "PER")], [Span(1, 2, "LOC")]]
    labels = ["LOC", "ORG", "PER"]
    summed = entity_counts(gold[:1], pred[:1], labels) + entity_counts(gold[1:], pred[1:], labels)
    whole = score_entities(gold, pred)
    assert scores_from_counts(summed, labels) == {k: v for k, v in whole.items() if k not in ("errors", "type_confusion")}


def test_error_kinds_of_one_sentence():
    gold = [Span(0, 2, "PER"), Span(4, 6, "LOC"), Span(8, 9, "ORG"), Span(10, 12, "PER")]
    pred = [Span(0, 2, "PER"), Span(4, 7, "ORG"), Span(8, 9, "LOC"), Span(13, 14, "PER")]
    assert entity_errors(gold, pred) == [
        ("boundary_and_type", Span(4, 6, "LOC"), Span(4, 7, "ORG")),
        ("type", Span(8, 9, "ORG"), Span(8, 9, "LOC")),
        ("missed", Span(10, 12, "PER"), None),
        ("spurious", None, Span(13, 14, "PER")),
    ]


def test_nothing_predicted_nothing_gold():
    scores = score_entities([[]], [[]])
    assert scores["entity_f1"] == 0.0 and scores["per_label"] == {} and scores["macro_f1"] == 0.0
    with pytest.raises(ValueError):
        score_entities([[]], [])


seqeval = pytest.importorskip("seqeval", reason="seqeval is the test-only reference: pip install seqeval")
from seqeval.metrics import classification_report  # noqa: E402
from seqeval.scheme import IOB1, IOB2, IOBES  # noqa: E402

SEQEVAL_SCHEME = {"BIO": IOB2, "IOB1": IOB1, "BIOES": IOBES, "BMES": IOBES}


def seqeval_tags(tags: list[str], scheme: str) -> list[str]:
    """BMES has no seqeval scheme: it is IOBES with M- for I-."""
    return [("I" + t[1:] if t.startswith("M-") else t) for t in tags] if scheme == "BMES" else tags


def sentence_spans(draw, n):
    cuts = sorted(draw(st.sets(st.integers(0, n), max_size=7)))
    return [(a, b, draw(st.sampled_from(["PER", "LOC", "ORG"]))) for a, b in zip(cuts, cuts[1:])
            if draw(st.integers(0, 2))]


def write_conll(path: Path, sentences: list[list[str]]) -> None:
    path.write_text("".join("".join(f"字 {t}\n" for t in tags) + "\n" for tags in sentences), encoding="utf-8")


@pytest.mark.parametrize("scheme", ["BIO", "IOB1", "BIOES", "BMES"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_scores_equal_seqeval_strict_on_the_files_scheme(scheme, data):
    lengths = data.draw(st.lists(st.integers(1, 10), min_size=1, max_size=6))
    gold_spans = [sentence_spans(data.draw, n) for n in lengths]
    # predictions near the gold ones (shifted edges, other types, dropped, added), and some unrelated
    pred_spans = []
    for n, spans in zip(lengths, gold_spans):
        pred_spans.append(spans if data.draw(st.integers(0, 3)) == 0 else sentence_spans(data.draw, n))
    gold_tags = [file_tags_from_spans(s, n, scheme) for s, n in zip(gold_spans, lengths)]
    pred_tags = [file_tags_from_spans(s, n, scheme) for s, n in zip(pred_spans, lengths)]
    # through the product's reader: files in the scheme, read back as character spans (one character per tag)
    with tempfile.TemporaryDirectory() as folder:
        gold_file, pred_file = Path(folder) / "gold.txt", Path(folder) / "pred.txt"
        write_conll(gold_file, gold_tags)
        write_conll(pred_file, pred_tags)
        if not any(gold_spans) or not any(pred_spans):
            return  # a file with no entities cannot show its scheme (nor train); scored below by hand
        gold = [list(e.spans) for e in read_ner_file(gold_file).examples]
        pred = [list(e.spans) for e in read_ner_file(pred_file).examples]
    ours = score_entities(gold, pred)
    theirs = classification_report([seqeval_tags(t, scheme) for t in gold_tags],
                                    [seqeval_tags(t, scheme) for t in pred_tags],
                                    mode="strict", scheme=SEQEVAL_SCHEME[scheme], output_dict=True, zero_division=0)
    micro = theirs["micro avg"]
    assert ours["precision"] == pytest.approx(micro["precision"])
    assert ours["recall"] == pytest.approx(micro["recall"])
    assert ours["entity_f1"] == pytest.approx(micro["f1-score"])
    assert ours["macro_f1"] == pytest.approx(theirs["macro avg"]["f1-score"])
    types = {k for k in theirs if not k.endswith(" avg")}
    assert set(ours["per_label"]) == types
    for label in types:
        row = ours["per_label"][label]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (theirs[label]["precision"], theirs[label]["recall"], theirs[label]["f1-score"], theirs[label]["support"]))


def test_an_msra_style_cut_entity_scores_as_seqeval_strict(tmp_path):
    gold_tags = [["M-PER", "E-PER", "O", "S-LOC"], ["B-ORG", "M-ORG", "E-ORG", "O"]]
    pred_tags = [["B-PER", "E-PER", "O", "S-LOC"], ["B-ORG", "M-ORG", "E-ORG", "O"]]
    write_conll(tmp_path / "gold.txt", gold_tags)
    write_conll(tmp_path / "pred.txt", pred_tags)
    gold = [list(e.spans) for e in read_ner_file(tmp_path / "gold.txt").examples]
    pred = [list(e.spans) for e in read_ner_file(tmp_path / "pred.txt").examples]
    ours = score_entities(gold, pred)
    theirs = classification_report([seqeval_tags(t, "BMES") for t in gold_tags],
                                   [seqeval_tags(t, "BMES") for t in pred_tags],
                                   mode="strict", scheme=IOBES, output_dict=True, zero_division=0)
    assert ours["precision"] == pytest.approx(theirs["micro avg"]["precision"]) == pytest.approx(2 / 3)
    assert ours["recall"] == pytest.approx(theirs["micro avg"]["recall"]) == 1.0


def test_the_benchmarks_crf_row_runs_quick(tmp_path):
    """bench_ner.py --quick on the bundled sample standing in for MSRA: the CRF row end to end (splits, features,
    exact-span scores, the results line and the table)."""
    import json
    import subprocess
    import sys

    pytest.importorskip("sklearn_crfsuite", reason="the CRF baseline is test-only: pip install sklearn-crfsuite")
    from sbert_cli.resources import NER_SAMPLE_DEV, NER_SAMPLE_TRAIN

    msra = tmp_path / "msra"
    msra.mkdir()
    (msra / "train.txt").write_bytes(NER_SAMPLE_TRAIN.read_bytes())
    (msra / "test.txt").write_bytes(NER_SAMPLE_DEV.read_bytes())
    bench = Path(__file__).parents[1] / "benchmarks" / "bench_ner.py"
    done = subprocess.run([sys.executable, str(bench), "--msra", str(msra), "--rows", "crf", "--quick",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = (tmp_path / "out-quick" / "results.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert (record["row"], record["train_sentences"], record["test_sentences"]) == ("crf", 200, 100)
    assert 0.0 <= record["entity_f1"] <= 1.0 and "threads" in record and "torch" in record
    assert "| crf | 200 | 100 |" in done.stdout
