"""Dynamic padding and the length-bucketed, world-size-independent training order."""

from __future__ import annotations

import numpy as np
import torch

from sbert_cli.data.batching import (
    bucketed_batches,
    length_sorted_batches,
    pad_batch,
    split_batch,
)


def test_pad_batch_pads_to_the_longest_only():
    ids, mask = pad_batch([[101, 5, 102], [101, 102]], pad_id=0)
    assert ids.tolist() == [[101, 5, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]] and ids.dtype == torch.long


def test_length_sorted_batches_cover_everything_once():
    lengths = [5, 1, 9, 3, 9, 2, 7]
    batches = length_sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [lengths[i] for i in batches[0]] == [9, 9, 7]


def test_bucketed_batches_are_a_seeded_permutation_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 128, size=1000)
    batches = bucketed_batches(lengths, 16, seed=1, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 1000 % 16
    # Bucketing: within a batch, lengths are close (far closer than in a random batch).
    spread = np.mean([np.ptp(lengths[b]) for b in batches[:-1]])
    assert spread < 10
    assert batches == bucketed_batches(lengths, 16, seed=1, epoch=0)
    assert batches != bucketed_batches(lengths, 16, seed=1, epoch=1)
    assert batches != bucketed_batches(lengths, 16, seed=2, epoch=0)


def test_bucketed_batches_do_not_keep_file_order():
    lengths = [10] * 200
    first = bucketed_batches(lengths, 20, seed=0, epoch=0)[0]
    assert first != list(range(20))


def test_split_batch_sizes_and_order():
    assert split_batch(list(range(8)), 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert split_batch([0, 1, 2], 4) == [[0], [1], [2], []]
    assert [len(p) for p in split_batch(list(range(10)), 4)] == [3, 3, 2, 2]
