"""train-cls: fine-tune (or train from scratch) a BERT sequence classifier on the generic training loop.

In it: ClassifierResult, train_classifier (the command's library call: read the splits, build
the model, train, report dev and test with `sbert eval`'s evaluate), validate_options, resolve_files, read_splits;
EncodedSplit, encode_split, collate and ClassificationTask (the loop's adapter; its dev metrics come from the
confusion matrix through cls_metrics, as eval's do); METRICS. ClassifierOptions (the command's settings) is in
options.py; prediction is in cls_predict.py.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sbert_cli.data.batching import pad_batch
from sbert_cli.data.classification import (
    ClassificationData,
    read_classification_file,
    read_label_names,
)
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.model.config import CLASSIFIER_POOLINGS
from sbert_cli.tasks.cls_metrics import metrics_from_confusion
from sbert_cli.tasks.evaluate import ClassificationEvaluation, evaluate_kept_model
from sbert_cli.tasks.inference import KnownOutputs
from sbert_cli.tasks.lr_rule import start_notes, with_chosen_lr
from sbert_cli.tasks.options import ClassifierOptions, with_default_model
from sbert_cli.train.distributed import DistributedEnv
from sbert_cli.train.loop import train
from sbert_cli.train.state import check_run_dir
from sbert_cli.train.types import Batch, Callbacks, Task, TrainConfig, TrainResult

METRICS = ("accuracy", "macro_f1")


@dataclass
class EncodedSplit:
    """A classification file tokenized once: ids (and segment ids for pairs) per example."""

    data: ClassificationData
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    lengths: np.ndarray


@dataclass
class ClassifierResult:
    train: TrainResult
    label_names: list[str]
    model_dir: Path | None  # OUT/best when there was a dev set, else OUT/last
    reports: dict[str, ClassificationEvaluation] = field(default_factory=dict)  # "dev"/"test": sbert eval's result
    new_head: list[str] = field(default_factory=list)  # parameters initialised fresh


def resolve_files(options: ClassifierOptions) -> tuple[Path, Path | None, Path | None, Path | None]:
    """(train, dev, test, labels) from --train/--dev/--test/--labels, falling back to --data-dir's train.txt, dev.txt, test.txt, class.txt."""
    data_dir = options.data_dir
    explicit = options.train_file is not None

    def pick(given: Path | None, name: str) -> Path | None:
        if given is not None:
            if Path(given).is_dir():
                raise DataError(f"{given}: is a folder; give a file (TSV, CSV or JSONL), or a folder holding {name} "
                                "as `data_dir`")
            if not Path(given).exists():  # a FIFO or device is read too (the reader bounds it)
                raise DataError(f"{given}: no such file")
            return Path(given)
        if data_dir is not None and not explicit and (Path(data_dir) / name).is_file():
            return Path(data_dir) / name
        return None

    if not explicit:
        if data_dir is None or not Path(data_dir).is_dir():
            raise DataError(f"`data_dir` {data_dir}: no such folder; give `data_dir` DIR (with train.txt, dev.txt) or `train_file` FILE")
        if not (Path(data_dir) / "train.txt").is_file():
            raise DataError(f"{data_dir}: no train.txt; put train.txt (text<TAB>label) there or give `train_file` FILE")
    train_path = pick(options.train_file, "train.txt")
    return train_path, pick(options.dev_file, "dev.txt"), pick(options.test_file, "test.txt"), pick(options.labels_file, "class.txt")


def read_splits(options: ClassifierOptions) -> dict[str, ClassificationData]:
    """The train split and, when present, dev and test, with labels checked against train (or class.txt)."""
    train_path, dev_path, test_path, labels_path = resolve_files(options)
    names = read_label_names(labels_path) if labels_path else None
    source = str(labels_path) if labels_path else f"the training labels of {train_path}"
    splits = {"train": read_classification_file(train_path, names, allow_new_labels=names is None, label_source=source)}
    names = splits["train"].label_names
    if len(names) < 2:
        raise DataError(f"{train_path}: only one label ({names[0]!r}); a classifier needs at least two")
    for split, path in (("dev", dev_path), ("test", test_path)):
        if path is not None:
            data = read_classification_file(path, names, allow_new_labels=False, label_source=source)
            if (data.pairs is None) != (splits["train"].pairs is None):
                raise DataError(f"{path}: {'has' if data.pairs is not None else 'lacks'} a second text column, unlike {train_path}")
            splits[split] = data
    return splits


