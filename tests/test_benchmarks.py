"""Every script in benchmarks/ runs: each at its smallest setting (--quick where it has one), as a subprocess, so a
change to the library that breaks a benchmark fails here rather than when someone next measures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# script -> its smallest run: argv after the script, with {tmp} for a scratch folder.
SMALLEST = {
    "bench_eval.py": ["--quick"],
    "bench_finetune_quality.py": ["--libraries", "tfidf", "--limit", "200", "--seeds", "42", "--out", "{tmp}/quality"],
    "bench_finetune_speed.py": ["--quick"],
    "bench_forward.py": ["--batch-size", "2", "--seq-len", "8", "--layers", "1", "--repeats", "1", "--precisions", "fp32"],
    "bench_fused_adamw.py": ["--quick"],
    "bench_inference_ort.py": ["--quick", "--head", "cls"],  # the classifier's rows: the encoder's share the code
    "bench_inference_precision.py": ["--quick"],
    "bench_mlm_data.py": ["--repeats", "1", "--no-big", "--no-reference", "--workdir", "{tmp}"],
    "bench_serve.py": ["--quick"],
    "bench_shared_cpu.py": ["--repeats", "1", "--busy", "0", "--workloads", "infer", "--infer-batches", "1",
                            "--settings", "1 thread"],
    "kill_nine.py": ["--points", "1", "--only", "eval"],
    "reference_pretraining_data.py": ["--input", "{tmp}/corpus.txt", "--output", "{tmp}/reference.jsonl"],
}
# Run (with their output checked) by the tests named.
RUN_ELSEWHERE = {
    "bench_ner.py": "test_ner_metrics.py",
    "bench_step_profile.py": "test_benchmarks_speed.py",
    "bench_train.py": "test_benchmarks_speed.py",
    "make_ner_sample.py": "test_ner_data.py",
}


def test_every_benchmark_script_is_run_by_a_test():
    assert sorted(p.name for p in BENCHMARKS.glob("*.py")) == sorted([*SMALLEST, *RUN_ELSEWHERE])
    tests = Path(__file__).parent
    for script, test_file in RUN_ELSEWHERE.items():
        assert script in (tests / test_file).read_text(encoding="utf-8"), (script, test_file)


@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_at_its_smallest_setting(script, tmp_path):
    (tmp_path / "corpus.txt").write_text("今天天气很好。\n我们去公园散步吧。\n\n中国的首都是北京。\n", encoding="utf-8")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in SMALLEST[script]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *argv], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
