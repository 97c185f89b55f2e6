"""train-ner: fine-tune (or train from scratch) a BERT tagger, with an optional CRF, on the generic training loop.

- `validate_options`, `train_tagger` (read the files, build the model, train, report dev and test as
  `sbert eval` does), `NerResult`; `read_splits` and `describe_data` (the run's first lines: scheme, sizes, types).
- `encode_split`: a file's sentences as windows of at most max_seq_len ids (data.ner.encode_windows; long
  sentences are split, never truncated), each word's BIOES tag on its first sub-token; `collate` pads windows
  with their word positions and tags; `tagging_loss` is the loss of a batch of them.
- `TaggingTask`: the loop's Task. Training items are windows; the loss is the cross-entropy of each word's
  first sub-token (or the CRF's negative log-likelihood of the window's tag path), summed, per word. Dev items
  are whole sentences, decoded exactly as `sbert predict` does (ner_predict.decode_words on merged windows);
  the kept model (OUT/best) is the one with the best entity F1 (micro, exact spans).
- The CRF's own rate: `crf_lr_scale` times the peak lr (bert4torch's practice: transitions start at zero and
  need large steps to matter within a fine-tuning run's few epochs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sbert_cli.data.batching import pad_batch
from sbert_cli.errors import ConfigError
from sbert_cli.tasks.lr_rule import start_notes, with_chosen_lr
from sbert_cli.tasks.ner_metrics import entity_counts, scores_from_counts
from sbert_cli.tasks.ner_predict import constraints_for, decode_words, sentence_scores
from sbert_cli.tasks.options import NerOptions, with_default_model
from sbert_cli.train.distributed import DistributedEnv
from sbert_cli.train.loop import train, unwrap
from sbert_cli.train.state import check_run_dir
from sbert_cli.train.types import Batch, Callbacks, Task, TrainConfig, TrainResult

if TYPE_CHECKING:
    from sbert_cli.data.ner import NerData, Window



@dataclass
class EncodedSplit:
    """A tagging file tokenized once: its sentences' words and windows, and each window's word tags."""

    data: NerData
    offsets: list[list[tuple[int, int]]]  # per sentence: its words' character offsets
    windows: list[list[Window]]  # per sentence
    items: list[tuple[int, int]]  # (sentence, window) of each training item: sentences with words only
    tags: list[list[int]]  # per sentence: the BIOES tag id of each word
    snapped: int  # entity edges moved to a word edge (inside a word), or entities dropped

    def item_lengths(self) -> np.ndarray:
        return np.array([len(self.windows[s][w].input_ids) for s, w in self.items], dtype=np.int64)

    def sentence_lengths(self) -> np.ndarray:
        return np.array([sum(len(w.input_ids) for w in ws) for ws in self.windows], dtype=np.int64)


@dataclass
class NerResult:
    train: TrainResult
    labels: list[str]  # entity types
    tag_names: list[str]
    scheme: str  # the training file's
    model_dir: Path | None  # OUT/best when there was a dev set, else OUT/last
    reports: dict = field(default_factory=dict)  # "dev"/"test": sbert eval's result
    new_head: list[str] = field(default_factory=list)


def encode_split(data: NerData, tokenizer, tag_names: list[str], max_seq_len: int) -> EncodedSplit:
    from sbert_cli.data.ner import encode_windows, word_offsets, word_tags

    index = {name: i for i, name in enumerate(tag_names)}
    offsets, windows, items, tags, snapped = [], [], [], [], 0
    for s, example in enumerate(data.examples):
        words = word_offsets(tokenizer, example.text)
        names, moved = word_tags(words, example.spans)
        offsets.append(words)
        windows.append(encode_windows(tokenizer, example.text, words, max_seq_len))
        tags.append([index[name] for name in names])
        snapped += moved
        if words:
            items.extend((s, w) for w in range(len(windows[-1])))
    return EncodedSplit(data, offsets, windows, items, tags, snapped)


def collate(split: EncodedSplit, items: list[tuple[int, int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Windows with their word positions, word mask and gold tags, padded."""
    windows = [split.windows[s][w] for s, w in items]
    input_ids, attention_mask = pad_batch([w.input_ids for w in windows], pad_id)
    word_positions, word_mask = pad_batch([w.first_subtoken for w in windows], 0)
    tags = pad_batch([[split.tags[s][i] for i in split.windows[s][w].words] for s, w in items], 0)[0]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "word_positions": word_positions,
            "word_mask": word_mask.bool(), "tags": tags}


