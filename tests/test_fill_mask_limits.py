"""fill-mask's bounds and its word about the head (issue 21): each hostile case -> exit code and one error line.

A joint search is bounded in masks per run (MAX_JOINT_SPAN) and in work per text (MAX_JOINT_WORK) before any pass
runs; plain fill-mask on 500 masks stays one pass. An untrained or weak MLM head is named once per call, from the
probe's verdict cached in the model dir; a checkpoint without a head gets the whole recipe for one.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from cli_helpers import one_line_error
from conftest import make_hf_checkpoint
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.outputs import PROBE_CACHE
from sbert_cli.tasks import probe
from sbert_cli.tasks.fill_mask import JOINT_BEAM_WIDTH, MAX_JOINT_SPAN, MAX_JOINT_WORK, fill_cost

runner = CliRunner()


@pytest.fixture(scope="module")
def mlm512(tmp_path_factory):
    """A tiny random MLM with 512 positions: room for 500 masks in one text."""
    return make_hf_checkpoint(tmp_path_factory.mktemp("fill-limits") / "mlm512", "mlm", max_position_embeddings=512)


def fill(model, *arguments, file_text: str | None = None, tmp_path=None):
    argv = ["fill-mask", "--model", str(model), "--device", "cpu", "--precision", "fp32", *arguments]
    if file_text is not None:
        path = tmp_path / "texts.txt"
        path.write_text(file_text, encoding="utf-8")
        argv += ["--file", str(path)]
    return runner.invoke(app, argv)


@pytest.mark.parametrize("masks", [100, 500])
def test_a_joint_run_of_many_masks_is_refused_before_any_pass(mlm512, tmp_path, masks):
    start = time.perf_counter()
    result = fill(mlm512, "--joint", "--top-k", "5", file_text="[MASK]" * masks + "\n", tmp_path=tmp_path)
    assert time.perf_counter() - start < 30  # was 110 s for 100 masks, over 120 s for 500
    one_line_error(result, "texts.txt:1", f"{masks} consecutive [MASK]s", f"up to {MAX_JOINT_SPAN}", "--joint")


def test_a_joint_search_over_its_work_budget_is_refused_and_can_be_skipped(mlm512, tmp_path):
    many_runs = "[MASK]好" * 200  # 200 runs of one mask: 200 passes of 8 rows over 402 tokens
    assert fill_cost([0] * 402, 0, 5, joint=True) > MAX_JOINT_WORK
    result = fill(mlm512, "--joint", file_text=many_runs + "\n", tmp_path=tmp_path)
    one_line_error(result, "texts.txt:1", "200 [MASK]s in 402 tokens", f"beam of {JOINT_BEAM_WIDTH}", f"{MAX_JOINT_WORK:,}")
    assert "--top-k" not in result.stderr  # a lower top-k would not narrow a beam of 8
    skipped = fill(mlm512, "--joint", "--json", "--on-bad-lines", "skip", file_text=many_runs + "\n我[MASK][MASK]你\n",
                   tmp_path=tmp_path)
    assert skipped.exit_code == 0, skipped.output
    assert [json.loads(line)["text"] for line in skipped.stdout.splitlines()] == ["我[MASK][MASK]你"]
    assert "skipped 1 text" in skipped.stderr


def test_a_wide_beam_is_told_to_narrow(mlm512, tmp_path):
    text = "[MASK]" * 8 + "好" * 400  # 8 masks x a beam of 100 x 410 tokens
    result = fill(mlm512, "--joint", "--top-k", "100", file_text=text + "\n", tmp_path=tmp_path)
    one_line_error(result, "beam of 100", "--top-k")


def test_plain_fill_mask_on_500_masks_is_one_pass(mlm512, tmp_path):
    start = time.perf_counter()
    result = fill(mlm512, "--json", "-k", "1", file_text="[MASK]" * 500 + "\n", tmp_path=tmp_path)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["masks"]) == 500 and time.perf_counter() - start < 30


def test_an_untrained_head_is_named_once_per_call_and_probed_once(tmp_path, monkeypatch):
    model = make_hf_checkpoint(tmp_path / "random-head", "mlm")
    probes = []
    real_probe = probe.probe_mlm_head
    monkeypatch.setattr(probe, "probe_mlm_head", lambda *a, **k: probes.append(1) or real_probe(*a, **k))
    for _ in range(2):
        result = fill(model, "--json", "我[MASK]你", "他[MASK]她", "北京是[MASK]国的首都。")
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(warnings) == 1 and warnings[0].startswith("warning: the MLM head of") and "untrained" in warnings[0]
        assert "sbert make-mlm-data" in warnings[0] and "sbert pretrain --model" in warnings[0]
        assert len(result.stdout.splitlines()) == 3
    assert len(probes) == 1  # the second call read the verdict from the model dir
    cached = json.loads((model / PROBE_CACHE).read_text(encoding="utf-8"))
    assert cached["result"]["verdict"] == "untrained" and "model.safetensors" in cached["weights"]
    stat = (model / "model.safetensors").stat()
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # new weights: probe again
    assert fill(model, "我[MASK]你").exit_code == 0 and len(probes) == 2


def test_a_failing_run_prints_its_error_alone(tmp_path):
    model = make_hf_checkpoint(tmp_path / "random-head", "mlm")
    one_line_error(fill(model, "没有掩码"), "no [MASK]")
    assert not (model / PROBE_CACHE).exists()


def test_a_model_dir_sbert_cannot_write_still_gets_the_warning(tmp_path, monkeypatch):
    from sbert_cli import outputs
    from sbert_cli.errors import OutputError

    def refuse(path, *args, **kwargs):
        raise OutputError(f"{path}: Read-only file system (EROFS); write elsewhere")

    monkeypatch.setattr(outputs, "write_text", refuse)  # as on a read-only folder, which root would write anyway
    model = make_hf_checkpoint(tmp_path / "read-only", "mlm")
    result = fill(model, "我[MASK]你")
    assert result.exit_code == 0 and "untrained" in result.stderr and not (model / PROBE_CACHE).exists()


def test_weak_and_trained_verdicts_in_words():
    weak = probe.ProbeResult(0.1, 0.3, 0.6, 207, 1 / 21128, 0.02, 0.08, "weak")
    assert probe.head_warning(weak, "m").startswith("note: the MLM head of m is weak: top-1 10.0%")
    trained = probe.ProbeResult(0.6, 0.8, 0.95, 207, 1 / 21128, 0.02, 0.08, "trained")
    assert probe.head_warning(trained, "m") is None and probe.head_warning(None, "m") is None


def test_a_vocab_without_the_probe_characters_gets_no_verdict(tmp_path):
    from sbert_cli.model.tokenizer import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "北"]) + "\n", encoding="utf-8")
    assert not probe.covers_probe(BertTokenizer.from_vocab(vocab))
    assert probe.cached_probe(tmp_path, None, BertTokenizer.from_vocab(vocab)) is None


def test_a_checkpoint_without_a_head_gets_the_whole_recipe(tmp_path):
    encoder = make_hf_checkpoint(tmp_path / "encoder", "base")
    line = one_line_error(fill(encoder, "我[MASK]你"), "has no masked-LM head")
    assert line.index("sbert make-mlm-data") < line.index("sbert pretrain --model") and "--data mlm-data" in line
