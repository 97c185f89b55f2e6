"""Dynamic padding and the shuffled, world-size-independent training order."""

from __future__ import annotations

import numpy as np
import torch

from sbert_cli.data.batching import (
    length_sorted_batches,
    pad_batch,
    shuffled_batches,
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


def test_shuffled_batches_are_a_seeded_permutation_cut_into_batches():
    batches = shuffled_batches(1000, 16, seed=1, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 1000 % 16
    assert batches == shuffled_batches(1000, 16, seed=1, epoch=0)
    assert batches != shuffled_batches(1000, 16, seed=1, epoch=1)
    assert batches != shuffled_batches(1000, 16, seed=2, epoch=0)
    assert batches[0] != list(range(16))  # not file order


def test_shuffled_batches_mix_lengths_as_a_random_draw_does():
    # Training batches are not grouped by length (that grouped labels, which often go with length): the spread of
    # lengths within a batch is that of a random sample, not the few tokens of a length-sorted window.
    lengths = np.random.default_rng(0).integers(5, 128, size=1000)
    spread = np.mean([np.ptp(lengths[b]) for b in shuffled_batches(1000, 16, seed=1, epoch=0)[:-1]])
    assert spread > 80


def test_split_batch_sizes_and_order():
    assert split_batch(list(range(8)), 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert split_batch([0, 1, 2], 4) == [[0], [1], [2], []]
    assert [len(p) for p in split_batch(list(range(10)), 4)] == [3, 3, 2, 2]
