"""Fine-tuning speed end to end: `sbert train-cls` against transformers' `Trainer`, whole processes, same recipe and tokens.

Each run is a fresh Python process, timed from outside (start-up, imports, reading and tokenizing, training, the dev
evaluation after every epoch, and what each writes), so the figure is what a user waits for:

- sbert: `python -m sbert_cli train-cls --model M --train T --dev D --labels C --epochs E --seed S --precision P`,
  at its defaults otherwise (lr rule, warmup, batch 32, shuffled batches run unpadded, fused AdamW, label smoothing 0.1;
  it writes OUT/best, OUT/last and a checkpoint per epoch).
- transformers: this file's worker mode (`--worker`), which runs bench_finetune_quality.run_transformers:
  `AutoModelForSequenceClassification` + `Trainer` at the recipe sbert chooses (the same peak lr, warmup steps,
  linear decay, batch size, epochs, weight decay off biases and LayerNorm, clipping, label smoothing, max length,
  seed), Trainer's default optimizer (`adamw_torch_fused` on torch >= 2.8), dynamic padding, the same tokens (the tokenizer's casing as sbert decides), an
  evaluation per epoch and a checkpoint per epoch (`save_strategy="epoch"`), as sbert writes one.

The sides alternate (sbert first on even repeats); the table gives medians of wall time and of the process's CPU
time (steadier where other jobs share the cores; with --threads 1 it is the work done), the mean of the last epoch's
dev accuracy, and the ratios of the medians. Without `--model`, a random model of m3e-small's shape (4 x 512, vocab
21128; `--quick`: a tiny one) is saved in transformers' format first: the times are what they are for that shape,
the accuracies only say that both sides learn alike from random weights; give a real checkpoint (m3e-small) for
accuracy to compare. The precision is fp32 on CPUs without native bf16 and `auto` elsewhere, unless given.

    python benchmarks/bench_finetune_speed.py                                 # 3,000 titles, 1 epoch, 3 repeats
    python benchmarks/bench_finetune_speed.py --model .real-bert --limit 3000 --repeats 3 --precision fp32
    python benchmarks/bench_finetune_speed.py --quick                         # tiny model, 200 titles, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
M3E_SMALL = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)


def random_model_dir(out: Path, shape: dict, seed: int) -> Path:
    """A random transformers BertModel of `shape` with the bundled Chinese vocab (both libraries load it as a checkpoint)."""
    import torch
    import transformers

    from sbert_cli.resources import CHINESE_VOCAB

    torch.manual_seed(seed)
    transformers.BertModel(transformers.BertConfig(vocab_size=21128, **shape)).save_pretrained(str(out))
    shutil.copyfile(CHINESE_VOCAB, out / "vocab.txt")
    return out


def children_cpu_s() -> float:
    """CPU seconds used by this process's finished children: steadier than wall time when others share the cores."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_sbert(args, train: Path, work: Path, seed: int) -> dict:
    from sbert_cli.resources import THUCNEWS_CLASSES, THUCNEWS_DEV

    out = work / f"sbert-{seed}"
    command = [sys.executable, "-m", "sbert_cli", "train-cls", "--model", str(args.model), "--train", str(train),
               "--dev", str(THUCNEWS_DEV), "--labels", str(THUCNEWS_CLASSES), "--out", str(out), "--epochs",
               str(args.epochs), "--seed", str(seed), "--precision", args.precision, "--force", "--no-plot"]
    started, cpu = time.perf_counter(), children_cpu_s()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - started, children_cpu_s() - cpu
    if done.returncode != 0:
        raise SystemExit(f"sbert train-cls failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    shutil.rmtree(out)
    return {"seconds": seconds, "cpu_s": cpu, "accuracy": [r for r in evals if r["kind"] == "eval"][-1]["accuracy"],
            "lr": run["train"]["lr"], "total_steps": run["total_steps"], "precision": run["precision"]}


def run_transformers(args, train: Path, work: Path, seed: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", str(args.model), "--train",
               str(train), "--epochs", str(args.epochs), "--seed", str(seed), "--precision", args.precision,
               "--threads", str(args.threads), "--out", str(work)]
    started, cpu = time.perf_counter(), children_cpu_s()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - started, children_cpu_s() - cpu
    if done.returncode != 0:
        raise SystemExit(f"the transformers worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "cpu_s": cpu, "accuracy": result["per_epoch"][-1], "lr": result["lr"],
            "total_steps": result["total_steps"], "precision": args.precision}


def worker(args) -> None:
    """In its own process: transformers' Trainer at sbert's recipe; prints one JSON line."""
    sys.path.insert(0, str(HERE))
    import bench_finetune_quality as quality

    from sbert_cli.resources import THUCNEWS_CLASSES, THUCNEWS_DEV

    examples = sum(1 for _ in args.train.open(encoding="utf-8"))
    recipe = quality.default_recipe(args, examples)
    import torch

    from sbert_cli.model.precision import resolve_precision

    args.precision = resolve_precision(args.precision, torch.device("cpu"))  # auto: as sbert resolves it here
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        result = quality.run_transformers(args, args.seed, recipe, args.train, THUCNEWS_DEV, THUCNEWS_CLASSES,
                                          Path(tmp), save=True, optim=None)
    print(json.dumps({**result, "lr": recipe["lr"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint folder (default: a random m3e-small shape)")
    parser.add_argument("--limit", type=int, default=3000, help="the first N training titles (default 3,000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side (medians; at least 3 for a figure)")
    parser.add_argument("--seed", type=int, default=42, help="the seed of repeat 0; repeat r uses seed + r")
    parser.add_argument("--precision", default=None, help="fp32, bf16 or auto (default: fp32 without native bf16, else auto)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true", help="a tiny random model, 200 titles, 1 repeat: a smoke test")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # both subprocesses; set before torch loads here
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        return worker(args)

    import torch

    from sbert_cli.model.precision import cpu_supports_bf16, machine_summary
    from sbert_cli.resources import THUCNEWS_TRAIN

    torch.set_num_threads(args.threads)
    if args.quick:
        args.limit, args.repeats = 200, 1
    if args.precision is None:
        args.precision = "auto" if cpu_supports_bf16() else "fp32"
    print(f"{machine_summary()}; precision {args.precision}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        if args.model is None:
            args.model = random_model_dir(scratch / "model", TINY if args.quick else M3E_SMALL, 0)
            print(f"a random {'tiny' if args.quick else 'm3e-small'}-shape model (accuracies compare learning, not quality)")
        train = scratch / "train.txt"
        train.write_text("".join(THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines(keepends=True)[: args.limit]),
                         encoding="utf-8")
        print(f"{args.limit} titles, {args.epochs} epoch(s), {args.repeats} run(s) per side, alternating; "
              f"{args.threads} threads per process")
        results: dict[str, list[dict]] = {"sbert": [], "transformers": []}
        for repeat in range(args.repeats):
            order = ("sbert", "transformers") if repeat % 2 == 0 else ("transformers", "sbert")
            for side in order:
                load = os.getloadavg()[0]
                run = run_sbert if side == "sbert" else run_transformers
                result = {**run(args, train, scratch, args.seed + repeat), "load": load}
                results[side].append(result)
                print(f"  {side:12s} seed {args.seed + repeat}: {result['seconds']:7.1f} s ({result['cpu_s']:.1f} CPU s), dev accuracy "
                      f"{result['accuracy']:.4f}, lr {result['lr']}, {result['total_steps']} steps, "
                      f"{result['precision']}; load {load:.2f}", flush=True)
    times = {side: statistics.median(r["seconds"] for r in rows) for side, rows in results.items()}
    cpu = {side: statistics.median(r["cpu_s"] for r in rows) for side, rows in results.items()}
    accuracy = {side: statistics.mean(r["accuracy"] for r in rows) for side, rows in results.items()}
    print(f"\n| work | sbert | transformers Trainer | ratio |\n|---|---:|---:|---:|")
    print(f"| train-cls, {args.limit} titles, {args.epochs} epoch(s), median wall s | {times['sbert']:.1f} | "
          f"{times['transformers']:.1f} | {times['transformers'] / times['sbert']:.2f}x |")
    print(f"| the same, median CPU s of the process | {cpu['sbert']:.1f} | {cpu['transformers']:.1f} | "
          f"{cpu['transformers'] / cpu['sbert']:.2f}x |")
    print(f"| dev accuracy, mean of {args.repeats} seed(s) | {accuracy['sbert']:.4f} | {accuracy['transformers']:.4f} | |")
    print(f"load average during the runs: {min(r['load'] for rows in results.values() for r in rows):.2f} .. "
          f"{max(r['load'] for rows in results.values() for r in rows):.2f}")
    if "ner: cli" in subprocess.run(["git", "-C", str(HERE), "log", "--oneline"], capture_output=True, text=True).stdout:
        print("note: train-ner has landed; its row is not measured by this version of the benchmark")


if __name__ == "__main__":
    main()
