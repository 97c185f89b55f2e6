"""Nothing the user had is lost: --force removes only what sbert wrote, output folders are locked, and a
destination that contains the source, the current folder or home is refused (outputs.py, issue 12)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import one_line_error
from sbert_cli.cli import app
from sbert_cli.errors import ConfigError
from sbert_cli.outputs import MANIFEST, OutputDir, lock_holder

runner = CliRunner()


# ------------------------------------------------------------------------------------ the policy itself


def test_force_clears_only_recorded_files_and_never_follows_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    out = OutputDir(tmp_path / "out")
    with out:
        (out.path / "model").mkdir()
        (out.path / "model" / "weights.bin").write_text("sbert")
        (out.path / "report.json").write_text("{}")
        out.record("model", "report.json")
        (out.path / "model" / "photo.jpg").write_text("user's, added later")
        (out.path / "notes.txt").write_text("user's")
        os.symlink(outside, out.path / "link")
    out.check(force=True)
    removed = out.clear()
    assert sorted(removed) == ["model/weights.bin", "report.json"]
    assert (out.path / "model" / "photo.jpg").read_text() == "user's, added later"
    assert (out.path / "notes.txt").read_text() == "user's"
    assert (outside / "precious.txt").read_text() == "keep" and (out.path / "link").is_symlink()
    assert not (out.path / MANIFEST).exists()


def test_a_folder_with_a_users_file_is_not_replaced(tmp_path):
    out = OutputDir(tmp_path / "run")
    with out:
        (out.path / "best").mkdir()
        (out.path / "best" / "photo.jpg").write_text("mine")
        with pytest.raises(ConfigError, match=r"best: holds files sbert did not write \(best/photo.jpg\)"):
            out.check(force=True, will_write=["best"])
        new = tmp_path / "new"
        new.mkdir()
        (new / "config.json").write_text("{}")
        with pytest.raises(ConfigError, match="holds files sbert did not write"):
            out.replace(new, "best")
    assert (out.path / "best" / "photo.jpg").read_text() == "mine"


@pytest.mark.parametrize("where", ["cwd", "home", "contains-source"])
def test_dangerous_destinations_are_refused(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    target = {"cwd": tmp_path, "home": tmp_path / "home", "contains-source": tmp_path / "s"}[where]
    with pytest.raises(ConfigError, match="current, home or root folder|which this command reads"):
        OutputDir(target).check(force=True, reads=[tmp_path / "s" / "b" / "m"])


def test_a_held_folder_is_refused_with_the_holders_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from sbert_cli.outputs import OutputDir
        OutputDir({str(tmp_path / 'out')!r}).acquire()
        print("held", flush=True)
        time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path / "out") == str(holder.pid)
        with pytest.raises(ConfigError, match=f"in use by another sbert process \\(PID {holder.pid}\\)"):
            OutputDir(tmp_path / "out").acquire()
        with pytest.raises(ConfigError, match="in use by another sbert process"):
            OutputDir(tmp_path / "out").check(force=True)
    finally:
        holder.kill()
        holder.wait()
    OutputDir(tmp_path / "out").acquire().release()  # the OS dropped the dead holder's lock


# ------------------------------------------------------------------------------------ every command with --force


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, hf_mlm_dir):
    from sbert_cli.tasks.convert import convert_weights

    out = tmp_path_factory.mktemp("model") / "m"
    convert_weights(hf_mlm_dir, out, probe=False)
    return out


def test_convert_weights_into_the_parent_of_its_source_is_refused(tmp_path, model_dir):
    """The issue's case: `mkdir -p s/b && echo x > s/b/MARKER.txt && cp -r MODEL s/b/m && convert-weights s/b/m s/b --force`."""
    (tmp_path / "s" / "b").mkdir(parents=True)
    (tmp_path / "s" / "b" / "MARKER.txt").write_text("x")
    shutil.copytree(model_dir, tmp_path / "s" / "b" / "m")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    result = runner.invoke(app, ["convert-weights", str(tmp_path / "s" / "b" / "m"), str(tmp_path / "s" / "b"), "--force"])
    one_line_error(result, "which this command reads")
    result = runner.invoke(app, ["convert-weights", str(tmp_path / "s" / "b" / "m"), str(tmp_path / "s"), "--force"])
    one_line_error(result, "which this command reads")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_convert_weights_into_the_current_folder_is_refused(tmp_path, model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["convert-weights", str(model_dir), str(tmp_path.resolve()), "--force"])
    one_line_error(result, "current, home or root folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_make_mlm_data_force_keeps_a_users_files(tmp_path, thucnews_train):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)[:50]), encoding="utf-8")
    out = tmp_path / "data"
    assert runner.invoke(app, ["make-mlm-data", str(corpus), "--out", str(out), "--max-seq-len", "32"]).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "shard-00000" / "photo.jpg").write_text("mine too")
    result = runner.invoke(app, ["make-mlm-data", str(corpus), "--out", str(out), "--max-seq-len", "32", "--force"])
    one_line_error(result, "shard-00000: holds files sbert did not write (shard-00000/photo.jpg)")
    (out / "shard-00000" / "photo.jpg").unlink()
    result = runner.invoke(app, ["make-mlm-data", str(corpus), "--out", str(out), "--max-seq-len", "32", "--force"])
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "manifest.json").is_file()


