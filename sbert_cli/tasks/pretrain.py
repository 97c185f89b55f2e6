"""pretrain: masked-LM training on make-mlm-data output, on the generic training loop, and held-out MLM scoring.

Static data carries its masks; `--dynamic-masking` re-masks `--no-mask` data every epoch with the
one Masker of make-mlm-data, each sequence from a generator seeded by (seed, epoch, index), so the
masks depend neither on batch composition nor on the number of processes, and resume exactly.

In it: PretrainResult, pretrain (the command's library call), validate_options; MLMSource (a
shards dir's sequences, masked statically or on the fly), masker_for, MLMTask (the loop's adapter); masked_logits
(the one way the model runs at masked positions), masked_token_sums, mlm_metrics, eval_source and score_masked
(held-out scoring, shared with `sbert eval --task mlm`); IGNORE, TRAIN_STREAM/EVAL_STREAM, EVAL_MASKING_SEED, TOP_K.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sbert_cli.data.batching import length_sorted_batches, pad_batch
from sbert_cli.data.masking import Masker, MaskingConfig
from sbert_cli.data.shards import MLMShards, vocab_sha256
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.limits import MASKING_SEED
from sbert_cli.tasks.lr_rule import start_notes, with_chosen_lr
from sbert_cli.tasks.options import PretrainOptions
from sbert_cli.train.distributed import DistributedEnv
from sbert_cli.train.loop import train
from sbert_cli.train.state import check_run_dir, kept_model_dir
from sbert_cli.train.types import Batch, Callbacks, Task, TrainConfig, TrainResult

IGNORE = -100  # label of a padded prediction: weight 0 in the loss
TRAIN_STREAM, EVAL_STREAM = 0, 1  # keep training and evaluation masks in separate random streams
# Evaluation masks of --no-mask data come from (EVAL_MASKING_SEED, EVAL_STREAM, sequence index), in pretrain's
# held-out evaluation and in `sbert eval` alike, so the two report the same figures on the same sequences.
EVAL_MASKING_SEED = MASKING_SEED
TOP_K = 5


@dataclass
class PretrainResult:
    train: TrainResult
    model_dir: Path | None
    new_head: list[str] = field(default_factory=list)


class MLMSource:
    """Sequences of an MLMShards dir (all, or a subset of indices), masked statically or on the fly."""

    def __init__(self, shards: MLMShards, indices: np.ndarray, masker: Masker | None, seed: int, stream: int):
        self.shards, self.indices, self.masker, self.seed, self.stream = shards, indices, masker, seed, stream
        self.lengths = shards.lengths()[indices]

    def example(self, position: int, epoch: int):
        """(input_ids, masked_positions, masked_labels) of the position-th sequence of this source."""
        index = int(self.indices[position])
        example = self.shards[index]
        if self.masker is None:
            return example.input_ids, example.masked_positions, example.masked_labels
        # Evaluation masks do not change with the epoch, so evaluations stay comparable.
        entropy = [self.seed, self.stream, epoch, index] if self.stream == TRAIN_STREAM else [self.seed, self.stream, index]
        masked = self.masker.mask(example.input_ids, example.word_ids, np.random.default_rng(entropy))
        return masked.input_ids, masked.masked_positions, masked.masked_labels

    def batch(self, positions: list[int], epoch: int, pad_id: int) -> Batch:
        examples = [self.example(p, epoch) for p in positions]
        input_ids, attention_mask = pad_batch([e[0] for e in examples], pad_id)
        most = max(1, max(len(e[1]) for e in examples))
        masked_positions = torch.zeros((len(examples), most), dtype=torch.long)
        masked_labels = torch.full((len(examples), most), IGNORE, dtype=torch.long)
        for row, (_, positions_, labels) in enumerate(examples):
            masked_positions[row, : len(positions_)] = torch.from_numpy(positions_.astype(np.int64))
            masked_labels[row, : len(labels)] = torch.from_numpy(labels.astype(np.int64))
        tensors = {"input_ids": input_ids, "attention_mask": attention_mask,
                   "masked_positions": masked_positions, "masked_labels": masked_labels}
        return Batch(tensors, int((masked_labels != IGNORE).sum()), int(attention_mask.sum()))


def masked_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  masked_positions: torch.Tensor) -> torch.Tensor:
    """MLM logits (B, M, V) at masked_positions (B, M) only: the one path by which the model runs at masked
    positions. The training loss, held-out scoring and `sbert eval --task mlm` (masked_token_sums) come here,
    and so do fill-mask, its joint search, serve's fill-mask and convert's head probe (all through masked_topk),
    so every masked-token figure is computed the same way."""
    return model(input_ids, attention_mask, masked_positions=masked_positions)


def _mlm_logits(model, batch: Batch) -> torch.Tensor:
    """masked_logits of an MLMSource batch."""
    t = batch.tensors
    return masked_logits(model, t["input_ids"], t["attention_mask"], t["masked_positions"])  # (B, M, V)


def masked_token_sums(model, batch: Batch) -> torch.Tensor:
    """[summed cross-entropy, predictions, top-1 hits, top-5 hits] over a batch's masked tokens (float64):
    the one masked-position scorer, behind pretrain's held-out evaluation and `sbert eval --task mlm`."""
    logits = _mlm_logits(model, batch).float()  # (B, M, V)
    labels = batch.tensors["masked_labels"]
    real = labels != IGNORE
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    hits = logits.topk(min(TOP_K, logits.shape[-1]), dim=-1).indices == labels[..., None]  # (B, M, k)
    return torch.stack([loss.double(), real.sum().double(), (hits[..., 0] & real).sum().double(),
                        (hits.any(dim=-1) & real).sum().double()])


