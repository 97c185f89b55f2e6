"""fill-mask against transformers' fill-mask pipeline, joint decoding, the MLM-head probe, and the command."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from conftest import make_hf_checkpoint
from torch import nn
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.errors import ConfigError, DataError, ModelLoadError
from sbert_cli.model.model_dir import load_for_task, load_tokenizer
from sbert_cli.tasks.fill_mask import (
    JOINT_BEAM_WIDTH,
    fill_mask,
    fill_mask_joint,
    join_wordpieces,
    mask_spans,
    read_masked_texts,
    run_fill_mask,
)
from sbert_cli.tasks.probe import PROBE_SENTENCES, probe_mlm_head

transformers = pytest.importorskip("transformers")

TEXTS = ["北京是[MASK]国的首都。", "我[MASK]你", "今天天气很[MASK]，我们去[MASK]园散步吧。", "[MASK][MASK]是一座城市"]


@pytest.fixture(scope="module")
def peaky_mlm_dir(tmp_path_factory):
    """A random MLM whose predictions are far from uniform (large init), so top-k order and scores mean something."""
    return make_hf_checkpoint(tmp_path_factory.mktemp("fill") / "peaky", "mlm", seed=5, initializer_range=0.5)


@pytest.fixture(scope="module")
def loaded(peaky_mlm_dir):
    return load_for_task(peaky_mlm_dir, "mlm").model, load_tokenizer(peaky_mlm_dir)


@pytest.fixture(scope="module")
def reference_model(peaky_mlm_dir):
    return transformers.BertForMaskedLM.from_pretrained(str(peaky_mlm_dir)).eval()


def test_top_k_equals_the_transformers_pipeline(peaky_mlm_dir, reference_model):
    pipeline = transformers.pipeline(
        "fill-mask", model=reference_model, tokenizer=transformers.BertTokenizer(vocab=str(peaky_mlm_dir / "vocab.txt"))
    )
    ours = run_fill_mask(peaky_mlm_dir, TEXTS, top_k=5, precision="fp32")
    for text, result in zip(TEXTS, ours):
        expected = pipeline(text, top_k=5)
        per_mask = expected if isinstance(expected[0], list) else [expected]
        assert len(result.masks) == len(per_mask)
        for mask, candidates in zip(result.masks, per_mask):
            assert [c.token for c in mask.candidates] == pipeline.tokenizer.convert_ids_to_tokens([c["token"] for c in candidates])
            for ours_candidate, theirs in zip(mask.candidates, candidates):
                assert abs(ours_candidate.score - theirs["score"]) <= 1e-5
    # The scores compared are not all ~0: the model is peaked enough for 1e-5 to be a real tolerance.
    assert max(c.score for result in ours for m in result.masks for c in m.candidates) > 0.3


def test_positions_are_token_indices_of_each_mask(loaded):
    model, tokenizer = loaded
    result = fill_mask(model, tokenizer, ["a[MASK]b中[MASK]"], top_k=2)[0]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(["a[MASK]b中[MASK]"])[0])
    assert [m.position for m in result.masks] == [i for i, t in enumerate(tokens) if t == "[MASK]"] == [2, 5]
    assert all(len(m.candidates) == 2 for m in result.masks)
    assert result.masks[0].candidates[0].score >= result.masks[0].candidates[1].score


def test_a_single_mask_decoded_jointly_is_plain_fill_mask(loaded):
    model, tokenizer = loaded
    texts = ["北京是[MASK]国的首都。", "我[MASK]你"]
    plain = fill_mask(model, tokenizer, texts, top_k=4)
    joint = fill_mask_joint(model, tokenizer, texts, top_k=4)
    for p, j in zip(plain, joint):
        assert [s.positions for s in j.spans] == [[m.position] for m in p.masks]
        assert [c.tokens for c in j.spans[0].candidates] == [[c.token] for c in p.masks[0].candidates]
        for wc, c in zip(j.spans[0].candidates, p.masks[0].candidates):
            assert abs(wc.score - c.score) <= 1e-6


def test_two_masks_are_filled_most_confident_first_and_ranked_as_words(loaded, reference_model):
    """Reference built on transformers' model: fill the surer mask with each of its top candidates, re-run, rank products."""
    model, tokenizer = loaded
    text, k, width = "我喜欢[MASK][MASK]的风景。", 3, JOINT_BEAM_WIDTH
    ids = tokenizer.encode([text])[0]
    first, second = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]

    def probabilities(token_ids):
        with torch.no_grad():
            return reference_model(torch.tensor([token_ids])).logits[0].softmax(-1)

    probs = probabilities(ids)
    surer, other = (first, second) if probs[first].max() >= probs[second].max() else (second, first)
    expected = []
    for p1, t1 in zip(*probs[surer].topk(width)):
        filled = list(ids)
        filled[surer] = int(t1)
        p2s, t2s = probabilities(filled)[other].topk(width)
        for p2, t2 in zip(p2s, t2s):
            pair = {surer: int(t1), other: int(t2)}
            expected.append((float(p1 * p2), tokenizer.convert_ids_to_tokens([pair[first], pair[second]])))
    expected.sort(key=lambda e: -e[0])

    span = fill_mask_joint(model, tokenizer, [text], top_k=k)[0].spans[0]
    assert span.positions == [first, second]
    assert [c.tokens for c in span.candidates] == [tokens for _, tokens in expected[:k]]
    for candidate, (score, tokens) in zip(span.candidates, expected):
        assert math.isclose(candidate.score, score, rel_tol=1e-4)
        assert candidate.word == join_wordpieces(tokens)


