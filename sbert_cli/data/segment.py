"""Chinese word segmentation for whole-word masking: rjieba (default), jieba, or none (per character).

A segmenter returns, for each text, the lengths of its words in characters; the words cover the
text exactly, so cumulative lengths are word boundaries that line up with the tokenizer's offsets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from sbert_cli.errors import ConfigError, DataError

SEGMENTERS = ("rjieba", "jieba", "none")


def read_user_dict(path: str | Path) -> list[tuple[str, int | None, str | None]]:
    """A jieba user dictionary: one `word [freq] [tag]` per line, UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: user dictionary not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory; `user_dict` takes a text file of words") from None
    entries = []
    for line_number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8-sig" if line_number == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"{path}:{line_number}: invalid UTF-8 in the user dictionary; save it as UTF-8") from None
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        freq = None
        tag = None
        if len(parts) >= 2:
            if not parts[1].isdigit():
                raise DataError(f"{path}:{line_number}: expected `word [frequency] [tag]`, got {text!r}")
            freq = int(parts[1])
        if len(parts) >= 3:
            tag = parts[2]
        entries.append((parts[0], freq, tag))
    return entries


class Segmenter:
    """Splits text into words; the MLM pipeline calls `word_lengths` once per chunk of lines joined by newlines."""

    def __init__(self, name: str = "rjieba", user_dict: str | Path | None = None):
        if name not in SEGMENTERS:
            raise ConfigError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
        entries = read_user_dict(user_dict) if user_dict else []
        if name == "none" and entries:
            raise ConfigError("`user_dict` needs a segmenter; use `segmenter` rjieba or jieba")
        self.name = name
        self._cut = None
        if name == "rjieba":
            try:
                import rjieba
            except ImportError:  # rjieba ships wheels for common platforms only; jieba is pure Python
                name = self.name = "jieba"
            else:
                if entries:  # words of one's own: a dictionary of this segmenter's own
                    backend = rjieba.Jieba()
                    for word, freq, tag in entries:
                        backend.add_word(word, freq, tag)
                    self._cut = backend.cut
                else:  # the default dictionary rjieba already built on import (0.1 s and 25 MiB a second one cost)
                    self._cut = rjieba.cut
        if name == "jieba":
            import jieba

            jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter would break our progress bar
            backend = jieba.Tokenizer()
            for word, freq, tag in entries:
                backend.add_word(word, freq, tag)
            self._cut = backend.lcut

    def cut(self, text: str) -> list[str]:
        """Words of one text (per character for the `none` segmenter)."""
        return list(text) if self._cut is None else self._cut(text)

    def word_lengths(self, text: str) -> np.ndarray:
        """Lengths (in characters) of the words of `text`, in order; they sum to len(text)."""
        if self._cut is None:
            return np.ones(len(text), dtype=np.int64)
        lengths = self._checked_lengths(text)
        if lengths is not None:
            return lengths
        # Some line lost or changed characters and would shift every later boundary: realign line by line.
        parts = []
        for i, line in enumerate(text.split("\n")):
            if i:
                parts.append(np.ones(1, dtype=np.int64))
            line_lengths = self._checked_lengths(line)
            parts.append(np.ones(len(line), dtype=np.int64) if line_lengths is None else line_lengths)
        return np.concatenate(parts)

    def _checked_lengths(self, text: str) -> np.ndarray | None:
        lengths = np.fromiter(map(len, self._cut(text)), dtype=np.int64)
        return lengths if int(lengths.sum()) == len(text) else None