def mlm_metrics(sums: torch.Tensor) -> dict[str, float]:
    """loss, top-1/top-5 accuracy and perplexity from summed masked_token_sums."""
    loss_sum, count, correct, correct_top5 = (float(x) for x in sums)
    loss = loss_sum / max(count, 1.0)
    return {"loss": loss, "mlm_accuracy": correct / max(count, 1.0), "mlm_top5_accuracy": correct_top5 / max(count, 1.0),
            "perplexity": math.exp(min(loss, 50.0))}


def eval_source(shards: MLMShards, tokenizer, seed: int = EVAL_MASKING_SEED, indices: np.ndarray | None = None,
                masker: Masker | None = None) -> MLMSource:
    """Sequences to evaluate on: their stored masks, or (--no-mask data) masks drawn from (seed, EVAL_STREAM, index),
    which depend neither on batching nor on the training seed: the one evaluation-masking scheme."""
    if not shards.masked:
        masker = masker or masker_for(shards, tokenizer)
    indices = np.arange(len(shards)) if indices is None else indices
    return MLMSource(shards, indices, None if shards.masked else masker, seed, EVAL_STREAM)


def score_masked(model, source: MLMSource, pad_id: int, batch_size: int, device, precision: str, runtime=None,
                 progress=None) -> list[float]:
    """Summed masked_token_sums over every sequence of `source`, in length-sorted batches (inference mode)."""
    import time

    from sbert_cli.data.batching import length_sorted_batches
    from sbert_cli.model.precision import inference_autocast

    start = time.perf_counter()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    with torch.inference_mode(), inference_autocast(precision, device):
        for positions in length_sorted_batches(source.lengths, batch_size):
            batch = source.batch(positions, 0, pad_id)
            batch = Batch({k: v.to(device) for k, v in batch.tensors.items()}, batch.units, batch.tokens)
            sums += masked_token_sums(model, batch)
            if progress is not None:
                progress(len(positions), len(source.lengths))
    if runtime is not None:
        runtime.add(len(source.lengths), int(source.lengths.sum()), time.perf_counter() - start)
    return sums.cpu().tolist()


