"""Shared fixtures: tiny random BERTs saved by transformers in HF format (no hub), and bundled data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub by accident
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sbert_cli.resources import (  # noqa: E402
    CHINESE_VOCAB,
    THUCNEWS_CLASSES,
    THUCNEWS_DEV,
    THUCNEWS_TRAIN,
)

TINY_HF_CONFIG = dict(
    vocab_size=21128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def make_hf_checkpoint(path: Path, kind: str = "mlm", seed: int = 0, **overrides) -> Path:
    """Save a random transformers BERT of `kind` (base, mlm, cls, pretraining) with the Chinese vocab into `path`."""
    import torch
    import transformers

    classes = {
        "base": transformers.BertModel,
        "mlm": transformers.BertForMaskedLM,
        "cls": transformers.BertForSequenceClassification,
        "pretraining": transformers.BertForPreTraining,
    }
    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**TINY_HF_CONFIG, **overrides})
    model = classes[kind](config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))  # safetensors; tests that need a .bin write it themselves
    # vocab.txt lists exactly vocab_size tokens (sbert refuses a mismatch); the special tokens are in the first 104.
    lines = CHINESE_VOCAB.read_text(encoding="utf-8").split("\n")[: config.vocab_size]
    (path / "vocab.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def hf_mlm_dir(tmp_path_factory) -> Path:
    """A tiny random BertForMaskedLM in HF format, with the Chinese vocab."""
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf") / "tiny-mlm", "mlm")


@pytest.fixture(scope="session")
def hf_cls_dir(tmp_path_factory) -> Path:
    """A tiny random BertForSequenceClassification (3 labels) in HF format."""
    return make_hf_checkpoint(
        tmp_path_factory.mktemp("hf") / "tiny-cls", "cls", id2label={0: "finance", 1: "sports", 2: "game"}
    )


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for training tests: faster on 2 shared cores, and the same numerics as
    OMP_NUM_THREADS=1 subprocesses (exact-resume and torchrun comparisons depend on that)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def vocab_path() -> Path:
    return CHINESE_VOCAB


@pytest.fixture(scope="session")
def thucnews_train() -> Path:
    return THUCNEWS_TRAIN


@pytest.fixture(scope="session")
def thucnews_dev() -> Path:
    return THUCNEWS_DEV


@pytest.fixture(scope="session")
def thucnews_classes() -> Path:
    return THUCNEWS_CLASSES
