"""No input of any size takes sbert past a 3 GB address space (issue 21): a gzip bomb, /dev/zero as a file and on stdin,
a 200 MB line, and a config.json of 100,000 layers each end in one error line, in seconds.

The bounds live in the one input layer (data/text_input.iter_raw_lines: SBERT_MAX_LINE_BYTES, SBERT_MAX_INPUT_BYTES)
and in config.json's arithmetic (BertConfig.check_size); every case runs in one subprocess under RLIMIT_AS.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

ADDRESS_SPACE = 3 * 1024**3

# Runs each case in this one process, with its own stdin (fd 0), environment and stderr file, stdout to /dev/null.
DRIVER = """
import json, os, sys, tempfile, time
from sbert_cli.cli import app
timings = open(sys.argv[2], "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
out = {}
for name, (argv, stdin, env) in json.loads(sys.argv[1]).items():
    os.environ.update(env)
    os.dup2(os.open(stdin or os.devnull, os.O_RDONLY), 0)
    sys.stdin = open(0, "r", encoding="utf-8", closefd=False)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        saved, started = os.dup(2), time.time()
        sys.stderr.flush()
        os.dup2(err.fileno(), 2)
        try:
            app(argv, prog_name="sbert")
            code, kind = 0, "none"
        except SystemExit as e:
            code, kind = e.code, "SystemExit"
        except BaseException as e:
            code, kind = -1, type(e).__name__
        print(f"{name}: {time.time() - started:.1f} s", file=timings, flush=True)
        sys.stderr.flush()
        os.dup2(saved, 2)
        err.seek(0)
        out[name] = [code, err.read(), kind]
    for key in env:
        del os.environ[key]
print(json.dumps(out), file=sys.stderr)
"""


def test_no_input_takes_a_command_past_3_gb(tmp_path, hf_cls_dir, hf_mlm_dir):
    lines_bomb = tmp_path / "lines.txt.gz"  # 60 MB of short lines in about 60 kB: a bomb the line bound does not stop
    with gzip.open(lines_bomb, "wb", compresslevel=9) as f:
        for _ in range(60):
            f.write(b"\xe5\xa5\xbd\n" * 250_000)
    zeros_bomb = tmp_path / "zeros.txt.gz"  # 256 MB of zeros in 250 kB: no line end at all
    with gzip.open(zeros_bomb, "wb", compresslevel=9) as f:
        block = bytes(1 << 21)
        for _ in range(128):
            f.write(block)
    huge_line = tmp_path / "line.txt"  # 200 MB without a line end (sparse: zeros on read, nothing on disk)
    with open(huge_line, "wb") as f:
        f.truncate(200 * 1024**2)
    chinese_line = tmp_path / "chinese.txt"
    chinese_line.write_bytes("好".encode() * 1_000_000)  # 3 MB of text on one line
    layers = Path(shutil.copytree(hf_cls_dir, tmp_path / "layers"))
    config = json.loads((layers / "config.json").read_text(encoding="utf-8"))
    (layers / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 100_000}), encoding="utf-8")

    small_budget = {"SBERT_MAX_INPUT_BYTES": "20000"}  # the budget lowered, as a user may: 5,000 lines pass first
    cls, mlm, out = str(hf_cls_dir), str(hf_mlm_dir), str(tmp_path / "out")
    train = ["train-cls", "--config", "tiny", "--max-steps", "1", "--no-plot", "--out", str(tmp_path / "run")]
    runs = {
        "lines bomb, make-mlm-data": (["make-mlm-data", str(lines_bomb), "--out", out], None, small_budget),
        "lines bomb, embed": (["embed", "--model", cls, "--file", str(lines_bomb)], None, small_budget),
        "lines bomb, predict": (["predict", "--model", cls, "--file", str(lines_bomb)], None, small_budget),
        "lines bomb, train-cls": (train + ["--train", str(lines_bomb)], None, small_budget),
        "zeros bomb, make-mlm-data": (["make-mlm-data", str(zeros_bomb), "--out", out], None, {}),
        "zeros bomb, train-cls": (train + ["--train", str(zeros_bomb)], None, {}),
        "/dev/zero, predict --file": (["predict", "--model", cls, "--file", "/dev/zero"], None, {}),
        "/dev/zero, embed --file": (["embed", "--model", cls, "--file", "/dev/zero"], None, {}),
        "/dev/zero on stdin, make-mlm-data": (["make-mlm-data", "-", "--out", out], "/dev/zero", {}),
        "/dev/zero on stdin, fill-mask": (["fill-mask", "--model", mlm], "/dev/zero", {}),
        "/dev/zero on stdin, predict": (["predict", "--model", cls], "/dev/zero", {}),
        "200 MB line, predict": (["predict", "--model", cls, "--file", str(huge_line)], None, {}),
        "3 MB of Chinese on one line, embed": (["embed", "--model", cls, "--file", str(chinese_line)], None, {}),
        "100,000 layers, predict": (["predict", "--model", str(layers), "你好"], None, {}),
        "100,000 layers, convert-weights": (["convert-weights", str(layers), str(tmp_path / "dst"), "--no-probe"], None, {}),
        "a bad SBERT_MAX_LINE_BYTES": (["predict", "--model", cls, "--file", str(chinese_line)], None,
                                       {"SBERT_MAX_LINE_BYTES": "lots"}),
    }

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(runs), str(tmp_path / "timings.txt")], capture_output=True, text=True, check=False,
                          timeout=300, preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, (done.stderr[-3000:], (tmp_path / "timings.txt").read_text())
    results = json.loads(done.stderr.splitlines()[-1])
    expected = {"lines bomb": "more than 20,000 bytes", "zeros bomb": "SBERT_MAX_LINE_BYTES",
                "/dev/zero": "SBERT_MAX_LINE_BYTES", "200 MB": "line.txt:1", "3 MB": "chinese.txt:1",
                "100,000 layers": "num_hidden_layers 100,000", "a bad": "SBERT_MAX_LINE_BYTES must be"}
    for name, (code, stderr, exception) in results.items():
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert code == 1 and exception == "SystemExit" and len(errors) == 1, (name, stderr[-1500:], exception)
        assert next(v for k, v in expected.items() if name.startswith(k)) in errors[0], (name, errors[0])
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists() and not (tmp_path / "dst").exists()