def test_a_smaller_top_k_lists_a_prefix_of_a_larger_one(loaded):
    model, tokenizer = loaded
    text = ["我喜欢[MASK][MASK][MASK]的风景。"]
    two = fill_mask_joint(model, tokenizer, text, top_k=2)[0].spans[0].candidates
    five = fill_mask_joint(model, tokenizer, text, top_k=5)[0].spans[0].candidates
    assert [c.tokens for c in two] == [c.tokens for c in five[:2]]


def test_joint_keeps_each_run_separate_and_ranks_top_k(loaded):
    model, tokenizer = loaded
    result = fill_mask_joint(model, tokenizer, ["[MASK][MASK][MASK]是[MASK]国的首都"], top_k=4)[0]
    assert [s.positions for s in result.spans] == [[1, 2, 3], [5]]
    words = result.spans[0].candidates
    assert len(words) == 4 and all(len(w.tokens) == 3 for w in words)
    assert len({tuple(w.tokens) for w in words}) == 4
    assert [w.score for w in words] == sorted((w.score for w in words), reverse=True)


def test_mask_spans_and_word_joining():
    assert mask_spans([101, 103, 103, 5, 103, 102], 103) == [[1, 2], [4]]
    assert mask_spans([101, 5, 102], 103) == []
    assert join_wordpieces(["北", "京"]) == "北京"
    assert join_wordpieces(["play", "##ing"]) == "playing"
    assert join_wordpieces(["new", "york"]) == "new york"
    assert join_wordpieces(["用", "iphone"]) == "用iphone"


def test_text_without_mask_is_an_error_naming_it(loaded):
    model, tokenizer = loaded
    with pytest.raises(DataError, match=r"^text 2: no \[MASK\] in '没有'"):
        fill_mask(model, tokenizer, ["有[MASK]", "没有"])
    with pytest.raises(DataError, match=r"^in.txt:3: no \[MASK\]"):
        fill_mask_joint(model, tokenizer, ["有[MASK]", "没有"], origins=["in.txt:1", "in.txt:3"])


def test_text_longer_than_the_model_is_an_error(loaded):
    model, tokenizer = loaded
    with pytest.raises(DataError, match="more than the model's 128 positions"):
        fill_mask(model, tokenizer, ["[MASK]" + "很" * 200])


def test_top_k_below_one_is_refused(loaded):
    with pytest.raises(ConfigError, match="`top_k` must be at least 1"):
        fill_mask(*loaded, ["有[MASK]"], top_k=0)


def test_a_checkpoint_without_mlm_head_is_refused(tmp_path):
    model_dir = make_hf_checkpoint(tmp_path / "base", "base")
    with pytest.raises(ModelLoadError, match="no masked-LM head"):
        run_fill_mask(model_dir, ["有[MASK]"])


