"""Entity files (every format and scheme, read and refused), word offsets, BIOES word tags, windows."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbert_cli.data.ner import (
    Span,
    allowed_transitions,
    detect_scheme,
    encode_windows,
    file_tags_from_spans,
    merge_windows,
    read_ner_file,
    spans_from_file_tags,
    spans_from_word_tags,
    tag_names,
    word_offsets,
    word_tags,
)
from sbert_cli.errors import DataError
from sbert_cli.model.tokenizer import BertTokenizer

DATA = Path(__file__).parent / "data" / "ner"
VOCAB = Path(__file__).parents[1] / "sbert_cli" / "resources" / "chinese-bert-vocab.txt"
TEXTS = ["张三在北京大学读书。", "李四王五去沪。", "苹果在iPhone 12发布会上说"]
SPANS = [
    (Span(0, 2, "PER"), Span(3, 7, "ORG")),
    (Span(0, 2, "PER"), Span(2, 4, "PER"), Span(5, 6, "LOC")),
    (Span(0, 2, "ORG"),),
]


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer.from_vocab(VOCAB)


@pytest.mark.parametrize("name, scheme", [
    ("bio.txt", "BIO"), ("iob1.txt", "IOB1"), ("bioes.txt", "BIOES"), ("bmes.txt", "BMES"),
    ("conll4.txt", "BIO"), ("entities.jsonl", "jsonl"), ("cluener.json", "cluener"),
])
def test_every_format_and_scheme_reads_the_same_entities(name, scheme):
    data = read_ner_file(DATA / name)
    assert data.scheme == scheme
    assert data.labels == ["LOC", "ORG", "PER"]
    assert [e.text for e in data.examples] == TEXTS
    assert [e.spans for e in data.examples] == SPANS
    for example in data.examples:
        assert all(example.text[s.start:s.end] for s in example.spans)
    first_line = {"conll4.txt": 3, "bioes.txt": 1}.get(name, 1)
    assert data.examples[0].origin == f"{DATA / name}:{first_line}"


def test_gzipped_file_reads_as_the_plain_one(tmp_path):
    packed = tmp_path / "bmes.txt.gz"
    packed.write_bytes(gzip.compress((DATA / "bmes.txt").read_bytes()))
    assert read_ner_file(packed).examples[1].spans == SPANS[1]


@pytest.mark.parametrize("tags, scheme", [
    (["B-PER", "I-PER", "O"], "BIO"),
    (["O", "B-PER", "B-PER"], "BIO"),  # B- after O: IOB1 would not write it
    (["I-PER", "I-PER", "O", "I-LOC"], "IOB1"),
    (["I-PER", "B-PER", "O"], "IOB1"),  # B- only between two adjacent entities of one type
    (["I-PER", "O", "B-LOC"], "BIO"),  # both kinds of start: BIO (the I- line is then refused)
    (["O", "O"], "BIO"),
    (["B-PER", "E-PER", "S-LOC"], "BIOES"),
    (["B-PER", "M-PER", "E-PER"], "BMES"),
    (["S-LOC", "O"], "BIOES"),
])
def test_scheme_detection(tags, scheme):
    assert detect_scheme([tags]) == scheme


def test_a_sentence_start_is_an_entity_start_for_detection():
    # I-PER ends one sentence, B-PER opens the next: a start after the boundary, so BIO
    assert detect_scheme([["O", "I-PER"], ["B-PER", "O"]]) == "BIO"


REFUSED = [
    ("bad-bioes-i-after-o.txt", 2, "I-PER after O; in BIOES an entity starts with B- or S-"),
    ("bad-bmes-m-after-o.txt", 6, "M-PER after O; in BMES"),
    ("bad-bio-b-then-i.txt", 5, "I-ORG after B-LOC; in BIO (IOB2)"),
    ("bad-no-tag.txt", 2, "no tag on this line"),
    ("bad-jsonl-range.jsonl", 1, "outside the text's 2 characters"),
    ("bad-cluener-exclusive-end.json", 1, "reads as an exclusive end: CLUENER's ends are inclusive"),
]


@pytest.mark.parametrize("name, line, message", REFUSED)
def test_inconsistent_files_are_refused_with_file_and_line(name, line, message):
    with pytest.raises(DataError, match=None) as raised:
        read_ner_file(DATA / name)
    text = str(raised.value)
    assert text.startswith(f"{DATA / name}:{line}: "), text
    assert message in text
    assert "\n" not in text


BAD_TEXTS = [
    ("B-PER\n", 1, "no tag on this line"),
    ("张 PER\n", 1, "tag 'PER' is neither O nor"),
    ("张 B-PER\n三 E-PER\n\n我 O\n张 B-PER\n三 O\n", 6, "O after B-PER; in BIOES"),
    ("张 B-PER\n三 M-PER\n四 E-PER\n\n我 O\n王 E-PER\n", 6, "E-PER after O; in BMES"),
    ("张 B-PER\n三 M-PER\n四 E-PER\n\n张 B-PER\n三 I-PER\n四 E-PER\n", 6, "I-PER does not belong in a BMES file"),
    ("张 B-PER\n三 E-LOC\n", 2, "E-LOC after B-PER"),
    ("张 B-PER\n\n我 O\n张 I-PER\n", 4, "I-PER after O; in BIO (IOB2)"),
    ("张 I-PER\n三 I-PER\n\n在 O\n北 B-LOC\n", 1, "I-PER after the sentence start; in BIO (IOB2) an entity "
     "starts with B-, and I- continues one of the same type (entities here start with B- and with I-"),
    ("张 I-PER\n三 I-PER\n四 B-LOC\n", 1, "I-PER after the sentence start; in BIO"),  # B-LOC starts an entity
]


def test_iob1_refuses_b_that_does_not_follow_its_own_type():
    from sbert_cli.data.ner import _TagError

    assert spans_from_file_tags(["I-PER", "B-PER", "I-PER"], "IOB1") == [(0, 1, "PER"), (1, 3, "PER")]
    with pytest.raises(_TagError, match="B-LOC after I-PER; in IOB1 an entity starts with I-"):
        spans_from_file_tags(["I-PER", "I-PER", "B-LOC"], "IOB1")


@pytest.mark.parametrize("content, line, message", BAD_TEXTS)
def test_bad_conll_lines(tmp_path, content, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as raised:
        read_ner_file(path)
    assert str(raised.value).startswith(f"{path}:{line}: "), str(raised.value)
    assert message in str(raised.value)


BAD_JSON = [
    ('{"text": "张三", "entities": [{"start": 0, "end": 2, "label": "PER", "text": "张"}]}',
     "says '张' but the text there is '张三'"),
    ('{"text": "张三", "entities": [{"start": 1, "end": 1, "label": "PER"}]}', "outside the text"),
    ('{"text": "张三", "entities": [{"start": -1, "end": 1, "label": "PER"}]}', "outside the text"),
    ('{"text": "张三", "entities": [{"start": 0, "end": "2", "label": "PER"}]}', 'integer "start" and "end"'),
    ('{"text": "张三", "entities": [{"start": 0, "end": 2}]}', 'needs a "label"'),
    ('{"text": "张三丰", "entities": [{"start": 0, "end": 2, "label": "PER"}, {"start": 1, "end": 3, "label": "PER"}]}',
     "overlap"),
    ('{"text": "张三", "entities": {}}', '"entities" must be a list'),
    ('{"text": "", "entities": []}', '"text" must be a non-empty string'),
    ('{"text": "张三", "tags": []}', 'expected an object with "text" and "entities"'),
    ('{"text": "张三在北京", "label": {"PER": {"张三": [[0, 1]]}}}\n{"text": "x", "entities": []}', "a jsonl line in a cluener file"),
    ('{"text": "张三在北京", "label": {"PER": {"张三": [[1, 2]]}}}', "does not match the text there, '三在'"),
    ('{"text": "张三在北京", "label": {"LOC": {"北京": [[3, 5]]}}}', "reads as an exclusive end"),
    ('{"text": "张三在北京", "label": {"LOC": {"北京x": [[3, 5]]}}}', "outside the text's 5 characters"),
    ('{"text": "张三在北京", "label": {"LOC": {"北京": [3, 4]}}}', "is not a [start, end_inclusive] pair"),
    ('{"text": "张三在北京", "label": {"PER": {"张三": [[0, 1]]}, "X": {"三在": [[1, 2]]}}}', "overlap"),
    ('{"text": "a", "entities": []}\n{"text": "b", "entities": [}', "not valid JSON"),
    ('{"text": "张 三", "entities": [{"start": 1, "end": 2, "label": "PER"}]}', "a PER entity covers only whitespace"),
]


def test_whitespace_at_an_entitys_edges_is_trimmed(tmp_path):
    path = tmp_path / "spaces.jsonl"
    path.write_text('{"text": "去 北京 吧", "entities": [{"start": 1, "end": 5, "label": "LOC"}]}\n', encoding="utf-8")
    assert read_ner_file(path).examples[0].spans == (Span(2, 4, "LOC"),)


@pytest.mark.parametrize("content, message", BAD_JSON)
def test_bad_json_lines(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content + "\n", encoding="utf-8")
    with pytest.raises(DataError) as raised:
        read_ner_file(path)
    line = content.count("\n") + 1
    assert str(raised.value).startswith(f"{path}:{line}: "), str(raised.value)
    assert message in str(raised.value)


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("\n\n", "no sentences"),
    ("张 O\n三 O\n", "no entities (every tag is O)"),
])
def test_empty_files(tmp_path, content, message):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_ner_file(path)


def test_dev_file_with_a_type_unseen_in_train_names_its_line(tmp_path):
    with pytest.raises(DataError) as raised:
        read_ner_file(DATA / "dev-unseen-type.txt", labels=["LOC", "ORG", "PER"])
    assert str(raised.value).startswith(f"{DATA / 'dev-unseen-type.txt'}:5: entity type 'PRODUCT' is not among")
    jsonl = tmp_path / "dev.jsonl"
    jsonl.write_text('{"text": "张三", "entities": []}\n{"text": "微博", "entities": [{"start": 0, "end": 2, '
                     '"label": "PRODUCT"}]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{jsonl}:2: entity type 'PRODUCT'"):
        read_ner_file(jsonl, labels=["PER"])
    # a dev file with no entities at all is fine, and keeps the training labels
    none = tmp_path / "dev-o.txt"
    none.write_text("张 O\n", encoding="utf-8")
    assert read_ner_file(none, labels=["PER", "LOC"]).labels == ["PER", "LOC"]


def test_tokens_join_with_a_space_only_between_ascii_letters_and_digits(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_text("iPhone B-PRO\n12 I-PRO\n在 O\nＡＢＣ B-ORG\n公 I-ORG\n司 I-ORG\nx O\n5G B-PRO\n于 O\n1 O\n9 O\n"
                    "4 O\n5 O\n年 O\nN B-ORG\nB I-ORG\nA I-ORG\n", encoding="utf-8")
    example = read_ner_file(path).examples[0]
    assert example.text == "iPhone 12在ＡＢＣ公司x 5G于1945年NBA"  # one character per line: no spaces (MSRA)
    assert [example.text[s.start:s.end] for s in example.spans] == ["iPhone 12", "ＡＢＣ公司", "5G", "NBA"]


def test_an_entity_cut_by_a_sentence_edge_is_left_out_and_counted(tmp_path):
    # MSRA's packaging splits long sentences at 100 characters, inside an entity now and then
    path = tmp_path / "cut.txt"
    path.write_text("我 O\n见 O\n张 B-PER\n\n三 M-PER\n丰 E-PER\n和 O\n李 S-PER\n\n王 M-PER\n\n去 O\n北 B-LOC\n京 E-LOC\n",
                    encoding="utf-8")
    data = read_ner_file(path)
    assert [e.spans for e in data.examples] == [(), (Span(3, 4, "PER"),), (), (Span(1, 3, "LOC"),)]
    assert data.cut_entities == [f"{path}:3", f"{path}:5", f"{path}:10"]
    from sbert_cli.data.ner import _TagError

    with pytest.raises(_TagError):  # without the list, strict
        spans_from_file_tags(["M-PER", "E-PER"], "BMES")
    with pytest.raises(_TagError, match="O after M-PER"):  # a cut entity must still be well formed
        spans_from_file_tags(["M-PER", "O"], "BMES", [])


# ------------------------------------------------------------------------------------------ file tags round trip
@pytest.mark.parametrize("scheme", ["BIO", "IOB1", "BIOES", "BMES"])
@given(data=st.data())
def test_file_tags_round_trip(scheme, data):
    n = data.draw(st.integers(0, 12))
    cuts = sorted(data.draw(st.sets(st.integers(0, n), max_size=8)))
    spans = [(a, b, data.draw(st.sampled_from("XY"))) for a, b in zip(cuts, cuts[1:]) if data.draw(st.booleans())]
    tags = file_tags_from_spans(spans, n, scheme)
    assert spans_from_file_tags(tags, scheme) == spans
    if spans:
        assert detect_scheme([tags]) in ({scheme, "BIOES"} if scheme == "BMES" else {scheme})


# ---------------------------------------------------------------------------------------------------- offsets
def test_word_offsets_on_mixed_text(tokenizer):
    text = "张三用iPhone 12在ＡＢＣ１２３买了3.5kg 的😀，İstanbul\u200b北京"
    words = [text[s:e] for s, e in word_offsets(tokenizer, text)]
    assert words == ["张", "三", "用", "iPhone", "12", "在", "ＡＢＣ１２３", "买", "了", "3", ".", "5kg", "的", "😀", "，",
                     "İstanbul", "\u200b", "北", "京"]


def test_offsets_of_a_text_with_only_spaces(tokenizer):
    assert word_offsets(tokenizer, "  \u3000 ") == []


ALPHABET = st.sampled_from(list("张三北京大学的了") + list("aZk") + list("079") + list("ＡＺ０９") + list("，。,.!（")
                           + [" ", "\u3000", "\t", "😀", "\u200b", "é", "\ufffd", "İ", "ß", "\x7f", "\u0301", "\u00a0", "\ufeff", "\u2028", "ｶ", "Ω"])


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(chars=st.lists(ALPHABET, min_size=0, max_size=30), data=st.data())
def test_word_tags_round_trip_on_generated_text(tokenizer, chars, data):
    text = "".join(chars)
    offsets = word_offsets(tokenizer, text)
    # words are in order, do not overlap, hold no whitespace at their edges, and cover every visible character
    covered = set()
    for (s, e), nxt in zip(offsets, offsets[1:] + [(len(text), len(text))]):
        assert 0 <= s < e <= nxt[0]
        assert not text[s].isspace() and not text[e - 1].isspace()
        covered.update(range(s, e))
    assert all(text[i].isspace() for i in range(len(text)) if i not in covered)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(offsets)), max_size=10)))
    spans = [Span(offsets[a][0], offsets[b - 1][1], data.draw(st.sampled_from(["PER", "LOC"])))
             for a, b in zip(cuts, cuts[1:]) if data.draw(st.booleans())]
    tags, snapped = word_tags(offsets, spans)
    assert snapped == 0
    assert set(tags) <= set(tag_names(["LOC", "PER"]))
    assert spans_from_word_tags(tags, offsets) == spans
    for span in spans:
        assert text[span.start:span.end] and text[span.start:span.end] == text[span.start:span.end].strip()


def test_word_tags_snaps_a_span_edge_inside_a_word_and_counts_it():
    offsets = [(0, 1), (1, 7), (8, 10)]  # 张 iPhone 12
    tags, snapped = word_tags(offsets, [Span(1, 3, "PRO"), Span(0, 1, "PER")])
    assert tags == ["S-PER", "S-PRO", "O"] and snapped == 1
    tags, snapped = word_tags(offsets, [Span(7, 8, "X"), Span(1, 9, "A"), Span(8, 10, "B")])
    assert tags == ["O", "B-A", "E-A"] and snapped == 3  # a span on a space only, one cut, one on taken words


def test_spans_from_word_tags_keeps_only_well_formed_runs():
    offsets = [(i, i + 1) for i in range(8)]
    tags = ["I-X", "B-X", "I-X", "E-X", "B-X", "E-Y", "S-Y", "E-X"]
    assert spans_from_word_tags(tags, offsets) == [Span(1, 4, "X"), Span(6, 7, "Y")]


def test_allowed_transitions():
    names = tag_names(["PER", "LOC"])
    start, trans, end = allowed_transitions(names)
    index = names.index
    assert names[:5] == ["O", "B-PER", "I-PER", "E-PER", "S-PER"]
    assert start[index("O")] and start[index("B-PER")] and start[index("S-LOC")] and not start[index("I-PER")]
    assert end[index("E-PER")] and end[index("O")] and not end[index("B-LOC")] and not end[index("I-LOC")]
    assert not trans[index("O")][index("I-PER")] and not trans[index("O")][index("E-PER")]
    assert trans[index("B-PER")][index("I-PER")] and trans[index("I-PER")][index("E-PER")]
    assert not trans[index("B-PER")][index("I-LOC")] and not trans[index("B-PER")][index("O")]
    assert trans[index("E-PER")][index("B-LOC")] and trans[index("S-PER")][index("S-PER")]
    # every path the mask allows decodes to well-formed spans only: brute force over length 3
    import itertools

    for path in itertools.product(range(len(names)), repeat=3):
        ok = start[path[0]] and end[path[-1]] and all(trans[a][b] for a, b in zip(path, path[1:]))
        tags = [names[i] for i in path]
        offsets = [(i, i + 1) for i in range(3)]
        spans = spans_from_word_tags(tags, offsets)
        if ok:
            assert word_tags(offsets, spans) == (tags, 0)


# ---------------------------------------------------------------------------------------------------- windows
def one_hot(tags, names):
    out = np.zeros((len(tags), len(names)), dtype=np.float32)
    out[np.arange(len(tags)), [names.index(t) for t in tags]] = 1
    return out


def test_windows_merge_without_losing_or_duplicating_entities(tokenizer):
    text = "张三和李四在北京大学见到了王五，然后去了上海市人民医院看望赵六。"
    offsets = word_offsets(tokenizer, text)
    gold = [Span(0, 2, "PER"), Span(3, 5, "PER"), Span(6, 10, "ORG"), Span(13, 15, "PER"), Span(20, 28, "ORG"),
            Span(30, 32, "PER")]
    names = tag_names(["ORG", "PER"])
    tags, _ = word_tags(offsets, gold)
    windows = encode_windows(tokenizer, text, offsets, max_seq_len=8, stride=3)
    assert len(windows) > 5
    assert windows[0].words.start == 0 and windows[-1].words.stop == len(offsets)
    for window in windows:
        assert len(window.input_ids) <= 8
        assert window.input_ids[0] == tokenizer.cls_id and window.input_ids[-1] == tokenizer.sep_id
        ids = [window.input_ids[p] for p in window.first_subtoken]
        assert ids == [tokenizer.encode_words(text[offsets[w][0]:offsets[w][1]])[0][2][0] for w in window.words]
    # each window scores its words right, except at a cut, where it is wrong: the merge must not pick those
    scores = []
    for window in windows:
        local = [tags[w] for w in window.words]
        if window.words.start > 0:
            local[0] = "O"
        if window.words.stop < len(offsets):
            local[-1] = "S-PER"
        per_word = one_hot(local, names)
        rows = np.full((len(window.input_ids), len(names)), -1.0, dtype=np.float32)
        rows[window.first_subtoken] = per_word
        scores.append(rows)
    merged = merge_windows(windows, scores, len(offsets))
    decoded = spans_from_word_tags([names[i] for i in merged.argmax(-1)], offsets)
    assert decoded == gold


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(chars=st.lists(ALPHABET, min_size=0, max_size=40), max_seq_len=st.integers(3, 12), stride=st.integers(0, 8),
       data=st.data())
def test_windows_cover_every_word_and_merge_back_on_generated_text(tokenizer, chars, max_seq_len, stride, data):
    text = "".join(chars)
    offsets = word_offsets(tokenizer, text)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(offsets)), max_size=10)))
    spans = [Span(offsets[a][0], offsets[b - 1][1], "X") for a, b in zip(cuts, cuts[1:]) if data.draw(st.booleans())]
    tags, _ = word_tags(offsets, spans)
    names = tag_names(["X"])
    windows = encode_windows(tokenizer, text, offsets, max_seq_len, stride)
    assert windows[0].words.start == 0 and windows[-1].words.stop == len(offsets)
    for before, after in zip(windows, windows[1:]):
        assert before.words.start < after.words.start <= before.words.stop < after.words.stop  # progress, no gap
    for window in windows:
        assert len(window.input_ids) <= max_seq_len and len(window.first_subtoken) == len(window.words)
    scores = []
    for window in windows:
        rows = np.zeros((len(window.input_ids), len(names)), dtype=np.float32)
        rows[window.first_subtoken] = one_hot([tags[w] for w in window.words], names)
        scores.append(rows)
    if offsets:
        merged = merge_windows(windows, scores, len(offsets))
        assert spans_from_word_tags([names[i] for i in merged.argmax(-1)], offsets) == spans


def test_a_short_sentence_is_one_window_and_nothing_is_truncated(tokenizer):
    text = "北京欢迎你"
    offsets = word_offsets(tokenizer, text)
    (window,) = encode_windows(tokenizer, text, offsets, max_seq_len=128)
    assert window.words == range(5) and window.first_subtoken == [1, 2, 3, 4, 5] and len(window.input_ids) == 7
    assert encode_windows(tokenizer, "", [], 16)[0].input_ids == [tokenizer.cls_id, tokenizer.sep_id]


def test_long_words_and_dropped_characters_still_get_a_position(tokenizer):
    text = "在supercalifragilistic\u200b北京"
    offsets = word_offsets(tokenizer, text)
    assert [text[s:e] for s, e in offsets] == ["在", "supercalifragilistic", "\u200b", "北", "京"]
    accents = "cafe\u0301 \u0301x"
    assert [accents[s:e] for s, e in word_offsets(tokenizer, accents)] == ["cafe\u0301", "\u0301", "x"]
    windows = encode_windows(tokenizer, text, offsets, max_seq_len=4, stride=1)
    covered = sorted({w for window in windows for w in window.words})
    assert covered == list(range(len(offsets)))
    unk_window = next(w for w in windows if 2 in w.words)
    assert unk_window.input_ids[unk_window.first_subtoken[list(unk_window.words).index(2)]] == tokenizer.unk_id
    assert all(len(w.input_ids) <= 4 for w in windows)


def test_max_seq_len_too_small_is_refused(tokenizer):
    from sbert_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="max_seq_len"):
        encode_windows(tokenizer, "北京", [(0, 1), (1, 2)], max_seq_len=2)


# ------------------------------------------------------------------------------------------------ bundled sample
def test_the_bundled_sample_reads_and_is_the_generators_output(tmp_path):
    import importlib.util

    from sbert_cli.resources import NER_SAMPLE_DEV, NER_SAMPLE_TRAIN

    train = read_ner_file(NER_SAMPLE_TRAIN)
    dev = read_ner_file(NER_SAMPLE_DEV, labels=train.labels)
    assert (len(train), len(dev), train.scheme, dev.scheme) == (1200, 300, "BMES", "BMES")
    assert train.labels == ["LOC", "ORG", "PER"] and not train.cut_entities
    assert sum(len(e.spans) for e in train.examples) > 2000
    spec = importlib.util.spec_from_file_location("make_ner_sample", VOCAB.parents[2] / "benchmarks" / "make_ner_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make(tmp_path)
    for path in (NER_SAMPLE_TRAIN, NER_SAMPLE_DEV):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), f"{path.name}: rerun benchmarks/make_ner_sample.py"


def test_a_fifo_is_read_once(tmp_path):
    import os
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes((DATA / "bmes.txt").read_bytes()))
    writer.start()
    data = read_ner_file(fifo)
    writer.join()
    assert data.scheme == "BMES" and [e.spans for e in data.examples] == SPANS
