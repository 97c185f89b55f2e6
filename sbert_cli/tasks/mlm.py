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
from typing import Iterable, Iterator, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sbert_cli.data.batching import length_sorted_batches, pad_batch
from sbert_cli.data.masking import Masker, MaskingConfig
from sbert_cli.data.shards import MLMShards, vocab_sha256
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.tasks.lr_rule import with_chosen_lr
from sbert_cli.train.distributed import DistributedEnv
from sbert_cli.train.loop import Batch, Callbacks, Task, TrainConfig, TrainResult, train
from sbert_cli.train.state import check_run_dir, kept_model_dir

IGNORE = -100  # label of a padded prediction: weight 0 in the loss
TRAIN_STREAM, EVAL_STREAM = 0, 1  # keep training and evaluation masks in separate random streams
# Evaluation masks of --no-mask data come from (EVAL_MASKING_SEED, EVAL_STREAM, sequence index), in pretrain's
# held-out evaluation and in `sbert eval` alike, so the two report the same figures on the same sequences.
EVAL_MASKING_SEED = 12345
TOP_K = 5


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
    config.validate()
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
        if new_head and options.config_name is None:
            callbacks.message(f"note: the checkpoint has no MLM head; initialised fresh: {', '.join(new_head)}")
        if tokenizer.case_note:
            callbacks.message(f"note: {tokenizer.case_note}")
        callbacks.message(lr_choice.describe())
    run_info = {"model": options.model, "config": options.config_name, "data": str(options.data),
                "eval_data": str(options.eval_data) if options.eval_data else None, "eval_fraction": options.eval_fraction,
                "dynamic_masking": options.dynamic_masking, "lr_choice": lr_choice.to_json()}
    result = train(model, task, config, callbacks, run_info=run_info, on_micro_batch=on_micro_batch, reads=reads)
    out = Path(config.out_dir)
    model_dir = kept_model_dir(out)
    return PretrainResult(result, None if result.interrupted else model_dir, new_head)



MASK_TOKEN = "[MASK]"


@dataclass
class Candidate:
    token: str
    score: float


@dataclass
class MaskPrediction:
    position: int  # token index in the encoded text, [CLS] being 0
    candidates: list[Candidate]


class _AsJson:
    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FillMaskResult(_AsJson):
    text: str
    masks: list[MaskPrediction]


@dataclass
class WordCandidate:
    word: str
    tokens: list[str]
    score: float  # product of the probabilities of each token when it was filled in


@dataclass
class SpanPrediction:
    positions: list[int]  # consecutive [MASK] token indices
    candidates: list[WordCandidate]


@dataclass
class JointFillResult(_AsJson):
    text: str
    spans: list[SpanPrediction]


FILL_MASK_CHUNK = 256  # texts encoded and predicted together when streaming: memory stays flat, output comes as it goes
BAD_TEXT_POLICIES = ("error", "skip")
# Logits of one forward pass (rows x masks x vocab), in elements: 2^25 float32 = 128 MB, whatever the batch size.
MAX_LOGITS_PER_PASS = 1 << 25


def iter_texts(
    texts: list[str], file: str | Path | None = None, stdin: TextIO | None = None
) -> Iterator[tuple[str, str]]:
    """fill-mask's input: text_input.iter_texts with a hint about [MASK]."""
    from sbert_cli.data.text_input import iter_texts as read

    return read(texts, file, stdin, what=f"texts with {MASK_TOKEN}")


def read_texts(
    texts: list[str], file: str | Path | None = None, stdin: TextIO | None = None
) -> tuple[list[str], list[str]]:
    """iter_texts as two lists: the texts, and where each came from."""
    items = list(iter_texts(texts, file, stdin))
    return [text for text, _ in items], [origin for _, origin in items]


