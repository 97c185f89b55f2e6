"""make-mlm-data: raw text -> tokenized, whole-word-masked sequences in memory-mapped shards.

The input is streamed in chunks of lines. A chunk is tokenized at once (model/flat_encode.py), segmented
into words by one segmenter call, cut into [CLS] ... [SEP] sequences and masked with numpy, all on
flat arrays: no per-token Python.
Chunks are cut by the input alone and each gets its own random generator seeded by (seed, chunk
index), so the output is byte-identical whatever the number of worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np

from sbert_cli.model.flat_encode import FlatEncoder, FlatTokens
from sbert_cli.data.masking import (
    MASK_TOKEN,
    RANDOM_TOKEN,
    UNCHANGED,
    Masker,
    MaskingConfig,
)
from sbert_cli.data.segment import SEGMENTERS, Segmenter, read_user_dict
from sbert_cli.data.shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ShardWriter,
    array_dtypes,
    prepare_output_dir,
    vocab_sha256,
    write_manifest,
)
from sbert_cli.data.text_input import TextReader, is_stdin, source_name
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.limits import DUPE_FACTOR_WHY, MASKING_SEED, MAX_DUPE_FACTOR, check_range, check_seed, usable_cpus
from sbert_cli.outputs import OutputDir
from sbert_cli.model.tokenizer import BertTokenizer

CHUNK_LINES = 2048
CHUNK_CHARS = 1 << 20
MAX_SHARD_SIZE = 1_000_000  # sequences; about 256 MB of memory at max_seq_len 128
SENTENCE_ENDS = ("。", "！", "？", "!", "?", "；", ";", "…")
CLAUSE_ENDS = ("，", ",", "、", "：", ":", ".", "”", "」", "）", ")")


@dataclass
class MLMDataSettings:
    """Everything that decides the output; recorded in manifest.json."""

    max_seq_len: int = 128
    masked_lm_prob: float = 0.15
    max_predictions: int | None = None  # None: round(max_seq_len * masked_lm_prob)
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    whole_word: bool = True
    segmenter: str = "rjieba"
    user_dict: str | None = None
    dupe_factor: int = 1
    mask: bool = True
    pack: bool = False
    truncate: bool = False
    seed: int = MASKING_SEED
    format: str = "auto"
    text_column: int | None = None
    text_field: str | None = None
    on_bad_lines: str | None = None
    shard_size: int = 100_000  # sequences per shard
    chunk_lines: int = CHUNK_LINES

    def __post_init__(self):
        if not 4 <= self.max_seq_len <= 1 << 16:
            raise ConfigError(f"`max_seq_len` must be between 4 and 65536, not {self.max_seq_len}")
        check_range("dupe_factor", self.dupe_factor, 1, MAX_DUPE_FACTOR, DUPE_FACTOR_WHY)
        check_seed(self.seed)
        if self.dupe_factor > 1 and not self.mask:
            raise ConfigError("`dupe_factor` makes differently masked copies; with `no_mask`, pretrain re-masks each epoch instead")
        if self.shard_size < 1 or self.chunk_lines < 1:
            raise ConfigError("`shard_size` (and the chunk size) must be at least 1")
        check_range("shard_size", self.shard_size, 1, MAX_SHARD_SIZE, "a shard is gathered in memory before it is written")
        if self.segmenter not in SEGMENTERS:
            raise ConfigError(f"unknown segmenter {self.segmenter!r}; choose one of {', '.join(SEGMENTERS)}")
        if self.user_dict and (self.segmenter == "none" or not self.whole_word):
            raise ConfigError("`user_dict` is for the word segmenter of whole-word masking; use `segmenter` rjieba or jieba")
        if self.max_predictions is None:
            valid = 0 < self.masked_lm_prob < 1  # else masking_config() below says what is wrong
            self.max_predictions = max(1, round(self.max_seq_len * self.masked_lm_prob)) if valid else 1
        check_range("max_predictions", self.max_predictions, 1, self.max_seq_len - 2,
                    "a sequence has `max_seq_len` - 2 tokens besides [CLS] and [SEP]")
        self.masking_config()  # validates the probabilities

    def masking_config(self) -> MaskingConfig:
        return MaskingConfig(
            masked_lm_prob=self.masked_lm_prob,
            max_predictions=self.max_predictions,
            mask_token_prob=self.mask_token_prob,
            random_token_prob=self.random_token_prob,
            whole_word=self.whole_word,
        )


@dataclass
class Chunk:
    index: int
    texts: list[str]
    starts_document: list[bool]


COUNT_NAMES = ("sequences", "tokens", "masked", "masked_as_mask_token", "masked_as_random", "masked_unchanged",
               "split_lines", "truncated_lines")


@dataclass
class ChunkResult:
    index: int
    lines: int
    lengths: np.ndarray  # tokens per sequence, [CLS]/[SEP] included
    input_ids: np.ndarray
    word_ids: np.ndarray | None
    masked_counts: np.ndarray | None  # predictions per sequence
    masked_positions: np.ndarray | None
    masked_labels: np.ndarray | None
    counts: dict[str, int]


@dataclass
class MLMDataReport:
    """What make_mlm_data wrote and how it went."""

    out: Path
    manifest: dict
    seconds: float
    skipped_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. workers lowered to the usable CPUs

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]

    @property
    def lines_per_second(self) -> float:
        return self.counts["lines"] / max(self.seconds, 1e-9)


def ranges_to_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.repeat(starts - _exclusive_cumsum(lengths), lengths)
    return np.arange(total, dtype=np.int64) + shifts


class ChunkProcessor:
    """Turns chunks of lines into sequences; one per process, built from picklable arguments."""

    def __init__(self, vocab: dict[str, int], do_lower_case: bool, settings: MLMDataSettings):
        self.settings = settings
        self.tokenizer = BertTokenizer(vocab, do_lower_case=do_lower_case)
        self.encoder = FlatEncoder(self.tokenizer)
        self.segmenter = Segmenter(settings.segmenter if settings.whole_word else "none", settings.user_dict)
        self.masker = Masker(self.tokenizer, settings.masking_config())
        size = max(self.tokenizer.ids_to_tokens) + 1
        tokens = [self.tokenizer.ids_to_tokens.get(i, "") for i in range(size)]
        self.is_continuation = np.array([t.startswith("##") for t in tokens], dtype=bool)
        # Where a long line may be cut, best first: after a sentence end, after a clause, between words.
        self.boundary_rank = np.zeros(size, dtype=np.int8)
        self.boundary_rank[[self.tokenizer.vocab[t] for t in CLAUSE_ENDS if t in self.tokenizer.vocab]] = 2
        self.boundary_rank[[self.tokenizer.vocab[t] for t in SENTENCE_ENDS if t in self.tokenizer.vocab]] = 3

    def __call__(self, chunk: Chunk) -> ChunkResult:
        s = self.settings
        tokens = self.encoder.encode(chunk.texts)
        ids, token_counts = tokens.ids, tokens.token_counts
        group_start = self._word_starts(tokens)
        line_starts = _exclusive_cumsum(token_counts)
        group_start[line_starts[token_counts > 0]] = True

        piece_starts, piece_lengths, piece_lines, counts = self._pieces(ids, group_start, line_starts, token_counts)
        piece_sequence = self._sequence_of_pieces(piece_lengths, piece_lines, chunk.starts_document)
        input_ids, offsets, word_ids = self._assemble(ids, group_start, piece_starts, piece_lengths, piece_sequence)
        lengths = np.diff(offsets)

        counts.update(masked=0, masked_as_mask_token=0, masked_as_random=0, masked_unchanged=0)
        if not s.mask:
            counts.update(sequences=len(lengths), tokens=int(lengths.sum()))
            return ChunkResult(chunk.index, len(chunk.texts), lengths, input_ids, word_ids, None, None, None, counts)
        rng = np.random.default_rng([s.seed, chunk.index])
        copies = [self.masker.mask_batch(input_ids, offsets, word_ids, rng) for _ in range(s.dupe_factor)]
        kinds = np.concatenate([c.kinds for c in copies])
        counts.update(
            sequences=len(lengths) * s.dupe_factor,
            tokens=int(lengths.sum()) * s.dupe_factor,
            masked=len(kinds),
            masked_as_mask_token=int(np.count_nonzero(kinds == MASK_TOKEN)),
            masked_as_random=int(np.count_nonzero(kinds == RANDOM_TOKEN)),
            masked_unchanged=int(np.count_nonzero(kinds == UNCHANGED)),
        )
        return ChunkResult(
            chunk.index,
            len(chunk.texts),
            np.tile(lengths, s.dupe_factor),
            np.concatenate([c.input_ids for c in copies]),
            None,
            np.concatenate([np.diff(c.masked_offsets) for c in copies]),
            np.concatenate([c.masked_positions for c in copies]),
            np.concatenate([c.masked_labels for c in copies]),
            counts,
        )

    def _word_starts(self, tokens: FlatTokens) -> np.ndarray:
        """Per token: does it begin a new whole word?"""
        word_starts = _exclusive_cumsum(self.segmenter.word_lengths(tokens.text))
        previous_end = np.empty(len(tokens.ids), dtype=np.int64)
        previous_end[0:1] = -1
        previous_end[1:] = tokens.ends[:-1]
        # A word boundary between the previous token's end and this token's start separates them;
        # a ## piece always continues its WordPiece word, whatever the segmenter says.
        boundaries_between = np.searchsorted(word_starts, tokens.starts, side="right") - np.searchsorted(
            word_starts, previous_end, side="left"
        )
        return (boundaries_between > 0) & ~self.is_continuation[tokens.ids]

    def _pieces(self, ids, group_start, line_starts, token_counts):
        """Token ranges that become (parts of) sequences: whole lines, or long lines split or truncated."""
        limit = self.settings.max_seq_len - 2
        lines = np.arange(len(token_counts))
        fits = (token_counts > 0) & (token_counts <= limit)
        long_lines = np.flatnonzero(token_counts > limit)
        counts = {"split_lines": 0, "truncated_lines": 0}
        if len(long_lines) == 0:
            return line_starts[fits], token_counts[fits], lines[fits], counts
        starts, lengths, owners = [line_starts[fits]], [token_counts[fits]], [lines[fits]]
        for line in long_lines:
            begin, end = int(line_starts[line]), int(line_starts[line] + token_counts[line])
            if self.settings.truncate:
                cuts = [begin, begin + limit]
                counts["truncated_lines"] += 1
            else:
                cuts = self._split_points(ids, group_start, begin, end, limit)
                counts["split_lines"] += 1
            starts.append(np.array(cuts[:-1], dtype=np.int64))
            lengths.append(np.diff(cuts))
            owners.append(np.full(len(cuts) - 1, line))
        starts, lengths, owners = np.concatenate(starts), np.concatenate(lengths), np.concatenate(owners)
        order = np.argsort(starts, kind="stable")
        return starts[order], lengths[order], owners[order], counts

    def _split_points(self, ids, group_start, begin: int, end: int, limit: int) -> list[int]:
        """Cut [begin, end) into pieces of at most `limit` tokens at the best boundary in each piece's second half."""
        cuts = [begin]
        position = begin
        while end - position > limit:
            candidates = np.arange(position + limit // 2 + 1, position + limit + 1)
            rank = group_start[candidates] * np.maximum(1, self.boundary_rank[ids[candidates - 1]])
            best = np.flatnonzero(rank == rank.max())[-1]
            position = int(candidates[best])
            cuts.append(position)
        cuts.append(end)
        return cuts

    def _sequence_of_pieces(self, piece_lengths, piece_lines, starts_document) -> np.ndarray:
        """Sequence index of each piece: one per piece, or with --pack consecutive pieces of a document."""
        if not self.settings.pack:
            return np.arange(len(piece_lengths))
        limit = self.settings.max_seq_len - 2
        sequence = np.empty(len(piece_lengths), dtype=np.int64)
        current, filled, previous_line = -1, limit + 1, -1
        for k, (length, line) in enumerate(zip(piece_lengths.tolist(), piece_lines.tolist())):
            new_document = line != previous_line and starts_document[line]
            if new_document or filled + length > limit:
                current += 1
                filled = 0
            sequence[k] = current
            filled += length
            previous_line = line
        return sequence

    def _assemble(self, ids, group_start, piece_starts, piece_lengths, piece_sequence):
        """Flat [CLS] body [SEP] sequences with their offsets and per-sequence word ids."""
        n_seq = int(piece_sequence[-1]) + 1 if len(piece_sequence) else 0
        body = ranges_to_indices(piece_starts, piece_lengths)
        body_lengths = np.bincount(piece_sequence, weights=piece_lengths, minlength=n_seq).astype(np.int64)
        seq_of_body = np.repeat(np.arange(n_seq), body_lengths)
        offsets = np.zeros(n_seq + 1, dtype=np.int64)
        np.cumsum(body_lengths + 2, out=offsets[1:])
        out_positions = np.arange(len(body), dtype=np.int64) + 2 * seq_of_body + 1
        input_ids = np.empty(int(offsets[-1]), dtype=np.int32)
        input_ids[offsets[:-1]] = self.tokenizer.cls_id
        input_ids[offsets[1:] - 1] = self.tokenizer.sep_id
        input_ids[out_positions] = ids[body]

        starts_word = group_start[body]
        body_seq_starts = _exclusive_cumsum(body_lengths)
        starts_word[body_seq_starts[body_lengths > 0]] = True
        running = np.cumsum(starts_word)
        word_ids = np.full(len(input_ids), -1, dtype=np.int32)
        word_ids[out_positions] = running - running[body_seq_starts][seq_of_body]
        return input_ids, offsets, word_ids


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=np.int64)
    if len(values) > 1:
        np.cumsum(values[:-1], out=out[1:])
    return out


