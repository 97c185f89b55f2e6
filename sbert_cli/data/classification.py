"""Classification data readers: THUCNews-style TSV (text<TAB>label), CSV with a header, JSONL.

Labels may be written as names or as integer ids (indices into class.txt). The reader keeps the
file's order: shuffling is the trainer's job, and nothing here assumes the file is sorted.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from sbert_cli.data.text_input import check_text, file_lines
from sbert_cli.errors import DataError
from sbert_cli.limits import parse_json

# Column / field names recognised in CSV headers and JSONL objects, in order of preference.
TEXT_NAMES = ("text", "sentence", "sentence1", "text_a", "content", "review", "title", "query")
PAIR_NAMES = ("text_b", "sentence2", "pair", "text_pair")
LABEL_NAMES = ("label", "labels", "class", "category", "target")


@dataclass
class ClassificationData:
    path: Path
    texts: list[str]
    pairs: list[str] | None  # second text column for sentence pairs, else None
    labels: list[int] | None  # None when the file has no label column (predict)
    label_names: list[str]  # id -> name
    line_numbers: list[int]  # 1-based source line of each example
    blank_lines: int = 0  # blank lines (rows without text) skipped: they are no examples
    notes: list[str] = field(default_factory=list)  # what the reader noticed and the user should hear (integer labels)

    def __len__(self) -> int:
        return len(self.texts)


def read_label_names(path: str | Path) -> list[str]:
    """class.txt: one label name per line; line i names label i."""
    path = Path(path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for line_number, line in file_lines(path):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise DataError(f"{path}:{line_number}: label {name!r} is listed twice (first on line {seen[name]})")
        seen[name] = line_number
        names.append(name)
    if not names:
        raise DataError(f"{path}: no label names; write one label name per line")
    return names


def read_classification_file(
    path: str | Path,
    label_names: list[str] | None = None,
    *,
    require_labels: bool = True,
    allow_new_labels: bool = True,
    text_column: str | int | None = None,
    pair_column: str | int | None = None,
    label_column: str | int | None = None,
    label_source: str = "the training labels",
) -> ClassificationData:
    """Read a TSV (no header), CSV (header) or JSONL file of texts and labels.

    label_names: known id -> name list (class.txt or the training file's labels). New labels are
    appended when allow_new_labels, otherwise they are an error naming file and line (label_source
    says where the known labels came from). Without label_names the labels found are sorted
    (numerically when they are all integers), so the ids do not depend on the file's order.
    Columns: a TSV row is `text<TAB>label` or `text<TAB>pair<TAB>label` (or only text when
    require_labels is False); the *_column arguments pick columns by 0-based index (TSV) or name.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a .txt/.tsv, .csv or .jsonl file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(path, text_column, pair_column, label_column)
    elif suffix == ".csv":
        rows = _csv_rows(path, text_column, pair_column, label_column)
    else:
        rows = _tsv_rows(path, text_column, pair_column, label_column, require_labels)

    texts: list[str] = []
    pairs: list[str | None] = []
    raw_labels: list[str | None] = []
    line_numbers: list[int] = []
    blank_lines = 0
    for line_number, text, pair, label in rows:
        if text is None:  # a blank line
            blank_lines += 1
            continue
        if not text.strip():
            raise DataError(f"{path}:{line_number}: empty text")
        if label is not None and not label.strip():
            label = None
        if label is None and require_labels:
            raise DataError(f"{path}:{line_number}: missing label; every training/evaluation row needs one")
        texts.append(text)
        pairs.append(pair)
        raw_labels.append(label.strip() if label is not None else None)
        line_numbers.append(line_number)
    if not texts:
        raise DataError(f"{path}: no examples (the file is empty)")
    with_pair = [p is not None for p in pairs]
    if any(with_pair) and not all(with_pair):
        first = line_numbers[with_pair.index(not with_pair[0])]
        raise DataError(f"{path}:{first}: some rows have a second text (pair) and others do not")

    has_labels = any(label is not None for label in raw_labels)
    labels = None
    names = list(label_names) if label_names is not None else []
    if has_labels:
        missing = [n for n, label in zip(line_numbers, raw_labels) if label is None]
        if missing:
            raise DataError(f"{path}:{missing[0]}: missing label (other rows have one)")
        notes = []
        if label_names is None:
            names = _sorted_label_names(raw_labels)
            _check_labels_look_like_labels(path, texts, raw_labels, line_numbers, names)
            if all(_as_int(name) is not None for name in names):
                notes.append(
                    f"{path}: the labels are numbers ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}) and no "
                    "class.txt names them, so eval, predict and serve will show these numbers; give one name per line "
                    "(line i names label i) with `labels_file`, or as class.txt beside train.txt in `data_dir`"
                )
        labels = _label_ids(path, raw_labels, line_numbers, names, allow_new_labels and label_names is not None, label_source)
        return ClassificationData(path, texts, pairs if any(with_pair) else None, labels, names, line_numbers,
                                  blank_lines, notes)
    if label_names is None:
        names = []
    return ClassificationData(path, texts, pairs if any(with_pair) else None, labels, names, line_numbers, blank_lines)


# A label column with more distinct values than half its rows, past this many rows, holds text, not labels: a
# classifier learns nothing from fewer than two examples per label.
TEXT_LIKE_MIN_ROWS = 20


def _check_labels_look_like_labels(path: Path, texts: list[str], raw_labels: list[str], line_numbers: list[int],
                                   names: list[str]) -> None:
    """DataError when the label column looks like text (most labels unique): columns swapped, or the wrong column."""
    rows, distinct = len(raw_labels), len(names)
    if rows < TEXT_LIKE_MIN_ROWS or distinct * 2 <= rows:
        return
    swapped = len(set(texts)) * 2 <= rows  # and the text column repeats a few values: labels
    example = raw_labels[0] if len(raw_labels[0]) <= 40 else raw_labels[0][:40] + "..."
    advice = (f"the text column holds few values ({', '.join(sorted(set(texts))[:3])}, ...): are the columns swapped? "
              "put the text first and the label after it" if swapped else
              "is the text in the label column? each row is text, then label (TSV: text<TAB>label)")
    raise DataError(
        f"{path}:{line_numbers[0]}: the label column looks like text: {distinct:,} different labels in {rows:,} rows "
        f"(e.g. {example!r}); {advice}; if these really are labels, list them in a class.txt given with `labels_file`"
    )


def _sorted_label_names(raw_labels: list[str]) -> list[str]:
    unique = set(raw_labels)
    if all(_as_int(v) is not None for v in unique):
        return sorted(unique, key=lambda v: (_as_int(v), v))
    return sorted(unique)


def _label_ids(path, raw_labels, line_numbers, names: list[str], allow_new: bool, label_source: str) -> list[int]:
    """Map names (or integer ids into `names`) to ids; `names` grows when allow_new."""
    index = {name: i for i, name in enumerate(names)}
    # "3" means the fourth name of class.txt, unless the names are themselves numbers.
    ids_are_indices = not any(_as_int(name) is not None for name in names)
    known = len(names)
    ids = []
    for line_number, raw in zip(line_numbers, raw_labels):
        if raw in index:
            ids.append(index[raw])
            continue
        number = _as_int(raw)
        if ids_are_indices and number is not None and 0 <= number < known:
            ids.append(number)
            continue
        if not allow_new:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise DataError(
                f"{path}:{line_number}: label {raw!r} not in {label_source} ({shown}); "
                "fix the label or add it to the label list"
            )
        index[raw] = len(names)
        names.append(raw)
        ids.append(index[raw])
    return ids


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _tsv_rows(path, text_column, pair_column, label_column, require_labels):
    expected = None
    for line_number, line in file_lines(path):
        if not line.strip():
            yield line_number, None, None, None  # a blank line: counted, no example
            continue
        fields = line.split("\t")
        if expected is None:
            expected = len(fields)
            if text_column is None:
                if expected > 3 or (expected == 1 and require_labels):
                    layout = "text<TAB>label or text<TAB>pair<TAB>label"
                    raise DataError(
                        f"{path}:{line_number}: expected {layout}, found {expected} tab-separated column(s); "
                        "keep those layouts, or use .csv/.jsonl with named columns"
                    )
                text_i, pair_i, label_i = {1: (0, None, None), 2: (0, None, 1), 3: (0, 1, 2)}[expected]
            else:
                text_i, pair_i, label_i = (_column_index(path, c) for c in (text_column, pair_column, label_column))
        elif len(fields) != expected:
            raise DataError(
                f"{path}:{line_number}: {len(fields)} tab-separated column(s), but the file's first row has {expected}"
                + ("; a text containing a tab?" if len(fields) > expected else "")
            )
        needed = max(i for i in (text_i, pair_i, label_i) if i is not None)
        if needed >= len(fields):
            raise DataError(f"{path}:{line_number}: no column {needed + 1} (the row has {len(fields)})")
        yield (
            line_number,
            fields[text_i],
            fields[pair_i] if pair_i is not None else None,
            fields[label_i] if label_i is not None else None,
        )


def _column_index(path: Path, column) -> int | None:
    if column is None:
        return None
    try:
        return int(column)
    except ValueError:
        raise DataError(f"{path}: a TSV file has no header; give columns as 0-based numbers, not {column!r}") from None


def _pick(names_present, wanted, preferred: tuple[str, ...], path: Path, what: str, required: bool):
    if wanted is not None:
        if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.isdigit() and wanted not in names_present):
            return list(names_present)[int(wanted)] if int(wanted) < len(names_present) else None
        if wanted not in names_present:
            raise DataError(f"{path}: no {what} column {wanted!r}; the columns are {', '.join(names_present)}")
        return wanted
    for name in preferred:
        if name in names_present:
            return name
    if required:
        raise DataError(
            f"{path}: no {what} column among {', '.join(names_present)}; name it {' or '.join(map(repr, preferred))}"
        )
    return None