class MLMTask(Task):
    model_task = "mlm"
    eval_data_fields = "held-out data (`eval_data` or `eval_fraction`)"
    best_metric = "loss"

    def __init__(self, train_source: MLMSource, eval_source: MLMSource | None, tokenizer, fingerprint: dict):
        self.train_source, self.eval_source, self.tokenizer = train_source, eval_source, tokenizer
        self._fingerprint = fingerprint

    def train_lengths(self):
        return self.train_source.lengths

    def train_batch(self, indices, epoch):
        return self.train_source.batch(indices, epoch, self.tokenizer.pad_id)

    def loss_sum(self, model, batch):
        logits = _mlm_logits(model, batch)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch.tensors["masked_labels"].flatten(),
                               ignore_index=IGNORE, reduction="sum")

    def eval_lengths(self):
        return self.eval_source.lengths if self.eval_source is not None else None

    def eval_batch(self, indices):
        return self.eval_source.batch(indices, 0, self.tokenizer.pad_id)

    def eval_sums(self, model, batch):
        return masked_token_sums(model, batch)

    def eval_metrics(self, sums):
        return mlm_metrics(sums)

    def fingerprint(self):
        return self._fingerprint


def masker_for(shards: MLMShards, tokenizer, masked_lm_prob: float | None = None, max_predictions: int | None = None) -> Masker:
    """The Masker for --no-mask data: the data's make-mlm-data settings, with masked_lm_prob / max_predictions
    overridden when given (default: round(max_seq_len x masked_lm_prob) predictions at most)."""
    settings = shards.settings
    prob = masked_lm_prob if masked_lm_prob is not None else settings.get("masked_lm_prob", 0.15)
    most = max_predictions if max_predictions is not None else max(1, round(shards.max_seq_len * prob))
    config = MaskingConfig(
        masked_lm_prob=prob, max_predictions=most,
        mask_token_prob=settings.get("mask_token_prob", 0.8), random_token_prob=settings.get("random_token_prob", 0.1),
        whole_word=settings.get("whole_word", True),
    )
    return Masker(tokenizer, config)


def _check_data(shards: MLMShards, options: PretrainOptions, tokenizer, max_positions: int, flag: str,
                training: bool = True) -> None:
    if shards.vocab_sha256 != vocab_sha256(tokenizer):
        raise DataError(
            f"{shards.path}: made with another vocab than the model's (vocab sha256 {shards.vocab_sha256[:12]}... vs "
            f"{vocab_sha256(tokenizer)[:12]}...); remake it with make-mlm-data `model` {options.model or '<the model>'}"
        )
    if shards.max_token_id >= len(tokenizer):
        raise DataError(f"{shards.path}: holds token id {shards.max_token_id}, but the model's vocab has {len(tokenizer):,} "
                        f"tokens; remake it with make-mlm-data `model` {options.model or '<the model>'}")
    if shards.max_seq_len > max_positions:
        raise ConfigError(f"{shards.path}: sequences of up to {shards.max_seq_len} tokens, but the model has {max_positions} positions")
    if len(shards) == 0:
        raise DataError(f"{shards.path}: holds no sequences")
    if not training:
        return  # evaluation data may be masked or not: unmasked data is masked once, with a fixed seed
    if options.dynamic_masking and shards.masked:
        raise ConfigError(f"{flag} {shards.path}: already masked; `dynamic_masking` needs data made with make-mlm-data `no_mask`")
    if not options.dynamic_masking and not shards.masked:
        raise ConfigError(f"{flag} {shards.path}: made with `no_mask`; pretrain it with `dynamic_masking`")


def validate_options(options: PretrainOptions) -> None:
    if (options.model is None) == (options.config_name is None):
        raise ConfigError("give `model` DIR|REPO to continue pretraining a checkpoint, or `config_name` tiny|small|base to start from scratch (not both)")
    if options.config_name is None and options.vocab is not None:
        raise ConfigError("`vocab` goes with `config_name` (a fresh model); a `model` brings its own vocab.txt")
    if options.eval_data is not None and options.eval_fraction is not None:
        raise ConfigError("give `eval_data` or `eval_fraction`, not both")
    if options.eval_fraction is not None and not 0 < options.eval_fraction < 1:
        raise ConfigError(f"`eval_fraction` must be between 0 and 1, got {options.eval_fraction}")
    if not options.dynamic_masking and (options.masked_lm_prob is not None or options.max_predictions is not None):
        raise ConfigError("`masked_lm_prob` and `max_predictions` apply to `dynamic_masking`; static data keeps its make-mlm-data masks")


