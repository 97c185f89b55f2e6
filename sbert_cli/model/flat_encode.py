"""Tokenize many lines at once into flat numpy arrays, BertTokenizer-exact, with a fast path for Chinese.

BERT puts spaces around every CJK ideograph before anything else, so each one is a token of its own:
its vocab id, or [UNK]. For the common ideographs (U+3400-U+4DBF, U+4E00-U+9FFF: no case, no
decomposition) that is a table lookup done here with numpy. The rest of the text goes through the
tokenizer with those characters replaced by spaces, which leaves every other token and every
offset unchanged; the two token streams are then merged by position.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sbert_cli.model.tokenizer import BertTokenizer

IDEOGRAPH_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF))
TABLE_START, TABLE_END = 0x3400, 0xA000
LINES_PER_GROUP = 256  # encode_batch parallelises over its inputs (when tokenizers may use threads)


@dataclass
class FlatTokens:
    """Tokens of several lines joined by "\\n"; starts/ends are character offsets into `text`."""

    text: str
    line_starts: np.ndarray  # int64, character offset of each line in `text`
    ids: np.ndarray  # int32
    starts: np.ndarray  # int64
    ends: np.ndarray  # int64
    line_of_token: np.ndarray  # int64
    token_counts: np.ndarray  # int64, tokens per line


class FlatEncoder:
    """Encodes lists of lines into FlatTokens; the same tokens and offsets as tokenizer.encode_batch."""

    def __init__(self, tokenizer: "BertTokenizer"):
        self.tokenizer = tokenizer
        table = np.full(TABLE_END - TABLE_START, tokenizer.unk_id, dtype=np.int32)
        for token, index in tokenizer.vocab.items():
            if len(token) == 1 and any(lo <= ord(token) <= hi for lo, hi in IDEOGRAPH_RANGES):
                table[ord(token) - TABLE_START] = index
        self.ideograph_ids = table

    def encode(self, lines: list[str]) -> FlatTokens:
        """Tokens (without [CLS]/[SEP]) of each line, the lines joined by newlines."""
        text = "\n".join(lines)
        line_lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
        line_starts = np.zeros(len(lines), dtype=np.int64)
        np.cumsum(line_lengths[:-1] + 1, out=line_starts[1:])
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        is_ideograph = np.zeros(len(codepoints), dtype=bool)
        for lo, hi in IDEOGRAPH_RANGES:
            is_ideograph |= (codepoints >= lo) & (codepoints <= hi)
        ideograph_at = np.flatnonzero(is_ideograph)
        ideograph_ids = self.ideograph_ids[codepoints[ideograph_at] - TABLE_START]

        rest = codepoints.copy()
        rest[is_ideograph] = ord(" ")
        rest_text = rest.tobytes().decode("utf-32-le")
        group_starts = np.append(line_starts[::LINES_PER_GROUP], len(codepoints) + 1)
        groups = [rest_text[a : b - 1] for a, b in zip(group_starts[:-1].tolist(), group_starts[1:].tolist())]
        encodings = self.tokenizer.encode_batch(groups, add_special_tokens=False)
        group_counts = [len(e.ids) for e in encodings]
        n_rest = sum(group_counts)
        rest_ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int32, count=n_rest)
        rest_spans = np.fromiter(
            itertools.chain.from_iterable(itertools.chain.from_iterable(e.offsets for e in encodings)),
            dtype=np.int64, count=2 * n_rest,
        ).reshape(-1, 2) + np.repeat(group_starts[:-1], group_counts)[:, None]

        starts = np.concatenate([ideograph_at, rest_spans[:, 0]])
        order = np.argsort(starts, kind="stable")
        starts = starts[order]
        ends = np.concatenate([ideograph_at + 1, rest_spans[:, 1]])[order]
        ids = np.concatenate([ideograph_ids, rest_ids])[order]
        line_of_token = np.searchsorted(line_starts, starts, side="right") - 1
        token_counts = np.bincount(line_of_token, minlength=len(lines)).astype(np.int64)
        return FlatTokens(text, line_starts, ids, starts, ends, line_of_token, token_counts)