def iter_chunks(lines: Iterable[tuple[str, bool]], chunk_lines: int, keep_documents: bool) -> Iterator[Chunk]:
    """Group lines into chunks; with keep_documents a chunk ends at a document break when it can."""
    texts: list[str] = []
    starts: list[bool] = []
    chars = 0
    index = 0
    for text, starts_document in lines:
        full = len(texts) >= chunk_lines or chars >= CHUNK_CHARS
        # Packing wants whole documents in a chunk, but a document without breaks must not grow a chunk forever.
        if texts and full and (not keep_documents or starts_document or len(texts) >= 8 * chunk_lines
                               or chars >= 8 * CHUNK_CHARS):
            yield Chunk(index, texts, starts)
            index += 1
            texts, starts, chars = [], [], 0
        texts.append(text)
        starts.append(starts_document)
        chars += len(text)
    if texts:
        yield Chunk(index, texts, starts)


_worker_processor: ChunkProcessor | None = None


def _init_worker(vocab, do_lower_case, settings):
    global _worker_processor  # one processor per worker process, built once
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the worker processes are the parallelism
    _worker_processor = ChunkProcessor(vocab, do_lower_case, settings)


def _process_in_worker(chunk: Chunk) -> ChunkResult:
    return _worker_processor(chunk)


