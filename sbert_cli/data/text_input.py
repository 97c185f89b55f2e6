"""Streaming raw-text input for make-mlm-data: plain text, TSV and JSONL files, optionally gzipped, or stdin.

Files are read as bytes line by line, so memory does not depend on the file's size. A UTF-8 BOM and
CRLF line ends are accepted. Bad lines (invalid UTF-8, NUL bytes, malformed TSV/JSONL rows, empty
rows) are either an error naming file and line, or skipped and counted, per kind of problem.

Every byte any command reads as text passes `iter_raw_lines`, which keeps the bounds (limits.py): a line
longer than SBERT_MAX_LINE_BYTES (a binary file, /dev/zero, a bomb of zeros) and more than
SBERT_MAX_INPUT_BYTES read from one named file (decompressed) are errors naming file and line before memory
grows; a line ends at LF, CRLF or a lone CR (old Mac files); a truncated or corrupt .gz names its line.
Named inputs may be FIFOs, devices or `<(cmd)`: each is read once, in one pass, like stdin.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, TextIO

from sbert_cli.errors import ConfigError, DataError
from sbert_cli.limits import (
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    MAX_INPUT_BYTES_VAR,
    MAX_LINE_BYTES_VAR,
    byte_limit,
    parse_json,
)

FORMATS = ("auto", "txt", "tsv", "jsonl")
BAD_LINE_POLICIES = ("error", "skip")
# What happens to each kind of bad line when --on-bad-lines is not given.
DEFAULT_BAD_LINE_POLICY = {"encoding": "error", "malformed": "error", "empty": "skip"}
BAD_LINE_HINTS = {"encoding": "save the file as UTF-8", "malformed": "fix the row", "empty": "remove the line"}
SKIP_HINT = " or pass `on_bad_lines` skip"  # only where the command has the option (make-mlm-data)
DEFAULT_TEXT_FIELD = "text"
SNIFF_LINES = 64
MAX_EXAMPLES = 5
PROGRESS_EVERY = 4096  # lines between updates of bytes_read (tell() on a gzip stream is not free)
CHUNK_BYTES = 1 << 16  # read at a time; lines are split from chunks, so no line is read whole before its size is known


@dataclass
class ReadStats:
    """What the reader saw: counted lines and where the skipped ones were."""

    lines: int = 0  # lines that gave text
    blank_lines: int = 0  # blank lines of plain-text files: document breaks, not errors
    skipped_lines: int = 0
    skipped_by_kind: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)  # "file:line: reason", the first few
    bytes_read: int = 0  # of the files on disk; stdin's bytes are not counted
    total_bytes: int | None = 0  # None when stdin is read: its size is unknown


STDIN = "-"  # the input name that means standard input
STDIN_NAME = "<stdin>"  # how messages and manifests name it


def is_stdin(path: str | Path) -> bool:
    return str(path) == STDIN


def source_name(path: str | Path) -> str:
    """An input as messages name it: the path, or <stdin>."""
    return STDIN_NAME if is_stdin(path) else str(path)


def input_format(path: Path) -> str:
    """txt, tsv or jsonl from the file name (a .gz suffix is looked through); txt when unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    suffix = suffixes[-1] if suffixes else ""
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    return "txt"


