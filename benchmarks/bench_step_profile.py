"""Where a fine-tuning step's time goes: collation, forward, backward, clipping, the optimizer, host syncs and Python.

Shapes (random weights, vocab 21128; timing only):
- m3e-titles: m3e-small's shape (4 layers x 512, 8 heads, FFN 2048), the bundled THUCNews titles (~20 tokens),
  batch 32, sequence classification (train-cls's ClassificationTask, label smoothing 0.1).
- m3e-ner: the same encoder with a token-tagging head, on 43-character sentences cut from the titles (lengths drawn
  around 43 characters, as NER corpora such as MSRA/People's Daily have), batch 32, a loss per real token.
- base-titles: BERT-base (12 x 768), the titles, batch 32.

Each shape runs the trainer's own step (`Trainer.train_step`: what `sbert train-cls` runs) and, alternating with it,
the same step on the same batch taken apart and timed piece by piece. "Python and the rest" is the whole step's median minus the
pieces' medians. The optimizer rows time AdamW's step alone on the same gradients: fused (what the trainer uses),
foreach, and the single-tensor loop (torch's default on the CPU, which transformers' Trainer gets with
`optim="adamw_torch"`), and the fused step over the word-embedding matrix alone (21128 x H rows that a batch of
titles barely touches, yet AdamW updates every one). "collate waited" is how long the step waited for the next
batches from the trainer's collation thread (0 when the thread hides collation completely). "padding" is the share
of the tokens the dense layers ran on that were padding: the most that unpadding could save there.

Times are this process's CPU time by default (steady on a shared machine; with --threads 1 it is the work done),
or wall time with --clock wall; the collation rows are always wall time. Every figure names the CPU, its bf16 flags,
the threads, the precision and the torch version; the load average is printed beside it (a shared machine makes
every figure noisy: read the ratios).

    python benchmarks/bench_step_profile.py                         # all three shapes, fp32, 6 steps each
    python benchmarks/bench_step_profile.py --shapes m3e-titles --steps 10 --ops 15
    python benchmarks/bench_step_profile.py --precision bf16        # the bf16 path (native on AMX Xeons)
    python benchmarks/bench_step_profile.py --compile               # adds a torch.compile probe of the step
    python benchmarks/bench_step_profile.py --quick                 # tiny model, 2 steps: a smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

M3E_SMALL = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048)
SHAPES = {
    "m3e-titles": (M3E_SMALL, "titles"),
    "m3e-ner": (M3E_SMALL, "ner"),
    "base-titles": ({}, "titles"),
}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
NER_TAGS = 7  # B/I of three entity types, and O
NER_CHARS = 43


def titles() -> tuple[list[str], list[int], list[str]]:
    from sbert_cli.resources import THUCNEWS_CLASSES, THUCNEWS_TRAIN

    rows = [line.split("\t") for line in THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()]
    return [r[0] for r in rows], [int(r[1]) for r in rows], THUCNEWS_CLASSES.read_text(encoding="utf-8").split()


def ner_sentences(count: int, seed: int) -> list[str]:
    """Sentences of about NER_CHARS characters (normal, sd 12, 8..120), cut from the titles run together."""
    text = "，".join(titles()[0])
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.normal(NER_CHARS, 12, count).round().astype(int), 8, 120)
    starts = rng.integers(0, len(text) - 130, count)
    return [text[s : s + n] for s, n in zip(starts, lengths)]


class TokenTagger(nn.Module):
    """An encoder with a linear tag per token: the shape of a NER step (train-ner's CRF, if any, is not timed)."""

    def __init__(self, config):
        super().__init__()
        from sbert_cli.model.bert import BertModel

        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, NER_TAGS)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.classifier(self.dropout(self.bert.encode(input_ids, attention_mask, token_type_ids)))  # (B, T, tags)


