"""Batching: dynamic padding, length-sorted inference batches, and the seeded shuffled training order.

Training batches are *global* batches (per-device batch x devices x accumulation steps): their
composition depends only on the seed, the epoch and the lengths, never on how many processes
share them, so one process and N processes with the same global batch see the same examples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) int64, padded on the right to the batch's longest sequence."""
    longest = max((len(s) for s in sequences), default=0)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """For inference: indices grouped into batches of similar length (longest first), covering every index once."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def shuffled_batches(count: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of training batches: a permutation of range(count) seeded by (seed, epoch), cut into batches of
    batch_size; only the last may be smaller.

    Batches mix lengths, as transformers' Trainer's do. Length-bucketed batches (0.2's order) padded less but
    grouped examples by what goes with length (on THUCNews titles a batch's most common label held 33% of it, against
    19% shuffled) and trained worse taggers (MSRA, m3e-small, 10,000 sentences, 3 seeds: test entity F1 0.8035
    against 0.8242 shuffled); the model runs a training batch's dense layers on its real tokens only
    (model/bert.py Unpadded), so mixing lengths costs little padding work.
    """
    order = np.random.default_rng([seed, epoch]).permutation(count)
    return [order[i : i + batch_size].tolist() for i in range(0, count, batch_size)]


def split_batch(batch: Sequence[int], parts: int) -> list[list[int]]:
    """Split a global batch into `parts` contiguous micro-batches whose sizes differ by at most one (some may be empty)."""
    size, extra = divmod(len(batch), parts)
    pieces, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        pieces.append(list(batch[start:end]))
        start = end
    return pieces
