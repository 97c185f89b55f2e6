"""make-mlm-data end to end: determinism across workers, exact tokenization, sequences, packing, manifest, CLI."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.model.flat_encode import FlatEncoder
from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
from sbert_cli.data.shards import MLMShards
from sbert_cli.errors import ConfigError
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.resources import CHINESE_VOCAB, THUCNEWS_TRAIN


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizer:
    return BertTokenizer.from_vocab(CHINESE_VOCAB)


def run_cli(*args):
    return CliRunner().invoke(app, ["make-mlm-data", *map(str, args)])


def restored(example) -> list[int]:
    ids = example.input_ids.copy()
    ids[example.masked_positions] = example.masked_labels
    return ids.tolist()


def tree_bytes(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_output_is_byte_identical_for_any_number_of_workers(tmp_path):
    corpus = tmp_path / "corpus.txt"  # several chunks, a long line to split, documents
    lines = [line.split("\t")[0] for line in THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()[:5000]]
    corpus.write_text("\n".join(lines[:2500] + ["", "长句子。" * 400, ""] + lines[2500:]) + "\n", encoding="utf-8")
    for workers in (1, 2):
        result = run_cli(corpus, "--out", tmp_path / f"w{workers}", "--workers", workers, "--dupe-factor", 2)
        assert result.exit_code == 0, result.output
    one, two = tree_bytes(tmp_path / "w1"), tree_bytes(tmp_path / "w2")
    assert one.keys() == two.keys() and one == two
    again = run_cli(corpus, "--out", tmp_path / "w1", "--force", "--seed", 7)
    assert again.exit_code == 0, again.output
    assert tree_bytes(tmp_path / "w1") != one  # another seed, other masks


def test_with_two_workers_this_process_and_its_helper_share_the_chunks(tmp_path, monkeypatch):
    """--workers 2 is this process plus one spawned helper: many small chunks, interleaved, and the same bytes."""
    from sbert_cli.data import mlm_data

    corpus = tmp_path / "corpus.txt"
    lines = [line.split("\t")[0] for line in THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()[:3000]]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = MLMDataSettings(max_seq_len=32, chunk_lines=64)  # 47 chunks
    tokenizer = BertTokenizer.from_vocab(CHINESE_VOCAB)
    make_mlm_data([corpus], tmp_path / "w1", tokenizer, settings, workers=1)
    here = []
    original = mlm_data.ChunkProcessor.__call__
    monkeypatch.setattr(mlm_data.ChunkProcessor, "__call__", lambda self, chunk: here.append(chunk.index) or original(self, chunk))
    make_mlm_data([corpus], tmp_path / "w2", tokenizer, settings, workers=2)  # the helper runs the original code
    assert 0 < len(here) < 47  # both took chunks
    assert tree_bytes(tmp_path / "w1") == tree_bytes(tmp_path / "w2")


TEXT_PIECES = st.sampled_from(
    ["中", "国", "脸", "㐀", "龥", "豈", "丽", "𠀀", "a", "Z", "é", "e\u0301", "ß", "İ", "ǅ", "Σ", "1", "23", "，", "。", ",", ".",
     "!", "-", "'", " ", "\t", "\u3000", "\xa0", "\u200b", "\x07", "\ufffd", "[MASK]", "[UNK]", "ｆｕｌｌ", "😀", "##", "unaffable",
     "über", "ﬁ", "Ⅻ", "\u0300", "あ", "한"]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(TEXT_PIECES, max_size=12).map("".join), min_size=1, max_size=6))
def test_flat_encoder_matches_the_tokenizer_exactly(tokenizer, lines):
    flat = FlatEncoder(tokenizer).encode(lines)
    encodings = tokenizer.encode_batch(lines, add_special_tokens=False)
    assert flat.token_counts.tolist() == [len(e.ids) for e in encodings]
    assert flat.ids.tolist() == list(itertools.chain.from_iterable(e.ids for e in encodings))
    local_starts = flat.starts - flat.line_starts[flat.line_of_token]
    local_ends = flat.ends - flat.line_starts[flat.line_of_token]
    assert list(zip(local_starts.tolist(), local_ends.tolist())) == [o for e in encodings for o in e.offsets]


def test_long_line_is_split_at_sentence_ends_without_losing_tokens(tmp_path, tokenizer):
    sentence = "今天天气很好，我们去公园散步。"
    text = sentence * 6700  # 100,500 characters
    path = tmp_path / "long.txt"
    path.write_text(text + "\n短句\n", encoding="utf-8")
    result = run_cli(path, "--out", tmp_path / "out", "--no-mask")
    assert result.exit_code == 0, result.output
    data = MLMShards(tmp_path / "out")
    assert data.manifest["counts"]["split_lines"] == 1
    lengths = data.lengths()
    assert lengths.max() <= 128
    body = [data[i].input_ids[1:-1].tolist() for i in range(len(data) - 1)]
    assert list(itertools.chain.from_iterable(body)) == tokenizer.encode([text])[0][1:-1]
    period = tokenizer.vocab["。"]
    assert all(piece[-1] == period for piece in body[:-1])  # cut after a sentence, not mid-word
    assert data[len(data) - 1].input_ids.tolist() == tokenizer.encode(["短句"])[0]


def test_truncate_keeps_the_first_tokens_only(tmp_path, tokenizer):
    path = tmp_path / "long.txt"
    path.write_text("很长的一句话" * 50 + "\n", encoding="utf-8")
    report = make_mlm_data([path], tmp_path / "out", tokenizer, MLMDataSettings(max_seq_len=32, truncate=True, mask=False))
    data = MLMShards(tmp_path / "out")
    assert len(data) == 1 and report.counts["truncated_lines"] == 1
    assert data[0].input_ids.tolist()[1:-1] == tokenizer.encode(["很长的一句话" * 50])[0][1:31]


def test_pack_fills_sequences_within_documents(tmp_path, tokenizer):
    path = tmp_path / "docs.txt"
    doc_a = ["第一篇第一句。", "第一篇第二句。", "第一篇第三句。"]
    doc_b = ["第二篇第一句。", "第二篇第二句。"]
    path.write_text("\n".join(doc_a + [""] + doc_b) + "\n", encoding="utf-8")
    make_mlm_data([path], tmp_path / "out", tokenizer, MLMDataSettings(max_seq_len=20, pack=True, mask=False))
    data = MLMShards(tmp_path / "out")
    texts = [tokenizer.decode(data[i].input_ids).replace(" ", "") for i in range(len(data))]
    assert texts == ["第一篇第一句。第一篇第二句。", "第一篇第三句。", "第二篇第一句。第二篇第二句。"]
    assert data.lengths().max() <= 20


def test_no_mask_keeps_word_groups_from_the_segmenter_and_user_dict(tmp_path, tokenizer):
    path = tmp_path / "a.txt"
    path.write_text("34家公司变脸 业绩向上修正 unaffable\n", encoding="utf-8")
    user_dict = tmp_path / "dict.txt"
    user_dict.write_text("业绩向上 100 n\n", encoding="utf-8")
    groups = {}
    for name, options in [("default", {}), ("dict", {"user_dict": str(user_dict)}), ("none", {"segmenter": "none"})]:
        make_mlm_data([path], tmp_path / name, tokenizer, MLMDataSettings(mask=False, **options))
        example = MLMShards(tmp_path / name)[0]
        tokens = tokenizer.convert_ids_to_tokens(example.input_ids)
        assert example.word_ids[0] == example.word_ids[-1] == -1 and len(example.masked_positions) == 0
        words: dict[int, str] = {}
        for token, word in zip(tokens[1:-1], example.word_ids[1:-1].tolist()):
            words[word] = words.get(word, "") + token.removeprefix("##")
        groups[name] = list(words.values())
    assert "变脸" in groups["default"] and "业绩" in groups["default"] and "unaffable" in groups["default"]
    assert "业绩向上" in groups["dict"]
    assert "变" in groups["none"] and "脸" in groups["none"] and "unaffable" in groups["none"]


def test_dupe_factor_writes_differently_masked_copies(tmp_path, tokenizer):
    path = tmp_path / "a.txt"
    path.write_text("我们今天在北京大学的图书馆里读了很多有意思的书\n", encoding="utf-8")
    report = make_mlm_data([path], tmp_path / "out", tokenizer, MLMDataSettings(dupe_factor=5))
    data = MLMShards(tmp_path / "out")
    assert len(data) == 5 and report.counts["lines"] == 1 and report.counts["sequences"] == 5
    assert len({restored(data[i]) == restored(data[0]) for i in range(5)}) == 1
    assert len({tuple(data[i].masked_positions.tolist()) for i in range(5)}) > 1


def test_manifest_records_settings_checksum_version_and_counts(tmp_path, tokenizer):
    from sbert_cli import __version__

    make_mlm_data([THUCNEWS_TRAIN], tmp_path / "out", tokenizer, MLMDataSettings(max_seq_len=64, seed=1))
    data = MLMShards(tmp_path / "out")
    manifest = data.manifest
    assert data.vocab_sha256 == hashlib.sha256(CHINESE_VOCAB.read_bytes()).hexdigest()
    assert manifest["sbert_version"] == __version__ and data.max_seq_len == 64 and data.masked
    assert manifest["settings"]["max_predictions"] == round(64 * 0.15) and manifest["settings"]["seed"] == 1
    counts = manifest["counts"]
    for key in ("lines", "skipped_lines", "sequences", "tokens", "masked", "masked_as_mask_token",
                "masked_as_random", "masked_unchanged"):
        assert isinstance(counts[key], int)
    assert counts["tokens"] == int(data.lengths().sum())
    assert counts["masked"] == counts["masked_as_mask_token"] + counts["masked_as_random"] + counts["masked_unchanged"]
    assert counts["masked"] == sum(len(data[i].masked_positions) for i in range(len(data)))


def test_model_dir_vocab_and_its_lower_casing_are_used(tmp_path):
    # A cased vocab (capitals present) under do_lower_case false keeps case.
    model = tmp_path / "model"
    model.mkdir()
    model.joinpath("vocab.txt").write_text(CHINESE_VOCAB.read_text(encoding="utf-8").rstrip("\n") + "\nBERT\n", encoding="utf-8")
    model.joinpath("tokenizer_config.json").write_text('{"do_lower_case": false}')
    path = tmp_path / "a.txt"
    path.write_text("BERT 很好\n", encoding="utf-8")
    result = run_cli(path, "--out", tmp_path / "out", "--model", model, "--no-mask")
    assert result.exit_code == 0, result.output
    data = MLMShards(tmp_path / "out")
    assert data.manifest["do_lower_case"] is False
    cased = BertTokenizer.from_model_dir(model)
    assert data[0].input_ids.tolist() == cased.encode(["BERT 很好"])[0]
    assert cased.tokenize("BERT") == ["BERT"]


def test_caseless_vocab_under_do_lower_case_false_is_lower_cased_with_a_note(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    model.joinpath("vocab.txt").write_bytes(CHINESE_VOCAB.read_bytes())
    model.joinpath("tokenizer_config.json").write_text('{"do_lower_case": false}')
    path = tmp_path / "a.txt"
    path.write_text("NBA 很好\n", encoding="utf-8")
    result = run_cli(path, "--out", tmp_path / "out", "--model", model, "--no-mask")
    assert result.exit_code == 0, result.output
    assert "note:" in result.output and "has no capital letters" in result.output
    data = MLMShards(tmp_path / "out")
    assert data.manifest["do_lower_case"] is True
    tokenizer = BertTokenizer.from_vocab(CHINESE_VOCAB)
    assert data[0].input_ids.tolist() == tokenizer.encode(["nba 很好"])[0]
    assert tokenizer.unk_id not in data[0].input_ids.tolist()


def test_show_renders_examples_and_the_report_gives_the_split(tmp_path):
    result = run_cli(THUCNEWS_TRAIN, "--out", tmp_path / "out", "--show", 2, "--max-seq-len", 32)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "lines/s" in out and "[MASK] 8" in out and "mean length" in out
    assert "2 example(s)" in out and "大盘" in out


@pytest.mark.parametrize(
    "options", [dict(max_seq_len=2), dict(dupe_factor=2, mask=False), dict(segmenter="thulac"),
                dict(segmenter="none", user_dict="d.txt")],
)
def test_invalid_settings_are_config_errors(options):
    with pytest.raises(ConfigError):
        MLMDataSettings(**options)


def test_jieba_segmenter_honours_the_user_dict(tmp_path):
    from sbert_cli.data.segment import Segmenter

    user_dict = tmp_path / "dict.txt"
    user_dict.write_text("业绩向上 100 n\n", encoding="utf-8")
    assert "业绩向上" not in Segmenter("rjieba").cut("业绩向上修正")  # not in jieba's dictionary
    segmenter = Segmenter("jieba", user_dict)
    assert "业绩向上" in segmenter.cut("业绩向上修正")
    assert segmenter.word_lengths("业绩向上修正\n变脸").sum() == len("业绩向上修正\n变脸")


def test_rjieba_user_words_stay_in_their_own_segmenter(tmp_path):
    # Without a user dictionary the segmenter cuts with the dictionary rjieba builds on import (no second copy);
    # with one, it builds its own, so the user's words never leak into the shared default.
    from sbert_cli.data.segment import Segmenter

    user_dict = tmp_path / "dict.txt"
    user_dict.write_text("业绩向上 100 n\n", encoding="utf-8")
    assert "业绩向上" in Segmenter("rjieba", user_dict).cut("业绩向上修正")
    assert "业绩向上" not in Segmenter("rjieba").cut("业绩向上修正")
