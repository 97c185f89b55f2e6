"""A linear-chain CRF over per-word tag scores, and the one Viterbi decoder every tagger uses.

Shapes: B sentences, W words (padded), L tags. `emissions` (B, W, L) are the encoder's per-word tag scores;
`mask` (B, W) is True on real words, which come first in every row (each row has at least one).

- The CRF's parameters live in the model (model/bert.py's TagTransitions: `transitions[i, j]`, the score of
  tag j right after tag i, `start_scores`, `end_scores`); `nll` is the negative log-likelihood of the gold
  tags under them (forward algorithm, in log space).
- `Constraints`: which tag may start, follow another, and end a sentence (BIOES: I-PER never after O);
  a forbidden step costs FORBIDDEN, so it is never chosen while any allowed path exists.
- `log_partition`, `path_scores`, `viterbi`, `marginals`: the functions behind it, on explicit score
  tensors, so a tagger without a CRF decodes with the same `viterbi` (zero transitions, log-softmax
  emissions, the constraints) and the tests compare them with enumerating every path.

Training uses the plain likelihood (no constraints): gold tag sequences are well formed, so the model
learns to score the forbidden steps low by itself; decoding applies the constraints as a hard rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FORBIDDEN = -1e4  # added to a forbidden step's score: exp(-1e4) is 0 in float32, and no NaN as -inf can give


@dataclass(frozen=True)
class Constraints:
    """Allowed steps as bool tensors: start_ok (L,), trans_ok (L, L) [from, to], end_ok (L,)."""

    start_ok: torch.Tensor
    trans_ok: torch.Tensor
    end_ok: torch.Tensor

    @classmethod
    def from_lists(cls, start_ok: list[bool], trans_ok: list[list[bool]], end_ok: list[bool]) -> "Constraints":
        """From data.ner.allowed_transitions's lists."""
        return cls(torch.tensor(start_ok, dtype=torch.bool), torch.tensor(trans_ok, dtype=torch.bool),
                   torch.tensor(end_ok, dtype=torch.bool))

    def to(self, device: torch.device) -> "Constraints":
        return Constraints(self.start_ok.to(device), self.trans_ok.to(device), self.end_ok.to(device))

    def apply(self, transitions: torch.Tensor, start: torch.Tensor, end: torch.Tensor):
        """The scores with FORBIDDEN added where a step is not allowed."""
        penalty = lambda ok: (~ok.to(transitions.device)).to(transitions.dtype) * FORBIDDEN  # noqa: E731
        return transitions + penalty(self.trans_ok), start + penalty(self.start_ok), end + penalty(self.end_ok)


def _scores(transitions, start, end, constraints: Constraints | None):
    return constraints.apply(transitions, start, end) if constraints is not None else (transitions, start, end)


def log_partition(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
                  end: torch.Tensor, constraints: Constraints | None = None) -> torch.Tensor:
    """log Z (B,): the log-sum-exp of the scores of every tag path, by the forward algorithm."""
    transitions, start, end = _scores(transitions, start, end, constraints)
    alpha = start + emissions[:, 0]  # (B, L): best-of-all-paths mass ending in each tag at word 0
    for t in range(1, emissions.shape[1]):
        step = torch.logsumexp(alpha[:, :, None] + transitions[None], dim=1) + emissions[:, t]  # (B, L)
        alpha = torch.where(mask[:, t, None], step, alpha)  # padding carries the row's last value on
    return torch.logsumexp(alpha + end, dim=1)


def path_scores(emissions: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor, transitions: torch.Tensor,
                start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The score (B,) of the tag path `tags` (B, W) (padding positions ignored)."""
    real = mask.to(emissions.dtype)
    emitted = emissions.gather(2, tags[..., None]).squeeze(2)  # (B, W)
    score = start[tags[:, 0]] + (emitted * real).sum(1)
    score = score + (transitions[tags[:, :-1], tags[:, 1:]] * real[:, 1:]).sum(1)
    last = tags.gather(1, (mask.sum(1) - 1).clamp(min=0)[:, None]).squeeze(1)
    return score + end[last]


def viterbi(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
            end: torch.Tensor, constraints: Constraints | None = None) -> list[list[int]]:
    """The best tag path of each sentence, as lists as long as its real words."""
    transitions, start, end = _scores(transitions, start, end, constraints)
    B, W, L = emissions.shape
    score = start + emissions[:, 0]  # (B, L)
    keep = torch.arange(L, device=emissions.device).expand(B, L)  # padding's back-pointer: stay on the same tag
    history = []
    for t in range(1, W):
        best, previous = (score[:, :, None] + transitions[None]).max(dim=1)  # (B, L): best predecessor of each tag
        score = torch.where(mask[:, t, None], best + emissions[:, t], score)
        history.append(torch.where(mask[:, t, None], previous, keep))
    last = (score + end).argmax(dim=1)  # (B,)
    path = [last]
    for previous in reversed(history):
        last = previous.gather(1, last[:, None]).squeeze(1)
        path.append(last)
    path = torch.stack(path[::-1], dim=1).tolist()  # (B, W)
    lengths = mask.sum(1).tolist()
    return [row[:n] for row, n in zip(path, lengths)]


def marginals(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
              end: torch.Tensor, constraints: Constraints | None = None) -> torch.Tensor:
    """P(tag of word t = j) under the CRF, (B, W, L): the gradient of log Z with respect to the emissions
    (forward-backward, done by autograd)."""
    with torch.inference_mode(False), torch.enable_grad():
        emissions = emissions.detach().clone().float().requires_grad_(True)
        args = [x.detach().clone().float() for x in (transitions, start, end)]
        log_partition(emissions, mask.clone(), *args, constraints).sum().backward()
    return emissions.grad


def nll(emissions: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor, transitions: torch.Tensor,
        start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The negative log-likelihood of the gold `tags` (B, W), summed over the batch, in float32 (the training loss)."""
    emissions = emissions.float()
    scores = transitions.float(), start.float(), end.float()
    return (log_partition(emissions, mask, *scores) - path_scores(emissions, mask, tags, *scores)).sum()
