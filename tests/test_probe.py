"""The MLM-head probe's verdicts: a random head is untrained, a briefly trained tiny head is not, beside chance and a unigram guesser."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
from sbert_cli.model.model_dir import load_for_task, load_tokenizer
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.tasks.options import PretrainOptions
from sbert_cli.tasks.pretrain import pretrain
from sbert_cli.tasks.probe import (
    PROBE_SENTENCES,
    ProbeResult,
    probe_mlm_head,
    probe_verdict,
    unigram_guesses,
)
from sbert_cli.train.types import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "top1, top100, verdict",
    [
        (0, 0, "untrained"),
        (0, 2, "untrained"),  # chance puts about 1 of 207 in a top 100 (100/21128 each)
        (0, 5, "untrained"),
        (0, 7, "untrained"),  # a fresh head on m3e-small (seed 2): above uniform chance, still untrained
        (0, 20, "untrained"),
        (0, 21, "weak"),  # 10% in the top 100
        (0, 41, "weak"),  # m3e-small's fresh head after one training step
        (0, 60, "weak"),  # the demo's tiny BERT: 0 top-1, 3 top-5, 60 top-100
        (41, 150, "weak"),
        (42, 150, "trained"),  # 20% top-1
        (150, 200, "trained"),
    ],
)
def test_verdict_thresholds(top1, top100, verdict):
    assert probe_verdict(top1, top100, 207, 21128) == verdict


def test_describe_says_weak_with_its_top5():
    figures = dict(accuracy=0.05, top5_accuracy=0.121, top100_accuracy=0.5, predictions=207, chance=1 / 21128,
                   unigram_accuracy=0.01, unigram_top5_accuracy=0.014)
    weak = ProbeResult(**figures, verdict="weak")
    assert weak.describe() == "weak (top-5 12.1%)" and not weak.looks_untrained
    assert ProbeResult(**figures, verdict="untrained").looks_untrained


def test_unigram_guesser_is_the_most_frequent_characters(vocab_path):
    tokenizer = BertTokenizer.from_vocab(vocab_path)
    guesses = tokenizer.convert_ids_to_tokens(unigram_guesses(tokenizer))
    assert len(guesses) == 5 and all(len(g) == 1 for g in guesses)
    assert "国" in guesses  # news titles: 中国, 国际, ...


def test_random_head_is_untrained(hf_mlm_dir):
    result = probe_mlm_head(load_for_task(hf_mlm_dir, "mlm").model, load_tokenizer(hf_mlm_dir))
    assert result.verdict == "untrained" and result.looks_untrained
    assert result.top100_accuracy < 0.03
    assert result.predictions == sum(len([c for c in s if "\u4e00" <= c <= "\u9fff"]) for s in PROBE_SENTENCES)
    assert result.chance == 1 / 21128
    assert 0 < result.unigram_top5_accuracy < 0.1


@pytest.fixture(scope="module")
def briefly_trained(tmp_path_factory, thucnews_train, vocab_path):
    """A tiny BERT pretrained from scratch for 100 steps (seconds) on news titles, at the rule's default lr."""
    root = tmp_path_factory.mktemp("brief")
    corpus = root / "titles.txt"
    lines = thucnews_train.read_text(encoding="utf-8").splitlines()[:3000]
    corpus.write_text("".join(line.split("\t")[0] + "\n" for line in lines), encoding="utf-8")
    data = root / "data"
    make_mlm_data([corpus], data, BertTokenizer.from_vocab(vocab_path), MLMDataSettings(max_seq_len=32, mask=False, segmenter="none"))
    out = root / "run"
    pretrain(PretrainOptions(data=data, config_name="tiny", dynamic_masking=True),
             TrainConfig(out_dir=out, max_steps=100, batch_size=32, precision="fp32", plot=False, seed=0))
    return out / "last"


def test_briefly_trained_head_is_weak_not_untrained(briefly_trained):
    result = probe_mlm_head(load_for_task(briefly_trained, "mlm").model, load_tokenizer(briefly_trained))
    # News titles teach it little about everyday sentences, so its top 5 are near chance; its top 100 are not.
    assert result.verdict == "weak", result
    assert result.top100_accuracy > 10 * 100 * result.chance


def test_convert_weights_reports_a_weak_head_without_the_untrained_warning(briefly_trained, tmp_path):
    result = CliRunner().invoke(app, ["convert-weights", str(briefly_trained), str(tmp_path / "hf"), "--to", "hf"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.stdout.split())
    assert "MLM probe" in output and "weak (top-5" in output and "most frequent characters" in output
    assert "UNTRAINED" not in output and "warning" not in result.stderr
    assert "trained but weak" in result.stderr
