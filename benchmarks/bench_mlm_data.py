"""make-mlm-data against a Google-style reference pipeline, side by side in one run; and its peak memory.

    python benchmarks/bench_mlm_data.py                 # 180k lines: reference vs ours; ours at 1.8M lines
    python benchmarks/bench_mlm_data.py --no-big        # skip the 1.8M-line memory run
    python benchmarks/bench_mlm_data.py --no-big --runs 7 --no-reference   # --workers 1 vs 2, alternated

The corpus is the bundled THUCNews train file (9,000 headlines) repeated. Every run is a fresh
subprocess timed from start to exit (imports and dictionary loading included, for both): wall time,
CPU time of all its processes, and peak resident memory (the largest single process; getrusage of
the waited-for children). Wall times on a shared machine are noisy: compare ratios within one run.
--workers 1 and 2 alternate (which goes first swaps every repetition) and the table gives medians.
The --workers ratio means something only on an idle machine: the run samples how many cores other processes keep
busy (before, between and after the runs) and says when the machine was not idle; the ratio is then a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sbert_cli.resources import THUCNEWS_TRAIN

REFERENCE = Path(__file__).resolve().parent / "reference_pretraining_data.py"
MEASURE = (
    "import resource, subprocess, sys, time\n"
    "started = time.perf_counter()\n"
    "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "seconds = time.perf_counter() - started\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, done.returncode)\n"
    "sys.stderr.write(done.stderr[-2000:])\n"
)


def make_corpus(path: Path, repeats: int) -> int:
    text = THUCNEWS_TRAIN.read_bytes()
    with open(path, "wb") as f:
        for _ in range(repeats):
            f.write(text)
    return text.count(b"\n") * repeats


def measure(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak MiB) of one command run in a fresh measuring process."""
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True)
    seconds, cpu_seconds, peak_kb, returncode = done.stdout.split()
    if int(returncode) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")
    return float(seconds), float(cpu_seconds), int(peak_kb) / 1024


def ours(corpus: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "sbert_cli", "make-mlm-data", str(corpus), "--out", str(out),
            "--workers", str(workers), "--force"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="THUCNews train copies for the speed run (20: 180k lines)")
    parser.add_argument("--big-repeats", type=int, default=200, help="copies for the memory run (200: 1.8M lines)")
    parser.add_argument("--no-big", action="store_true", help="skip the big memory run")
    parser.add_argument("--workdir", type=Path, default=None, help="where corpora and outputs go (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each --workers setting, alternated (medians)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference (minutes): ours only")
    args = parser.parse_args()

    from sbert_cli.model.precision import CpuUse, machine_summary

    print(f"{machine_summary()} (os.cpu_count() {os.cpu_count()}, usable {len(os.sched_getaffinity(0))})")
    others = CpuUse()

    def others_busy() -> float:
        """Cores other processes keep busy over the next second (a fresh window: our own runs are not in it)."""
        others.others_busy()
        return others.others_busy(1.0)

    busy = [others_busy()]  # sampled before and between the runs
    print(f"idle check: other processes keep {busy[0]:.2f} cores busy; load average {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        lines = make_corpus(corpus, args.repeats)
        rows = []
        if not args.no_reference:
            reference = [sys.executable, str(REFERENCE), "--input", str(corpus), "--output", str(tmp / "ref.pkl")]
            rows.append(("reference (Google-style, jieba)", lines, *measure(reference)))
        runs: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
        for rep in range(args.runs):
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                runs[workers].append(measure(ours(corpus, tmp / f"ours{workers}", workers)))
                busy.append(others_busy())
        for workers, measured in runs.items():
            medians = [statistics.median(m[i] for m in measured) for i in range(3)]
            rows.append((f"sbert make-mlm-data --workers {workers}", lines, *medians))
        if args.runs > 1:
            ratios = [one[0] / two[0] for one, two in zip(runs[1], runs[2])]
            print(f"--workers 1 / --workers 2 wall time, per repetition: {' '.join(f'{r:.2f}' for r in ratios)}; "
                  f"median of the time ratios {statistics.median(ratios):.2f}x")
        idle = max(busy) < 0.2
        print(f"idle check: other processes kept {min(busy):.2f}..{max(busy):.2f} cores busy between runs; "
              + ("the machine was idle" if idle else "NOT idle: the --workers ratio is a lower bound"))
        counts = json.loads((tmp / "ours1" / "manifest.json").read_text())["counts"]
        if not args.no_big:
            corpus.unlink()
            big = tmp / "big.txt"
            big_lines = make_corpus(big, args.big_repeats)
            rows.append(("sbert make-mlm-data --workers 1", big_lines, *measure(ours(big, tmp / "big-out", 1))))

    reference_rate = rows[0][1] / rows[0][2] if not args.no_reference else None
    reference_cpu_rate = rows[0][1] / rows[0][3] if not args.no_reference else None
    print(f"{'pipeline':34} {'lines':>10} {'wall s':>7} {'lines/s':>9} {'vs ref':>7} {'CPU s':>7} {'vs ref':>7} {'peak MiB':>9}")
    for name, n, seconds, cpu_seconds, peak in rows:
        rate, cpu_rate = n / seconds, n / cpu_seconds
        versus = f"{rate / reference_rate:>6.1f}x" if reference_rate else f"{'-':>7}"
        cpu_versus = f"{cpu_rate / reference_cpu_rate:>6.1f}x" if reference_cpu_rate else f"{'-':>7}"
        print(f"{name:34} {n:>10,} {seconds:>7.1f} {rate:>9,.0f} {versus} {cpu_seconds:>7.1f} {cpu_versus} {peak:>9.0f}")
    print(f"ours at {lines:,} lines: {counts['sequences']:,} sequences, {counts['tokens']:,} tokens, {counts['masked']:,} masked")


if __name__ == "__main__":
    main()
