"""Sequence-labelling data: entity files in, character spans out, and the word/tag/window path to the model.

Readers: `read_ner_file` takes CoNLL-style files (`TOKEN TAG` per line, space or tab, a blank line between
sentences) in the BIO (IOB2), IOB1, BIOES and BMES schemes (detected, see `detect_scheme`), JSONL with character
offsets (`{"text", "entities": [{"start", "end", "label"}]}`, end exclusive) and CLUENER
(`{"text", "label": {TYPE: {entity: [[start, end_inclusive]]}}}`). An inconsistent file is a DataError naming
`file:line`. The currency everywhere else is `Span(start, end, label)`: end exclusive, offsets into the text.

Words and tags: `word_offsets` (the tokenizer's own words, offsets into the original text), `tag_names` (the
internal BIOES tag set), `word_tags` and its inverse `spans_from_word_tags`, `allowed_transitions` (which tag may
follow which, for constrained decoding). File tags: `spans_from_file_tags` / `file_tags_from_spans` (per scheme).

Windows: `encode_windows` cuts a sentence longer than max_seq_len into overlapping windows on word boundaries;
`merge_windows` gives each word the scores of the window where it sits farthest from a cut. Nothing is truncated.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from sbert_cli.data.text_input import check_input_files, check_text, is_regular, open_binary, read_lines
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.limits import parse_json

SCHEMES = ("BIO", "IOB1", "BIOES", "BMES", "jsonl", "cluener")
SCHEME_NAMES = {"BIO": "BIO (IOB2)", "IOB1": "IOB1", "BIOES": "BIOES", "BMES": "BMES"}
_TAG = re.compile(r"([BIMES])-(\S+)\Z")
_FIELDS = re.compile(r"[ \t]+")


@dataclass(frozen=True, order=True)
class Span:
    """An entity: characters [start, end) of the text, and its type."""

    start: int
    end: int
    label: str


@dataclass(frozen=True)
class NerExample:
    text: str
    spans: tuple[Span, ...]
    origin: str  # "file:line" of the sentence's first line


@dataclass
class NerData:
    examples: list[NerExample]
    labels: list[str]  # entity types: sorted, or the ones given to read_ner_file
    scheme: str  # one of SCHEMES
    path: Path
    cut_entities: list[str] = field(default_factory=list)  # "file:line" of entities cut by a sentence edge, left out

    def __len__(self) -> int:
        return len(self.examples)


# ---------------------------------------------------------------------------------------------------- reading
def read_ner_file(path: str | Path, labels: list[str] | None = None) -> NerData:
    """Entity examples of a CoNLL, JSONL or CLUENER file (found from its first line). With `labels` (the
    training file's types, for dev and test files) a type outside them is an error naming its line."""
    path = check_input_files([Path(path)])[0]
    cached = None if is_regular(path) else list(_lines(path))  # a FIFO or <(cmd) is read once: keep its lines

    def lines() -> Iterator[tuple[int, str]]:  # a CoNLL file is read twice: to detect the scheme, then to read
        return _lines(path) if cached is None else iter(cached)

    first = next((line for _, line in lines() if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: no sentences; write one `TOKEN TAG` per line, or JSONL with text and entities")
    known = None if labels is None else set(labels)

    def check_label(label: str, where: str) -> None:
        if known is not None and label not in known:
            raise DataError(f"{where}: entity type {label!r} is not among the training file's types "
                            f"({', '.join(labels)}); fix the tag or train with it")

    if _is_json_object(first):
        examples, scheme = _read_json(path, lines, check_label)
        cut = []
    else:
        examples, scheme, cut = _read_conll(path, lines, check_label)
    if not examples:
        raise DataError(f"{path}: no sentences; write one `TOKEN TAG` per line, or JSONL with text and entities")
    if labels is not None:
        return NerData(examples, list(labels), scheme, path, cut)
    found = sorted({s.label for e in examples for s in e.spans})
    if not found:
        raise DataError(f"{path}: no entities (every tag is O); a training file needs tagged entities")
    return NerData(examples, found, scheme, path, cut)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(parse_json(line), dict)
    except json.JSONDecodeError:
        return False


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the file, streamed (.gz too); bad UTF-8 is an error naming the line."""
    stream, raw = open_binary(path)
    try:
        with raw, stream:
            yield from read_lines(stream, str(path))
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the file ({e})") from None


def _conll_sentences(path: Path, lines) -> Iterator[tuple[int, list[str], list[str]]]:
    """Sentences as (first line, tokens, tags); token i is on line first + i."""
    tag_strings: dict[str, str] = {}  # one string object per distinct tag: MSRA has 2 million tag lines
    first, tokens, tags = 0, [], []
    for number, line in lines():
        fields = line.split(" ")  # the common `TOKEN TAG`; anything else goes through the regular expression
        if len(fields) != 2 or not fields[0] or not fields[1]:
            fields = _FIELDS.split(line.strip(" \t"))
        if not line.strip(" \t") or fields[0] == "-DOCSTART-":
            if tokens:
                yield first, tokens, tags
            first, tokens, tags = 0, [], []
            continue
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: no tag on this line; write `TOKEN TAG` (a space or tab between), "
                            "and a blank line between sentences")
        tag = tag_strings.get(fields[-1])
        if tag is None:
            tag = fields[-1]
            if tag != "O" and not _TAG.match(tag):
                raise DataError(f"{path}:{number}: tag {tag!r} is neither O nor B-, I-, M-, E- or S- and a type "
                                "(B-PER, I-LOC, ...)")
            tag_strings[tag] = tag
        first = first or number
        tokens.append(fields[0])
        tags.append(tag)
    if tokens:
        yield first, tokens, tags


def detect_scheme(sentences: Iterable[Sequence[str]]) -> str:
    """The scheme of a file's tags, sentence by sentence (see _scheme_evidence)."""
    return _scheme_evidence(sentences)[0]


def _scheme_evidence(sentences: Iterable[Sequence[str]]) -> tuple[str, bool]:
    """(scheme, whether entities start both with B- and with I-) of a file's tags, sentence by sentence: BMES
    when M- appears, BIOES when E- or S- does, else BIO when some entity starts with B- (after O, after another
    type, or first in a sentence), else IOB1 when some starts with I- (IOB1 writes B- only between two adjacent
    entities of one type), else BIO."""
    prefixes: set[str] = set()
    b_starts = i_starts = False
    for tags in sentences:
        previous = "O"
        for tag in tags:
            if tag != "O":
                prefixes.add(tag[0])
                if tag[2:] != previous[2:] or previous == "O":
                    b_starts |= tag[0] == "B"
                    i_starts |= tag[0] == "I"
            previous = tag
    if "M" in prefixes:
        return "BMES", False
    if prefixes & {"E", "S"}:
        return "BIOES", False
    return ("IOB1" if i_starts and not b_starts else "BIO"), i_starts and b_starts


def _read_conll(path: Path, lines, check_label) -> tuple[list[NerExample], str, list[str]]:
    scheme, mixed = _scheme_evidence(tags for _, _, tags in _conll_sentences(path, lines))
    examples = []
    cut: list[str] = []
    for first, tokens, tags in _conll_sentences(path, lines):
        text, starts = _join_tokens(tokens)
        edge_cuts: list[int] = []
        try:
            token_spans = spans_from_file_tags(tags, scheme, edge_cuts)
        except _TagError as e:
            why = " (entities here start with B- and with I-: B- at an entity start makes the file BIO, not IOB1)"
            raise DataError(f"{path}:{first + e.index}: {e.message}{why if mixed else ''}") from None
        for s, _, label in token_spans:
            check_label(label, f"{path}:{first + s}")
        spans = tuple(Span(starts[s], starts[e - 1] + len(tokens[e - 1]), label) for s, e, label in token_spans)
        examples.append(NerExample(text, spans, f"{path}:{first}"))
        cut.extend(f"{path}:{first + i}" for i in edge_cuts)
    return examples, scheme, cut


def _join_tokens(tokens: list[str]) -> tuple[str, list[int]]:
    """The sentence text and each token's start: tokens joined without a separator, except one space between two
    tokens whose touching characters are both ASCII letters or digits, unless both are single characters
    (`iPhone 12`, not `iPhone12`; but a character-per-line corpus such as MSRA writes 1945 as 1 9 4 5)."""
    parts: list[str] = []
    starts: list[int] = []
    length = 0
    for token in tokens:
        if parts and _ascii_alnum(parts[-1][-1]) and _ascii_alnum(token[0]) and len(parts[-1]) + len(token) > 2:
            parts.append(" ")
            length += 1
        starts.append(length)
        parts.append(token)
        length += len(token)
    return "".join(parts), starts


def _ascii_alnum(char: str) -> bool:
    return char.isascii() and char.isalnum()


class _TagError(Exception):
    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index, self.message = index, message


def spans_from_file_tags(tags: Sequence[str], scheme: str, edge_cuts: list[int] | None = None
                         ) -> list[tuple[int, int, str]]:
    """Entities of one sentence's file tags as (first token, end token exclusive, type), read strictly in
    `scheme` (BIO, IOB1, BIOES or BMES); a tag the scheme does not allow there is a _TagError. Given a list
    `edge_cuts`, a BIOES/BMES entity cut by the sentence's start or end (M-PER E-PER first, B-PER last: a corpus
    split at a fixed length) is no error: it is left out, as seqeval's strict mode leaves it, and its first
    token's index appended to the list."""
    spans: list[tuple[int, int, str]] = []
    open_start, open_type, previous = None, None, "the sentence start"
    ends_with_e = scheme in ("BIOES", "BMES")
    name = SCHEME_NAMES[scheme]
    for i, tag in enumerate(tags):
        prefix, label = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if scheme == "BMES" and prefix == "I" or scheme != "BMES" and prefix == "M":
            raise _TagError(i, f"{tag} does not belong in a {name} file")
        if not ends_with_e and prefix in ("E", "S"):
            raise _TagError(i, f"{tag} does not belong in a {name} file")
        inside = prefix in ("I", "M", "E")
        if ends_with_e:
            if i == 0 and inside and edge_cuts is not None:
                edge_cuts.append(0)
                open_start, open_type = None, label  # the cut entity's start is in the sentence before
            elif open_type is None and inside:
                raise _TagError(i, f"{tag} after {previous}; in {name} an entity starts with B- or S-")
            if open_type is not None and not (inside and label == open_type):
                raise _TagError(i, f"{tag} after {previous}; in {name} an entity of several tokens continues "
                                   f"and ends with its own type ({'M' if scheme == 'BMES' else 'I'}-{open_type}, "
                                   f"E-{open_type})")
            if prefix == "B":
                open_start, open_type = i, label
            elif prefix == "S":
                spans.append((i, i + 1, label))
            elif prefix == "E":
                if open_start is not None:
                    spans.append((open_start, i + 1, open_type))
                open_type = None
        else:
            continues = open_type == label
            if scheme == "BIO" and prefix == "I" and not continues:
                raise _TagError(i, f"{tag} after {previous}; in {name} an entity starts with B-, and I- continues "
                                   "one of the same type")
            if scheme == "IOB1" and prefix == "B" and not continues:
                raise _TagError(i, f"{tag} after {previous}; in IOB1 an entity starts with I-, and B- only "
                                   "starts one right after another of the same type")
            if open_type is not None and (prefix != "I" or not continues):
                spans.append((open_start, i, open_type))
                open_type = None
            if prefix != "O" and open_type is None:
                open_start, open_type = i, label
        previous = tag
    if open_type is not None:
        if ends_with_e and edge_cuts is not None:
            if open_start is not None:
                edge_cuts.append(open_start)
            return spans
        if ends_with_e:
            raise _TagError(len(tags) - 1, f"the sentence ends inside an entity ({previous}); in {name} it "
                                           f"ends with E-{open_type}")
        spans.append((open_start, len(tags), open_type))
    return spans


def file_tags_from_spans(spans: Sequence[tuple[int, int, str]], n_tokens: int, scheme: str) -> list[str]:
    """A sentence's file tags in `scheme` for entities given as (first token, end token exclusive, type)."""
    tags = ["O"] * n_tokens
    inner = "M" if scheme == "BMES" else "I"
    previous_end, previous_type = -1, None
    for start, end, label in sorted(spans):
        if scheme in ("BIOES", "BMES"):
            if end - start == 1:
                tags[start] = f"S-{label}"
            else:
                tags[start:end] = [f"B-{label}"] + [f"{inner}-{label}"] * (end - start - 2) + [f"E-{label}"]
        elif scheme == "IOB1":
            first = "B" if previous_end == start and previous_type == label else "I"
            tags[start:end] = [f"{first}-{label}"] + [f"I-{label}"] * (end - start - 1)
        else:
            tags[start:end] = [f"B-{label}"] + [f"I-{label}"] * (end - start - 1)
        previous_end, previous_type = end, label
    return tags


def _read_json(path: Path, lines, check_label) -> tuple[list[NerExample], str]:
    examples: list[NerExample] = []
    layout = None
    for number, line in lines():
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = parse_json(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        this = "jsonl" if isinstance(record, dict) and "entities" in record else \
            "cluener" if isinstance(record, dict) and "label" in record else None
        if this is None:
            raise DataError(f'{where}: expected an object with "text" and "entities" (JSONL) or "text" and "label" '
                            "(CLUENER)")
        if layout is not None and this != layout:
            raise DataError(f"{where}: a {this} line in a {layout} file; use one layout for the whole file")
        layout = this
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f'{where}: "text" must be a non-empty string')
        check_text(text, where)
        raw = _jsonl_spans(where, text, record["entities"]) if this == "jsonl" else \
            _cluener_spans(where, text, record["label"])
        spans = sorted(_trimmed(where, text, s, e, label) for s, e, label in raw)
        for span in spans:
            check_label(span.label, where)
        for a, b in zip(spans, spans[1:]):
            if b.start < a.end:
                raise DataError(f"{where}: entities {text[a.start:a.end]!r} [{a.start}, {a.end}) {a.label} and "
                                f"{text[b.start:b.end]!r} [{b.start}, {b.end}) {b.label} overlap; sbert tags flat "
                                "entities: keep one")
        examples.append(NerExample(text, tuple(spans), where))
    return examples, layout


def _trimmed(where: str, text: str, start: int, end: int, label: str) -> Span:
    """The span without the whitespace at its edges (no word starts or ends in a space)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        raise DataError(f"{where}: a {label} entity covers only whitespace; remove it")
    return Span(start, end, label)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _jsonl_spans(where: str, text: str, entities) -> Iterator[tuple[int, int, str]]:
    if not isinstance(entities, list):
        raise DataError(f'{where}: "entities" must be a list of {{"start", "end", "label"}} objects')
    for entity in entities:
        if not isinstance(entity, dict) or not _int(entity.get("start")) or not _int(entity.get("end")):
            raise DataError(f'{where}: each entity needs integer "start" and "end" and a "label", not {entity!r}')
        start, end, label = entity["start"], entity["end"], entity.get("label")
        if not isinstance(label, str) or not label.strip() or any(c.isspace() for c in label):
            raise DataError(f'{where}: entity [{start}, {end}) needs a "label" without spaces, not {label!r}')
        if not 0 <= start < end <= len(text):
            raise DataError(f"{where}: entity [{start}, {end}) {label} is outside the text's {len(text)} characters "
                            "(start counts from 0, end is exclusive)")
        written = entity.get("text")
        if written is not None and written != text[start:end]:
            raise DataError(f"{where}: entity [{start}, {end}) says {written!r} but the text there is "
                            f"{text[start:end]!r}; offsets count characters from 0, end exclusive")
        yield start, end, label


def _cluener_spans(where: str, text: str, label_field) -> Iterator[tuple[int, int, str]]:
    if not isinstance(label_field, dict):
        raise DataError(f'{where}: "label" must map each type to {{entity: [[start, end_inclusive], ...]}}')
    for label, entities in label_field.items():
        if not label.strip() or any(c.isspace() for c in label) or not isinstance(entities, dict):
            raise DataError(f'{where}: "label" must map each type to {{entity: [[start, end_inclusive], ...]}}, '
                            f"not {label!r}: {entities!r}")
        for written, places in entities.items():
            if not isinstance(places, list):
                raise DataError(f"{where}: {label} {written!r} must list [start, end_inclusive] pairs")
            for place in places:
                if not (isinstance(place, list) and len(place) == 2 and all(map(_int, place))):
                    raise DataError(f"{where}: {label} {written!r}: {place!r} is not a [start, end_inclusive] pair")
                start, last = place
                if 0 <= start < last <= len(text) and text[start:last] == written:
                    raise DataError(f"{where}: {label} {written!r} at [{start}, {last}] reads as an exclusive end: "
                                    f"CLUENER's ends are inclusive, so it would be [{start}, {last - 1}]")
                if not 0 <= start <= last < len(text):
                    raise DataError(f"{where}: {label} {written!r} at [{start}, {last}] is outside the text's "
                                    f"{len(text)} characters (CLUENER ends are inclusive)")
                if text[start:last + 1] != written:
                    raise DataError(f"{where}: {label} {written!r} at [{start}, {last}] does not match the text "
                                    f"there, {text[start:last + 1]!r}")
                yield start, last + 1, label


# ---------------------------------------------------------------------------------------------- words and tags
def _words(tokenizer, text: str) -> list[tuple[int, int, list[int]]]:
    """The tokenizer's words with their ids, plus a word ([UNK]) for each character the cleaner dropped that is
    not whitespace (a control or format character, U+FFFD): every visible character belongs to a word. A
    combining mark the accent stripping dropped stays with the word it follows (cafe + U+0301 is one word)."""
    words: list[tuple[int, int, list[int]]] = []
    position = 0
    for start, end, ids in tokenizer.encode_words(text) + [(len(text), len(text), [])]:
        for i in range(position, start):
            if words and words[-1][1] == i and unicodedata.category(text[i]).startswith("M"):
                words[-1] = (words[-1][0], i + 1, words[-1][2])
            elif not text[i].isspace():
                words.append((i, i + 1, [tokenizer.unk_id]))
        if ids:
            words.append((start, end, ids))
        position = max(position, end)
    return words


def word_offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    """(start, end) of each word of `text` as the model sees it (a CJK character, a run of letters and digits,
    a punctuation mark; whitespace is no word), as character offsets into the original text."""
    return [(start, end) for start, end, _ in _words(tokenizer, text)]


def tag_names(labels: Sequence[str]) -> list[str]:
    """The internal tag set, BIOES whatever the file's scheme: O, then B-, I-, E-, S- of each type in order."""
    return ["O"] + [f"{prefix}-{label}" for label in labels for prefix in "BIES"]


def word_tags(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> tuple[list[str], int]:
    """(BIOES tag of each word, how many spans were snapped): a span covers the words it touches; a span edge
    inside a word moves to the word's edge, and a span that touches no word or a word already taken is dropped
    (both counted as snapped)."""
    tags = ["O"] * len(offsets)
    starts = np.array([s for s, _ in offsets], dtype=np.int64)
    ends = np.array([e for _, e in offsets], dtype=np.int64)
    snapped = 0
    for span in sorted(spans):
        first = int(np.searchsorted(ends, span.start, side="right"))  # first word ending after the span's start
        last = int(np.searchsorted(starts, span.end, side="left"))  # words [first, last) start before its end
        if first >= last or any(t != "O" for t in tags[first:last]):
            snapped += 1
            continue
        snapped += starts[first] != span.start or ends[last - 1] != span.end
        if last - first == 1:
            tags[first] = f"S-{span.label}"
        else:
            tags[first:last] = [f"B-{span.label}"] + [f"I-{span.label}"] * (last - first - 2) + [f"E-{span.label}"]
    return tags, int(snapped)


def spans_from_word_tags(tags: Sequence[str], offsets: Sequence[tuple[int, int]]) -> list[Span]:
    """Entities of BIOES word tags as character spans: only well-formed runs (B- I-* E- of one type, or S-)."""
    spans: list[Span] = []
    start = label = None
    for i, tag in enumerate(tags):
        prefix, kind = tag[0], tag[2:]
        if prefix == "S":
            spans.append(Span(offsets[i][0], offsets[i][1], kind))
            start = None
        elif prefix == "B":
            start, label = i, kind
        elif prefix == "I" and start is not None and kind == label:
            continue
        elif prefix == "E" and start is not None and kind == label:
            spans.append(Span(offsets[start][0], offsets[i][1], kind))
            start = None
        else:
            start = None
    return spans


def allowed_transitions(names: Sequence[str]) -> tuple[list[bool], list[list[bool]], list[bool]]:
    """(may start a sentence, may follow [from][to], may end a sentence) for the BIOES tags `names`: inside an
    entity (after B-X or I-X) only I-X or E-X may come; outside it, O, B- or S- of any type."""
    def parts(tag):
        return (tag[0], tag[2:]) if tag != "O" else ("O", None)

    starts = [parts(t)[0] in "OBS" for t in names]
    ends = [parts(t)[0] in "OES" for t in names]
    trans = []
    for before in names:
        prefix, label = parts(before)
        if prefix in "BI":
            trans.append([parts(t)[0] in "IE" and parts(t)[1] == label for t in names])
        else:
            trans.append(list(starts))
    return starts, trans, ends


# ---------------------------------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Window:
    """A piece of a sentence the model reads at once: [CLS] sub-tokens [SEP]."""

    input_ids: list[int]
    first_subtoken: list[int]  # position in input_ids of the first sub-token of each word in `words`
    words: range  # indices of the sentence's words it covers


def encode_windows(tokenizer, text: str, offsets: Sequence[tuple[int, int]], max_seq_len: int,
                   stride: int = 32) -> list[Window]:
    """The sentence's words as windows of at most max_seq_len ids, cut between words, consecutive windows
    sharing about `stride` sub-tokens (at most half a window). A word's sub-tokens are the tokenizer's (one
    [UNK] when it has none); a single word longer than a window keeps the sub-tokens that fit."""
    budget = max_seq_len - 2
    if budget < 1:
        raise ConfigError(f"`max_seq_len` must be at least 3 for [CLS], a word and [SEP], not {max_seq_len}")
    stride = max(0, min(stride, budget // 2))
    ids_at = {(start, end): ids for start, end, ids in _words(tokenizer, text)}
    pieces = [(ids_at.get((start, end)) or [tokenizer.unk_id])[:budget] for start, end in offsets]
    windows: list[Window] = []
    start = 0
    while True:
        end, used = start, 0
        while end < len(pieces) and used + len(pieces[end]) <= budget:
            used += len(pieces[end])
            end += 1
        input_ids, first = [tokenizer.cls_id], []
        for piece in pieces[start:end]:
            first.append(len(input_ids))
            input_ids.extend(piece)
        windows.append(Window(input_ids + [tokenizer.sep_id], first, range(start, end)))
        if end >= len(pieces):
            return windows
        next_start, shared = end, 0
        while (next_start - 1 > start and shared + len(pieces[next_start - 1]) <= stride
               and shared + len(pieces[next_start - 1]) + len(pieces[end]) <= budget):  # room for a new word
            next_start -= 1
            shared += len(pieces[next_start])
        start = next_start


def merge_windows(windows: Sequence[Window], scores_per_window: Sequence[np.ndarray], n_words: int) -> np.ndarray:
    """(n_words, n_tags) scores of the whole sentence from each window's per-position scores (rows indexed like
    its input_ids): a word takes the row from the window where it is farthest from a cut (the sentence's own
    ends are no cuts); on a tie, the earlier window."""
    best = np.full(n_words, -1.0)
    merged = None
    for window, scores in zip(windows, scores_per_window):
        scores = np.asarray(scores)
        if merged is None:
            merged = np.zeros((n_words, scores.shape[-1]), dtype=scores.dtype)
        size = len(window.words)
        for j, (word, position) in enumerate(zip(window.words, window.first_subtoken)):
            left = j if window.words.start > 0 else np.inf
            right = size - 1 - j if window.words.stop < n_words else np.inf
            distance = min(left, right, float(n_words))
            if distance > best[word]:
                best[word] = distance
                merged[word] = scores[position]
    if merged is None or (best < 0).any():
        raise ValueError("merge_windows: some words are in no window")
    return merged
