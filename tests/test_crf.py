"""The CRF against enumerating every tag path of short sentences: partition function, best path, marginals,
with and without constraints, batched with padding."""

from __future__ import annotations

import itertools

import pytest
import torch

from sbert_cli.model.bert import TagTransitions
from sbert_cli.tasks.crf import Constraints, log_partition, marginals, nll, path_scores, viterbi

L = 3  # tags


def brute_force(emissions, transitions, start, end, allowed=None):
    """(log Z, best path, marginals (W, L)) of one sentence by enumerating all L**W paths (allowed ones only)."""
    W = emissions.shape[0]
    paths, scores = [], []
    for path in itertools.product(range(L), repeat=W):
        if allowed is not None and not allowed(path):
            continue
        score = start[path[0]] + end[path[-1]] + sum(emissions[t, path[t]] for t in range(W))
        score = score + sum(transitions[path[t - 1], path[t]] for t in range(1, W))
        paths.append(path)
        scores.append(score)
    scores = torch.stack(scores)
    probabilities = torch.softmax(scores, 0)
    marginal = torch.zeros(W, L, dtype=torch.float64)
    for path, p in zip(paths, probabilities):
        for t, tag in enumerate(path):
            marginal[t, tag] += p
    return torch.logsumexp(scores, 0), list(paths[int(scores.argmax())]), marginal


def random_batch(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    W = max(lengths)
    emissions = torch.randn(len(lengths), W, L, generator=g, dtype=torch.float64) * 2
    mask = torch.tensor([[t < n for t in range(W)] for n in lengths])
    transitions = torch.randn(L, L, generator=g, dtype=torch.float64)
    start, end = torch.randn(L, generator=g, dtype=torch.float64), torch.randn(L, generator=g, dtype=torch.float64)
    return emissions, mask, transitions, start, end


# Tag 1 may not follow tag 0, no path may start with tag 2 or end with tag 1 (as I-X after O, and so on).
START_OK, END_OK = [True, True, False], [True, False, True]
TRANS_OK = [[True, False, True], [True, True, True], [True, True, True]]


def allowed(path):
    return START_OK[path[0]] and END_OK[path[-1]] and all(TRANS_OK[a][b] for a, b in zip(path, path[1:]))


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_partition_best_path_and_marginals_match_enumeration(seed, constrained):
    lengths = [1, 4, 2, 5]  # padded to 5: the masks must leave short rows untouched
    emissions, mask, transitions, start, end = random_batch(seed, lengths)
    constraints = Constraints.from_lists(START_OK, TRANS_OK, END_OK) if constrained else None
    log_z = log_partition(emissions, mask, transitions, start, end, constraints)
    paths = viterbi(emissions, mask, transitions, start, end, constraints)
    probs = marginals(emissions, mask, transitions, start, end, constraints)
    for b, n in enumerate(lengths):
        want_z, want_path, want_marginal = brute_force(emissions[b, :n], transitions, start, end,
                                                       allowed if constrained else None)
        torch.testing.assert_close(log_z[b], want_z)
        assert paths[b] == want_path
        torch.testing.assert_close(probs[b, :n].double(), want_marginal, atol=1e-5, rtol=1e-5)
        if constrained:
            assert allowed(paths[b])


def test_constrained_decoding_avoids_forbidden_steps_even_when_they_score_best():
    emissions = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 9.0, 0.0]]])  # unconstrained best: 0 then 1
    zeros = torch.zeros(L, L), torch.zeros(L), torch.zeros(L)
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert viterbi(emissions, mask, *zeros) == [[0, 1]]
    assert viterbi(emissions, mask, *zeros, Constraints.from_lists(START_OK, TRANS_OK, END_OK)) == [[0, 0]]


def test_nll_is_log_z_minus_gold_score_and_trains_toward_the_gold_path():
    emissions, mask, transitions, start, end = random_batch(7, [3, 2])
    tags = torch.tensor([[0, 2, 1], [1, 1, 0]])
    f32 = [x.float() for x in (transitions, start, end)]
    e32 = emissions.float()
    want = sum(brute_force(emissions[b, :n], transitions, start, end)[0] - path_scores(e32[b:b + 1, :n], mask[b:b + 1, :n], tags[b:b + 1, :n], *f32)[0]
               for b, n in enumerate([3, 2]))
    torch.testing.assert_close(nll(emissions, mask, tags, transitions, start, end), want.float())
    # A few steps on the CRF's own parameters (zero at first) make the gold paths the decoded ones.
    crf = TagTransitions(L)
    assert all(not p.detach().any() for p in crf.parameters())
    optimizer = torch.optim.Adam(crf.parameters(), lr=0.5)
    flat = torch.zeros(2, 3, L)  # no emission evidence: only the transitions can tell the tags apart
    mask = torch.ones(2, 3, dtype=torch.bool)
    gold = torch.tensor([[0, 2, 1], [0, 2, 1]])
    for _ in range(50):
        optimizer.zero_grad()
        nll(flat, mask, gold, crf.transitions, crf.start_scores, crf.end_scores).backward()
        optimizer.step()
    assert viterbi(flat, mask, crf.transitions.detach(), crf.start_scores.detach(), crf.end_scores.detach()) == gold.tolist()


def test_a_gold_path_scores_as_its_sum():
    emissions, mask, transitions, start, end = random_batch(3, [2])
    tags = torch.tensor([[2, 0]])
    want = start[2] + emissions[0, 0, 2] + transitions[2, 0] + emissions[0, 1, 0] + end[0]
    torch.testing.assert_close(path_scores(emissions, mask, tags, transitions, start, end)[0], want)