def test_read_texts_from_arguments_file_and_stdin(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\ufeff北京是[MASK]国\n\n  \n我[MASK]你\r\n", encoding="utf-8")
    assert read_masked_texts([], path) == (["北京是[MASK]国", "我[MASK]你"], [f"{path}:1", f"{path}:4"])
    assert read_masked_texts([], None, io.StringIO("a[MASK]\n\nb[MASK]\n")) == (["a[MASK]", "b[MASK]"], ["<stdin>:1", "<stdin>:3"])
    assert read_masked_texts(["x[MASK]"]) == (["x[MASK]"], ["argument 1"])
    with pytest.raises(ConfigError, match="not both"):
        read_masked_texts(["x[MASK]"], path)
    with pytest.raises(DataError, match="no such file"):
        read_masked_texts([], tmp_path / "missing.txt")
    with pytest.raises(DataError, match="<stdin>: no texts"):
        read_masked_texts([], None, io.StringIO("\n\n"))


def test_probe_sentences_are_in_the_chinese_vocab(vocab_path):
    tokenizer = load_tokenizer(vocab_path)
    for sentence in PROBE_SENTENCES:
        assert tokenizer.unk_id not in tokenizer.encode([sentence])[0], sentence


def test_probe_flags_a_random_head_as_untrained(loaded):
    result = probe_mlm_head(*loaded)
    assert result.looks_untrained
    assert result.accuracy < 0.02
    chinese_characters = sum(len([c for c in s if "\u4e00" <= c <= "\u9fff"]) for s in PROBE_SENTENCES)
    assert result.predictions == chinese_characters


class OracleMLM(nn.Module):
    """Knows the probe sentences: puts all probability on the original token at each masked position."""

    def __init__(self, originals: list[list[int]], vocab_size: int, mask_id: int):
        super().__init__()
        self.originals, self.mask_id = originals, mask_id
        self.config = type("Config", (), {"vocab_size": vocab_size})()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, masked_positions):
        logits = torch.zeros(*masked_positions.shape, self.config.vocab_size)
        for row, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
            ids = ids[: sum(mask)]
            original = next(o for o in self.originals
                            if len(o) == len(ids) and all(a == b or a == self.mask_id for a, b in zip(ids, o)))
            for column, position in enumerate(masked_positions[row].tolist()):
                logits[row, column, original[position]] = 50.0
        return logits


def test_probe_passes_a_head_that_restores_every_character(loaded):
    _, tokenizer = loaded
    oracle = OracleMLM(tokenizer.encode(list(PROBE_SENTENCES)), tokenizer.vocab_size, tokenizer.mask_id)
    result = probe_mlm_head(oracle, tokenizer)
    assert result.accuracy == result.top5_accuracy == 1.0
    assert not result.looks_untrained


runner = CliRunner()


def test_command_prints_a_table_per_text(peaky_mlm_dir):
    result = runner.invoke(app, ["fill-mask", "--model", str(peaky_mlm_dir), "-k", "2", "北京是[MASK]国的首都。", "我[MASK]你"])
    assert result.exit_code == 0, result.output
    best = run_fill_mask(peaky_mlm_dir, ["北京是[MASK]国的首都。"], top_k=1)[0].masks[0].candidates[0]
    assert "北京是[MASK]国的首都。" in result.stdout and "[MASK] @ 4" in result.stdout
    assert best.token in result.stdout and f"{best.score:.4f}" in result.stdout


def test_command_json_one_object_per_text(peaky_mlm_dir, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("北京是[MASK]国的首都。\n\n我[MASK][MASK]你\n", encoding="utf-8")
    result = runner.invoke(app, ["fill-mask", "--model", str(peaky_mlm_dir), "--json", "--top-k", "3", "--file", str(path)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["北京是[MASK]国的首都。", "我[MASK][MASK]你"]
    assert [m["position"] for m in lines[1]["masks"]] == [2, 3]
    candidate = lines[0]["masks"][0]["candidates"][0]
    assert set(candidate) == {"token", "score"} and len(lines[0]["masks"][0]["candidates"]) == 3


def test_command_joint_json_from_stdin(peaky_mlm_dir):
    result = runner.invoke(app, ["fill-mask", "-m", str(peaky_mlm_dir), "--joint", "--json", "-k", "2"],
                           input="我[MASK][MASK]你\n")
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert line["spans"][0]["positions"] == [2, 3]
    word = line["spans"][0]["candidates"][0]
    assert set(word) == {"word", "tokens", "score"} and len(word["tokens"]) == 2


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["没有掩码"], "error: argument 1: no [MASK] in '没有掩码'"),
        (["--model", "/nonexistent/model", "有[MASK]"], "error: /nonexistent/model: no such model folder"),
        (["--model", "{empty}", "有[MASK]"], "error: {empty}: no config.json"),
        (["--model", "{no_weights}", "有[MASK]"], "error: {no_weights}: no model.safetensors or pytorch_model.bin"),
    ],
)
def test_command_errors_are_one_line(peaky_mlm_dir, tmp_path, arguments, message):
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copyfile(peaky_mlm_dir / "vocab.txt", empty / "vocab.txt")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copyfile(peaky_mlm_dir / name, no_weights / name)
    arguments = [a.format(empty=empty, no_weights=no_weights) for a in arguments]
    if "--model" not in arguments:
        arguments = ["--model", str(peaky_mlm_dir), *arguments]
    result = runner.invoke(app, ["fill-mask", *arguments])
    assert result.exit_code == 1
    assert result.stderr.startswith(message.format(empty=empty, no_weights=no_weights))
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