def open_binary(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(line stream, underlying file whose tell() measures progress through the file on disk)."""
    raw = open(path, "rb")
    if path.suffix.lower() == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def is_regular(path: Path) -> bool:
    """A regular file (its size is known, it can be read twice), not a FIFO, `<(cmd)` or a device."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def iter_raw_lines(stream: BinaryIO, name: str, budget: int | None = None) -> Iterator[bytes]:
    """The lines of a binary stream, without their ends (LF, CRLF or a lone CR), read in chunks so that a line
    longer than SBERT_MAX_LINE_BYTES is a DataError at `name:line` before it is held; `budget`: the most bytes
    (decompressed) this stream may give. A stream that cannot be read (a truncated .gz) names its line."""
    max_line = byte_limit(MAX_LINE_BYTES_VAR, DEFAULT_MAX_LINE_BYTES)
    read = getattr(stream, "read1", None) or stream.read  # read1: what a pipe has now, so stdin streams
    pending = b""
    number = 0
    total = 0
    while True:
        try:
            chunk = read(CHUNK_BYTES)
        except (OSError, EOFError, zlib.error) as e:
            hint = "; is it cut short? `gzip -t` checks a .gz file" if isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile)) else ""
            raise DataError(f"{name}:{number + 1}: cannot read the file ({e}){hint}") from None
        if not chunk:
            break
        total += len(chunk)
        if budget is not None and total > budget:
            raise DataError(
                f"{name}: more than {budget:,} bytes of text (decompressed); a gzip bomb or the wrong file? "
                f"for a real input this large set {MAX_INPUT_BYTES_VAR} (bytes) higher"
            )
        lines = (pending + chunk if pending else chunk).splitlines(keepends=True)
        pending = lines.pop()
        if pending.endswith(b"\n"):
            lines.append(pending)
            pending = b""  # (a line ending in CR stays pending: its LF may start the next chunk)
        for line in lines:
            number += 1
            if len(line) > max_line + 2:
                raise _too_long(name, number, max_line)
            yield line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if len(pending) > max_line:
            raise _too_long(name, number + 1, max_line)
    if pending:
        yield pending[:-1] if pending.endswith(b"\r") else pending


def _too_long(name: str, number: int, max_line: int) -> DataError:
    return DataError(f"{name}:{number}: a line longer than {max_line:,} bytes; is this a text file? split the line, "
                     f"or set {MAX_LINE_BYTES_VAR} (bytes) higher")


def input_budget(path: str | Path) -> int | None:
    """The most bytes a named input may give (SBERT_MAX_INPUT_BYTES); None for stdin, a stream without end."""
    return None if is_stdin(path) else byte_limit(MAX_INPUT_BYTES_VAR, DEFAULT_MAX_INPUT_BYTES)


def check_input_files(paths: list[Path], stdin_allowed: bool = False) -> list[Path]:
    """Existing, non-empty, readable files (and, when stdin_allowed, "-" once: standard input);
    DataError naming the first that is not. A FIFO or device is accepted unread: its size says nothing."""
    if not paths:
        raise ConfigError("no input files given")
    checked = []
    for path in map(Path, paths):
        if stdin_allowed and is_stdin(path):
            if any(map(is_stdin, checked)):
                raise ConfigError("- (standard input) is given twice; it can be read only once")
            checked.append(path)
            continue
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if path.is_dir():
            raise DataError(f"{path}: is a directory; give text files (.txt, .tsv, .jsonl, optionally .gz)")
        if is_regular(path) and path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty")
        checked.append(path)
    return checked


def _all_have_tabs(lines: Iterable[bytes]) -> bool:
    """Whether the first SNIFF_LINES non-blank lines all have a tab: a plain-text file with a stray tab stays plain text."""
    sampled = 0
    for line in lines:
        if not line.strip():
            continue
        if b"\t" not in line:
            return False
        sampled += 1
        if sampled >= SNIFF_LINES:
            break
    return sampled > 0


def _first_lines(lines: Iterator[bytes], gzip_check: bool) -> list[bytes]:
    """The lines that _all_have_tabs may look at, read once and kept: a pipe cannot be read twice."""
    head: list[bytes] = []
    non_blank = 0
    for line in lines:
        if gzip_check and not head and line.startswith(b"\x1f\x8b"):
            raise DataError(f"{STDIN_NAME}: gzip-compressed data; give the .gz file by name or pipe it through `gunzip -c`")
        head.append(line)
        non_blank += bool(line.strip())
        if non_blank >= SNIFF_LINES:
            break
    return head


