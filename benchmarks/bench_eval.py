"""Classification eval throughput: sbert's eval against a plain transformers inference loop, same weights.

A random BERT-base-shape classifier (vocab 21128, 10 THUCNews labels) is built with transformers and
saved in HF format; sbert loads that folder as users would. Both sides are timed from reading the
10,000 THUCNews lines (bundled train 9,000 + dev 1,000) to having every prediction, model loading
excluded: sbert runs `evaluate_classifier` (read, tokenize, length-sorted batches, forward, metrics);
transformers runs the loop people write: AutoTokenizer (Rust-backed, is_fast) on each batch with padding=True
(padded to the batch's longest; faster than tokenizing once and calling tokenizer.pad per batch),
`model(**batch).logits`, softmax, argmax. Same precision (torch.autocast for bf16/fp16 on
both), same batch size, inference_mode on both. By default the transformers loop also sorts by length
(by characters, which for Chinese is about the token count; sbert sorts by token count); --also-unsorted
adds the file-order loop most scripts use. Runs alternate which side goes first;
the figure to read is the ratio of medians. The predictions of both sides are compared too.

    python benchmarks/bench_eval.py                                  # auto device, 3 repetitions
    python benchmarks/bench_eval.py --device cuda --precision bf16 --also-unsorted
    python benchmarks/bench_eval.py --device cpu --lines 1000        # a CPU run of a few minutes
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


QUICK_SHAPE = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=256)  # --quick


def build_model_dir(out: Path, labels: list[str], seed: int, shape: dict | None = None) -> Path:
    """A random transformers BertForSequenceClassification of BERT-base shape (or `shape`), saved with the Chinese vocab."""
    import shutil

    import transformers

    from sbert_cli.resources import CHINESE_VOCAB

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=21128, id2label=dict(enumerate(labels)), **(shape or {}))
    transformers.BertForSequenceClassification(config).eval().save_pretrained(str(out))
    shutil.copyfile(CHINESE_VOCAB, out / "vocab.txt")
    return out


def write_data(path: Path, lines: int) -> Path:
    from sbert_cli.resources import THUCNEWS_DEV, THUCNEWS_TRAIN

    rows = THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines() + THUCNEWS_DEV.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(rows[:lines]) + "\n", encoding="utf-8")
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TransformersLoop:
    """The plain loop: read the TSV, tokenize each batch, pad it to its longest, forward, argmax."""

    def __init__(self, model_dir: Path, device: torch.device, precision: str, batch_size: int, sort: bool):
        import transformers

        # AutoTokenizer, as users load it (transformers 5 ignores BertTokenizerFast(vocab_file=...)).
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
        self.model = transformers.BertForSequenceClassification.from_pretrained(str(model_dir)).to(device).eval()
        self.device, self.precision, self.batch_size, self.sort = device, precision, batch_size, sort

    def __call__(self, data: Path) -> np.ndarray:
        texts, labels = [], []
        for line in data.read_text(encoding="utf-8").splitlines():
            text, label = line.split("\t")
            texts.append(text)
            labels.append(int(label))
        return self.probabilities(texts).argmax(-1)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        order = np.arange(len(texts))
        if self.sort:  # by characters, longest first: for Chinese about the token count, and costs no tokenizing
            order = np.argsort(-np.asarray([len(t) for t in texts]), kind="stable")
        probabilities = np.empty((len(texts), self.model.config.num_labels), dtype=np.float32)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            for start in range(0, len(texts), self.batch_size):
                index = order[start : start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True, max_length=512,
                                       return_tensors="pt").to(self.device)
                probabilities[index] = self.model(**batch).logits.float().softmax(-1).cpu().numpy()
        return probabilities


class SbertEval:
    def __init__(self, model_dir: Path, device: str, precision: str, batch_size: int):
        from sbert_cli.tasks.cls_predict import load_classifier

        self.classifier = load_classifier(model_dir, batch_size=batch_size, precision=precision, device=device)

    def __call__(self, data: Path) -> np.ndarray:
        from sbert_cli.tasks.evaluate import evaluate_classifier

        return np.asarray(evaluate_classifier(self.classifier, data).predictions)


def timed(fn, data: Path, device: torch.device) -> tuple[float, np.ndarray]:
    sync(device)
    start = time.perf_counter()
    predictions = fn(data)
    sync(device)
    return time.perf_counter() - start, predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000, help="THUCNews lines to evaluate (at most 10,000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto: bf16 on a GPU (or a CPU with native bf16), else fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--also-unsorted", action="store_true", help="also time the transformers loop in file order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a 2-layer, 128-wide model, 64 lines, 1 repeat: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.lines, args.repeats, args.batch_size = 64, 1, 16

    import transformers

    from sbert_cli.model.precision import machine_summary, resolve_device, resolve_precision
    from sbert_cli.resources import THUCNEWS_CLASSES

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    labels = THUCNEWS_CLASSES.read_text(encoding="utf-8").split()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_model_dir(Path(scratch) / "model", labels, args.seed, QUICK_SHAPE if args.quick else None)
        data = write_data(Path(scratch) / "thucnews.tsv", args.lines)
        data_lines = data.read_text(encoding="utf-8").splitlines()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_summary()
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, {name}")
        print(f"{'--quick shape' if args.quick else 'BERT-base shape (12 layers, 768 hidden, vocab 21128, 10 labels)'}, random weights; "
              f"{args.lines:,} THUCNews lines, batch size {args.batch_size}, {precision}")
        contenders = {
            "sbert eval": SbertEval(model_dir, str(device), precision, args.batch_size),
            "transformers, sorted": TransformersLoop(model_dir, device, precision, args.batch_size, sort=True),
        }
        if args.also_unsorted:
            contenders["transformers, file order"] = TransformersLoop(model_dir, device, precision, args.batch_size, sort=False)
        print(f"transformers attn_implementation={contenders['transformers, sorted'].model.config._attn_implementation}")
        warmup = write_data(Path(scratch) / "warmup.tsv", 2 * args.batch_size)
        for fn in contenders.values():  # first-call allocations, kernel selection
            fn(warmup)
        times = {key: [] for key in contenders}
        predictions = {}
        names = list(contenders)
        for rep in range(args.repeats):
            for key in names if rep % 2 == 0 else names[::-1]:
                seconds, predictions[key] = timed(contenders[key], data, device)
                times[key].append(seconds)

    ours = statistics.median(times["sbert eval"])
    print(f"\n{'':<26}{'median s':>10}{'lines/s':>10}{'sbert speed-up':>16}   runs")
    for key, values in times.items():
        median = statistics.median(values)
        print(f"{key:<26}{median:>10.3f}{args.lines / median:>10.0f}{median / ours:>15.2f}x   "
              + " ".join(f"{v:.3f}" for v in values))
    agree = float((predictions["sbert eval"] == predictions["transformers, sorted"]).mean())
    texts = [line.split("\t")[0] for line in data_lines[:1000]]
    ours_p = contenders["sbert eval"].classifier.probabilities(texts)
    theirs_p = contenders["transformers, sorted"].probabilities(texts)
    print(f"\nsame numbers? max |probability difference| over {len(texts):,} texts: {np.abs(ours_p - theirs_p).max():.2e}; "
          f"top-1 agreement over all lines: {agree:.2%} (a random classifier's logits are nearly tied)")


if __name__ == "__main__":
    main()