def make_tagging_task(tokenizer, sentences: list[str], seed: int):
    from sbert_cli.data.batching import pad_batch
    from sbert_cli.train.types import Batch, Task

    input_ids = tokenizer.encode(sentences, max_length=128)
    rng = np.random.default_rng(seed)
    tags = [rng.integers(0, NER_TAGS, len(ids)).tolist() for ids in input_ids]
    lengths = np.array([len(ids) for ids in input_ids], dtype=np.int64)

    class TaggingTask(Task):
        model_task = "cls"

        def train_lengths(self):
            return lengths

        def train_batch(self, indices, epoch):
            ids, mask = pad_batch([input_ids[i] for i in indices], tokenizer.pad_id)
            labels = pad_batch([tags[i] for i in indices], 0)[0].masked_fill(mask == 0, -100)
            real = int(mask.sum())
            return Batch({"input_ids": ids, "attention_mask": mask, "labels": labels}, real, real)

        def loss_sum(self, model, batch):
            inputs = {k: v for k, v in batch.tensors.items() if k != "labels"}
            logits = model(**inputs).float()
            return F.cross_entropy(logits.flatten(0, 1), batch.tensors["labels"].flatten(), reduction="sum")

    task = TaggingTask()
    task.tokenizer = tokenizer
    return task


def build(shape: str, quick: bool, seed: int):
    """(model, task) for a shape: random weights of the shape, the task adapter the trainer runs."""
    from sbert_cli.model.bert import BertForSequenceClassification
    from sbert_cli.model.config import BertConfig
    from sbert_cli.model.tokenizer import BertTokenizer
    from sbert_cli.resources import CHINESE_VOCAB

    dims, data = SHAPES[shape]
    tokenizer = BertTokenizer.from_vocab(CHINESE_VOCAB)
    texts, labels, names = titles()
    config = BertConfig(vocab_size=21128, **(TINY if quick else dims), id2label=dict(enumerate(names)))
    torch.manual_seed(seed)
    if data == "ner":
        return TokenTagger(config), make_tagging_task(tokenizer, ner_sentences(len(texts), seed), seed)
    from sbert_cli.data.classification import ClassificationData
    from sbert_cli.tasks.classification import ClassificationTask, encode_split

    split = encode_split(ClassificationData(Path("titles"), texts, None, labels, names, list(range(1, len(texts) + 1))),
                         tokenizer, 128)
    return BertForSequenceClassification(config), ClassificationTask(split, None, tokenizer, "accuracy", 128, 0.1)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]  # --clock: CPU time of this process is the steadier measure of work on a shared machine


def pieces_of_step(trainer, indices: list[int]) -> dict[str, float]:
    """The trainer's step taken apart (one process, no accumulation), each piece timed in seconds."""
    from sbert_cli.model.precision import autocast

    t: dict[str, float] = {}
    start = clock()
    micro = trainer.micro_batches(indices, 0)
    t["collate"] = clock() - start
    (batch, _), = micro
    start = clock()
    batch_tensors = {k: v.to(trainer.device) for k, v in batch.tensors.items()}
    batch = type(batch)(batch_tensors, batch.units, batch.tokens)
    with autocast(trainer.precision, trainer.device):
        summed = trainer.task.loss_sum(trainer.model, batch)
    t["forward"] = clock() - start
    start = clock()
    (summed.float() / batch.units).backward()
    t["backward"] = clock() - start
    start = clock()
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.max_grad_norm)
    t["clip grad norm"] = clock() - start
    start = clock()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()
    t["AdamW (fused) + schedule"] = clock() - start
    start = clock()
    float(summed.detach().double())  # the per-step loss read back (and the trainer's unit/stop reads: as cheap)
    t["host sync (.item)"] = clock() - start
    return t


