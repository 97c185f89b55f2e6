"""Masked-LM masking: the one function behind make-mlm-data (static) and pretrain --dynamic-masking.

Google BERT's recipe (create_pretraining_data.py), vectorised over a batch of sequences:
candidate words are shuffled and taken until num_to_predict = min(max_predictions,
max(1, round(length * masked_lm_prob))) tokens are chosen, skipping a word that would overshoot;
every token of a chosen word is masked (whole-word masking). Each masked token becomes [MASK]
(80%), a random real token (10%) or stays unchanged (10%). Labels are the original token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbert_cli.errors import ConfigError
from sbert_cli.model.tokenizer import BertTokenizer

MASK_TOKEN, RANDOM_TOKEN, UNCHANGED = 0, 1, 2  # values of MaskedSequence.kinds


@dataclass(frozen=True)
class MaskingConfig:
    masked_lm_prob: float = 0.15
    max_predictions: int = 20
    mask_token_prob: float = 0.8  # replace with [MASK]
    random_token_prob: float = 0.1  # replace with a random real token; the rest stay unchanged
    whole_word: bool = True

    def __post_init__(self):
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ConfigError(f"`masked_lm_prob` must be between 0 and 1, not {self.masked_lm_prob}")
        if self.max_predictions < 1:
            raise ConfigError(f"`max_predictions` must be at least 1, not {self.max_predictions}")
        if self.mask_token_prob < 0 or self.random_token_prob < 0 or self.mask_token_prob + self.random_token_prob > 1:
            raise ConfigError(
                f"`mask_token_prob` ({self.mask_token_prob}) and `random_token_prob` ({self.random_token_prob}) "
                "must be non-negative and sum to at most 1 (the rest stay unchanged)"
            )


@dataclass
class MaskedSequence:
    input_ids: np.ndarray  # int32, the sequence with masked tokens replaced
    masked_positions: np.ndarray  # int32, ascending token indices of the predictions
    masked_labels: np.ndarray  # int32, original token ids at masked_positions
    kinds: np.ndarray  # int8 per prediction: MASK_TOKEN, RANDOM_TOKEN or UNCHANGED


@dataclass
class MaskedBatch:
    """Several masked sequences as flat arrays; sequence i is input_ids[offsets[i]:offsets[i + 1]]."""

    input_ids: np.ndarray
    offsets: np.ndarray  # int64 (n + 1)
    masked_positions: np.ndarray  # positions within each sequence
    masked_labels: np.ndarray
    kinds: np.ndarray
    masked_offsets: np.ndarray  # int64 (n + 1): predictions of sequence i are [masked_offsets[i]:masked_offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, i: int) -> MaskedSequence:
        a, b = self.offsets[i], self.offsets[i + 1]
        m, n = self.masked_offsets[i], self.masked_offsets[i + 1]
        return MaskedSequence(
            self.input_ids[a:b], self.masked_positions[m:n], self.masked_labels[m:n], self.kinds[m:n]
        )


def is_real_token(token: str) -> bool:
    """A token that may stand in a text: not a special or [unusedN]/<S> marker, not a ## continuation."""
    if token.startswith("##"):
        return False
    bracketed = len(token) > 2 and ((token[0] == "[" and token[-1] == "]") or (token[0] == "<" and token[-1] == ">"))
    return bool(token.strip()) and not bracketed


def real_token_ids(tokenizer: BertTokenizer) -> np.ndarray:
    """Ids of the tokens random replacement may use."""
    ids = sorted(i for token, i in tokenizer.vocab.items() if is_real_token(token) and i not in tokenizer.special_ids)
    return np.asarray(ids, dtype=np.int32)


