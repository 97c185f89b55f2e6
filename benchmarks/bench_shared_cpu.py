"""A shared CPU: a tiny training run and inference while other processes compete for the cores.

Each measurement is a fresh subprocess (OMP_WAIT_POLICY is read when torch loads), timed after imports and
a warm-up, under one of these thread settings:
  torch default          as many threads as cores, OpenMP's default waiting (libgomp spins before it sleeps)
  PASSIVE                the same threads, OMP_WAIT_POLICY=PASSIVE (a thread waiting at a barrier sleeps at once)
  1 thread               torch.set_num_threads(1)
  sbert default          configure_threads(None): what sbert's commands use
  sbert + PASSIVE        both
and one of these loads: idle, or N processes busy with `while True: pass` (started and stopped by this script).
Workloads: `train` = steps of the tiny preset's masked LM (batch 32 x 24 tokens, 4 masked per row, AdamW),
`infer` = forward passes of a tiny classifier over 64 x 24-token batches. Settings alternate (the order
rotates every repetition); the figures are medians. The machine's other users count as load too: run it on
an idle machine for the absolute figures, or read the ratios within one load.

    python benchmarks/bench_shared_cpu.py                      # 5 repetitions, idle and 1 busy process
    python benchmarks/bench_shared_cpu.py --busy 0 1 2 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {  # name: (environment, threads passed to the child: "default", "sbert" or a number)
    "torch default": ({}, "default"),
    "PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, "default"),
    "1 thread": ({}, "1"),
    "sbert default": ({}, "sbert"),
    "sbert + PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, "sbert"),
}


def child(workload: str, threads: str, steps: int) -> None:
    """Runs in the subprocess: time `steps` of the workload and print {"seconds", "threads"} as JSON."""
    import torch
    import torch.nn.functional as F

    from sbert_cli.model.bert import BertForMaskedLM, BertForSequenceClassification
    from sbert_cli.model.config import preset
    from sbert_cli.model.precision import configure_threads

    if threads == "sbert":
        configure_threads(None)
    elif threads != "default":
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    B, T, M = 32 if workload == "train" else 64, 24, 4
    config = preset("tiny", 21128)
    input_ids = torch.randint(1000, 21128, (B, T))
    attention_mask = torch.ones(B, T, dtype=torch.long)
    if workload == "train":
        model = BertForMaskedLM(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        positions = torch.randint(1, T - 1, (B, M))
        labels = torch.randint(1000, 21128, (B, M))

        def step():
            logits = model(input_ids, attention_mask, masked_positions=positions)
            F.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        model = BertForSequenceClassification(config.with_labels([str(i) for i in range(10)])).eval()

        def step():
            with torch.inference_mode():
                model(input_ids, attention_mask).softmax(-1)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}))


def measure(workload: str, setting: str, steps: int) -> tuple[float, int]:
    env, threads = SETTINGS[setting]
    done = subprocess.run([sys.executable, __file__, "--child", workload, threads, str(steps)],
                          env={**os.environ, **env}, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["threads"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="competing busy processes per load")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--infer-batches", type=int, default=30)
    parser.add_argument("--workloads", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return

    from sbert_cli.model.precision import CpuUse, machine_summary

    print(f"{machine_summary()}; fp32; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} outside the settings")
    steps = {"train": args.train_steps, "infer": args.infer_batches}
    results: dict[tuple, list[float]] = {}
    threads_used: dict[tuple, int] = {}
    for busy in args.busy:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(0.5)
            others = CpuUse().others_busy(1.0)
            print(f"load {busy} busy process(es): other processes keep {others:.1f} cores busy (including them)")
            for rep in range(args.repeats):
                for workload in args.workloads:
                    shift = rep % len(args.settings)
                    for setting in args.settings[shift:] + args.settings[:shift]:
                        seconds, threads = measure(workload, setting, steps[workload])
                        results.setdefault((busy, workload, setting), []).append(seconds)
                        threads_used[(busy, workload, setting)] = threads
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()

    print(f"\n{'load':<16}{'workload':<9}{'setting':<16}{'threads':>8}{'median s':>10}{'per step ms':>12}"
          f"{'vs idle default':>17}   runs")
    for (busy, workload, setting), runs in results.items():
        seconds = statistics.median(runs)
        idle = results.get((0, workload, "torch default"))
        slowdown = f"{seconds / statistics.median(idle):>16.2f}x" if idle else f"{'':>17}"
        load = "idle" if busy == 0 else f"{busy} busy process" + ("es" if busy > 1 else "")
        print(f"{load:<16}{workload:<9}{setting:<16}{threads_used[(busy, workload, setting)]:>8}{seconds:>10.2f}"
              f"{1000 * seconds / steps[workload]:>12.1f}{slowdown}   {' '.join(f'{r:.2f}' for r in runs)}")


if __name__ == "__main__":
    main()