def run_cls(*args):
    return runner.invoke(app, ["train-cls", *map(str, args)])


@pytest.fixture
def cls_files(tmp_path, thucnews_train):
    lines = thucnews_train.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "train.txt").write_text("".join(lines[:40]), encoding="utf-8")
    return tmp_path


def test_train_cls_force_removes_only_what_a_run_wrote(cls_files):
    out = cls_files / "o"
    (out / "best").mkdir(parents=True)
    (out / "best" / "photo.jpg").write_text("mine")
    common = ["--train", cls_files / "train.txt", "--config", "tiny", "--max-seq-len", 16, "--out", out,
              "--max-steps", 2, "--batch-size", 8, "--no-plot", "--precision", "fp32"]
    result = run_cls(*common, "--force")
    one_line_error(result, "best: holds files sbert did not write (best/photo.jpg)")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["best", "best/photo.jpg"]
    (out / "best" / "photo.jpg").rename(out / "photo.jpg")
    assert run_cls(*common, "--force").exit_code == 0
    (out / "last" / "my-notes.txt").write_text("mine")
    result = run_cls(*common, "--force")
    one_line_error(result, "last: holds files sbert did not write (last/my-notes.txt)")
    (out / "last" / "my-notes.txt").unlink()
    assert run_cls(*common, "--force").exit_code == 0, "a second --force replaces the first run's results"
    assert (out / "photo.jpg").read_text() == "mine"
    assert (out / "last" / "model.safetensors").is_file() and (out / "run.json").is_file()


def test_two_runs_on_one_out_the_second_is_refused_and_the_first_finishes(cls_files):
    out = cls_files / "o"
    command = [sys.executable, "-m", "sbert_cli", "train-cls", "--train", str(cls_files / "train.txt"), "--config", "tiny",
               "--max-seq-len", "16", "--out", str(out), "--max-steps", "400", "--batch-size", "8", "--no-plot",
               "--precision", "fp32", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while lock_holder(out) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_holder(out) == str(first.pid)
        second = subprocess.run(command + ["--force"], capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert f"in use by another sbert process (PID {first.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        first.wait(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, first.stderr
    steps = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in line]
    assert len(steps) == 400  # one run's records, none doubled
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != MANIFEST]


def test_demo_force_keeps_a_users_files(tmp_path):
    from sbert_cli.tasks.demo import prepare_demo_dir

    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with prepare_demo_dir(tmp_path / "d", force=False) as outputs:
        (outputs.path / "report.json").write_text("{}")
        outputs.record("report.json")
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty"):
        prepare_demo_dir(tmp_path / "d", force=False)
    prepare_demo_dir(tmp_path / "d", force=True).release()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["notes.txt"]


def test_eval_rerun_replaces_its_own_report_but_not_a_users_file(tmp_path, hf_cls_dir):
    from sbert_cli.tasks.evaluate import evaluate

    data = tmp_path / "dev.txt"
    data.write_text("股市大涨\tfinance\n球队夺冠\tsports\n新游戏发布\tgame\n", encoding="utf-8")
    out = tmp_path / "report"
    evaluate(hf_cls_dir, data, out_dir=out, device="cpu", precision="fp32")
    evaluate(hf_cls_dir, data, out_dir=out, device="cpu", precision="fp32")  # a rerun replaces its own report
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text("mine")
    with pytest.raises(ConfigError, match="holds files sbert did not write"):
        evaluate(hf_cls_dir, data, out_dir=other, device="cpu", precision="fp32")
    assert (other / "metrics.json").read_text() == "mine"


def test_pretrain_force_keeps_a_users_files(tmp_path, thucnews_train):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(line.split("\t")[0] + "\n" for line in thucnews_train.read_text(encoding="utf-8").splitlines()[:40]),
                      encoding="utf-8")
    assert runner.invoke(app, ["make-mlm-data", str(corpus), "--out", str(tmp_path / "mlm"), "--max-seq-len", "32"]).exit_code == 0
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    common = ["pretrain", "--data", str(tmp_path / "mlm"), "--config", "tiny", "--out", str(out), "--max-steps", "2",
              "--batch-size", "8", "--no-plot", "--precision", "fp32"]
    one_line_error(runner.invoke(app, common), "is not empty")
    for _ in range(2):
        result = runner.invoke(app, [*common, "--force"])
        assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "last" / "model.safetensors").is_file()
    around = ["pretrain", "--data", str(tmp_path / "mlm"), "--config", "tiny", "--out", str(tmp_path), "--force",
              "--max-steps", "1", "--precision", "fp32"]  # an --out that contains the data
    one_line_error(runner.invoke(app, around), "which this command reads")