class Masker:
    """Masks sequences of token ids; holds only arrays, so it pickles cheaply into worker processes."""

    def __init__(self, tokenizer: BertTokenizer, config: MaskingConfig):
        self.config = config
        self.mask_id = tokenizer.mask_id
        self.pad_id = tokenizer.pad_id
        # [UNK] stays maskable, as in Google's recipe; the structural tokens never are.
        self.never_masked = np.asarray(
            sorted({tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id}), dtype=np.int64
        )
        self.random_candidates = real_token_ids(tokenizer)
        if len(self.random_candidates) == 0:
            raise ConfigError("the vocab has no ordinary tokens to use as random replacements")

    def mask(self, input_ids: np.ndarray, word_ids: np.ndarray | None, rng: np.random.Generator) -> MaskedSequence:
        """Mask one sequence ([CLS] ... [SEP]); word_ids groups tokens into words, -1 for [CLS]/[SEP]."""
        input_ids = np.asarray(input_ids)
        batch = self.mask_batch(input_ids, np.array([0, len(input_ids)]), word_ids, rng)
        return batch.sequence(0)

    def mask_batch(
        self, input_ids: np.ndarray, offsets: np.ndarray, word_ids: np.ndarray | None, rng: np.random.Generator
    ) -> MaskedBatch:
        """Mask many sequences at once, given as flat arrays split by offsets (length n + 1)."""
        cfg = self.config
        ids = np.asarray(input_ids)
        offsets = np.asarray(offsets, dtype=np.int64)
        n_seq = len(offsets) - 1
        seq_lengths = np.diff(offsets)
        seq_of_token = np.repeat(np.arange(n_seq), seq_lengths)

        maskable = ~np.isin(ids, self.never_masked)
        if word_ids is None:
            word_ids = np.arange(len(ids))
        else:
            word_ids = np.asarray(word_ids)
            maskable &= word_ids >= 0
        candidates = np.flatnonzero(maskable)
        candidate_seq = seq_of_token[candidates]

        # Word groups among the candidates, numbered in order of (sequence, word id).
        if cfg.whole_word:
            key = candidate_seq.astype(np.int64) * (int(word_ids.max(initial=0)) + 1) + word_ids[candidates]
            if np.all(key[1:] >= key[:-1]):
                new_group = np.ones(len(key), dtype=bool)
                new_group[1:] = key[1:] != key[:-1]
                group_of = np.cumsum(new_group) - 1
            else:
                _, group_of = np.unique(key, return_inverse=True)
            n_groups = int(group_of.max(initial=-1)) + 1
        else:
            group_of = np.arange(len(candidates))
            n_groups = len(candidates)
        group_size = np.bincount(group_of, minlength=n_groups)
        group_seq = np.zeros(n_groups, dtype=np.int64)
        group_seq[group_of] = candidate_seq

        real_lengths = np.bincount(seq_of_token[ids != self.pad_id], minlength=n_seq)
        num_to_predict = np.minimum(
            cfg.max_predictions, np.maximum(1, np.rint(real_lengths * cfg.masked_lm_prob).astype(np.int64))
        )

        # Shuffle each sequence's words, then walk them column by column across all sequences at once.
        order = np.lexsort((rng.random(n_groups), group_seq))
        shuffled_seq = group_seq[order]
        first_of_seq = np.searchsorted(shuffled_seq, np.arange(n_seq))
        rank = np.arange(n_groups) - first_of_seq[shuffled_seq]
        width = int(rank.max(initial=-1)) + 1
        sizes = np.zeros((n_seq, width), dtype=np.int64)
        sizes[shuffled_seq, rank] = group_size[order]
        taken = np.zeros((n_seq, width), dtype=bool)
        chosen = np.zeros(n_seq, dtype=np.int64)
        for column in range(width):
            size = sizes[:, column]
            take = (size > 0) & (chosen + size <= num_to_predict)
            taken[:, column] = take
            chosen += size * take
            if column % 8 == 7 and np.all(chosen >= num_to_predict):
                break
        group_taken = np.zeros(n_groups, dtype=bool)
        group_taken[order] = taken[shuffled_seq, rank]
        positions = candidates[group_taken[group_of]]  # ascending

        draws = rng.random(len(positions))
        kinds = np.full(len(positions), UNCHANGED, dtype=np.int8)
        kinds[draws < cfg.mask_token_prob + cfg.random_token_prob] = RANDOM_TOKEN
        kinds[draws < cfg.mask_token_prob] = MASK_TOKEN
        random_at = positions[kinds == RANDOM_TOKEN]
        replacements = self.random_candidates[rng.integers(0, len(self.random_candidates), size=len(random_at))]

        masked = ids.astype(np.int32, copy=True)
        masked[positions[kinds == MASK_TOKEN]] = self.mask_id
        masked[random_at] = replacements
        positions_seq = seq_of_token[positions]
        masked_offsets = np.zeros(n_seq + 1, dtype=np.int64)
        np.cumsum(np.bincount(positions_seq, minlength=n_seq), out=masked_offsets[1:])
        return MaskedBatch(
            input_ids=masked,
            offsets=offsets,
            masked_positions=(positions - offsets[positions_seq]).astype(np.int32),
            masked_labels=ids[positions].astype(np.int32),
            kinds=kinds,
            masked_offsets=masked_offsets,
        )