def encode_split(data: ClassificationData, tokenizer, max_seq_len: int) -> EncodedSplit:
    input_ids, token_type_ids = tokenizer.encode_with_types(data.texts, data.pairs, max_seq_len)
    return EncodedSplit(data, input_ids, token_type_ids, np.array([len(ids) for ids in input_ids], dtype=np.int64))


def collate(split: EncodedSplit, indices: list[int], pad_id: int, with_labels: bool = True) -> Batch:
    input_ids, attention_mask = pad_batch([split.input_ids[i] for i in indices], pad_id)
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask}
    if split.token_type_ids is not None:
        tensors["token_type_ids"] = pad_batch([split.token_type_ids[i] for i in indices], 0)[0]
    if with_labels and split.data.labels is not None:
        tensors["labels"] = torch.tensor([split.data.labels[i] for i in indices], dtype=torch.long)
    return Batch(tensors, len(indices), int(split.lengths[indices].sum()))


def _logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    inputs = {k: v for k, v in batch.tensors.items() if k not in ("labels", "index")}
    return model(**inputs)


class ClassificationTask(Task):
    model_task = "cls"
    eval_data_fields = "dev data (`dev_file`)"

    def __init__(self, train: EncodedSplit, dev: EncodedSplit | None, tokenizer, metric: str, max_seq_len: int,
                 label_smoothing: float = 0.0, keep_outputs: bool = False):
        self.train, self.dev, self.tokenizer = train, dev, tokenizer
        # keep_outputs (one process): the best evaluation's dev probabilities, for the closing report (kept_outputs)
        self.keep_outputs, self.kept_outputs = keep_outputs, None
        self._outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._eval_started: float | None = None
        self.label_smoothing = label_smoothing
        self.best_metric = metric if dev is not None else "loss"
        self.label_names = train.data.label_names
        self.num_labels = len(self.label_names)
        self.max_seq_len = max_seq_len

    def train_lengths(self):
        return self.train.lengths

    def train_batch(self, indices, epoch):
        return collate(self.train, indices, self.tokenizer.pad_id)

    def loss_sum(self, model, batch):
        return F.cross_entropy(_logits(model, batch).float(), batch.tensors["labels"], reduction="sum",
                               label_smoothing=self.label_smoothing)

    def eval_lengths(self):
        return self.dev.lengths if self.dev is not None else None

    def eval_batch(self, indices):
        batch = collate(self.dev, indices, self.tokenizer.pad_id)
        if self.keep_outputs:
            batch.tensors["index"] = torch.tensor(indices, dtype=torch.long)
        return batch

    def eval_sums(self, model, batch):
        logits = _logits(model, batch).float()
        labels = batch.tensors["labels"]
        if self.keep_outputs:
            if self._eval_started is None:
                self._eval_started = time.perf_counter()
            self._outputs.append((batch.tensors["index"], torch.softmax(logits, dim=-1)))  # as cls_predict computes them
        loss = F.cross_entropy(logits, labels, reduction="sum")
        confusion = torch.zeros(self.num_labels * self.num_labels, dtype=torch.float64, device=logits.device)
        confusion.index_add_(0, labels * self.num_labels + logits.argmax(-1), torch.ones_like(labels, dtype=torch.float64))
        return torch.cat([loss.double().view(1), torch.tensor([len(labels)], dtype=torch.float64, device=logits.device), confusion])

    def eval_metrics(self, sums):
        metrics = metrics_from_confusion(sums[2:].view(self.num_labels, self.num_labels).numpy(), self.label_names)
        return {"loss": float(sums[0] / max(float(sums[1]), 1.0)), "accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1}

    def evaluated(self, improved):
        if self.keep_outputs and improved and self._outputs:
            indices = torch.cat([index for index, _ in self._outputs]).cpu().numpy()
            probabilities = np.empty((len(self.dev.lengths), self.num_labels), dtype=np.float32)
            probabilities[indices] = torch.cat([p for _, p in self._outputs]).cpu().numpy()
            self.kept_outputs = KnownOutputs(probabilities, int(self.dev.lengths.sum()),
                                             time.perf_counter() - self._eval_started)
        self._outputs, self._eval_started = [], None

    def fingerprint(self):
        digest = hashlib.sha256()
        for ids, label in zip(self.train.input_ids, self.train.data.labels):
            digest.update(np.asarray(ids + [-1, label], dtype=np.int64).tobytes())
        return {"train_examples": len(self.train.lengths), "train_sha256": digest.hexdigest(),
                "labels": list(self.label_names), "max_seq_len": self.max_seq_len}

    def soft_settings(self):
        return {"label_smoothing": self.label_smoothing}

    def save_meta(self):
        return {"max_seq_len": self.max_seq_len}  # sbert eval/predict truncate as training did


def validate_options(options: ClassifierOptions) -> None:
    if options.metric not in METRICS:
        raise ConfigError(f"`metric` {options.metric!r}: use one of {', '.join(METRICS)}")
    if options.max_seq_len < 2:
        raise ConfigError(f"`max_seq_len` must be at least 2 (for [CLS] and [SEP]), got {options.max_seq_len}")
    if options.config_name is None and options.vocab is not None:
        raise ConfigError("`vocab` goes with `config_name` (a fresh model); a `model` brings its own vocab.txt")
    if options.pooling is not None and options.pooling not in CLASSIFIER_POOLINGS:
        raise ConfigError(f"`pooling` {options.pooling!r}: use one of {', '.join(CLASSIFIER_POOLINGS)}")
    if not 0.0 <= options.label_smoothing < 1.0:
        raise ConfigError(f"`label_smoothing` must be at least 0 and below 1, got {options.label_smoothing}")


def train_classifier(options: ClassifierOptions, config: TrainConfig, callbacks: Callbacks | None = None, on_micro_batch=None) -> ClassifierResult:
    """Read the splits, build the model, train on the generic loop, and report dev (and test) on the kept model."""
    from sbert_cli.model.model_dir import build_or_load, freeze_unused_pooler

    options = with_default_model(options)
    validate_options(options)
    reads = (options.model,) if options.config_name is None and options.model and Path(options.model).is_dir() else ()
    check_run_dir(Path(config.out_dir), config.resume, config.force, reads)
    splits = read_splits(options)
    label_names = splits["train"].label_names
    model, tokenizer, new_head = build_or_load("cls", model=options.model, config_name=options.config_name,
                                               vocab=options.vocab, seed=config.seed, labels=label_names)
    if options.pooling is not None:
        model.config.classifier_pooling = options.pooling  # saved in config.json, so the model reloads the same
    if model.config.classifier_pooling != "pooler":
        new_head = freeze_unused_pooler(model, new_head)
    config, lr_choice = with_chosen_lr(config, "cls", model.config.hidden_size, options.config_name is not None, new_head)
    max_positions = model.config.max_position_embeddings
    if options.max_seq_len > max_positions:
        raise ConfigError(f"`max_seq_len` {options.max_seq_len} exceeds the model's {max_positions} positions")
    encoded = {name: encode_split(data, tokenizer, options.max_seq_len) for name, data in splits.items()}
    env = DistributedEnv.from_env()
    task = ClassificationTask(encoded["train"], encoded.get("dev"), tokenizer, options.metric, options.max_seq_len,
                              options.label_smoothing, keep_outputs=env.world_size == 1)
    if callbacks is not None and env.is_main:
        sizes = ", ".join(f"{name} {len(data)}" for name, data in splits.items())
        callbacks.message(f"data: {sizes} examples; {len(label_names)} labels: {', '.join(label_names)}")
        for note in splits["train"].notes:  # integer labels without names (data/classification.py)
            callbacks.message(f"note: {note}")
        for line in start_notes(new_head, "new classification head, initialised fresh", options.config_name is not None,
                                tokenizer.case_note):
            callbacks.message(line)
        callbacks.message(lr_choice.describe())
    run_info = {"model": options.model if options.config_name is None else None, "config": options.config_name,
                "data": {name: str(data.path) for name, data in splits.items()}, "labels": label_names,
                "max_seq_len": options.max_seq_len, "metric": options.metric, "pooling": model.config.classifier_pooling,
                "label_smoothing": options.label_smoothing, "lr_choice": lr_choice.to_json()}
    result = train(model, task, config, callbacks, run_info=run_info, on_micro_batch=on_micro_batch)
    out = ClassifierResult(result, label_names, None, new_head=new_head)
    if env.is_main and not result.interrupted:
        out.model_dir, out.reports = evaluate_kept_model(splits, "cls", config, result, {"dev": task.kept_outputs})
    return out