# ------------------------------------------------------------------------- the one writer (issue 21)


def test_a_file_that_appears_while_sbert_writes_is_kept_not_replaced(tmp_path):
    import numpy as np

    from sbert_cli.errors import OutputError
    from sbert_cli.outputs import new_file
    from sbert_cli.tasks.embedding import NpyWriter

    target = tmp_path / "x.npy"
    writer = NpyWriter(target, 4)  # the check passes: nothing there yet
    writer.write(np.ones((2, 4), dtype=np.float32))
    target.write_bytes(b"the user's, written meanwhile")
    with pytest.raises(OutputError, match="x.npy: appeared while sbert was writing it, and was kept"):
        writer.close()
    assert target.read_bytes() == b"the user's, written meanwhile"
    with pytest.raises(OutputError, match="appeared while"):
        with new_file(tmp_path / "r.txt") as stream:
            stream.write("sbert's")
            (tmp_path / "r.txt").write_text("mine")
    assert (tmp_path / "r.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt", "x.npy"]  # no temp files left


def test_the_writer_never_writes_through_a_link_or_onto_a_device(tmp_path):
    from sbert_cli.errors import OutputError
    from sbert_cli.outputs import write_text

    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    os.symlink(outside, tmp_path / "link.txt")
    os.mkfifo(tmp_path / "fifo.txt")
    with pytest.raises(OutputError, match="link.txt: is a symbolic link"):
        write_text(tmp_path / "link.txt", "x", force=True)
    with pytest.raises(OutputError, match="fifo.txt: is a device, FIFO or socket"):
        write_text(tmp_path / "fifo.txt", "x", force=True)
    with pytest.raises(OutputError, match="outside.txt: already exists; pass `force`"):
        write_text(outside, "x")
    assert outside.read_text() == "keep"
    write_text(outside, "replaced", force=True)
    assert outside.read_text() == "replaced"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_and_model_dirs_get_the_users_umask(tmp_path, umask, hf_mlm_dir):
    from sbert_cli.tasks.convert import convert_weights
    from sbert_cli.outputs import write_text

    previous = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "a")
        model = convert_weights(hf_mlm_dir, tmp_path / "model", probe=False).destination
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    for path in model.iterdir():  # model.safetensors too: safetensors alone writes it 0600
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
    assert model.stat().st_mode & 0o777 == 0o777 & ~umask


def test_temp_entries_of_dead_processes_are_removed_and_a_half_replaced_folder_is_put_back(tmp_path):
    from sbert_cli.outputs import remove_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".x.npy.tmp-{dead}").write_text("half")
    (tmp_path / f".x.npy.tmp-{os.getppid()}").write_text("a live writer's")  # pytest's parent is alive
    (tmp_path / f".model.tmp-{dead}").mkdir()
    (tmp_path / f".model.old-{dead}").mkdir()  # killed between moving the old aside and the new in
    (tmp_path / f".model.old-{dead}" / "config.json").write_text("old")
    (tmp_path / ".notes.tmp-x").write_text("not a PID: not sbert's")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == [f".model.tmp-{dead}", f".x.npy.tmp-{dead}"]
    assert (tmp_path / "model" / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".x.npy.tmp-{os.getppid()}", ".notes.tmp-x", "model"])


def test_a_failed_checkpoint_leaves_the_run_force_able_and_temps_are_cleaned_anywhere(tmp_path):
    out = OutputDir(tmp_path / "run")
    with out:
        (out.path / "run.json").write_text("{}")
        out.record("run.json")
        half = out.path / "checkpoints" / ".step-0000002.tmp-999999"  # a save that died (disk full, kill -9)
        half.mkdir(parents=True)
        (half / "model.safetensors").write_bytes(b"half")
    assert out.foreign() == []
    out.check(force=True, will_write=["checkpoints", "run.json"])  # not "holds files sbert did not write"
    with out:  # the next run's lock removes it
        assert not half.exists()


def test_a_folder_moved_in_is_recorded_even_when_killed_right_after_the_move(tmp_path):
    out = OutputDir(tmp_path / "data")
    with out:
        out.expect("shard-00000")  # what a run killed right after its move leaves: the whole entry, no files listed
        (out.path / "shard-00000").mkdir()
        (out.path / "shard-00000" / "input_ids.npy").write_bytes(b"x")
        assert out.foreign() == []
        out.settle("shard-00000")
        assert out.recorded() == {"shard-00000/input_ids.npy"}
        (out.path / "shard-00000" / "photo.jpg").write_text("the user's, added later")
        assert out.foreign() == ["shard-00000/photo.jpg"]