def _csv_rows(path, text_column, pair_column, label_column):
    lines = (line + "\n" for _, line in file_lines(path))
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: no examples (the file is empty)") from None
    except csv.Error as e:
        raise DataError(f"{path}:1: {e}") from None
    header = [h.strip() for h in header]
    known = set(TEXT_NAMES + PAIR_NAMES + LABEL_NAMES)
    if all(c is None for c in (text_column, pair_column, label_column)) and not known.intersection(header):
        # Without a header the first example would silently become the column names.
        shown = ",".join(header)
        raise DataError(
            f"{path}:1: the first row ({shown[:60] + '...' if len(shown) > 60 else shown}) names no known column; "
            f"a CSV starts with a header line such as text,label (text column: {', '.join(TEXT_NAMES[:4])}, ...; "
            f"label column: {', '.join(LABEL_NAMES[:3])}, ...): add one"
        )
    text_key = _pick(header, text_column, TEXT_NAMES, path, "text", required=False) or header[0]
    pair_key = _pick(header, pair_column, PAIR_NAMES, path, "pair", required=False)
    label_key = _pick(header, label_column, LABEL_NAMES, path, "label", required=False)
    position = {name: i for i, name in enumerate(header)}
    line_number = 1
    try:
        for row in reader:
            line_number = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                yield line_number, None, None, None  # a blank line: counted, no example
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line_number}: {len(row)} column(s), but the header has {len(header)}")
            yield (
                line_number,
                row[position[text_key]],
                row[position[pair_key]] if pair_key else None,
                row[position[label_key]] if label_key else None,
            )
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None