def process_chunks(chunks: Iterable[Chunk], processor_args: tuple, workers: int) -> Iterator[ChunkResult]:
    """Results in chunk order. With workers > 1 this process is one of the workers: workers - 1 spawned processes
    take each chunk while fewer than two wait for each of them, and this process works through the others itself.

    Why not a pool of `workers` processes fed by this one: a spawned process needs about 0.6 s of CPU to import
    and build its tokenizer and segmenter, during which nothing was processed, and this process's reading and
    writing then competed with the workers for the same cores; 2 workers ran no faster than 1 (issue 9).
    """
    processor = None  # this process's own, built when it first takes a chunk
    if workers <= 1:
        processor = ChunkProcessor(*processor_args)
        for chunk in chunks:
            yield processor(chunk)
        return
    helpers = workers - 1
    # spawn, not fork: the parent may hold tokenizers' thread pool, which does not survive a fork.
    context = multiprocessing.get_context("spawn")
    with context.Pool(helpers, initializer=_init_worker, initargs=processor_args) as pool:
        pending: deque = deque()  # in chunk order: a ChunkResult done here, or a helper's AsyncResult
        for chunk in chunks:
            waiting = sum(1 for p in pending if not isinstance(p, ChunkResult) and not p.ready())
            if waiting < 2 * helpers:
                pending.append(pool.apply_async(_process_in_worker, (chunk,)))
            else:
                processor = processor or ChunkProcessor(*processor_args)
                pending.append(processor(chunk))
            # Results leave in order as soon as they can; a bounded backlog waits for the oldest (memory).
            while pending and (isinstance(pending[0], ChunkResult) or pending[0].ready() or len(pending) >= 8 * workers):
                yield _chunk_result(pending.popleft())
        while pending:
            yield _chunk_result(pending.popleft())


