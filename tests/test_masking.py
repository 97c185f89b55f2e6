"""Masker: Google's recipe, whole words, replacements, labels; and the statistics of real THUCNews data."""

from __future__ import annotations

import numpy as np
import pytest

from sbert_cli.data.masking import (
    MASK_TOKEN,
    RANDOM_TOKEN,
    UNCHANGED,
    Masker,
    MaskingConfig,
    real_token_ids,
)
from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
from sbert_cli.data.segment import Segmenter
from sbert_cli.data.shards import MLMShards
from sbert_cli.errors import ConfigError
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.resources import CHINESE_VOCAB, THUCNEWS_TRAIN


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizer:
    return BertTokenizer.from_vocab(CHINESE_VOCAB)


def sequence(tokenizer, text: str):
    """[CLS] text [SEP] ids and per-token word ids (each character its own word unless ## continues it)."""
    encoding = tokenizer.encode_batch([text])[0]
    word_ids, word = [], -1
    for token, special in zip(encoding.tokens, encoding.special_tokens_mask):
        if special:
            word_ids.append(-1)
            continue
        if not token.startswith("##"):
            word += 1
        word_ids.append(word)
    return np.array(encoding.ids), np.array(word_ids)


def test_real_token_ids_exclude_specials_continuations_and_unused(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(real_token_ids(tokenizer))
    assert "[MASK]" not in tokens and "[CLS]" not in tokens and "[unused1]" not in tokens
    assert not any(t.startswith("##") for t in tokens)
    assert "脸" in tokens and "the" in tokens


def test_never_masks_cls_sep_pad_even_when_asked_for_everything(tokenizer):
    masker = Masker(tokenizer, MaskingConfig(masked_lm_prob=0.99, max_predictions=100))
    ids, words = sequence(tokenizer, "今天天气很好")
    ids = np.concatenate([ids, [tokenizer.pad_id] * 4])
    words = np.concatenate([words, [-1] * 4])
    result = masker.mask(ids, words, np.random.default_rng(0))
    assert set(result.masked_positions.tolist()) == set(range(1, 7))
    assert result.input_ids[0] == tokenizer.cls_id and result.input_ids[7] == tokenizer.sep_id
    assert (result.input_ids[8:] == tokenizer.pad_id).all()


def test_whole_word_is_masked_entirely_and_labels_are_plain_character_ids(tokenizer):
    masker = Masker(tokenizer, MaskingConfig(masked_lm_prob=0.5, max_predictions=20))
    ids = np.array(tokenizer.encode(["变脸"])[0])
    words = np.array([-1, 0, 0, -1])
    for seed in range(20):
        result = masker.mask(ids, words, np.random.default_rng(seed))
        assert result.masked_positions.tolist() == [1, 2]  # num_to_predict = round(4 * 0.5) = 2: the word, whole
        assert result.masked_labels.tolist() == tokenizer.convert_tokens_to_ids(["变", "脸"])
        assert "##脸" not in tokenizer.convert_ids_to_tokens(result.masked_labels)


def test_english_wordpiece_word_is_masked_as_a_whole(tokenizer):
    masker = Masker(tokenizer, MaskingConfig(masked_lm_prob=0.15, max_predictions=20))
    ids, words = sequence(tokenizer, "unaffable 今天天气很好 playing")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    groups = {}
    for position, word in enumerate(words.tolist()):
        groups.setdefault(word, []).append(position)
    assert any(len(g) > 1 for w, g in groups.items() if w >= 0), tokens  # there is a multi-piece word to test
    for seed in range(50):
        masked = set(masker.mask(ids, words, np.random.default_rng(seed)).masked_positions.tolist())
        for word, positions in groups.items():
            assert masked.isdisjoint(positions) or masked.issuperset(positions), (tokens, word, masked)


def test_google_recipe_skips_a_word_that_would_overshoot(tokenizer):
    masker = Masker(tokenizer, MaskingConfig(masked_lm_prob=0.5, max_predictions=2))
    ids = np.array(tokenizer.encode(["中华人民共和国好"])[0])  # one 7-character word, then one 1-character word
    words = np.array([-1, 0, 0, 0, 0, 0, 0, 0, 1, -1])
    for seed in range(10):
        result = masker.mask(ids, words, np.random.default_rng(seed))
        assert result.masked_positions.tolist() == [8]  # the long word never fits into num_to_predict = 2


def test_per_token_masking_predicts_exactly_num_to_predict(tokenizer):
    masker = Masker(tokenizer, MaskingConfig(masked_lm_prob=0.15, max_predictions=5, whole_word=False))
    ids, words = sequence(tokenizer, "中" * 60)
    result = masker.mask(ids, words, np.random.default_rng(0))
    assert len(result.masked_positions) == 5  # min(5, round(62 * 0.15) = 9)


def test_kinds_match_what_was_written(tokenizer):
    masker = Masker(tokenizer, MaskingConfig(masked_lm_prob=0.5, max_predictions=64, whole_word=False))
    ids, words = sequence(tokenizer, "我们今天在北京大学的图书馆里读了很多有意思的书" * 3)
    result = masker.mask(ids, words, np.random.default_rng(1))
    shown = result.input_ids[result.masked_positions]
    candidates = set(real_token_ids(tokenizer).tolist())
    assert (result.masked_labels == ids[result.masked_positions]).all()
    assert (shown[result.kinds == MASK_TOKEN] == tokenizer.mask_id).all()
    assert (shown[result.kinds == UNCHANGED] == result.masked_labels[result.kinds == UNCHANGED]).all()
    assert set(shown[result.kinds == RANDOM_TOKEN].tolist()) <= candidates
    untouched = np.setdiff1d(np.arange(len(ids)), result.masked_positions)
    assert (result.input_ids[untouched] == ids[untouched]).all()


def test_batch_masking_is_deterministic_per_generator(tokenizer):
    masker = Masker(tokenizer, MaskingConfig())
    ids, words = sequence(tokenizer, "莫文蔚高调秀桃花运默认秘密发展新恋情")
    a = masker.mask(ids, words, np.random.default_rng(7))
    b = masker.mask(ids, words, np.random.default_rng(7))
    assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.masked_positions, b.masked_positions)
    differ = [masker.mask(ids, words, np.random.default_rng(s)).masked_positions.tolist() for s in range(8)]
    assert len({tuple(d) for d in differ}) > 1