def optimizer_rows(model: nn.Module, task, indices: list[int], repeats: int) -> dict[str, float]:
    """AdamW's step alone, on one batch's gradients, per implementation (seconds, medians, alternated)."""
    from sbert_cli.train.loop import optimizer_groups

    model.zero_grad(set_to_none=True)
    (task.loss_sum(model, task.train_batch(indices, 0)) / len(indices)).backward()
    embedding = model.bert.embeddings.word_embeddings.weight
    variants = {
        "fused": lambda: torch.optim.AdamW(optimizer_groups(model, 0.01), lr=1e-5, fused=True),
        "foreach": lambda: torch.optim.AdamW(optimizer_groups(model, 0.01), lr=1e-5, foreach=True),
        "single-tensor loop": lambda: torch.optim.AdamW(optimizer_groups(model, 0.01), lr=1e-5, foreach=False),
        "fused, word embeddings only": lambda: torch.optim.AdamW([embedding], lr=1e-5, fused=True),
    }
    optimizers = {name: make() for name, make in variants.items()}
    for optimizer in optimizers.values():
        optimizer.step()  # creates the moments: not part of a step's cost
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, optimizer in optimizers.items():
            start = clock()
            optimizer.step()
            times[name].append(clock() - start)
    model.zero_grad(set_to_none=True)
    return {name: statistics.median(v) for name, v in times.items()}


def collation_overlap(trainer, batches: list[list[int]]) -> tuple[float, float]:
    """(collation seconds per step in the thread, seconds per step the step waited for it), as run_epoch runs them."""
    collated, waited = [], []
    wall = time.perf_counter  # waiting is wall time, whatever --clock says

    def timed(indices):
        start = wall()
        micro = trainer.micro_batches(indices, 0)
        collated.append(wall() - start)
        return micro

    with ThreadPoolExecutor(1, thread_name_prefix="collate") as collator:
        upcoming = collator.submit(timed, batches[0])
        for i, indices in enumerate(batches):
            start = wall()
            micro = upcoming.result()
            waited.append(wall() - start)
            if i + 1 < len(batches):
                upcoming = collator.submit(timed, batches[i + 1])
            trainer.train_step(indices, None, micro)
    return statistics.median(collated), statistics.median(waited[1:] or waited)


def padding_share(lengths: np.ndarray, batch_size: int, seed: int, unpadded: bool = True) -> float:
    """Padding's share of the tokens the dense layers run on in one epoch of the trainer's shuffled batches:
    unpadded=True as sbert trains (a batch with at least UNPAD_SHARE padding runs on its real tokens only),
    False padded to each batch's longest (as transformers' Trainer batches by default)."""
    from sbert_cli.data.batching import shuffled_batches
    from sbert_cli.model.bert import UNPAD_SHARE

    batches = [np.asarray(b) for b in shuffled_batches(len(lengths), batch_size, seed, 0)]
    if unpadded:
        batches_padded = [b for b in batches if 1 - lengths[b].sum() / (lengths[b].max() * len(b)) < UNPAD_SHARE]
        real = sum(int(lengths[b].sum()) for b in batches)
        padded = real + sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches_padded)
        return 1 - real / padded
    real = padded = 0
    for batch in batches:
        real += int(lengths[batch].sum())
        padded += int(lengths[batch].max()) * len(batch)
    return 1 - real / padded


def compile_probe(trainer, batches: list[list[int]]) -> tuple[float, float, float]:
    """(first compiled step s, compiled step s median, eager step s median), the two alternated."""
    eager = trainer.model
    compiled = torch.compile(eager, dynamic=True)
    start = clock()
    trainer.ddp_model = compiled
    trainer.train_step(batches[0])
    first = clock() - start
    times: dict[str, list[float]] = {"compiled": [], "eager": []}
    for i, indices in enumerate(batches[1:]):
        for side in (("compiled", "eager") if i % 2 == 0 else ("eager", "compiled")):
            trainer.ddp_model = compiled if side == "compiled" else eager
            start = clock()
            trainer.train_step(indices)
            times[side].append(clock() - start)
    trainer.ddp_model = eager
    return first, statistics.median(times["compiled"]), statistics.median(times["eager"])