class TextReader:
    """Iterates (text, starts_document) over the lines of several files, counting what it skips.

    A blank line in a plain-text file separates documents; a TSV row or JSONL object is a document
    of its own. `stats` is filled while iterating. Given a `stdin` stream, a path "-" reads it (once), in
    this process and in one pass: its first lines are kept for the format sniffing, not read twice.
    """

    def __init__(
        self,
        paths: list[Path],
        format: str = "auto",
        text_column: int | None = None,
        text_field: str | None = None,
        on_bad_lines: str | None = None,
        stdin: BinaryIO | None = None,
        can_skip: bool = True,
    ):
        """can_skip: the command offers `on_bad_lines` skip (make-mlm-data), so error messages suggest it."""
        if format not in FORMATS:
            raise ConfigError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        if on_bad_lines is not None and on_bad_lines not in BAD_LINE_POLICIES:
            raise ConfigError(f"`on_bad_lines` must be one of {', '.join(BAD_LINE_POLICIES)}, not {on_bad_lines!r}")
        if text_column is not None and text_column < 0:
            raise ConfigError(f"`text_column` is a 0-based column index, not {text_column}")
        self.paths = check_input_files(paths, stdin_allowed=stdin is not None)
        self.stdin = stdin
        self.format = format
        self.text_column = text_column
        self.text_field = text_field
        self.policy = {kind: on_bad_lines or default for kind, default in DEFAULT_BAD_LINE_POLICY.items()}
        self.can_skip = can_skip
        sized = all(not is_stdin(p) and is_regular(p) for p in self.paths)
        self.stats = ReadStats(total_bytes=sum(p.stat().st_size for p in self.paths) if sized else None)

    def file_format(self, path: Path, head: list[bytes] | None = None) -> str:
        """The format this reader uses for `path`: --format, else the suffix, else a look at its first lines
        (`head`: those of stdin, already read)."""
        if self.format != "auto":
            return self.format
        if self.text_field is not None:
            return "jsonl"
        guessed = input_format(path)
        if guessed != "txt":
            return guessed
        if self.text_column is not None:
            return "tsv"
        if head is not None:
            return "tsv" if _all_have_tabs(head) else "txt"
        return "tsv" if self._looks_tab_separated(path) else "txt"

    def _looks_tab_separated(self, path: Path) -> bool:
        stream, raw = open_binary(path)
        with raw, stream:
            return _all_have_tabs(iter_raw_lines(stream, str(path), input_budget(path)))

    def _bad_line(self, path: Path, line_number: int, kind: str, reason: str) -> None:
        where = f"{source_name(path)}:{line_number}: {reason}"
        if self.policy[kind] == "error":
            raise DataError(f"{where}; {BAD_LINE_HINTS[kind]}{SKIP_HINT if self.can_skip else ''}")
        stats = self.stats
        stats.skipped_lines += 1
        stats.skipped_by_kind[kind] = stats.skipped_by_kind.get(kind, 0) + 1
        if len(stats.skipped_examples) < MAX_EXAMPLES:
            stats.skipped_examples.append(where)

    def __iter__(self) -> Iterator[tuple[str, bool]]:
        bytes_before = 0
        for path in self.paths:
            size = path.stat().st_size if not is_stdin(path) and is_regular(path) else 0
            yield from self._read_file(path, bytes_before)
            bytes_before += size
            self.stats.bytes_read = bytes_before

    def _read_file(self, path: Path, bytes_before: int) -> Iterator[tuple[str, bool]]:
        stats = self.stats
        column = self.text_column or 0
        text_field = self.text_field or DEFAULT_TEXT_FIELD
        expected_columns = None
        new_document = True
        line_number = 0
        with contextlib.ExitStack() as opened:
            if is_stdin(path):
                binary, raw_file = self.stdin, None  # stdin stays open: not ours to close
            else:
                binary, raw_file = open_binary(path)
                opened.enter_context(raw_file)
                opened.enter_context(binary)
            lines = iter_raw_lines(binary, source_name(path), input_budget(path))
            head = _first_lines(lines, gzip_check=raw_file is None)  # read once: a pipe cannot be read twice
            fmt = self.file_format(path, head)
            stream = itertools.chain(head, lines)
            try:
                for line_number, raw in enumerate(stream, start=1):
                    if raw_file is not None and line_number % PROGRESS_EVERY == 0:
                        stats.bytes_read = bytes_before + raw_file.tell()
                    if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                        raw = raw[3:]
                    if b"\x00" in raw:
                        self._bad_line(path, line_number, "encoding", "NUL byte (is this a binary or UTF-16 file?)")
                        continue
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        self._bad_line(path, line_number, "encoding", _describe_decode_error(raw, e))
                        continue
                    if fmt == "txt":
                        if not line.strip():
                            stats.blank_lines += 1
                            new_document = True
                            continue
                        text = line
                    elif fmt == "tsv":
                        if not line.strip():
                            self._bad_line(path, line_number, "empty", "empty line")
                            continue
                        columns = line.split("\t")
                        if expected_columns is None:
                            expected_columns = len(columns)
                            if column >= expected_columns:
                                self._bad_line(
                                    path, line_number, "malformed",
                                    f"no column {column} (the row has {len(columns)} tab-separated columns; "
                                    "`text_column` is 0-based)",
                                )
                                expected_columns = None
                                continue
                        elif len(columns) != expected_columns:
                            self._bad_line(
                                path, line_number, "malformed",
                                f"expected {expected_columns} tab-separated columns like the first row, found {len(columns)}",
                            )
                            continue
                        text = columns[column]
                        if not text.strip():
                            self._bad_line(path, line_number, "empty", f"empty text in column {column}")
                            continue
                    else:
                        if not line.strip():
                            self._bad_line(path, line_number, "empty", "empty line")
                            continue
                        text = self._json_text(path, line_number, line, text_field)
                        if text is None:
                            continue
                    stats.lines += 1
                    yield text, new_document
                    new_document = fmt != "txt"
            except (OSError, EOFError) as e:  # truncated or corrupt gzip
                raise DataError(f"{source_name(path)}:{line_number + 1}: cannot read the file ({e})") from None
        if line_number == 0:
            raise DataError(f"{STDIN_NAME}: nothing came on standard input" if raw_file is None else f"{path}: the file is empty")

    def _json_text(self, path: Path, line_number: int, line: str, text_field: str) -> str | None:
        try:
            record = parse_json(line)
        except json.JSONDecodeError as e:
            self._bad_line(path, line_number, "malformed", f"not valid JSON ({e.msg} at column {e.colno})")
            return None
        if not isinstance(record, dict):
            self._bad_line(path, line_number, "malformed", f"expected a JSON object with a {text_field!r} field")
            return None
        text = record.get(text_field)
        if text is None:
            self._bad_line(path, line_number, "malformed", f"no {text_field!r} field (use `text_field` to pick another)")
            return None
        if not isinstance(text, str):
            self._bad_line(path, line_number, "malformed", f"field {text_field!r} is not a string")
            return None
        if not text.strip():
            self._bad_line(path, line_number, "empty", f"empty {text_field!r} field")
            return None
        problem = text_problem(text) if "\\u" in line else None  # only a \ud800-style escape decodes to a surrogate
        if problem:
            self._bad_line(path, line_number, "encoding", problem)
            return None
        return text