def _jsonl_rows(path, text_column, pair_column, label_column):
    for line_number, line in file_lines(path):
        if not line.strip():
            yield line_number, None, None, None  # a blank line: counted, no example
            continue
        try:
            obj = parse_json(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_number}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line_number}: expected a JSON object, found {type(obj).__name__}")
        keys = list(obj)
        text_key = _pick(keys, text_column, TEXT_NAMES, path, "text", required=True)
        pair_key = _pick(keys, pair_column, PAIR_NAMES, path, "pair", required=False)
        label_key = _pick(keys, label_column, LABEL_NAMES, path, "label", required=False)
        text = obj.get(text_key)
        if not isinstance(text, str):
            raise DataError(f"{path}:{line_number}: field {text_key!r} is not a string")
        label = obj.get(label_key) if label_key else None
        if isinstance(label, bool) or (label is not None and not isinstance(label, (str, int))):
            raise DataError(f"{path}:{line_number}: label {label!r} is neither a name nor an integer id")
        pair = str(obj[pair_key]) if pair_key else None
        label = str(label) if label is not None else None
        if "\\u" in line:  # only a \ud800-style escape decodes to a lone surrogate
            for value in (text, pair, label):
                check_text(value or "", f"{path}:{line_number}")
        yield line_number, text, pair, label
