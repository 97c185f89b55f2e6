"""The learning rate (and warmup) of a training run when --lr is not given, chosen by situation.

One rate does not fit all: 2e-5 is a fine-tuning rate, and a BERT trained from scratch at it learns
next to nothing in a few epochs (it predicts one class for every title); 2e-3 trains a tiny BERT from
scratch and wrecks a pretrained one. The situation is known where the model is built (model_dir.build_or_load
reports which parameters were initialised fresh), so the rule is applied there:

- from scratch (--config): every weight is random; the rate falls with the width, as in the usual
  recipes (BERT-base 1e-4, ELECTRA-small 5e-4 at hidden 256); a tiny BERT (hidden 64) learns THUCNews
  titles best at 2e-3 (measured: 0.72 dev accuracy after 3 epochs, against 0.66 at 1e-3 and 0.10 at 2e-5).
- fine-tuning a pretrained encoder (train-cls --model): BERT's fine-tuning rates; smaller encoders
  take larger ones (Turc et al. 2019 tuned 3e-5..1e-4 for BERTs narrower than base). m3e-small (4 x 512) on
  THUCNews titles, 3 epochs, seed 42: 0.870 dev accuracy at 5e-5, 0.874 at 1e-4, 0.884 at 2e-4, 0.871 at 4e-4;
  2e-4 over three seeds is in README's "Fine-tuning quality". Widths from 129 to 256 keep 1e-4 (not measured). A tiny BERT is
  barely changed by minutes of pretraining and still needs a from-scratch rate (measured on the demo's
  pretrained tiny BERT, 5 epochs: 0.72 dev accuracy at 2e-3, 0.50 at 5e-4, 0.34 at 1e-4).
- a pretrained encoder with a new MLM head (pretrain --model of a checkpoint without cls.predictions):
  the head's dense layer starts random, so it needs more than continued pretraining's rate (measured on
  m3e-small, 282 steps: held-out top-1 11.7% at 5e-4, 8.6% at 1e-4; training the head alone for the first
  100 steps, then everything at 1e-4, gave 9.4% — less than the higher rate, so there is no freezing option).
  Wider models keep 1e-4, BERT-base's pretraining rate.
- continued pretraining (pretrain --model with a trained MLM head): 5e-5.

Torch-free, so the CLI can show the rule in --help (cli/train.py rule_help).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sbert_cli.train.types import WARMUP_RATIO  # every rule's warmup: TrainConfig's default

# train-cls's training targets: 0.1 spread evenly over the labels, the rest on the gold one (0.91 and 0.01 each
# with 10 labels). Not a learning rate, but the same kind of measured default, kept here torch-free for --help.
# m3e-small on THUCNews titles, 3 epochs, seeds 42/43/44: mean dev accuracy 0.8913 against 0.8890 without, higher on
# every seed; a tiny BERT from scratch: 0.721 against 0.727 (seed spread +-0.05). README "Fine-tuning quality".
LABEL_SMOOTHING = 0.1

# train-ner --crf: the CRF's lr is this times the peak lr. Its scores start at zero; at the encoder's fine-tuning rate
# they would barely move in a few epochs (bert4torch trains them at 1e-2 beside 2e-5). Torch-free, for --help.
CRF_LR_SCALE = 100.0

SCRATCH, FINE_TUNE, NEW_HEAD, CONTINUE = "from scratch", "fine-tuning", "new MLM head", "continued pretraining"

# (largest hidden size, lr): the first row whose width is >= the model's.
RULE: dict[str, tuple[tuple[float, float], ...]] = {
    SCRATCH: ((128, 2e-3), (256, 5e-4), (float("inf"), 1e-4)),
    FINE_TUNE: ((128, 2e-3), (256, 1e-4), (512, 2e-4), (float("inf"), 2e-5)),
    NEW_HEAD: ((512, 5e-4), (float("inf"), 1e-4)),
    CONTINUE: ((float("inf"), 5e-5),),
}


def short(lr: float) -> str:
    """1e-3, 2e-5, 2.5e-5: how the rule and the run's first lines write a rate."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def rates(situation: str) -> str:
    rows = RULE[situation]
    if len(rows) == 1:
        return short(rows[0][1])
    parts = [f"{short(lr)} up to hidden {int(width)}" for width, lr in rows[:-1]]
    return ", ".join(parts) + f", else {short(rows[-1][1])}"


@dataclass(frozen=True)
class LrChoice:
    lr: float
    warmup_ratio: float
    situation: str
    chosen: bool  # False: the caller gave lr

    def describe(self) -> str:
        """The run's first line about it: "lr 1e-3 (from scratch; `lr` to change)" (the CLI says --lr)."""
        if not self.chosen:
            return f"lr {short(self.lr)} (`lr`)"
        return f"lr {short(self.lr)} ({self.situation}; `lr` to change)"

    def to_json(self) -> dict:
        return {"lr": self.lr, "warmup_ratio": self.warmup_ratio, "situation": self.situation,
                "source": "rule" if self.chosen else "--lr"}


def situation_of(task: str, from_scratch: bool, fresh: list[str]) -> str:
    """SCRATCH, FINE_TUNE (train-cls or train-ner from a checkpoint), NEW_HEAD or CONTINUE (pretrain from a checkpoint)."""
    if from_scratch:
        return SCRATCH
    if task in ("cls", "ner"):
        return FINE_TUNE  # whether or not the classifier (or tagger) is new: a pretrained encoder sets the pace
    return NEW_HEAD if any(name.startswith("mlm_head.") for name in fresh) else CONTINUE


def choose_lr(task: str, hidden_size: int, from_scratch: bool, fresh: list[str]) -> float:
    """The rule: the peak lr for a model of `hidden_size` in this situation."""
    rows = RULE[situation_of(task, from_scratch, fresh)]
    return next(lr for width, lr in rows if hidden_size <= width)


def with_chosen_lr(config, task: str, hidden_size: int, from_scratch: bool, fresh: list[str]):
    """(config with lr filled in where it was None, the LrChoice for the run's lines and run.json)."""
    chosen = config.lr is None
    lr = choose_lr(task, hidden_size, from_scratch, fresh) if chosen else config.lr
    choice = LrChoice(lr, config.warmup_ratio, situation_of(task, from_scratch, fresh), chosen)
    return dataclasses.replace(config, lr=lr), choice


def start_notes(new_head: list[str], head_note: str, from_scratch: bool, case_note: str | None) -> list[str]:
    """The notes a training run opens with, before its lr line: `head_note` and the parameters of a head initialised
    fresh on a loaded checkpoint (none from scratch, where everything is), and the casing note."""
    notes = [f"note: {head_note}: {', '.join(new_head)}"] if new_head and not from_scratch else []
    return notes + ([f"note: {case_note}"] if case_note else [])