# The one way a line of text is decoded and checked, for every reader of text that is not make-mlm-data's
# TextReader (which may skip bad lines): classification files, fill-mask and predict input, stdin, arguments.
UTF8_BOM = b"\xef\xbb\xbf"


def decode_line(raw: bytes, where: str) -> str:
    """A line's bytes (line end removed) as text; DataError naming `where` on invalid UTF-8 or a NUL byte."""
    if b"\x00" in raw:
        raise DataError(f"{where}: contains NUL bytes; is this a text file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        reason = _describe_decode_error(raw, e).replace("invalid UTF-8", "not valid UTF-8", 1)
        advice = "" if "iconv" in reason else "; convert it to UTF-8"
        raise DataError(f"{where}: {reason}{advice}") from None


def read_lines(stream: BinaryIO, name: str, budget: int | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line end) of a binary stream, within the bounds of iter_raw_lines;
    a BOM on line 1 is dropped, and a bad line is a DataError naming `name:line`."""
    for line_number, raw in enumerate(iter_raw_lines(stream, name, budget), 1):
        if line_number == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        yield line_number, decode_line(raw, f"{name}:{line_number}")


def read_stdin_lines(stdin: TextIO) -> Iterator[tuple[int, str]]:
    """read_lines for stdin: from its bytes when it has them, so invalid UTF-8 piped in reads as it does in a file."""
    buffer = getattr(stdin, "buffer", None)
    if buffer is not None:
        yield from read_lines(buffer, "<stdin>")
        return
    for line_number, line in enumerate(stdin, 1):
        yield line_number, check_text(line.rstrip("\r\n"), f"<stdin>:{line_number}")


def text_problem(text: str) -> str | None:
    """Why `text` is not text a tokenizer takes, or None: a lone surrogate (half a UTF-16 pair, from a JSON
    `\\ud800` escape), or bytes that were not UTF-8 (Python keeps those as surrogates in command-line arguments)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        code = next(ord(c) for c in text if 0xD800 <= ord(c) <= 0xDFFF)
        return f"a \\u escape encodes half a character (lone surrogate U+{code:04X})"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _describe_decode_error(raw, e).replace("invalid UTF-8", "not valid UTF-8", 1)
    return "holds a lone surrogate"


def check_text(text: str, where: str) -> str:
    """`text` unchanged, or a DataError naming `where` when text_problem finds one."""
    problem = text_problem(text)
    if problem:
        raise DataError(f"{where}: {problem}; fix the text")
    return text


def _describe_decode_error(raw: bytes, error: UnicodeDecodeError) -> str:
    reason = f"invalid UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start + 1})"
    try:
        raw.decode("gbk")
    except UnicodeDecodeError:
        return reason
    return f"{reason}; it looks like GBK: convert with `iconv -f GBK -t UTF-8`"


def iter_texts(
    arguments: list[str], file: str | Path | None = None, stdin: TextIO | None = None, what: str = "texts",
    stats: ReadStats | None = None,
) -> Iterator[tuple[str, str]]:
    """(text, where it came from: "argument N", "FILE:LINE", "<stdin>:LINE"): the one way an inference command
    reads its texts. The arguments; or a file: one text per non-blank line (.gz too; a .tsv or .jsonl file's text
    column through TextReader); or stdin ("-" or piped), streamed. A missing input is an error at once.
    `stats.blank_lines` counts the blank lines of a plain-text file or stdin, skipped as they are read."""
    import sys

    if arguments and file is not None:
        raise ConfigError("give texts as arguments or with `file`, not both")
    if arguments:
        return iter([(check_text(text, f"argument {i}"), f"argument {i}") for i, text in enumerate(arguments, 1)])
    if file is None or str(file) == "-":
        stdin = stdin if stdin is not None else sys.stdin
        if file is None and (stdin is None or stdin.isatty()):
            raise ConfigError(f"no input: give {what} as arguments, `file` FILE, or pipe them on stdin, one per line")
        return _non_blank(read_stdin_lines(stdin), STDIN_NAME, what, stats)
    path = check_input_files([Path(file)])[0]
    if input_format(path) != "txt":
        return ((text, str(path)) for text, _ in TextReader([path], can_skip=False))
    return _non_blank(file_lines(path), str(path), what, stats)


def file_lines(path: Path) -> Iterator[tuple[int, str]]:
    """read_lines of a named file (.gz too, as every reader of text), within its input budget."""
    stream, raw = open_binary(path)
    with raw, stream:
        yield from read_lines(stream, str(path), input_budget(path))


def _non_blank(
    lines: Iterator[tuple[int, str]], name: str, what: str, stats: ReadStats | None = None
) -> Iterator[tuple[str, str]]:
    seen = False
    for number, line in lines:
        if line.strip():
            seen = True
            yield line, f"{name}:{number}"
        elif stats is not None:
            stats.blank_lines += 1
    if not seen:
        raise DataError(f"{name}: no texts; give {what}, one per line")
