"""The HF <-> sbert name table and its strict checks: every problem named, never a silent strict=False."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from sbert_cli.errors import ModelLoadError, WeightMismatchError
from sbert_cli.model.bert import BertForMaskedLM, BertForSequenceClassification
from sbert_cli.model.config import BertConfig
from sbert_cli.model.hf_weights import (
    HF_TO_SBERT,
    convert_hf_state_dict,
    export_hf_state_dict,
    hf_to_sbert_name,
    normalize_hf_name,
    sbert_to_hf_name,
)
from sbert_cli.model.model_dir import expected_shapes, read_checkpoint

CONFIG = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                    max_position_embeddings=16, id2label={0: "a", 1: "b"})


@pytest.fixture()
def hf_state():
    """A complete HF BertForPreTraining-style state dict (plus a classifier) for CONFIG, under HF names."""
    torch.manual_seed(0)
    ours = BertForMaskedLM(CONFIG).state_dict()
    ours.update({k: v for k, v in BertForSequenceClassification(CONFIG).state_dict().items() if k.startswith("classifier.")})
    return export_hf_state_dict(ours)


def test_every_parameter_maps_there_and_back():
    shapes = expected_shapes(CONFIG)
    for name in shapes:
        assert hf_to_sbert_name(normalize_hf_name(sbert_to_hf_name(name))) == name
    # The table is the only place names are written; every entry is used by a parameter.
    hf_modules = {sbert_to_hf_name(n).removeprefix("bert.").rpartition(".")[0] for n in shapes}
    templates = {t.replace("{}", "0") for t in HF_TO_SBERT}
    assert templates <= hf_modules


def test_hf_names_with_and_without_bert_prefix_and_legacy_suffixes():
    assert hf_to_sbert_name(normalize_hf_name("bert.encoder.layer.11.attention.self.query.weight")) == \
        "bert.layers.11.attention.query.weight"
    assert hf_to_sbert_name(normalize_hf_name("encoder.layer.3.output.LayerNorm.gamma")) == "bert.layers.3.output_norm.weight"
    assert hf_to_sbert_name(normalize_hf_name("bert.embeddings.LayerNorm.beta")) == "bert.embeddings.layer_norm.bias"
    assert hf_to_sbert_name(normalize_hf_name("cls.predictions.decoder.bias")) == "mlm_head.bias"
    assert hf_to_sbert_name("encoder.layer.0.crossattention.self.query.weight") is None


def test_complete_state_converts_with_both_heads(hf_state):
    state, report = convert_hf_state_dict(hf_state, expected_shapes(CONFIG))
    assert report.heads == ["mlm", "cls"]
    assert report.missing_optional == []
    assert report.mapped == len(state) == len(hf_state)
    assert torch.equal(state["bert.layers.1.intermediate.weight"], hf_state["bert.encoder.layer.1.intermediate.dense.weight"])


def test_buffers_nsp_head_and_tied_decoder_are_dropped_with_reasons(hf_state):
    hf_state["bert.embeddings.position_ids"] = torch.arange(16)[None]
    hf_state["cls.seq_relationship.weight"] = torch.zeros(2, 8)
    hf_state["cls.seq_relationship.bias"] = torch.zeros(2)
    hf_state["cls.predictions.decoder.weight"] = hf_state["bert.embeddings.word_embeddings.weight"].clone()
    hf_state["cls.predictions.decoder.bias"] = hf_state["cls.predictions.bias"].clone()
    _, report = convert_hf_state_dict(hf_state, expected_shapes(CONFIG))
    assert set(report.dropped) == {
        "bert.embeddings.position_ids", "cls.seq_relationship.weight", "cls.seq_relationship.bias",
        "cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
    }
    assert "next-sentence" in report.dropped["cls.seq_relationship.bias"]


def test_missing_unexpected_and_misshaped_encoder_keys_are_all_listed(hf_state):
    del hf_state["bert.encoder.layer.1.attention.self.key.weight"]
    hf_state["bert.encoder.layer.7.attention.self.query.weight"] = torch.zeros(8, 8)
    hf_state["bert.embeddings.word_embeddings.weight"] = torch.zeros(51, 8)
    with pytest.raises(WeightMismatchError) as error:
        convert_hf_state_dict(hf_state, expected_shapes(CONFIG))
    message = str(error.value)
    assert "missing 1: bert.layers.1.attention.key.weight" in message
    assert "unexpected 1: bert.encoder.layer.7.attention.self.query.weight" in message
    assert "bert.embeddings.word_embeddings.weight: checkpoint (51, 8), model (50, 8)" in message


def test_untied_decoder_is_refused(hf_state):
    hf_state["cls.predictions.decoder.weight"] = torch.randn(50, 8)
    with pytest.raises(WeightMismatchError, match="not tied"):
        convert_hf_state_dict(hf_state, expected_shapes(CONFIG))


def test_decoder_bias_that_disagrees_with_the_head_bias_is_refused(hf_state):
    hf_state["cls.predictions.decoder.bias"] = hf_state["cls.predictions.bias"] + 1
    with pytest.raises(WeightMismatchError, match="cls.predictions.decoder.bias differs"):
        convert_hf_state_dict(hf_state, expected_shapes(CONFIG))


def test_incomplete_head_is_refused(hf_state):
    del hf_state["cls.predictions.transform.LayerNorm.weight"]
    with pytest.raises(WeightMismatchError, match="mlm head is incomplete: missing mlm_head.layer_norm.weight"):
        convert_hf_state_dict(hf_state, expected_shapes(CONFIG))


def test_encoder_only_state_reports_missing_heads(hf_state):
    encoder_only = {k: v for k, v in hf_state.items() if k.startswith("bert.")}
    state, report = convert_hf_state_dict(encoder_only, expected_shapes(CONFIG))
    assert report.heads == []
    assert "mlm_head.dense.weight" in report.missing_optional and "classifier.weight" in report.missing_optional
    assert not any(k.startswith(("mlm_head.", "classifier.")) for k in state)


def test_export_refuses_names_outside_the_table():
    with pytest.raises(WeightMismatchError, match="bert.adapter.weight has no Hugging Face name"):
        export_hf_state_dict({"bert.adapter.weight": torch.zeros(1)})


def _model_dir_with(hf_mlm_dir, tmp_path, weight_name: str, write) -> "Path":
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copyfile(hf_mlm_dir / name, model_dir / name)
    write(model_dir / weight_name)
    return model_dir


def test_checkpoint_mismatch_names_the_dir(hf_mlm_dir, tmp_path):
    state = load_file(str(hf_mlm_dir / "model.safetensors"))
    del state["bert.encoder.layer.0.output.dense.weight"]
    model_dir = _model_dir_with(hf_mlm_dir, tmp_path, "model.safetensors", lambda p: save_file(state, str(p)))
    with pytest.raises(WeightMismatchError, match=rf"^{model_dir}: .*missing 1: bert.layers.0.output.weight"):
        read_checkpoint(model_dir)


def test_pickled_objects_in_pytorch_model_bin_are_refused(hf_mlm_dir, tmp_path):
    import datetime

    model_dir = _model_dir_with(hf_mlm_dir, tmp_path, "pytorch_model.bin",
                                lambda p: torch.save({"created": datetime.date(2020, 1, 1)}, p))
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        read_checkpoint(model_dir)


def test_corrupt_safetensors_is_a_load_error(hf_mlm_dir, tmp_path):
    model_dir = _model_dir_with(hf_mlm_dir, tmp_path, "model.safetensors", lambda p: p.write_bytes(b"not safetensors"))
    with pytest.raises(ModelLoadError, match="cannot read safetensors file"):
        read_checkpoint(model_dir)


def test_dir_without_weights_is_a_load_error(hf_mlm_dir, tmp_path):
    model_dir = _model_dir_with(hf_mlm_dir, tmp_path, "README.md", lambda p: p.write_text("no weights"))
    with pytest.raises(ModelLoadError, match="no model.safetensors or pytorch_model.bin"):
        read_checkpoint(model_dir)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/model.safetensors"])
def test_a_shard_index_cannot_point_outside_the_model_dir(hf_mlm_dir, tmp_path, shard):
    import json

    shutil.copyfile(hf_mlm_dir / "model.safetensors", tmp_path / "outside.safetensors")
    index = {"weight_map": {"bert.embeddings.word_embeddings.weight": shard}}
    model_dir = _model_dir_with(hf_mlm_dir, tmp_path, "model.safetensors.index.json",
                                lambda p: p.write_text(json.dumps(index)))
    with pytest.raises(ModelLoadError, match="is not a file name in"):
        read_checkpoint(model_dir)
