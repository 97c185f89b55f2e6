"""The Python API for scripts: `from sbert_cli import load_model, load_tokenizer`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import sbert_cli
from sbert_cli import load_model, load_tokenizer
from sbert_cli.errors import ModelLoadError
from sbert_cli.model.bert import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
)


def test_import_does_not_load_torch():
    code = "import sys, sbert_cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'load_modle'"):
        sbert_cli.load_modle  # noqa: B018


def test_base_model_returns_sequence_and_pooled_output(hf_cls_dir):
    model = load_model(hf_cls_dir)  # task defaults to "base"
    assert isinstance(model, BertModel) and not model.training
    input_ids = torch.tensor([[101, 1266, 776, 102, 0], [101, 872, 1962, 8013, 102]])
    sequence_output, pooled_output = model(input_ids, attention_mask=(input_ids != 0).long())
    assert sequence_output.shape == (2, 5, 32) and pooled_output.shape == (2, 32)
    assert pooled_output.abs().max() <= 1  # tanh of the [CLS] vector
    token_type_ids = torch.zeros_like(input_ids)
    assert torch.equal(model(input_ids, None, token_type_ids)[0], model(input_ids)[0])


def test_mlm_model_returns_vocab_logits(hf_mlm_dir):
    model = load_model(str(hf_mlm_dir), task="mlm")
    assert isinstance(model, BertForMaskedLM) and not model.training
    with torch.no_grad():
        assert model(torch.tensor([[101, 103, 102]])).shape == (1, 3, 21128)


def test_classifier_returns_label_logits(hf_cls_dir):
    model = load_model(hf_cls_dir, task="cls")
    assert isinstance(model, BertForSequenceClassification) and not model.training
    assert model.config.labels == ["finance", "sports", "game"]
    with torch.no_grad():
        assert model(torch.tensor([[101, 1266, 102]])).shape == (1, 3)


def test_missing_head_is_an_error_not_a_random_head(hf_cls_dir):
    with pytest.raises(ModelLoadError, match="no masked-LM head"):
        load_model(hf_cls_dir, task="mlm")


def test_tokenizer_from_vocab_file_and_model_dir_agree(vocab_path, hf_mlm_dir):
    texts = ["北京是[MASK]国的首都。", "Hello 世界"]
    from_vocab = load_tokenizer(vocab_path).encode(texts)
    from_dir = load_tokenizer(hf_mlm_dir).encode(texts)
    assert from_vocab == from_dir
    assert all(ids[0] == 101 and ids[-1] == 102 for ids in from_vocab)
    assert from_vocab[0] == [101, 1266, 776, 3221, 103, 1744, 4638, 7674, 6963, 511, 102]


def test_tokenizer_truncates_to_max_length(vocab_path):
    ids = load_tokenizer(vocab_path).encode(["今天天气很好我们去公园"], max_length=5)[0]
    assert ids == [101, 791, 1921, 1921, 102]