def pretrain(options: PretrainOptions, config: TrainConfig, callbacks: Callbacks | None = None, on_micro_batch=None) -> PretrainResult:
    """Masked-LM training; writes OUT/last (and OUT/best when evaluating) as sbert model dirs with the MLM head."""
    from sbert_cli.model.model_dir import build_or_load, freeze_unused_pooler

    validate_options(options)
    reads = tuple(p for p in (options.data, options.eval_data, options.model) if p is not None and Path(p).is_dir())
    check_run_dir(Path(config.out_dir), config.resume, config.force, reads)
    shards = MLMShards(options.data)
    eval_shards = MLMShards(options.eval_data) if options.eval_data is not None else None
    model, tokenizer, new_head = build_or_load("mlm", model=options.model, config_name=options.config_name,
                                               vocab=options.vocab, seed=config.seed)
    new_head = freeze_unused_pooler(model, new_head)  # the MLM objective never reaches the pooler
    config, lr_choice = with_chosen_lr(config, "mlm", model.config.hidden_size, options.config_name is not None, new_head)
    max_positions = model.config.max_position_embeddings
    _check_data(shards, options, tokenizer, max_positions, "`data`")
    if eval_shards is not None:
        _check_data(eval_shards, options, tokenizer, max_positions, "`eval_data`", training=False)
    dupes = shards.settings.get("dupe_factor", 1)
    if options.eval_fraction is not None and dupes > 1:
        raise ConfigError(
            f"`eval_fraction`: {options.data} holds {dupes} masked copies of each line, so held-out sequences would "
            "still be trained on; make separate evaluation data and pass `eval_data`"
        )
    masker = masker_for(shards, tokenizer, options.masked_lm_prob, options.max_predictions) if options.dynamic_masking else None

    train_indices, evaluation = np.arange(len(shards)), None
    if options.eval_fraction is not None:
        held_out = max(1, round(len(shards) * options.eval_fraction))
        if held_out >= len(shards):
            raise ConfigError(f"`eval_fraction` {options.eval_fraction} leaves no training data ({len(shards)} sequences)")
        order = np.random.default_rng([config.seed, 7]).permutation(len(shards))
        train_indices, eval_indices = np.sort(order[held_out:]), np.sort(order[:held_out])
        evaluation = eval_source(shards, tokenizer, indices=eval_indices, masker=masker)
    elif eval_shards is not None:
        evaluation = eval_source(eval_shards, tokenizer, masker=masker)
    train_source = MLMSource(shards, train_indices, masker, config.seed, TRAIN_STREAM)

    manifest_digest = hashlib.sha256(json.dumps(shards.manifest, sort_keys=True).encode()).hexdigest()
    fingerprint = {"manifest_sha256": manifest_digest, "sequences": len(train_indices),
                   "dynamic_masking": options.dynamic_masking, "eval_fraction": options.eval_fraction,
                   "masking": None if masker is None else asdict(masker.config)}
    task = MLMTask(train_source, evaluation, tokenizer, fingerprint)

    env = DistributedEnv.from_env()
    if callbacks is not None and env.is_main:
        held = f", {len(evaluation.lengths)} held out" if evaluation is not None else ""
        kind = "re-masked every epoch" if masker is not None else "static masks"
        callbacks.message(f"data: {len(train_indices)} sequences{held} ({kind}), up to {shards.max_seq_len} tokens")
        for line in start_notes(new_head, "the checkpoint has no MLM head; initialised fresh", options.config_name is not None,
                                tokenizer.case_note):
            callbacks.message(line)
        callbacks.message(lr_choice.describe())
    run_info = {"model": options.model, "config": options.config_name, "data": str(options.data),
                "eval_data": str(options.eval_data) if options.eval_data else None, "eval_fraction": options.eval_fraction,
                "dynamic_masking": options.dynamic_masking, "lr_choice": lr_choice.to_json()}
    result = train(model, task, config, callbacks, run_info=run_info, on_micro_batch=on_micro_batch)
    out = Path(config.out_dir)
    model_dir = kept_model_dir(out)
    return PretrainResult(result, None if result.interrupted else model_dir, new_head)
