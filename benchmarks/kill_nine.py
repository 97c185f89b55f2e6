"""kill -9 at random points of every writing command (issue 21), many times: the destination must be the old whole
or the new whole, and the command run again must succeed with no cleanup by hand.

    python benchmarks/kill_nine.py [--points 10] [--seed 0] [--keep DIR]

For each of convert-weights, embed --out, make-mlm-data, eval --out and train-cls: one run measures how long the
command takes; then, `--points` times, the command starts and gets SIGKILL after a random share of that time, the
destination is checked, and the command runs again (train-cls: with --force, as a stopped run needs) and must exit
0 leaving no `.NAME.tmp-PID` entries. Prints one line per command: points, kills that landed mid-run, failures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def sbert(argv: list[str], cwd: Path, kill_after: float | None = None) -> tuple[int, str, bool]:
    """(exit code, stderr, killed mid-run) of `sbert argv`, killed after kill_after seconds when given."""
    process = subprocess.Popen([sys.executable, "-m", "sbert_cli", *argv], cwd=cwd, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = False
    if kill_after is not None:
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            killed = True
    _, err = process.communicate()
    return process.returncode, err, killed


def digest(folder: Path, names: tuple[str, ...]) -> str | None:
    if not all((folder / n).is_file() for n in names):
        return None
    return hashlib.sha256(b"".join((folder / n).read_bytes() for n in names)).hexdigest()


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temp folder")
    parser.add_argument("--only", nargs="+", metavar="COMMAND",
                        help="only these commands (convert-weights embed make-mlm-data eval train-cls)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    from conftest import make_hf_checkpoint

    from sbert_cli.resources import THUCNEWS_TRAIN

    work = args.keep or Path(tempfile.mkdtemp(prefix="sbert-kill-nine-"))
    work.mkdir(parents=True, exist_ok=True)
    cls = make_hf_checkpoint(work / "cls", "cls", id2label={0: "finance", 1: "sports"})
    mlm = make_hf_checkpoint(work / "mlm", "mlm")
    rows = THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()[:2000]
    (work / "corpus.txt").write_text("".join(r.split("\t")[0] + "\n" for r in rows), encoding="utf-8")
    (work / "train.tsv").write_text("".join(f"{r.split(chr(9))[0]}\t{('finance', 'sports')[i % 2]}\n"
                                            for i, r in enumerate(rows[:400])), encoding="utf-8")
    model_files = ("config.json", "model.safetensors", "vocab.txt")

    def convert_check(old):
        state = digest(work / "dst", model_files)
        return state in old or bool(list(work.glob(".dst.old-*")))

    commands = {
        "convert-weights": (["convert-weights", str(mlm), "dst", "--no-probe", "--force"], ["convert-weights", str(cls), "dst", "--no-probe"],
                            lambda: {digest(work / "dst", model_files), digest(work / "reference", model_files)}, convert_check),
        "embed --out": (["embed", "--model", str(cls), "--file", "corpus.txt", "--out", "x.npy", "--force"],
                        ["embed", "--model", str(cls), "旧", "--out", "x.npy"], lambda: {(1,), (2000,)},
                        lambda old: __import__("numpy").load(work / "x.npy").shape[:1] in old),
        "make-mlm-data": (["make-mlm-data", "corpus.txt", "--out", "shards", "--shard-size", "300"], None, lambda: None,
                          lambda old: not (work / "shards" / "manifest.json").exists()
                          or all((work / "shards" / s["name"]).is_dir()
                                 for s in json.loads((work / "shards" / "manifest.json").read_text())["shards"])),
        "eval --out": (["eval", "--model", str(cls), "--data", "train.tsv", "--out", "report"], None, lambda: None,
                       lambda old: not (work / "report" / "metrics.json").exists()
                       or isinstance(json.loads((work / "report" / "metrics.json").read_text()), dict)),
        "train-cls": (["train-cls", "--config", "tiny", "--train", "train.tsv", "--max-steps", "8", "--save-every", "2",
                       "--batch-size", "8", "--no-plot", "--out", "run", "--force"], None, lambda: None, lambda old: True),
    }
    sbert(["convert-weights", str(mlm), "reference", "--no-probe"], work)
    for name, (argv, setup, old_state, intact) in commands.items():
        if args.only and name.split()[0] not in args.only:
            continue
        if setup is not None:
            sbert(setup, work)
        started = time.perf_counter()
        code, err, _ = sbert(argv, work)
        duration = time.perf_counter() - started
        assert code == 0, (name, err[-2000:])
        landed = failures = 0
        for _ in range(args.points):
            if name == "make-mlm-data":
                shutil.rmtree(work / "shards", ignore_errors=True)  # its old state: no data (a finished run needs --force)
            old = old_state()
            code, err, killed = sbert(argv, work, kill_after=rng.uniform(0.5, duration))
            landed += killed
            ok = intact(old)
            if killed:  # the same command again: no cleanup by hand
                code, err, _ = sbert(argv, work)
            ok = ok and code == 0 and not leftovers(work)
            failures += not ok
            if not ok:
                print(f"  {name}: failed after a kill ({err.strip().splitlines()[-1] if err.strip() else 'no error'})")
        print(f"{name}: {args.points} points, {landed} killed mid-run, {failures} failures ({duration:.1f} s a run)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