def tagging_loss(model: nn.Module, tensors: dict[str, torch.Tensor], scores: torch.Tensor | None = None) -> torch.Tensor:
    """The summed loss of the windows' words: cross-entropy per word, or the CRF's negative log-likelihood.
    scores: the words' tag scores (B, W, L) when already computed, else the model is run for them."""
    from sbert_cli.tasks.crf import nll

    if scores is None:
        scores = model(tensors["input_ids"], tensors["attention_mask"], word_positions=tensors["word_positions"])
    scores, mask, tags = scores.float(), tensors["word_mask"], tensors["tags"]
    crf = unwrap(model).crf
    if crf is None:
        return F.cross_entropy(scores[mask], tags[mask], reduction="sum")
    return nll(scores, mask, tags, crf.transitions, crf.start_scores, crf.end_scores)


class TaggingTask(Task):
    model_task = "ner"
    eval_data_fields = "dev data (`dev_file`)"

    def __init__(self, train: EncodedSplit, dev: EncodedSplit | None, tokenizer, tag_names: list[str], labels: list[str],
                 max_seq_len: int, crf: bool, crf_lr_scale: float):
        self.train, self.dev, self.tokenizer = train, dev, tokenizer
        self.tag_names, self.labels, self.max_seq_len = tag_names, labels, max_seq_len
        self.crf, self.crf_lr_scale = crf, crf_lr_scale
        self.best_metric = "entity_f1" if dev is not None else "loss"
        self.constraints = constraints_for(tag_names)
        self._train_lengths = train.item_lengths()

    def train_lengths(self):
        return self._train_lengths

    def train_batch(self, indices, epoch):
        tensors = collate(self.train, [self.train.items[i] for i in indices], self.tokenizer.pad_id)
        return Batch(tensors, int(tensors["word_mask"].sum()), int(tensors["attention_mask"].sum()))

    def loss_sum(self, model, batch):
        return tagging_loss(model, batch.tensors)

    def lr_scales(self) -> dict[str, float]:
        return {"crf.": self.crf_lr_scale} if self.crf else {}

    def eval_lengths(self):
        return self.dev.sentence_lengths() if self.dev is not None else None

    def eval_batch(self, indices):
        items = [(s, w) for s in indices for w in range(len(self.dev.windows[s])) if self.dev.offsets[s]]
        if items:
            tensors = collate(self.dev, items, self.tokenizer.pad_id)
        else:  # sentences without words: nothing to run, nothing to find
            tensors = {"input_ids": torch.zeros(0, 2, dtype=torch.long)}
        tensors["sentences"] = torch.tensor(indices, dtype=torch.long)
        return Batch(tensors, int(tensors.get("word_mask", torch.zeros(0)).sum()), 0)

    def eval_sums(self, model, batch):
        """[loss sum, words, then per entity type: matches, predicted, gold], float64."""
        from sbert_cli.data.ner import spans_from_word_tags

        tensors, dev = batch.tensors, self.dev
        sentences = tensors["sentences"].tolist()
        with_words = [s for s in sentences if dev.offsets[s]]
        loss = torch.zeros((), dtype=torch.float64)
        if with_words:
            logits = model(tensors["input_ids"], tensors["attention_mask"]).float()  # every token: windows are merged
            positions = tensors["word_positions"]
            word_logits = torch.gather(logits, 1, positions[..., None].expand(-1, -1, logits.shape[-1]))
            loss = tagging_loss(model, tensors, word_logits).double().cpu()
            lengths = tensors["attention_mask"].sum(1).tolist()
            scores = [row[:n] for row, n in zip(logits.cpu().numpy(), lengths)]
            words = sentence_scores([dev.windows[s] for s in with_words], [len(dev.offsets[s]) for s in with_words], scores)
            tags, _ = decode_words(words, unwrap(model).crf, self.constraints, with_probabilities=False)
        predicted = dict(zip(with_words, tags)) if with_words else {}
        found = [spans_from_word_tags([self.tag_names[t] for t in predicted.get(s, [])], dev.offsets[s]) for s in sentences]
        gold = [dev.data.examples[s].spans for s in sentences]
        counts = entity_counts(gold, found, self.labels)  # summable: the loop adds them over batches and processes
        words_seen = float(tensors["word_mask"].sum()) if with_words else 0.0
        return torch.cat([torch.tensor([float(loss), words_seen], dtype=torch.float64),
                          torch.from_numpy(counts.ravel())]).to(tensors["sentences"].device)

    def eval_metrics(self, sums):
        scores = scores_from_counts(sums[2:].view(len(self.labels), 3).numpy(), self.labels)
        return {"loss": float(sums[0] / max(float(sums[1]), 1.0)),
                **{k: scores[k] for k in ("entity_f1", "precision", "recall", "macro_f1")}}

    def fingerprint(self):
        digest = hashlib.sha256()
        for s, w in self.train.items:
            window = self.train.windows[s][w]
            digest.update(np.asarray(window.input_ids + [-1] + [self.train.tags[s][i] for i in window.words] + [-2],
                                     dtype=np.int64).tobytes())
        return {"train_examples": len(self.train.items), "train_sha256": digest.hexdigest(), "tags": self.tag_names,
                "max_seq_len": self.max_seq_len, "crf": self.crf,
                "crf_lr_scale": self.crf_lr_scale if self.crf else None}

    def save_meta(self):
        return {"max_seq_len": self.max_seq_len, "labels": self.labels, "crf": self.crf}


