"""pretrain: masked-LM training on make-mlm-data output, on the generic training loop.

Static data carries its masks; `--dynamic-masking` re-masks `--no-mask` data every epoch with the
one Masker of make-mlm-data, each sequence from a generator seeded by (seed, epoch, index), so the
masks depend neither on batch composition nor on the number of processes, and resume exactly.
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

from sbert_cli.data.batching import pad_batch
from sbert_cli.data.masking import Masker, MaskingConfig
from sbert_cli.data.shards import MLMShards, vocab_sha256
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.train import Batch, DistributedEnv, Task, TrainConfig, TrainResult, check_run_dir, train

IGNORE = -100  # label of a padded prediction: weight 0 in the loss
TRAIN_STREAM, EVAL_STREAM = 0, 1  # keep training and evaluation masks in separate random streams


@dataclass
class PretrainOptions:
    data: Path
    model: str | None = None  # a model dir or hub repo id
    config_name: str | None = None  # tiny|small|base: a fresh model
    vocab: Path | None = None  # with config_name (default: the bundled Chinese vocab)
    dynamic_masking: bool = False
    masked_lm_prob: float | None = None  # dynamic masking; default: the data's make-mlm-data settings
    max_predictions: int | None = None
    eval_data: Path | None = None
    eval_fraction: float | None = None


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


def _mlm_logits(model, batch: Batch) -> torch.Tensor:
    t = batch.tensors
    return model(t["input_ids"], t["attention_mask"], None, t["masked_positions"])  # (B, M, V)


class MLMTask(Task):
    model_task = "mlm"
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
        logits = _mlm_logits(model, batch).float()
        labels = batch.tensors["masked_labels"]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        real = labels != IGNORE
        correct = ((logits.argmax(-1) == labels) & real).sum()
        return torch.stack([loss.double(), real.sum().double(), correct.double()])

    def eval_metrics(self, sums):
        loss_sum, count, correct = (float(x) for x in sums)
        loss = loss_sum / max(count, 1.0)
        return {"loss": loss, "mlm_accuracy": correct / max(count, 1.0), "perplexity": math.exp(min(loss, 50.0))}

    def fingerprint(self):
        return self._fingerprint


def _masker_for(shards: MLMShards, options: PretrainOptions, tokenizer) -> Masker:
    settings = shards.manifest.get("settings", {})
    prob = options.masked_lm_prob if options.masked_lm_prob is not None else settings.get("masked_lm_prob", 0.15)
    most = options.max_predictions if options.max_predictions is not None else max(1, round(shards.max_seq_len * prob))
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
            f"{vocab_sha256(tokenizer)[:12]}...); remake it with make-mlm-data --model {options.model or '<the model>'}"
        )
    if shards.max_seq_len > max_positions:
        raise ConfigError(f"{shards.path}: sequences of up to {shards.max_seq_len} tokens, but the model has {max_positions} positions")
    if len(shards) == 0:
        raise DataError(f"{shards.path}: holds no sequences")
    if not training:
        return  # evaluation data may be masked or not: unmasked data is masked once, with a fixed seed
    if options.dynamic_masking and shards.masked:
        raise ConfigError(f"{flag} {shards.path}: already masked; --dynamic-masking needs data made with make-mlm-data --no-mask")
    if not options.dynamic_masking and not shards.masked:
        raise ConfigError(f"{flag} {shards.path}: made with --no-mask; pretrain it with --dynamic-masking")


def validate_options(options: PretrainOptions) -> None:
    if (options.model is None) == (options.config_name is None):
        raise ConfigError("give --model DIR|REPO to continue pretraining a checkpoint, or --config tiny|small|base to start from scratch (not both)")
    if options.config_name is None and options.vocab is not None:
        raise ConfigError("--vocab goes with --config (a fresh model); a --model brings its own vocab.txt")
    if options.eval_data is not None and options.eval_fraction is not None:
        raise ConfigError("give --eval-data or --eval-fraction, not both")
    if options.eval_fraction is not None and not 0 < options.eval_fraction < 1:
        raise ConfigError(f"--eval-fraction must be between 0 and 1, got {options.eval_fraction}")
    if not options.dynamic_masking and (options.masked_lm_prob is not None or options.max_predictions is not None):
        raise ConfigError("--masked-lm-prob and --max-predictions apply to --dynamic-masking; static data keeps its make-mlm-data masks")


def build_mlm_model(options: PretrainOptions, seed: int):
    """(model, tokenizer, freshly initialised parameter names) from --model or --config."""
    from sbert_cli.checkpoint import load_for_task, load_tokenizer, resolve_model_dir
    from sbert_cli.config import preset
    from sbert_cli.model import build_model
    from sbert_cli.resources import CHINESE_VOCAB
    from sbert_cli.tokenizer import BertTokenizer

    torch.manual_seed(seed)
    if options.config_name is not None:
        tokenizer = BertTokenizer.from_vocab(options.vocab or CHINESE_VOCAB)
        return build_model(preset(options.config_name, vocab_size=len(tokenizer)), "mlm"), tokenizer, ["all parameters (--config)"]
    model_dir = resolve_model_dir(options.model)
    loaded = load_for_task(model_dir, "mlm", allow_new_head=True)
    # The pooler is not used by the MLM objective (and is frozen here), so a missing one is not news.
    new_head = [name for name in loaded.initialized if not name.startswith("bert.pooler.")]
    return loaded.model, load_tokenizer(model_dir), new_head


def pretrain(options: PretrainOptions, config: TrainConfig, console=None, on_micro_batch=None) -> PretrainResult:
    """Masked-LM training; writes OUT/last (and OUT/best when evaluating) as sbert model dirs with the MLM head."""
    validate_options(options)
    config.validate()
    check_run_dir(Path(config.out_dir), config.resume, config.force)
    shards = MLMShards(options.data)
    eval_shards = MLMShards(options.eval_data) if options.eval_data is not None else None
    model, tokenizer, new_head = build_mlm_model(options, config.seed)
    # The MLM objective never reaches the pooler: freeze it, so no optimizer or DDP waits for its gradient.
    model.bert.pooler.requires_grad_(False)
    max_positions = model.config.max_position_embeddings
    _check_data(shards, options, tokenizer, max_positions, "--data")
    if eval_shards is not None:
        _check_data(eval_shards, options, tokenizer, max_positions, "--eval-data", training=False)
    dupes = shards.manifest.get("settings", {}).get("dupe_factor", 1)
    if options.eval_fraction is not None and dupes > 1:
        raise ConfigError(
            f"--eval-fraction: {options.data} holds {dupes} masked copies of each line, so held-out sequences would "
            "still be trained on; make separate evaluation data and pass --eval-data"
        )
    masker = _masker_for(shards, options, tokenizer) if options.dynamic_masking else None

    everything = np.arange(len(shards))
    train_indices, eval_source = everything, None
    if options.eval_fraction is not None:
        held_out = max(1, round(len(shards) * options.eval_fraction))
        if held_out >= len(shards):
            raise ConfigError(f"--eval-fraction {options.eval_fraction} leaves no training data ({len(shards)} sequences)")
        order = np.random.default_rng([config.seed, 7]).permutation(len(shards))
        train_indices, eval_indices = np.sort(order[held_out:]), np.sort(order[:held_out])
        eval_source = MLMSource(shards, eval_indices, masker, config.seed, EVAL_STREAM)
    elif eval_shards is not None:
        eval_masker = None if eval_shards.masked else masker or _masker_for(eval_shards, options, tokenizer)
        eval_source = MLMSource(eval_shards, np.arange(len(eval_shards)), eval_masker, config.seed, EVAL_STREAM)
    train_source = MLMSource(shards, train_indices, masker, config.seed, TRAIN_STREAM)

    manifest_digest = hashlib.sha256(json.dumps(shards.manifest, sort_keys=True).encode()).hexdigest()
    fingerprint = {"manifest_sha256": manifest_digest, "sequences": len(train_indices),
                   "dynamic_masking": options.dynamic_masking, "eval_fraction": options.eval_fraction,
                   "masking": None if masker is None else asdict(masker.config)}
    task = MLMTask(train_source, eval_source, tokenizer, fingerprint)

    env = DistributedEnv.from_env()
    if console is not None and env.is_main:
        held = f", {len(eval_source.lengths)} held out" if eval_source is not None else ""
        kind = "re-masked every epoch" if masker is not None else "static masks"
        console.print(f"data: {len(train_indices)} sequences{held} ({kind}), up to {shards.max_seq_len} tokens")
        if new_head and options.config_name is None:
            console.print(f"[yellow]note:[/] the checkpoint has no MLM head; initialised fresh: {', '.join(new_head)}")
    run_info = {"model": options.model, "config": options.config_name, "data": str(options.data),
                "eval_data": str(options.eval_data) if options.eval_data else None, "eval_fraction": options.eval_fraction,
                "dynamic_masking": options.dynamic_masking}
    result = train(model, task, config, console=console, run_info=run_info, on_micro_batch=on_micro_batch)
    out = Path(config.out_dir)
    model_dir = out / "best" if (out / "best").is_dir() else out / "last"
    return PretrainResult(result, None if result.interrupted else model_dir, new_head)