def masked_topk(
    model: nn.Module,
    sequences: list[list[int]],
    positions: list[list[int]],
    k: int,
    pad_id: int,
    batch_size: int = 32,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each sequence, the k most probable tokens at its `positions`: (probabilities (M, k), token ids (M, k)).

    Sequences are batched by length; the MLM head runs only at the requested positions (masked_logits).
    """
    device = next(model.parameters()).device
    vocab_size = model.config.vocab_size
    k = min(k, vocab_size)
    results: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(sequences)  # type: ignore[list-item]
    batches = []
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        # Texts with many [MASK]s: fewer rows per pass, so the (rows, masks, vocab) logits stay within bounds.
        rows = max(1, MAX_LOGITS_PER_PASS // (max(1, max(len(positions[i]) for i in batch)) * vocab_size))
        batches.extend(batch[start : start + rows] for start in range(0, len(batch), rows))
    with torch.inference_mode():
        for batch in batches:
            input_ids, attention_mask = pad_batch([sequences[i] for i in batch], pad_id)
            # Rows with fewer masks repeat position 0 ([CLS]); those predictions are dropped below.
            masked_positions, _ = pad_batch([positions[i] for i in batch], 0)
            logits = masked_logits(model, input_ids.to(device), attention_mask.to(device), masked_positions.to(device))
            probabilities = logits.float().softmax(dim=-1)  # (b, M, V)
            values, token_ids = probabilities.topk(k, dim=-1)  # (b, M, k)
            for row, i in enumerate(batch):
                count = len(positions[i])
                results[i] = (values[row, :count].cpu(), token_ids[row, :count].cpu())
    return results


def check_fill_options(top_k: int, joint: bool, vocab_size: int, batch_size: int = 32) -> None:
    """--top-k within the vocab (with --joint also within MAX_JOINT_TOP_K) and --batch-size within MAX_BATCH_SIZE."""
    from sbert_cli.limits import BATCH_SIZE_WHY, JOINT_TOP_K_WHY, MAX_BATCH_SIZE, MAX_JOINT_TOP_K, check_range

    if top_k < 1:
        raise ConfigError(f"`top_k` must be at least 1, not {top_k}")
    if joint:
        check_range("top_k", top_k, 1, MAX_JOINT_TOP_K, f"with `joint`: {JOINT_TOP_K_WHY}")
    check_range("top_k", top_k, 1, vocab_size, f"the vocab has {vocab_size:,} tokens")
    check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE, BATCH_SIZE_WHY)


def _encode_masked(
    model: nn.Module, tokenizer: BertTokenizer, texts: list[str], origins: list[str] | None, top_k: int,
    joint: bool = False,
) -> list[list[int]]:
    """Token ids of each text, checking top_k and that each text has a [MASK] and fits the model."""
    check_fill_options(top_k, joint, model.config.vocab_size)
    origins = _default_origins(texts, origins)
    max_length = model.config.max_position_embeddings
    return [_fit(ids, text, origin, tokenizer, max_length) for ids, text, origin in zip(tokenizer.encode(texts), texts, origins)]


def _fit(ids: list[int], text: str, origin: str, tokenizer: BertTokenizer, max_length: int, truncate: bool = False) -> list[int]:
    """The ids the model reads, or a DataError naming the text: it has no [MASK], or more tokens than the model
    has positions (with truncate: it is cut to fit, and an error only when that cuts off every [MASK])."""
    if len(ids) > max_length and truncate:
        ids = ids[: max_length - 1] + [tokenizer.sep_id]
        if tokenizer.mask_id not in ids:
            raise DataError(f"{origin}: no {MASK_TOKEN} in the first {max_length} tokens, where `truncate` cuts the "
                            f"text for the model's {max_length} positions; shorten it before the {MASK_TOKEN}")
    if tokenizer.mask_id not in ids:
        raise _no_mask_error(origin, text)
    if len(ids) > max_length:
        raise DataError(f"{origin}: {len(ids)} tokens, more than the model's {max_length} positions; shorten the "
                        "text, or pass `truncate` (or `on_bad_lines` skip)")
    return ids


def _no_mask_error(origin: str, text: str) -> DataError:
    shown = text if len(text) <= 80 else text[:80] + "..."
    return DataError(f"{origin}: no {MASK_TOKEN} in {shown!r}; write {MASK_TOKEN} where a token should be predicted")


def _default_origins(texts: list[str], origins: list[str] | None) -> list[str]:
    return origins if origins is not None else [f"text {i}" for i in range(1, len(texts) + 1)]


def fill_mask(
    model: nn.Module,
    tokenizer: BertTokenizer,
    texts: list[str],
    top_k: int = 5,
    origins: list[str] | None = None,
    batch_size: int = 32,
    joint: bool = False,
) -> list[FillMaskResult] | list[JointFillResult]:
    """The top_k tokens, with probabilities, at every [MASK] of every text, each mask predicted independently;
    joint=True: the top_k whole words for every run of consecutive [MASK]s, decoded jointly (_fill_joint)."""
    sequences = _encode_masked(model, tokenizer, texts, origins, top_k, joint)
    return (_fill_joint if joint else _fill_plain)(model, tokenizer, texts, sequences, top_k, batch_size)


def fill_mask_joint(model: nn.Module, tokenizer: BertTokenizer, texts: list[str], **options) -> list[JointFillResult]:
    """fill_mask(..., joint=True)."""
    return fill_mask(model, tokenizer, texts, joint=True, **options)


def _fill_plain(model, tokenizer, texts: list[str], sequences: list[list[int]], top_k: int, batch_size: int) -> list[FillMaskResult]:
    positions = [[p for p, t in enumerate(ids) if t == tokenizer.mask_id] for ids in sequences]
    predictions = masked_topk(model, sequences, positions, top_k, tokenizer.pad_id, batch_size)
    results = []
    for text, mask_positions, (values, token_ids) in zip(texts, positions, predictions):
        masks = [
            MaskPrediction(
                position,
                [Candidate(token, score) for token, score in zip(tokenizer.convert_ids_to_tokens(ids), scores.tolist())],
            )
            for position, scores, ids in zip(mask_positions, values, token_ids)
        ]
        results.append(FillMaskResult(text, masks))
    return results


def mask_spans(ids: list[int], mask_id: int) -> list[list[int]]:
    """Runs of consecutive [MASK] positions: [[3, 4], [9]] for two masks at 3-4 and one at 9."""
    spans: list[list[int]] = []
    for position, token in enumerate(ids):
        if token != mask_id:
            continue
        if spans and spans[-1][-1] == position - 1:
            spans[-1].append(position)
        else:
            spans.append([position])
    return spans


def join_wordpieces(tokens: list[str]) -> str:
    """Tokens as one word: Chinese characters and ##-continuations joined directly, other tokens by a space."""
    word = ""
    for token in tokens:
        if token.startswith("##"):
            word += token[2:]
        elif word and not (_is_cjk(word[-1]) or _is_cjk(token[0])):
            word += " " + token
        else:
            word += token
    return word


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F


JOINT_BEAM_WIDTH = 8  # partial words kept per step (at least top_k): a wider beam finds better words


@dataclass
class _Beam:
    ids: list[int]
    remaining: list[int]  # positions of the span still masked
    log_score: float = 0.0


@dataclass
class _SpanSearch:
    text_index: int
    positions: list[int]
    beams: list[_Beam] = field(default_factory=list)


def _fill_joint(model, tokenizer, texts: list[str], sequences: list[list[int]], top_k: int, batch_size: int) -> list[JointFillResult]:
    """The top_k whole words for every run of consecutive [MASK]s, decoded jointly.

    Each run is filled one token at a time, most confident position first, re-running the model after
    every step; a beam of max(top_k, JOINT_BEAM_WIDTH) partial fillings is kept, and a word's score is
    the product of the probabilities of its tokens at the step each was filled. Other [MASK] runs stay
    masked meanwhile. A single [MASK] gets the same candidates and scores as fill_mask.
    """
    width = max(top_k, JOINT_BEAM_WIDTH)
    searches = [
        _SpanSearch(index, span, [_Beam(list(ids), list(span))])
        for index, ids in enumerate(sequences)
        for span in mask_spans(ids, tokenizer.mask_id)
    ]
    while True:
        active = [(index, beam) for index, search in enumerate(searches) for beam in search.beams if beam.remaining]
        if not active:
            break
        predictions = masked_topk(
            model, [beam.ids for _, beam in active], [beam.remaining for _, beam in active], width,
            tokenizer.pad_id, batch_size,
        )
        children: dict[int, dict[tuple[int, ...], _Beam]] = {}
        for (index, beam), (values, token_ids) in zip(active, predictions):
            best = int(values[:, 0].argmax())  # the position the model is surest about
            position = beam.remaining[best]
            for probability, token_id in zip(values[best].tolist(), token_ids[best].tolist()):
                ids = list(beam.ids)
                ids[position] = token_id
                child = _Beam(ids, [p for p in beam.remaining if p != position],
                              beam.log_score + math.log(max(probability, 1e-45)))
                # The same filling reached in another order counts once, with its best score.
                known = children.setdefault(index, {}).get(tuple(ids))
                if known is None or child.log_score > known.log_score:
                    children[index][tuple(ids)] = child
        for index, found in children.items():
            searches[index].beams = sorted(found.values(), key=lambda b: -b.log_score)[:width]

    results = [JointFillResult(text, []) for text in texts]
    for search in searches:
        candidates = []
        for beam in search.beams[:top_k]:
            tokens = tokenizer.convert_ids_to_tokens([beam.ids[p] for p in search.positions])
            candidates.append(WordCandidate(join_wordpieces(tokens), tokens, math.exp(beam.log_score)))
        results[search.text_index].spans.append(SpanPrediction(search.positions, candidates))
    return results


def run_fill_mask(
    model: str | Path,
    texts: list[str],
    top_k: int = 5,
    joint: bool = False,
    origins: list[str] | None = None,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
) -> list[FillMaskResult] | list[JointFillResult]:
    """Load a model with an MLM head (model dir or hub repo id) and fill the masks of `texts`."""
    if not texts:
        raise DataError(f"no text to fill; give TEXT arguments, `file`, or pipe lines on stdin, each with {MASK_TOKEN}")
    origins = _default_origins(texts, origins)
    for text, origin in zip(texts, origins):  # fail on a text without [MASK] before loading the weights
        if MASK_TOKEN not in text:
            raise _no_mask_error(origin, text)
    return list(stream_fill_mask(model, zip(texts, origins), top_k=top_k, joint=joint, batch_size=batch_size,
                                 device=device, precision=precision))


@dataclass
class SkippedTexts:
    """Texts fill-mask skipped (on_bad_lines="skip"): how many, and the first few with their reason."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(reason)


def stream_fill_mask(
    model: str | Path,
    items: Iterable[tuple[str, str]],
    top_k: int = 5,
    joint: bool = False,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    truncate: bool = False,
    on_bad_lines: str = "error",
    skipped: SkippedTexts | None = None,
    chunk_size: int = FILL_MASK_CHUNK,
) -> Iterator[FillMaskResult | JointFillResult]:
    """Load a model with an MLM head and fill the masks of (text, origin) items (see iter_texts), a chunk of
    texts at a time: results come in input order as they are computed, and memory does not grow with the input.

    A bad text (no [MASK]; more tokens than the model's positions, unless truncate cuts it to fit) is a DataError
    raised after the results of the texts before it, or with on_bad_lines="skip" it is skipped and counted in
    `skipped`. The options are checked before the weights load.
    """
    from sbert_cli.model.model_dir import load_for_task, load_tokenizer
    from sbert_cli.tasks.inference import prepare_inference

    if on_bad_lines not in BAD_TEXT_POLICIES:
        raise ConfigError(f"`on_bad_lines` must be one of {', '.join(BAD_TEXT_POLICIES)}, not {on_bad_lines!r}")
    tokenizer = load_tokenizer(model)
    check_fill_options(top_k, joint, len(tokenizer), batch_size)
    net = load_for_task(model, "mlm").model
    torch_device, resolved = prepare_inference(net, device, precision)
    return _stream(net, tokenizer, iter(items), top_k, joint, batch_size, torch_device, resolved, truncate,
                   on_bad_lines, skipped, chunk_size)


def _stream(net, tokenizer, items, top_k, joint, batch_size, device, precision, truncate, on_bad_lines, skipped,
            chunk_size):
    from itertools import islice

    from sbert_cli.model.precision import inference_autocast

    fill = _fill_joint if joint else _fill_plain
    max_length = net.config.max_position_embeddings
    while chunk := list(islice(items, chunk_size)):
        texts, sequences, error = [], [], None
        for (text, origin), ids in zip(chunk, tokenizer.encode([text for text, _ in chunk])):
            try:
                sequences.append(_fit(ids, text, origin, tokenizer, max_length, truncate))
                texts.append(text)
            except DataError as e:
                if on_bad_lines == "error":
                    error = e  # raised after the results of the texts before it
                    break
                if skipped is not None:
                    skipped.add(str(e).split("; ")[0])  # what was wrong; the advice is for the error case
        if texts:
            with inference_autocast(precision, device):
                results = fill(net, tokenizer, texts, sequences, top_k, batch_size)
            yield from results
        if error is not None:
            raise error


# Everyday sentences; every character is in the Chinese BERT vocab (tests check it).
PROBE_SENTENCES = (
    "今天天气很好，我们去公园散步吧。",
    "中国的首都是北京。",
    "我每天早上七点起床。",
    "他在大学里学习计算机科学。",
    "这家饭店的菜非常好吃。",
    "妈妈正在厨房里做饭。",
    "明天我要坐火车去上海。",
    "学生们在教室里认真听课。",
    "我们应该保护环境，节约用水。",
    "这本书的内容很有意思。",
    "周末我喜欢和朋友一起看电影。",
    "医生说他需要多休息。",
    "春天来了，花都开了。",
    "请问火车站怎么走？",
    "经济发展离不开科技创新。",
    "孩子们在操场上踢足球。",
    "我的手机没有电了。",
    "这个城市的交通非常方便。",
    "他每天晚上都要看新闻。",
    "长城是世界上最伟大的建筑之一。",
)
# Verdicts: "untrained" when the masked character is among the head's top CHANCE_TOP_K no more often than chance
# (a uniform guess over the vocab: binomial tail probability above CHANCE_P_VALUE); "trained" from TRAINED_ACCURACY
# top-1 (a trained Chinese BERT restores well over half of these characters); "weak" between the two. The top 100,
# not the top 5, decides "untrained": the demo's tiny BERT (held-out top-1 7% on news titles) puts only 3 of the 207
# characters of these everyday sentences in its top 5 — right at what chance allows — but far more in its top 100.
# The unigram guesser (the most frequent characters of the bundled THUCNews titles, whatever the context) is shown
# beside them: a head that does no better has learned little but word frequencies.
# Beating a uniform guess is not enough, though: a fresh head over a pretrained encoder decodes through the trained
# word embeddings (tied weights), so it is not uniform. Measured on m3e-small's fresh heads: 1.0% and 3.4% top-100
# (seeds 42 and 2; the second beats uniform chance at p < 1e-3), against 19.8% after a single training step, 29% for
# the demo's tiny BERT and 42.5% for m3e after 268 steps. So a head also needs UNTRAINED_TOP100 in its top 100.
TRAINED_ACCURACY = 0.2
CHANCE_P_VALUE = 1e-3
CHANCE_TOP_K = 100
UNTRAINED_TOP100 = 0.10
PROBE_STRIDE = 5  # every 5th character masked per copy: 20% masked, close to pretraining's 15%


@dataclass
class ProbeResult:
    """How well an MLM head restores masked characters of everyday sentences, beside chance and a unigram guesser."""

    accuracy: float  # top-1
    top5_accuracy: float
    top100_accuracy: float  # what the untrained verdict is read from
    predictions: int
    chance: float  # top-1 of a uniform guess over the vocab; top-5 is 5x this
    unigram_accuracy: float  # always guessing the most frequent characters: top-1
    unigram_top5_accuracy: float
    verdict: str  # "untrained", "weak" or "trained"
    threshold: float = TRAINED_ACCURACY  # top-1 from which a head counts as trained

    @property
    def looks_untrained(self) -> bool:
        return self.verdict == "untrained"

    def describe(self) -> str:
        """The verdict in words: "untrained", "weak (top-5 12.1%)" or "trained"."""
        return f"weak (top-5 {self.top5_accuracy:.1%})" if self.verdict == "weak" else self.verdict


def probe_verdict(top1_hits: int, top100_hits: int, predictions: int, vocab_size: int,
                  threshold: float = TRAINED_ACCURACY) -> str:
    """untrained (top-100 hits no more than chance gives, or under UNTRAINED_TOP100), weak, or trained (top-1 at
    least `threshold`)."""
    if _binomial_tail(top100_hits, predictions, min(1.0, CHANCE_TOP_K / vocab_size)) > CHANCE_P_VALUE:
        return "untrained"
    if top100_hits < UNTRAINED_TOP100 * predictions:
        return "untrained"
    return "trained" if top1_hits >= threshold * predictions else "weak"


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return max(0.0, 1.0 - sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k)))


def unigram_guesses(tokenizer: BertTokenizer, k: int = 5) -> list[int]:
    """Ids of the k most frequent Chinese characters of the bundled THUCNews titles (in the vocab), most frequent first."""
    from collections import Counter

    from sbert_cli.resources import THUCNEWS_TRAIN

    text = THUCNEWS_TRAIN.read_text(encoding="utf-8")
    counts = Counter(c for c in text if _is_cjk(c) and c in tokenizer.vocab)
    return [tokenizer.vocab[c] for c, _ in counts.most_common(k)]


def probe_mlm_head(
    model: nn.Module,
    tokenizer: BertTokenizer,
    sentences: tuple[str, ...] | list[str] = PROBE_SENTENCES,
    threshold: float = TRAINED_ACCURACY,
    batch_size: int = 32,
) -> ProbeResult:
    """Mask every Chinese character of each sentence (every 5th per copy) and count how often the head restores it."""
    sequences, positions, targets = [], [], []
    for ids in tokenizer.encode(list(sentences)):
        tokens = tokenizer.convert_ids_to_tokens(ids)
        maskable = [p for p, token in enumerate(tokens) if len(token) == 1 and _is_cjk(token)]
        for offset in range(PROBE_STRIDE):
            chosen = maskable[offset::PROBE_STRIDE]
            if not chosen:
                continue
            masked = list(ids)
            for p in chosen:
                masked[p] = tokenizer.mask_id
            sequences.append(masked)
            positions.append(chosen)
            targets.append([ids[p] for p in chosen])
    if not sequences:
        raise DataError("the probe sentences contain no Chinese characters to mask")
    predictions = masked_topk(model, sequences, positions, CHANCE_TOP_K, tokenizer.pad_id, batch_size)
    top1 = top5 = top100 = total = 0
    for (_, token_ids), expected in zip(predictions, targets):
        expected_ids = torch.tensor(expected)[:, None]  # (M, 1)
        top1 += int((token_ids[:, :1] == expected_ids).sum())
        top5 += int((token_ids[:, :5] == expected_ids).any(dim=1).sum())
        top100 += int((token_ids == expected_ids).any(dim=1).sum())
        total += len(expected)
    every_target = [t for expected in targets for t in expected]
    unigram = unigram_guesses(tokenizer)
    vocab_size = model.config.vocab_size
    return ProbeResult(
        accuracy=top1 / total, top5_accuracy=top5 / total, top100_accuracy=top100 / total, predictions=total, chance=1 / vocab_size,
        unigram_accuracy=sum(t == unigram[0] for t in every_target) / total,
        unigram_top5_accuracy=sum(t in unigram for t in every_target) / total,
        verdict=probe_verdict(top1, top100, total, vocab_size, threshold), threshold=threshold,
    )
