"""Inference precision: fp32, bf16 weights (converted once at load, no autocast), bf16 autocast, int8 (dynamic).

Speed: BERT-base shape (vocab 21128), batch 64 x 32 tokens by default, random weights. Contenders, alternated in
one process (the order rotates every repetition), medians of wall-clock seconds:
  sbert fp32             our BertModel as `eval`/`predict`/`fill-mask` run it with --precision fp32
  transformers fp32      transformers' BertModel, same weights
  sbert bf16             prepare_for_inference(model, "bf16"): bf16 weights, no autocast (--precision bf16)
  transformers bf16 ac   transformers under torch.autocast(bfloat16): every weight re-cast on every call
  sbert int8             prepare_for_inference(model, "int8"): torch.ao dynamic quantization of nn.Linear
% of peak: the forward's FLOPs per second over a square matmul of the same dtype (fp32 or bf16) timed in the
same run (int8 against the fp32 matmul). On a CPU without native bf16 (no avx512_bf16/amx_bf16) bf16 is
emulated and several times slower than fp32; use --layers 2 there to keep the run short.

Accuracy (--classifier DIR --data FILE): the classifier loaded with --precision fp32, bf16 and int8 as
`sbert eval` loads it; accuracy on FILE, how often bf16/int8 predict the fp32 label, the largest
probability difference, and the time of each over FILE (alternated, medians).

    python benchmarks/bench_inference_precision.py                        # BERT-base, 12 layers, 5 repetitions
    python benchmarks/bench_inference_precision.py --layers 2 --repeats 7
    python benchmarks/bench_inference_precision.py --skip-speed --classifier sbert-demo/classifier/last \\
        --data sbert-demo/data/dev.txt --labels sbert-demo/data/class.txt
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

FORWARD_PRECISIONS = ("fp32", "bf16", "int8")


def forward_flops(layers: int, hidden: int, intermediate: int, batch: int, seq_len: int) -> float:
    """Multiply-adds x 2 of the encoder: the Linear layers per token, and attention's two T x T products."""
    linear = 4 * hidden * hidden + 2 * hidden * intermediate
    return layers * (2.0 * batch * seq_len * linear + 4.0 * batch * seq_len * seq_len * hidden)


def matmul_peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    """FLOP/s of a size^3 matmul in `dtype` (the best of `repeats`)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2.0 * size**3 / best


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _wall_and_cpu(fn) -> tuple[float, float]:
    """(wall s, CPU s of this process): CPU time is the steadier figure while other processes share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def speed(args) -> None:
    import transformers
    from bench_forward import build_pair, make_batch, run_ours, run_theirs

    from sbert_cli.model.precision import prepare_for_inference

    config = dict(vocab_size=21128, hidden_size=768, num_hidden_layers=args.layers, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512)
    ours, theirs = build_pair(config, args.seed)
    converted = {p: prepare_for_inference(copy.deepcopy(ours).eval(), p) for p in ("bf16", "int8")}
    input_ids, attention_mask = make_batch(args.batch_size, args.seq_len, 21128, False, args.seed)
    bf16 = dict(device_type="cpu", dtype=torch.bfloat16)
    contenders = {
        "sbert fp32": lambda: run_ours(ours, input_ids, attention_mask),
        "transformers fp32": lambda: run_theirs(theirs, input_ids, attention_mask),
        "sbert bf16 weights": lambda: run_ours(converted["bf16"], input_ids, attention_mask),
        "transformers bf16 autocast": lambda: _autocast(bf16, run_theirs, theirs, input_ids, attention_mask),
        "sbert int8 dynamic": lambda: run_ours(converted["int8"], input_ids, attention_mask),
    }
    if args.no_bf16:  # a CPU without native bf16 emulates it, several times slower than fp32
        contenders = {name: fn for name, fn in contenders.items() if "bf16" not in name}
    with torch.inference_mode():
        reference = run_ours(ours, input_ids, attention_mask)
        for name in [n for n in ("sbert bf16 weights", "sbert int8 dynamic") if n in contenders]:
            diff = (contenders[name]().float() - reference).abs().max().item()
            print(f"{name}: max abs diff of the last hidden state from fp32 {diff:.3f} (values of order 1)")
        for fn in contenders.values():  # warm-up
            fn()
        times = {name: [] for name in contenders}
        names = list(contenders)
        for rep in range(args.repeats):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(_wall_and_cpu(contenders[name]))
    peaks = {"fp32": matmul_peak(torch.float32, args.matmul_size, 3)}
    peaks["bf16"] = peaks["fp32"] if args.no_bf16 else matmul_peak(torch.bfloat16, args.matmul_size, 3)
    flops = forward_flops(args.layers, 768, 3072, args.batch_size, args.seq_len)
    print(f"\nBERT-base shape, {args.layers} layers, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{flops / 1e9:.0f} GFLOP per forward; transformers {transformers.__version__}")
    print(f"matmul {args.matmul_size}^3: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s"
          + ("" if args.no_bf16 else f", bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s"))
    medians = {name: statistics.median(wall for wall, _ in t) for name, t in times.items()}
    cpu = {name: statistics.median(c for _, c in t) for name, t in times.items()}
    print(f"{'':<28}{'median s':>10}{'seq/s':>9}{'vs sbert fp32':>15}{'vs tf bf16 ac':>15}{'% of peak':>11}"
          f"{'CPU s':>8}{'CPU vs fp32':>13}   wall runs")
    for name, seconds in medians.items():
        peak = peaks["bf16" if "bf16" in name else "fp32"]
        runs = " ".join(f"{wall:.2f}" for wall, _ in times[name])
        print(f"{name:<28}{seconds:>10.3f}{args.batch_size / seconds:>9.1f}{medians['sbert fp32'] / seconds:>14.2f}x"
              f"{_ratio(medians.get('transformers bf16 autocast'), seconds)}{100 * flops / seconds / peak:>10.0f}%"
              f"{cpu[name]:>8.2f}{cpu['sbert fp32'] / cpu[name]:>12.2f}x   {runs}")


