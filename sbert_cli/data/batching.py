"""Batching: dynamic padding, length-sorted inference batches, and the seeded length-bucketed training order.

Training batches are *global* batches (per-device batch x devices x accumulation steps): their
composition depends only on the seed, the epoch and the lengths, never on how many processes
share them, so one process and N processes with the same global batch see the same examples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# Examples are length-sorted within windows of this many global batches: enough to make
# neighbouring lengths similar, few enough that batches still mix the corpus.
BUCKET_WINDOW_BATCHES = 50


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


def bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of training batches: a seeded shuffle, length-sorted within windows, batches in seeded order.

    Every index appears once; only the last batch may be smaller than batch_size.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * BUCKET_WINDOW_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    full = [b for b in batches if len(b) == batch_size]
    partial = [b for b in batches if len(b) < batch_size]
    # Shuffle the full batches, so long and short ones alternate; a partial one goes last.
    return [full[i].tolist() for i in rng.permutation(len(full))] + [b.tolist() for b in partial]


def split_batch(batch: Sequence[int], parts: int) -> list[list[int]]:
    """Split a global batch into `parts` contiguous micro-batches whose sizes differ by at most one (some may be empty)."""
    size, extra = divmod(len(batch), parts)
    pieces, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        pieces.append(list(batch[start:end]))
        start = end
    return pieces