def profile_shape(shape: str, args, scratch: Path) -> None:
    from sbert_cli.data.batching import shuffled_batches
    from sbert_cli.train.loop import Trainer
    from sbert_cli.train.types import TrainConfig

    model, task = build(shape, args.quick, args.seed)
    config = TrainConfig(out_dir=scratch / shape, batch_size=args.batch_size, max_steps=10_000, lr=2e-4,
                         warmup_ratio=0.1, precision=args.precision, device="cpu")
    trainer = Trainer(model, task, config)
    trainer.seed()
    lengths = np.asarray(task.train_lengths())
    batches = shuffled_batches(len(lengths), args.batch_size, args.seed, 0)
    steps = [b for b in batches if len(b) == args.batch_size][: 2 * args.steps + 2]
    mean_tokens = statistics.mean(int(lengths[b].max()) for b in steps)
    params = sum(p.numel() for p in model.parameters())
    print(f"\n## {shape}{' (tiny model: --quick)' if args.quick else ''}: {params / 1e6:.1f}M parameters, batch "
          f"{args.batch_size} x ~{mean_tokens:.0f} tokens (padded), {trainer.precision}; load {os.getloadavg()[0]:.2f}")
    trainer.train_step(steps[0])  # warm-up: allocations, the optimizer's moments
    pieces_of_step(trainer, steps[1])
    whole, parts = [], []
    for i in range(args.steps):  # each batch twice, whole and in pieces, which goes first alternating
        indices = steps[2 + i]
        if i % 2:
            parts.append(pieces_of_step(trainer, indices))
        start = clock()
        trainer.train_step(indices)
        whole.append(clock() - start)
        if not i % 2:
            parts.append(pieces_of_step(trainer, indices))
    step_s = statistics.median(whole)
    medians = {name: statistics.median(p[name] for p in parts) for name in parts[0]}
    medians["Python and the rest"] = step_s - sum(v for k, v in medians.items() if k != "collate")
    print(f"whole step (Trainer.train_step, collation included): {step_s * 1e3:8.1f} ms   "
          f"{args.batch_size / step_s:7.1f} seq/s")
    for name, seconds in medians.items():
        print(f"  {name:28s} {seconds * 1e3:8.1f} ms  {100 * seconds / step_s:5.1f}%")
    collated, waited = collation_overlap(trainer, steps[2 : 2 + args.steps])
    print(f"  collation thread: {collated * 1e3:.1f} ms/step collated, the step waited {waited * 1e3:.2f} ms/step "
          f"({100 * (1 - waited / max(collated, 1e-9)):.0f}% hidden)")
    print(f"  padding: the share the dense layers run on in an epoch of shuffled batches: "
          f"{100 * padding_share(lengths, args.batch_size, args.seed):.1f}% unpadded as sbert trains, "
          f"{100 * padding_share(lengths, args.batch_size, args.seed, False):.1f}% padded to each batch's longest "
          "(Trainer's default)")
    rows = optimizer_rows(model, task, steps[0], max(3, args.steps))
    fused = rows["fused"]
    print("  AdamW step alone (no schedule), alternated:")
    for name, seconds in rows.items():
        print(f"    {name:28s} {seconds * 1e3:8.1f} ms  {seconds / fused:5.2f}x fused")
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for indices in steps[2:4]:
                trainer.train_step(indices)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))
    if args.compile:
        first, compiled, eager = compile_probe(trainer, steps[2 : 3 + args.steps])
        print(f"  torch.compile (dynamic shapes): first step {first:.1f} s, then {compiled * 1e3:.1f} ms vs eager "
              f"{eager * 1e3:.1f} ms: {eager / compiled:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=6, help="timed steps per shape, of each kind (whole / in pieces)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", help="fp32 (default), bf16 or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="cpu",
                        help="cpu (default): this process's CPU time, steady under load (with 1 thread: the work done); "
                             "wall: elapsed time, the figure on an idle machine")
    parser.add_argument("--ops", type=int, default=0, help="also print the N ops with the most self CPU time")
    parser.add_argument("--compile", action="store_true", help="also probe torch.compile on the training step")
    parser.add_argument("--quick", action="store_true", help="a tiny model, 2 steps, the first shape: a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.shapes = 2, args.shapes[:1]
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    clock = CLOCKS[args.clock]

    from sbert_cli.model.precision import machine_summary

    print(f"{machine_summary()}; precision {args.precision}; {args.clock} clock; load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    with tempfile.TemporaryDirectory() as scratch:
        for shape in args.shapes:
            profile_shape(shape, args, Path(scratch))


if __name__ == "__main__":
    main()