def _chunk_result(item) -> ChunkResult:
    return item if isinstance(item, ChunkResult) else item.get()


def resolve_tokenizer(model: str | None = None, vocab: str | Path | None = None) -> BertTokenizer:
    """The tokenizer of --model (dir or repo id), of --vocab, or the bundled Chinese BERT vocab."""
    if model and vocab:
        raise ConfigError("give `model` or `vocab`, not both")
    if model:
        from sbert_cli.model.model_dir import (
            load_tokenizer,  # imports torch: only when a model is named
        )

        return load_tokenizer(model)
    if vocab:
        return BertTokenizer.from_vocab(vocab)
    from sbert_cli.resources import CHINESE_VOCAB

    return BertTokenizer.from_vocab(CHINESE_VOCAB)


def default_output_dir(first_input: str | Path) -> Path:
    """train.txt or train.txt.gz -> ./train-mlm; - (stdin) -> ./stdin-mlm"""
    name = "stdin" if is_stdin(first_input) else Path(first_input).name
    return Path((name.split(".")[0] or name) + "-mlm")


def make_mlm_data(
    inputs: list[str | Path],
    out: str | Path,
    tokenizer: BertTokenizer,
    settings: MLMDataSettings | None = None,
    *,
    workers: int = 1,
    force: bool = False,
    progress: Callable[[int, int, int | None], None] | None = None,
    stdin: BinaryIO | None = None,
) -> MLMDataReport:
    """Read text files, write masked-LM shards and manifest.json to `out`, and report the counts.

    An input "-" is `stdin` (default: this process's standard input), read here, not by the workers.
    progress(lines_done, bytes_read, total_bytes) is called after each chunk; total_bytes is None with stdin.
    """
    from sbert_cli import __version__

    settings = settings or MLMDataSettings()
    if workers < 1:
        raise ConfigError(f"`workers` must be at least 1, not {workers}")
    notes = [tokenizer.case_note] if tokenizer.case_note else []
    if workers > usable_cpus():
        # Each worker is a process with its own tokenizer and segmenter: more than the CPUs only costs memory.
        notes.append(f"`workers` {workers}: this process may use {usable_cpus()} CPUs, so {usable_cpus()} workers run")
        workers = usable_cpus()
    reader = TextReader(
        [Path(p) for p in inputs],
        format=settings.format,
        text_column=settings.text_column,
        text_field=settings.text_field,
        on_bad_lines=settings.on_bad_lines,
        stdin=stdin if stdin is not None else getattr(sys.stdin, "buffer", None),
    )
    if settings.user_dict:
        read_user_dict(settings.user_dict)  # fail before any work on a bad dictionary
    out = Path(out)
    outputs = prepare_output_dir(out, force, reads=tuple(p for p in reader.paths if not is_stdin(p)))
    dtypes = array_dtypes(max(tokenizer.ids_to_tokens) + 1, settings.max_seq_len)  # ids, not tokens: vocab.txt may repeat one
    writer = ShardWriter(out, dtypes, settings.mask, settings.shard_size)
    totals = dict.fromkeys(("lines",) + COUNT_NAMES, 0)
    started = time.perf_counter()
    try:
        chunks = iter_chunks(reader, settings.chunk_lines, keep_documents=settings.pack)
        for result in process_chunks(chunks, (tokenizer.vocab, tokenizer.do_lower_case, settings), workers):
            writer.add(result.lengths, result.input_ids, result.word_ids, result.masked_counts,
                       result.masked_positions, result.masked_labels)
            totals["lines"] += result.lines
            for name in COUNT_NAMES:
                totals[name] += result.counts[name]
            if progress:
                progress(totals["lines"], reader.stats.bytes_read, reader.stats.total_bytes)
        writer.flush()
        if totals["sequences"] == 0:
            skipped = reader.stats.skipped_lines
            raise DataError(
                f"{', '.join(map(source_name, reader.paths))}: no text to make sequences from"
                + (f" ({skipped} lines skipped, e.g. {reader.stats.skipped_examples[0]})" if skipped else "")
            )
    except BaseException:
        _remove_partial_output(out, writer, outputs.created)
        outputs.release()
        raise
    seconds = time.perf_counter() - started

    stats = reader.stats
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sbert_version": __version__,
        "masked": settings.mask,
        "max_seq_len": settings.max_seq_len,
        "vocab_size": tokenizer.vocab_size,
        "vocab_sha256": vocab_sha256(tokenizer),
        "do_lower_case": tokenizer.do_lower_case,
        "inputs": [source_name(p) for p in reader.paths],
        "settings": asdict(settings),
        "counts": {
            "lines": totals["lines"],
            "skipped_lines": stats.skipped_lines,
            "blank_lines": stats.blank_lines,
            **{name: totals[name] for name in COUNT_NAMES},
        },
        "skipped_by_kind": stats.skipped_by_kind,
        "dtypes": {k: v for k, v in dtypes.items() if k in writer.names},
        "shards": writer.shards,
    }
    write_manifest(out, manifest)
    outputs.release()
    return MLMDataReport(out, manifest, seconds, list(stats.skipped_examples), notes)


def _remove_partial_output(out: Path, writer: ShardWriter, created: bool) -> None:
    """After a failure, leave no half-written data behind (a dir without manifest.json is not data anyway)."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for shard in writer.shards:
        OutputDir(out).remove(shard["name"])
