"""Writes that cannot lose data or leave a mess (issue 21): every writing command (make-mlm-data, embed, train-cls,
train-ner, pretrain, convert-weights, eval) with --out on a read-only folder,
under a file-size limit (RLIMIT_FSIZE, a full disk's twin) and with stdout on /dev/full ends with one error line and
no temp files; `kill -9` at a few points of convert-weights, embed --out and make-mlm-data leaves the destination
old-complete or new-complete, and the same command run again succeeds without any cleanup by hand.

Commands run in real subprocesses (`python -m sbert_cli`): limits, users and file descriptors are the process's.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sbert_cli.resources import NER_SAMPLE_TRAIN, THUCNEWS_TRAIN

# root writes anywhere: it runs its commands without the capabilities that override file permissions.
NO_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def world(hf_cls_dir, hf_mlm_dir):
    """A folder every user may read (pytest's tmp folders are 0700): models, a few texts, HOME and caches."""
    root = Path(tempfile.mkdtemp(prefix="sbert-write-safety-"))
    root.chmod(0o755)
    shutil.copytree(hf_cls_dir, root / "cls")
    shutil.copytree(hf_mlm_dir, root / "mlm")
    rows = THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()[:30]
    (root / "train.tsv").write_text("".join(f"{r.split(chr(9))[0]}\t{('finance', 'sports')[i % 2]}\n"
                                            for i, r in enumerate(rows)), encoding="utf-8")
    (root / "train.txt").write_text("".join(r.split("\t")[0] + "\n" for r in rows), encoding="utf-8")
    shutil.copyfile(NER_SAMPLE_TRAIN, root / "ner.txt")
    from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
    from sbert_cli.model.model_dir import load_tokenizer

    make_mlm_data([root / "train.txt"], root / "shards", load_tokenizer(root / "mlm"), MLMDataSettings(max_seq_len=32))
    (root / "home").mkdir(mode=0o777)
    (root / "home").chmod(0o777)
    for path in root.rglob("*"):
        path.chmod(path.stat().st_mode | 0o755 if path.is_dir() else path.stat().st_mode | 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def env_for(world: Path) -> dict:
    home = str(world / "home")
    return {**os.environ, "HOME": home, "MPLCONFIGDIR": home, "HF_HOME": home, "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def writing_commands(world: Path, out: Path) -> dict[str, tuple[list[str], Path]]:
    """Each writing command with its --out under `out`: name -> (argv, what the error line must name)."""
    return {
        "make-mlm-data": (["make-mlm-data", str(world / "train.txt"), "--out", str(out / "shards")], out / "shards"),
        "embed": (["embed", "--model", str(world / "cls"), "你好", "再见", "--out", str(out / "x.npy")], out / "x.npy"),
        "train-cls": (["train-cls", "--config", "tiny", "--train", str(world / "train.tsv"), "--max-steps", "1",
                       "--batch-size", "4", "--no-plot", "--out", str(out / "run")], out / "run"),
        "train-ner": (["train-ner", "--config", "tiny", "--train", str(world / "ner.txt"), "--max-steps", "1",
                       "--batch-size", "4", "--no-plot", "--out", str(out / "ner-run")], out / "ner-run"),
        "pretrain": (["pretrain", "--model", str(world / "mlm"), "--data", str(world / "shards"), "--max-steps", "1",
                      "--batch-size", "4", "--no-plot", "--out", str(out / "mlm-run")], out / "mlm-run"),
        "convert-weights": (["convert-weights", str(world / "mlm"), str(out / "dst"), "--no-probe"], out / "dst"),
        "eval": (["eval", "--model", str(world / "cls"), "--data", str(world / "train.tsv"), "--out", str(out / "report")],
                 out / "report"),
    }


# Runs each command in this one process (one start-up for all); stdout is put back on /dev/full before each.
DRIVER = """
import json, os, sys
from sbert_cli.cli import app
runs, full = json.loads(sys.argv[1]), sys.argv[2] == "full"
for name, argv in runs.items():
    if full:
        os.dup2(os.open("/dev/full", os.O_WRONLY), 1)
    sys.stderr.write(f"@@@ {name}\\n")
    sys.stderr.flush()
    try:
        app(argv, prog_name="sbert")
        code = 0
    except SystemExit as e:
        code = e.code
    sys.stderr.write(f"@@@ exit {code}\\n")
    sys.stderr.flush()
"""


def run_all(world: Path, runs: dict, *, fsize: int | None = None, as_user: bool = False, full: bool = False) -> dict:
    """name -> (exit code, stderr lines) of each run, in one subprocess under the given limit or stdout; as_user:
    without root's power over file permissions."""

    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    done = subprocess.run([*(NO_OVERRIDE if as_user else []), sys.executable, "-c", DRIVER, json.dumps({k: v[0] for k, v in runs.items()}),
                           "full" if full else "-"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          cwd=world, env=env_for(world), preexec_fn=limit, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results, name, lines = {}, None, []
    for line in done.stderr.splitlines():
        if line.startswith("@@@ exit "):
            results[name] = (int(line.split()[-1]), lines)
        elif line.startswith("@@@ "):
            name, lines = line[4:], []
        elif line.strip():
            lines.append(line)
    return results


def assert_one_error(results: dict, runs: dict, *fragments: str) -> None:
    for name, (argv, named) in runs.items():
        code, lines = results[name]
        errors = [line for line in lines if line.startswith("error: ")]
        assert code == 1 and len(errors) == 1, (name, lines)
        assert not any("Traceback" in line for line in lines), (name, lines)
        for fragment in fragments or (named.name,):
            assert fragment in errors[0], (name, fragment, errors[0])


def temp_leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_a_read_only_out_folder_is_one_error_line_for_every_writing_command(world):
    out = world / "read-only"
    out.mkdir()
    runs = writing_commands(world, out)
    if NO_OVERRIDE and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    out.chmod(0o555)
    try:
        results = run_all(world, runs, as_user=True)
    finally:
        out.chmod(0o755)
    assert_one_error(results, runs)
    assert all("Permission denied" in lines[-1] or "Read-only" in lines[-1] for _, lines in results.values())
    assert list(out.iterdir()) == []


def test_a_full_disk_is_one_error_line_and_leaves_no_temp_files(world):
    out = world / "full-disk"
    out.mkdir()
    runs = writing_commands(world, out)
    results = run_all(world, runs, fsize=200)  # `ulimit -f`: writes past 200 bytes fail with EFBIG, as on a full disk
    assert_one_error(results, runs)
    assert all("EFBIG" in lines[-1] for _, lines in results.values())
    assert temp_leftovers(out) == []
    assert not (out / "x.npy").exists() and not list((out / "dst").glob("*"))
    again = {name: runs[name] for name in ("make-mlm-data", "train-cls", "eval")}
    for name, (code, lines) in run_all(world, again).items():  # the same commands again: no --force, no cleanup by hand
        assert code == 0, (name, lines)


def test_stdout_on_dev_full_is_one_error_line(world):
    out = world / "dev-full"
    out.mkdir()
    runs = writing_commands(world, out)
    del runs["embed"]  # with --out it prints nothing on stdout (its summary goes to stderr)
    runs["embed to stdout"] = (["embed", "--model", str(world / "cls"), "你好"], None)
    runs["predict"] = (["predict", "--model", str(world / "cls"), "你好"], None)
    results = run_all(world, runs, full=True)
    assert_one_error(results, runs, "standard output", "ENOSPC")


# --- kill -9 at a few points: the destination is old-complete or new-complete, and a rerun just works


def digest(folder: Path, names=("config.json", "model.safetensors", "vocab.txt")) -> str | None:
    if not all((folder / n).is_file() for n in names):
        return None
    return hashlib.sha256(b"".join((folder / n).read_bytes() for n in names)).hexdigest()


def run_and_kill(argv: list[str], world: Path, when) -> None:
    """Start `sbert argv`, SIGKILL it as soon as when() is true (or when it ends by itself)."""
    process = subprocess.Popen([sys.executable, "-m", "sbert_cli", *argv], cwd=world, env=env_for(world),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and not when() and time.monotonic() < deadline:
        time.sleep(0.002)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


def rerun(argv: list[str], world: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "sbert_cli", *argv], cwd=world, env=env_for(world),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_kill_9_during_convert_weights_keeps_old_or_new_and_a_rerun_succeeds(world):
    work = world / "kill-convert"
    work.mkdir()
    dst = work / "dst"
    rerun(["convert-weights", str(world / "cls"), str(dst), "--no-probe"], world)
    argv = ["convert-weights", str(world / "mlm"), str(dst), "--no-probe", "--force"]
    points = [lambda: any(work.glob(".dst.tmp-*")),  # the temp folder is being written
              lambda: any(work.glob(".dst.tmp-*/model.safetensors"))]
    for when in points:
        old = digest(dst)
        run_and_kill(argv, world, when)
        # between the two renames of a replacement the old whole waits beside it, and the next run puts it back
        killed, aside = digest(dst), any(work.glob(".dst.old-*"))
        rerun(argv, world)
        new = digest(dst)
        assert new is not None and (killed in (old, new) or aside), "a destination mixing old and new files"
        assert temp_leftovers(work) == [], "the rerun did not clean up after the killed run"


def test_kill_9_during_embed_out_keeps_old_or_new_and_a_rerun_succeeds(world):
    import numpy as np

    work = world / "kill-embed"
    work.mkdir()
    out = work / "x.npy"
    texts = [f"第{n}条" for n in range(400)]
    rerun(["embed", "--model", str(world / "cls"), "旧", "--out", str(out)], world)
    old = np.load(out)
    argv = ["embed", "--model", str(world / "cls"), *texts, "--out", str(out), "--force", "--batch-size", "8"]
    points = (lambda: any(work.glob(".x.npy.tmp-*")),
              lambda: sum(p.stat().st_size for p in work.glob(".x.npy.tmp-*")) > 4096)
    for when in points:
        run_and_kill(argv, world, when)
        kept = np.load(out)  # whole: the old vectors, or all the new ones
        assert np.array_equal(kept, old) or kept.shape == (len(texts), old.shape[1])
        rerun(argv, world)
        old = np.load(out)
        assert old.shape == (len(texts), kept.shape[1])
        assert temp_leftovers(work) == []


def test_kill_9_during_make_mlm_data_leaves_no_data_or_whole_data_and_a_rerun_succeeds(world):
    work = world / "kill-mlm"
    work.mkdir()
    lines = THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()[:3000]
    corpus = work / "corpus.txt"
    corpus.write_text("".join(line.split("\t")[0] + "\n" for line in lines), encoding="utf-8")
    out = work / "shards"
    argv = ["make-mlm-data", str(corpus), "--out", str(out), "--shard-size", "500", "--max-seq-len", "32"]
    for when in (lambda: any(out.glob(".shard-*.tmp-*")), lambda: (out / "shard-00001").is_dir()):
        shutil.rmtree(out, ignore_errors=True)
        run_and_kill(argv, world, when)
        if (out / "manifest.json").is_file():  # it finished before the kill: whole data
            assert all((out / s["name"]).is_dir() for s in json.loads((out / "manifest.json").read_text())["shards"])
        rerun(argv, world)  # the same command, no --force: an unfinished run's shards are no data
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        assert sorted(p.name for p in out.glob("shard-*")) == [s["name"] for s in manifest["shards"]]
        assert temp_leftovers(out) == []