def _ratio(reference: float | None, seconds: float) -> str:
    return f"{reference / seconds:>14.2f}x" if reference else f"{'-':>15}"


def _autocast(kwargs, fn, *args):
    with torch.autocast(**kwargs):
        return fn(*args)


def accuracy(args) -> None:
    import numpy as np

    from sbert_cli.data.classification import read_classification_file, read_label_names
    from sbert_cli.tasks.cls_predict import load_classifier

    classifiers = {p: load_classifier(args.classifier, precision=p, device="cpu", batch_size=64) for p in FORWARD_PRECISIONS}
    label_names = read_label_names(args.labels) if args.labels else classifiers["fp32"].label_names
    data = read_classification_file(args.data, label_names, allow_new_labels=False)
    gold = np.asarray(data.labels)
    probabilities, times = {}, {p: [] for p in FORWARD_PRECISIONS}
    for p, classifier in classifiers.items():  # warm-up
        probabilities[p] = classifier.probabilities(data.texts[:64])
    for rep in range(args.repeats):
        order = FORWARD_PRECISIONS[rep % 3:] + FORWARD_PRECISIONS[: rep % 3]
        for p in order:
            wall, cpu = time.perf_counter(), time.process_time()
            probabilities[p] = classifiers[p].probabilities(data.texts)
            times[p].append((time.perf_counter() - wall, time.process_time() - cpu))
    reference = probabilities["fp32"]
    print(f"\n{args.classifier} on {args.data} ({len(gold):,} examples), batch 64, {args.repeats} alternated runs")
    print(f"{'precision':<10}{'accuracy':>10}{'agrees w/ fp32':>16}{'max |dp|':>10}{'median s':>10}{'vs fp32':>9}"
          f"{'CPU s':>8}{'vs fp32':>9}")
    fp32_wall, fp32_cpu = (statistics.median(t[i] for t in times["fp32"]) for i in (0, 1))
    for p in FORWARD_PRECISIONS:
        predicted = probabilities[p].argmax(1)
        wall, cpu = (statistics.median(t[i] for t in times[p]) for i in (0, 1))
        print(f"{p:<10}{(predicted == gold).mean():>10.4f}{(predicted == reference.argmax(1)).mean():>16.4f}"
              f"{np.abs(probabilities[p] - reference).max():>10.4f}{wall:>10.3f}{fp32_wall / wall:>8.2f}x"
              f"{cpu:>8.2f}{fp32_cpu / cpu:>8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: sbert's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-speed", action="store_true", help="only the accuracy part")
    parser.add_argument("--no-bf16", action="store_true", help="time fp32 and int8 only (bf16 is emulated, slow, without native bf16)")
    parser.add_argument("--classifier", type=Path, help="a trained classifier dir (e.g. sbert-demo/classifier/last)")
    parser.add_argument("--data", type=Path, help="labelled file to score it on (e.g. sbert-demo/data/dev.txt)")
    parser.add_argument("--labels", type=Path, help="label names file, when the data has label ids")
    parser.add_argument("--quick", action="store_true", help="1 layer, batch 2 x 8 tokens, 1 repeat, fp32 and int8: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.seq_len, args.layers, args.repeats, args.matmul_size, args.no_bf16 = 2, 8, 1, 1, 64, True

    from sbert_cli.model.precision import configure_threads, machine_summary

    configure_threads(args.threads)
    print(machine_summary())
    if not args.skip_speed:
        speed(args)
    if args.classifier:
        accuracy(args)


if __name__ == "__main__":
    main()
