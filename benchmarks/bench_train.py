"""Training throughput (sequences/s): sbert's trainer against a plain transformers training loop, same weights and batches.

A random BERT-base-shape model (vocab 21128) is built with transformers and saved in HF format; sbert loads
that folder as users would, so both sides start from the same weights. Both train on the same global
batches of exactly --seq-len tokens (long THUCNews texts, no padding; with --short-len, every other sequence is cut
to that many tokens and padded, as in a batch of mixed lengths), dropout on, AdamW (no weight decay
on biases and LayerNorm), linear schedule, gradient clipping at 1.0, at the same precision.

- sbert: `Trainer.train_step` — the step `sbert train-cls` / `sbert pretrain` run: collate, forward, loss,
  backward, clip, fused AdamW, schedule. MLM computes logits only at the masked positions.
- transformers: the loop people write — `model(**batch, labels=...).loss.backward()`, clip, `AdamW.step()`,
  `scheduler.step()`; BertForMaskedLM computes logits at every position (labels -100 off the masked ones).

Each timed run does one untimed warm-up step, then --steps timed steps; runs alternate which side goes
first. The figure to read is the ratio of medians; on a machine shared with other jobs, the ratio of the
fastest runs (the least disturbed), printed beside it.

    python benchmarks/bench_train.py                                   # cls and mlm, BERT-base, 16 x 128, CPU
    python benchmarks/bench_train.py --tasks mlm --steps 5 --repeats 3
    python benchmarks/bench_train.py --tasks cls --batch-size 32 --seq-len 32 --short-len 20 --precision fp32 --steps 5 --repeats 3
    python benchmarks/bench_train.py --device cuda --precision bf16 --batch-size 32 --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_model_dir(out: Path, task: str, labels: list[str], config_name: str, seed: int) -> Path:
    """A random transformers BertForSequenceClassification (cls) or BertForMaskedLM (mlm), saved with the Chinese vocab."""
    import transformers

    from sbert_cli.model.config import PRESETS
    from sbert_cli.resources import CHINESE_VOCAB

    torch.manual_seed(seed)
    shape = {k: v for k, v in PRESETS[config_name].items()}
    config = transformers.BertConfig(vocab_size=21128, id2label=dict(enumerate(labels)), **shape)
    model_class = transformers.BertForSequenceClassification if task == "cls" else transformers.BertForMaskedLM
    model_class(config).save_pretrained(str(out))
    shutil.copyfile(CHINESE_VOCAB, out / "vocab.txt")
    return out


def long_texts(count: int, titles_per_text: int = 12) -> tuple[list[str], list[int]]:
    """Texts of several THUCNews titles each (longer than --seq-len tokens), labelled by their first title."""
    from sbert_cli.resources import THUCNEWS_TRAIN

    rows = [line.split("\t") for line in THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()]
    texts = ["，".join(rows[(i * titles_per_text + j) % len(rows)][0] for j in range(titles_per_text)) for i in range(count)]
    return texts, [int(rows[(i * titles_per_text) % len(rows)][1]) for i in range(count)]


def make_task(task: str, model_dir: Path, scratch: Path, examples: int, seq_len: int, labels: list[str],
              short_len: int | None = None):
    """The sbert task adapter over the benchmark data; with short_len, every other example is cut to that many tokens."""
    from sbert_cli.model.model_dir import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    texts, label_ids = long_texts(examples)
    if task == "cls":
        from sbert_cli.data.classification import ClassificationData
        from sbert_cli.tasks.classification import ClassificationTask, encode_split

        data = ClassificationData(scratch / "train.txt", texts, None, label_ids, labels, list(range(1, examples + 1)))
        split = encode_split(data, tokenizer, seq_len)
        if short_len:  # the mixed batch: half the rows are short_len real tokens, padded to seq_len
            for i in range(1, examples, 2):
                split.input_ids[i] = split.input_ids[i][: short_len - 1] + [tokenizer.sep_id]
            split.lengths[:] = [len(ids) for ids in split.input_ids]
        return ClassificationTask(split, None, tokenizer, "accuracy", seq_len)
    from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
    from sbert_cli.data.shards import MLMShards
    from sbert_cli.tasks.pretrain import TRAIN_STREAM, MLMSource, MLMTask

    corpus = scratch / "corpus.txt"
    corpus.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    make_mlm_data([corpus], scratch / "mlm", tokenizer, MLMDataSettings(max_seq_len=seq_len, truncate=True, segmenter="none"))
    shards = MLMShards(scratch / "mlm")
    source = MLMSource(shards, np.arange(len(shards)), None, 0, TRAIN_STREAM)
    return MLMTask(source, None, tokenizer, {})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, batches: list[list[int]], device: torch.device) -> float:
    """Seconds per step over batches[1:], after batches[0] as warm-up."""
    step(batches[0])
    sync(device)
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    sync(device)
    return (time.perf_counter() - start) / (len(batches) - 1)


def sbert_run(task_name, model_dir, task, batches, device, precision, scratch: Path) -> float:
    from sbert_cli.model.model_dir import load_for_task
    from sbert_cli.train.loop import Trainer
    from sbert_cli.train.types import TrainConfig

    model = load_for_task(model_dir, task_name).model
    config = TrainConfig(out_dir=scratch / "unused", batch_size=len(batches[0]), max_steps=len(batches), lr=2e-5,
                         warmup_ratio=0.1, precision=precision)
    trainer = Trainer(model, task, config, device=device, precision=precision)
    trainer.seed()
    seconds = time_steps(trainer.train_step, batches, device)
    del trainer, model
    return seconds


def transformers_run(task_name, model_dir, task, batches, device, precision) -> float:
    import transformers

    from sbert_cli.model.precision import autocast
    from sbert_cli.train.loop import lr_factor, optimizer_groups

    model_class = transformers.BertForSequenceClassification if task_name == "cls" else transformers.BertForMaskedLM
    model = model_class.from_pretrained(str(model_dir)).to(device).train()
    optimizer = torch.optim.AdamW(optimizer_groups(model, 0.01), lr=2e-5)
    total = len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, round(0.1 * total), total, "linear"))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    torch.manual_seed(0)

    def step(indices: list[int]) -> None:
        batch = task.train_batch(indices, 0).tensors  # the same collate as sbert: both pay for it
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        if task_name == "cls":
            labels = batch["labels"].to(device)
        else:  # HF's layout: a label per token, -100 where nothing is predicted
            labels = torch.full_like(batch["input_ids"], -100)
            real = batch["masked_labels"] != -100
            rows = torch.arange(labels.shape[0])[:, None].expand_as(real)
            labels[rows[real], batch["masked_positions"][real]] = batch["masked_labels"][real]
            labels = labels.to(device)
        with autocast(precision, device):
            loss = model(**inputs, labels=labels).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    seconds = time_steps(step, batches, device)
    del model, optimizer
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["cls", "mlm"], choices=["cls", "mlm"])
    parser.add_argument("--config", default="base", help="model shape: base (default), small or tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--short-len", type=int, default=None,
                        help="cls only: every other sequence has this many real tokens (padded to --seq-len in its batch)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto: what sbert picks here (bf16 where native, else fp32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import transformers

    from sbert_cli.data.batching import shuffled_batches
    from sbert_cli.model.precision import machine_summary, resolve_device, resolve_precision
    from sbert_cli.resources import THUCNEWS_CLASSES

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    labels = THUCNEWS_CLASSES.read_text(encoding="utf-8").split()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_summary()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {where}")
    print(f"BERT {args.config} shape, vocab 21128; batch {args.batch_size} x {args.seq_len} tokens, {precision}; "
          f"{args.steps} timed steps after 1 warm-up, {args.repeats} run(s) per side, alternating")
    rows = []
    for task_name in args.tasks:
        with tempfile.TemporaryDirectory() as scratch_name:
            scratch = Path(scratch_name)
            model_dir = build_model_dir(scratch / "model", task_name, labels, args.config, args.seed)
            examples = args.batch_size * (args.steps + 1)
            short = args.short_len if task_name == "cls" else None
            task = make_task(task_name, model_dir, scratch, examples, args.seq_len, labels, short)
            lengths = np.asarray(task.train_lengths())
            assert set(lengths.tolist()) <= {args.seq_len, short}, "benchmark sequences must be --seq-len (or --short-len) tokens"
            batches = shuffled_batches(len(lengths), args.batch_size, args.seed, 0)[: args.steps + 1]
            if short:
                padding = sum(args.seq_len * len(b) - int(lengths[b].sum()) for b in batches) / (args.seq_len * examples)
                print(f"  {task_name}: half the rows {short} tokens; padding {padding:.1%} of the batch positions")
            times = {"sbert": [], "transformers": []}
            for repeat in range(args.repeats):
                order = ("sbert", "transformers") if repeat % 2 == 0 else ("transformers", "sbert")
                for side in order:
                    if side == "sbert":
                        seconds = sbert_run(task_name, model_dir, task, batches, device, precision, scratch)
                    else:
                        seconds = transformers_run(task_name, model_dir, task, batches, device, precision)
                    times[side].append(seconds)
                    print(f"  {task_name} {side:12s} {args.batch_size / seconds:8.2f} sequences/s ({seconds:.2f} s/step)", flush=True)
            ours, theirs = (args.batch_size / statistics.median(times[s]) for s in ("sbert", "transformers"))
            best = min(times["transformers"]) / min(times["sbert"])
            rows.append((task_name, ours, theirs, best))
    # Medians are the figure to read on a quiet machine; on a shared one the fastest runs were least disturbed.
    print(f"\n{'task':5s} {'sbert seq/s':>12s} {'transformers seq/s':>19s} {'ratio':>7s} {'fastest runs':>13s}")
    for task_name, ours, theirs, best in rows:
        print(f"{task_name:5s} {ours:12.2f} {theirs:19.2f} {ours / theirs:6.2f}x {best:12.2f}x")


if __name__ == "__main__":
    main()