def validate_options(options: NerOptions) -> None:
    import math

    if options.max_seq_len < 3:
        raise ConfigError(f"`max_seq_len` must be at least 3 (for [CLS], a word and [SEP]), got {options.max_seq_len}")
    if options.config_name is None and options.vocab is not None:
        raise ConfigError("`vocab` goes with `config_name` (a fresh model); a `model` brings its own vocab.txt")
    if not (options.crf_lr_scale > 0 and math.isfinite(options.crf_lr_scale)):
        raise ConfigError(f"`crf_lr_scale` must be a positive number, got {options.crf_lr_scale}")


def read_splits(options: NerOptions) -> dict[str, NerData]:
    """The train split and, when given, dev and test; their entity types must be among train's."""
    from sbert_cli.data.ner import read_ner_file

    splits = {"train": read_ner_file(options.train_file)}
    for name, path in (("dev", options.dev_file), ("test", options.test_file)):
        if path is not None:
            splits[name] = read_ner_file(path, labels=splits["train"].labels)
    return splits


def describe_data(splits: dict[str, NerData], encoded: dict[str, EncodedSplit], tag_names: list[str]) -> list[str]:
    """The run's first lines: the files' scheme, sizes, entity types and tags, and what was adapted."""
    from sbert_cli.data.ner import SCHEME_NAMES

    train = splits["train"]
    sizes = ", ".join(f"{name} {len(data)}" for name, data in splits.items())
    lines = [f"data: {sizes} sentences; scheme {SCHEME_NAMES.get(train.scheme, train.scheme)} ({train.path.name}); "
             f"{len(train.labels)} entity types: {', '.join(train.labels)} ({len(tag_names)} BIOES tags)"]
    long = {name: sum(len(w) > 1 for w in e.windows) for name, e in encoded.items()}
    if any(long.values()):
        shown = ", ".join(f"{name} {n}" for name, n in long.items() if n)
        lines.append(f"note: sentences longer than `max_seq_len` are read in overlapping windows ({shown})")
    snapped = {name: e.snapped for name, e in encoded.items() if e.snapped}
    if snapped:
        shown = ", ".join(f"{name} {n}" for name, n in snapped.items())
        lines.append(f"note: entity edges inside a word moved to the word's edge ({shown})")
    cut = {name: data.cut_entities for name, data in splits.items() if data.cut_entities}
    if cut:
        shown = ", ".join(f"{name} {len(where)} (first {where[0]})" for name, where in cut.items())
        lines.append(f"note: entities cut by a sentence edge were read as O, as seqeval's strict mode reads them ({shown})")
    return lines