@pytest.mark.parametrize(
    "config",
    [dict(masked_lm_prob=0), dict(masked_lm_prob=1.5), dict(max_predictions=0), dict(mask_token_prob=0.95, random_token_prob=0.1)],
)
def test_invalid_masking_config_is_a_config_error(config):
    with pytest.raises(ConfigError):
        MaskingConfig(**config)


# --- statistics on real data, through the whole pipeline -----------------------------------------


@pytest.fixture(scope="module")
def thucnews_masked(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("mlm") / "thucnews"
    report = make_mlm_data([THUCNEWS_TRAIN], out, tokenizer, MLMDataSettings(seed=3))
    texts = [line.split("\t")[0] for line in THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()]
    return report, MLMShards(out), texts


def test_thucnews_masking_statistics_are_within_tolerance(thucnews_masked):
    report, data, texts = thucnews_masked
    counts = report.counts
    assert counts["lines"] == len(texts) == counts["sequences"] == len(data)
    lengths = data.lengths()
    num_to_predict = np.minimum(19, np.maximum(1, np.rint(lengths * 0.15))).sum()
    assert 0.97 * num_to_predict <= counts["masked"] <= num_to_predict  # whole words rarely leave a gap
    assert 0.13 <= counts["masked"] / counts["tokens"] <= 0.16
    assert counts["masked_as_mask_token"] / counts["masked"] == pytest.approx(0.8, abs=0.015)
    assert counts["masked_as_random"] / counts["masked"] == pytest.approx(0.1, abs=0.01)
    assert counts["masked_unchanged"] / counts["masked"] == pytest.approx(0.1, abs=0.01)


def test_thucnews_labels_restore_the_tokenizers_ids_and_replacements_are_real_tokens(thucnews_masked, tokenizer):
    _, data, texts = thucnews_masked
    expected = tokenizer.encode(texts)
    candidates = set(real_token_ids(tokenizer).tolist())
    for i, ids in enumerate(expected):
        example = data[i]
        restored = example.input_ids.copy()
        restored[example.masked_positions] = example.masked_labels
        assert restored.tolist() == ids, texts[i]
        shown = example.input_ids[example.masked_positions]
        replaced = shown[(shown != tokenizer.mask_id) & (shown != example.masked_labels)]
        assert set(replaced.tolist()) <= candidates
        assert 0 not in example.masked_positions and len(ids) - 1 not in example.masked_positions


def test_thucnews_whole_words_of_the_segmenter_are_masked_entirely(thucnews_masked, tokenizer):
    _, data, texts = thucnews_masked
    segmenter = Segmenter("rjieba")
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    multi_char_words_masked = 0
    for i, (text, encoding) in enumerate(zip(texts, encodings)):
        word_ends = np.cumsum([len(w) for w in segmenter.cut(text)])
        word_of_token = [int(np.searchsorted(word_ends, start, side="right")) for start, _ in encoding.offsets]
        groups: list[list[int]] = []
        for position, (token, word) in enumerate(zip(encoding.tokens, word_of_token), start=1):
            if groups and (token.startswith("##") or word == word_of_token[groups[-1][-1] - 1]):
                groups[-1].append(position)
            else:
                groups.append([position])
        masked = set(data[i].masked_positions.tolist())
        for group in groups:
            assert masked.isdisjoint(group) or masked.issuperset(group), (text, group, masked)
            multi_char_words_masked += len(group) > 1 and masked.issuperset(group)
    assert multi_char_words_masked > 1000  # whole-word masking really happened