def _check_resumed_crf(out_dir: Path, crf: bool) -> None:
    """A checkpoint's weights only load into the same network: refuse to resume with(out) `crf` up front."""
    import json

    from sbert_cli.errors import ResumeError

    try:
        before = json.loads((out_dir / "run.json").read_text(encoding="utf-8")).get("crf")
    except (OSError, ValueError):
        return  # the loop says what is wrong with the run dir
    if before is not None and bool(before) != crf:
        raise ResumeError(f"cannot resume {out_dir}: it was trained {'with' if before else 'without'} a CRF; resume "
                          f"{'with' if before else 'without'} `crf`, or start a new run with another `out`")


def train_tagger(options: NerOptions, config: TrainConfig, callbacks: Callbacks | None = None,
                 on_micro_batch=None) -> NerResult:
    """Read the files, build the tagger, train on the generic loop, and report dev (and test) on the kept model."""
    from sbert_cli.data.ner import tag_names as bioes_tags
    from sbert_cli.model.bert import TagTransitions
    from sbert_cli.model.model_dir import build_or_load, freeze_unused_pooler

    options = with_default_model(options)
    validate_options(options)
    reads = (options.model,) if options.config_name is None and options.model and Path(options.model).is_dir() else ()
    check_run_dir(Path(config.out_dir), config.resume, config.force, reads)
    if config.resume:
        _check_resumed_crf(Path(config.out_dir), options.crf)
    splits = read_splits(options)
    labels = splits["train"].labels
    tag_names = bioes_tags(labels)
    model, tokenizer, new_head = build_or_load("ner", model=options.model, config_name=options.config_name,
                                               vocab=options.vocab, seed=config.seed, labels=tag_names)
    notes = []
    if options.crf and model.crf is None:
        model.crf = TagTransitions(len(tag_names))
        new_head = new_head + ([] if options.config_name else ["crf.*"])
    elif not options.crf and model.crf is not None:
        model.crf = None
        notes.append("note: the checkpoint's CRF is left out (no `crf`); give `crf` to keep training it")
    new_head = freeze_unused_pooler(model, new_head)
    config, lr_choice = with_chosen_lr(config, "ner", model.config.hidden_size, options.config_name is not None, new_head)
    if options.max_seq_len > model.config.max_position_embeddings:
        raise ConfigError(f"`max_seq_len` {options.max_seq_len} exceeds the model's "
                          f"{model.config.max_position_embeddings} positions")
    encoded = {name: encode_split(data, tokenizer, tag_names, options.max_seq_len) for name, data in splits.items()}
    if not encoded["train"].items:
        raise ConfigError(f"{options.train_file}: no sentence has a word the tokenizer reads")
    task = TaggingTask(encoded["train"], encoded.get("dev"), tokenizer, tag_names, labels, options.max_seq_len,
                       options.crf, options.crf_lr_scale)
    env = DistributedEnv.from_env()
    if callbacks is not None and env.is_main:
        for line in describe_data(splits, encoded, tag_names) + notes:
            callbacks.message(line)
        for line in start_notes(new_head, "new tagging head, initialised fresh", options.config_name is not None,
                                tokenizer.case_note):
            callbacks.message(line)
        crf_rate = f"; CRF lr {config.lr * options.crf_lr_scale:.3g} (`crf_lr_scale` {options.crf_lr_scale:g})"
        callbacks.message(lr_choice.describe() + (crf_rate if options.crf else ""))
    run_info = {"model": options.model if options.config_name is None else None, "config": options.config_name,
                "data": {name: str(data.path) for name, data in splits.items()}, "scheme": splits["train"].scheme,
                "labels": labels, "tags": tag_names, "max_seq_len": options.max_seq_len, "crf": options.crf,
                "crf_lr_scale": options.crf_lr_scale if options.crf else None,
                "crf_lr": config.lr * options.crf_lr_scale if options.crf else None, "lr_choice": lr_choice.to_json()}
    result = train(model, task, config, callbacks, run_info=run_info, on_micro_batch=on_micro_batch)
    out = NerResult(result, labels, tag_names, splits["train"].scheme, None, new_head=new_head)
    if env.is_main and not result.interrupted:
        from sbert_cli.tasks.evaluate import evaluate_kept_model

        out.model_dir, out.reports = evaluate_kept_model(splits, "ner", config, result)
    return out
