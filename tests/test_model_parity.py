"""Our BERT against transformers' on the same random weights, loaded through checkpoint.load_for_task as the CLI does."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_hf_checkpoint
from safetensors.torch import load_file

from sbert_cli.errors import ModelLoadError
from sbert_cli.model.model_dir import load_for_task, read_checkpoint

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
CONFIGS = {
    "gelu-chinese-vocab": {},
    "gelu_new-vocab-1000": dict(hidden_act="gelu_new", vocab_size=1000),
    "relu-vocab-3001-3-types": dict(hidden_act="relu", vocab_size=3001, num_attention_heads=2, intermediate_size=48,
                                    type_vocab_size=3),
    "gelu_pytorch_tanh-3-layers": dict(hidden_act="gelu_pytorch_tanh", vocab_size=500, num_hidden_layers=3,
                                       layer_norm_eps=1e-5, hidden_size=48, num_attention_heads=6),
}


def padded_batch(vocab_size: int, type_vocab_size: int = 2, seed: int = 0):
    """(input_ids, attention_mask, token_type_ids): four rows of 11, 7, 3 and 11 real tokens, padded with 0."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([11, 7, 3, 11])
    attention_mask = (torch.arange(11)[None, :] < lengths[:, None]).long()
    input_ids = torch.randint(5, vocab_size, (4, 11), generator=generator) * attention_mask
    token_type_ids = torch.randint(0, type_vocab_size, (4, 11), generator=generator) * attention_mask
    return input_ids, attention_mask, token_type_ids


def assert_matches(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    assert diff <= ATOL, f"max abs diff {diff:.2e}"


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def pretraining_dir(request, tmp_path_factory):
    """A BertForPreTraining checkpoint (MLM head, pooler and NSP head) per config."""
    return make_hf_checkpoint(tmp_path_factory.mktemp("parity") / request.param, "pretraining", seed=1,
                              **CONFIGS[request.param])


def hf_outputs(model_dir, batch):
    reference = transformers.BertForPreTraining.from_pretrained(str(model_dir)).eval()
    input_ids, attention_mask, token_type_ids = batch
    with torch.no_grad():
        base = reference.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        logits = reference(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).prediction_logits
    return base.last_hidden_state, base.pooler_output, logits


def test_base_and_mlm_outputs_match_transformers(pretraining_dir):
    config = json.loads((pretraining_dir / "config.json").read_text())
    batch = padded_batch(config["vocab_size"], config["type_vocab_size"])
    hidden, pooled, logits = hf_outputs(pretraining_dir, batch)

    base = load_for_task(pretraining_dir, "base").model
    mlm = load_for_task(pretraining_dir, "mlm").model
    with torch.no_grad():
        our_hidden, our_pooled = base(*batch)
        our_logits = mlm(*batch)
    assert_matches(our_hidden, hidden)
    assert_matches(our_pooled, pooled)
    assert_matches(our_logits, logits)


def test_logits_at_masked_positions_equal_the_full_logits(pretraining_dir):
    config = json.loads((pretraining_dir / "config.json").read_text())
    input_ids, attention_mask, token_type_ids = padded_batch(config["vocab_size"], config["type_vocab_size"])
    mlm = load_for_task(pretraining_dir, "mlm").model
    masked_positions = torch.tensor([[1, 5], [2, 6], [1, 2], [0, 10]])
    with torch.no_grad():
        full = mlm(input_ids, attention_mask, token_type_ids)
        at_positions = mlm(input_ids, attention_mask, token_type_ids, masked_positions=masked_positions)
    expected = torch.gather(full, 1, masked_positions[..., None].expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(at_positions, expected, atol=1e-6, rtol=0)


def test_unpadded_batch_without_attention_mask_matches_transformers(hf_mlm_dir):
    reference = transformers.BertForMaskedLM.from_pretrained(str(hf_mlm_dir)).eval()
    input_ids = torch.randint(5, 21128, (3, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(input_ids).logits
        ours = load_for_task(hf_mlm_dir, "mlm").model(input_ids)
        ours_with_full_mask = load_for_task(hf_mlm_dir, "mlm").model(input_ids, torch.ones_like(input_ids))
    assert_matches(ours, expected)
    assert torch.equal(ours, ours_with_full_mask)


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_classifier_logits_match_transformers(tmp_path, act):
    labels = {0: "finance", 1: "sports", 2: "game", 3: "tech"}
    model_dir = make_hf_checkpoint(tmp_path / "cls", "cls", seed=2, hidden_act=act, id2label=labels)
    reference = transformers.BertForSequenceClassification.from_pretrained(str(model_dir)).eval()
    batch = padded_batch(21128)
    with torch.no_grad():
        expected = reference(batch[0], attention_mask=batch[1], token_type_ids=batch[2]).logits
    loaded = load_for_task(model_dir, "cls")
    with torch.no_grad():
        logits = loaded.model(*batch)
    assert_matches(logits, expected)
    assert loaded.model.config.labels == list(labels.values())


def test_pretraining_checkpoint_drops_only_the_nsp_head(pretraining_dir):
    checkpoint = read_checkpoint(pretraining_dir)
    assert set(checkpoint.report.dropped) == {"cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    assert "next-sentence" in checkpoint.report.dropped["cls.seq_relationship.weight"]
    assert checkpoint.heads == ["mlm"]


def test_plain_bert_model_checkpoint_loads_without_inventing_a_head(tmp_path):
    model_dir = make_hf_checkpoint(tmp_path / "base", "base", seed=4)
    reference = transformers.BertModel.from_pretrained(str(model_dir)).eval()
    batch = padded_batch(21128)
    with torch.no_grad():
        expected = reference(batch[0], attention_mask=batch[1], token_type_ids=batch[2])
        hidden, pooled = load_for_task(model_dir, "base").model(*batch)
    assert_matches(hidden, expected.last_hidden_state)
    assert_matches(pooled, expected.pooler_output)
    checkpoint = read_checkpoint(model_dir)
    assert checkpoint.heads == []
    assert any(k.startswith("mlm_head.") for k in checkpoint.report.missing_optional)
    with pytest.raises(ModelLoadError, match="no masked-LM head"):
        load_for_task(model_dir, "mlm")


def _rewrite_weights(source_dir, target_dir, rename=lambda name: name, as_bin=True):
    """Copy a checkpoint with its tensors renamed, saved as pytorch_model.bin (or safetensors)."""
    target_dir.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copyfile(source_dir / name, target_dir / name)
    state = {rename(k): v for k, v in load_file(str(source_dir / "model.safetensors")).items()}
    if as_bin:
        torch.save(state, target_dir / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(target_dir / "model.safetensors"))
    return target_dir


def _legacy_layer_norm_names(name: str) -> str:
    if ".LayerNorm." in name:
        return name.replace(".LayerNorm.weight", ".LayerNorm.gamma").replace(".LayerNorm.bias", ".LayerNorm.beta")
    return name


def _mlm_reference_logits(model_dir, batch):
    reference = transformers.BertForMaskedLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        return reference(batch[0], attention_mask=batch[1], token_type_ids=batch[2]).logits


@pytest.mark.parametrize("variant", ["pytorch_model.bin", "legacy gamma/beta", "sharded safetensors"])
def test_checkpoint_formats_load_to_the_same_outputs(hf_mlm_dir, tmp_path, variant):
    batch = padded_batch(21128)
    expected = _mlm_reference_logits(hf_mlm_dir, batch)
    if variant == "pytorch_model.bin":
        model_dir = _rewrite_weights(hf_mlm_dir, tmp_path / "bin")
    elif variant == "legacy gamma/beta":
        model_dir = _rewrite_weights(hf_mlm_dir, tmp_path / "legacy", _legacy_layer_norm_names)
        assert any(k.endswith(".gamma") for k in torch.load(model_dir / "pytorch_model.bin", weights_only=True))
    else:
        model_dir = tmp_path / "sharded"
        transformers.BertForMaskedLM.from_pretrained(str(hf_mlm_dir)).save_pretrained(str(model_dir), max_shard_size="300KB")
        shutil.copyfile(hf_mlm_dir / "vocab.txt", model_dir / "vocab.txt")
        index = json.loads((model_dir / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
    with torch.no_grad():
        logits = load_for_task(model_dir, "mlm").model(*batch)
    assert_matches(logits, expected)


def test_untied_checkpoint_with_decoder_weight_loads_when_equal(hf_mlm_dir, tmp_path):
    """Older checkpoints store cls.predictions.decoder.weight/bias explicitly; equal copies are accepted."""

    def add_decoder(state):
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
        return state

    model_dir = tmp_path / "explicit-decoder"
    model_dir.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copyfile(hf_mlm_dir / name, model_dir / name)
    torch.save(add_decoder(dict(load_file(str(hf_mlm_dir / "model.safetensors")))), model_dir / "pytorch_model.bin")
    batch = padded_batch(21128)
    with torch.no_grad():
        logits = load_for_task(model_dir, "mlm").model(*batch)
    assert_matches(logits, _mlm_reference_logits(hf_mlm_dir, batch))



def test_training_batches_with_padding_run_on_real_tokens_with_the_same_values_and_gradients(monkeypatch):
    # A training batch with >= UNPAD_SHARE padding runs its dense layers on the real tokens only (model/bert.py
    # Unpadded); at the real tokens it computes what the padded path computes, forward and backward.
    import dataclasses

    from sbert_cli.model import bert
    from sbert_cli.model.config import preset

    config = dataclasses.replace(preset("tiny"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    unpadded = bert.BertForSequenceClassification(dataclasses.replace(config, id2label={0: "a", 1: "b", 2: "c"}))
    padded = bert.BertForSequenceClassification(unpadded.config)
    padded.load_state_dict(unpadded.state_dict())
    input_ids = torch.randint(5, 21128, (6, 17), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([17, 4, 9, 12, 3, 16])
    attention_mask = (torch.arange(17)[None] < lengths[:, None]).long()
    used = []
    real_unpadded = bert.Unpadded
    monkeypatch.setattr(bert, "Unpadded", lambda mask: used.append(1) or real_unpadded(mask))
    logits = unpadded.train()(input_ids, attention_mask)
    with torch.no_grad():
        hidden = unpadded.bert.encode(input_ids, attention_mask)
    assert not hidden[attention_mask == 0].any()  # zeros at the padding, which nothing reads
    monkeypatch.setattr(bert, "UNPAD_SHARE", 1.1)  # never unpad
    expected = padded.train()(input_ids, attention_mask)
    assert used == [1, 1]
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    logits.square().sum().backward()
    expected.square().sum().backward()
    for (name, a), b in zip(unpadded.named_parameters(), padded.parameters()):
        if a.grad is not None or b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("head", ["cls-pooler", "cls-cls", "mlm", "ner"])
@pytest.mark.parametrize("mode", ["eval", "train-unpadded"])
def test_heads_that_read_some_positions_run_the_last_layer_there_only_with_the_full_layers_values(head, mode):
    # A head that reads [CLS] (classifier), the masked positions (MLM) or words' first pieces (tagger) gets the last
    # layer at those positions only (BertModel.encode's `read`): its feed-forward sees B * M rows, not B * T, and the
    # outputs and gradients equal the full last layer's gathered there.
    import dataclasses

    from sbert_cli.model import bert
    from sbert_cli.model.config import preset

    config = dataclasses.replace(preset("tiny"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                 id2label={0: "a", 1: "b", 2: "c"})
    torch.manual_seed(0)
    input_ids = torch.randint(5, 21128, (6, 17), generator=torch.Generator().manual_seed(1))
    attention_mask = (torch.arange(17)[None] < torch.tensor([17, 4, 9, 12, 3, 16])[:, None]).long()
    read = torch.tensor([[0, 2, 1]] * 6)  # real tokens in every row (the shortest has 3)
    if head.startswith("cls"):
        model = bert.BertForSequenceClassification(dataclasses.replace(config, classifier_pooling=head[4:]))
        read = torch.zeros(6, 1, dtype=torch.long)
        run = lambda: model(input_ids, attention_mask)  # noqa: E731
        head_of = lambda x: model.classifier(model.bert.pool(x) if head == "cls-pooler" else x[:, 0])  # noqa: E731
    elif head == "mlm":
        model = bert.BertForMaskedLM(config)
        run = lambda: model(input_ids, attention_mask, masked_positions=read)  # noqa: E731
        head_of = lambda x: model.mlm_head(x, model.bert.embeddings.word_embeddings.weight)  # noqa: E731
    else:
        model = bert.BertForTokenClassification(config)
        run = lambda: model(input_ids, attention_mask, word_positions=read)  # noqa: E731
        head_of = model.classifier
    model.train(mode != "eval")
    rows, real_dense, last = [], bert.dense, model.bert.layers[-1].intermediate

    def counting_dense(layer, x, *activation):
        if layer is last:
            rows.append(x.shape[:-1].numel())
        return real_dense(layer, x, *activation)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bert, "dense", counting_dense)
        out = run()
    assert rows == [read.numel()]
    full = model.bert.encode(input_ids, attention_mask)  # every position, then gathered
    expected = head_of(torch.gather(full, 1, read[..., None].expand(-1, -1, full.shape[-1])))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    if mode != "eval":
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]  # a tagger has no pooler
        grads = torch.autograd.grad(out.square().mean(), [p for _, p in named], allow_unused=True)
        expected_grads = torch.autograd.grad(expected.square().mean(), [p for _, p in named], allow_unused=True)
        for (name, _), a, b in zip(named, grads, expected_grads):
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def _ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch.ao.quantization's notices
def test_inference_matmuls_run_on_onednn_with_f_linears_values_and_training_keeps_f_linear(monkeypatch):
    # Without autograd, on float32 CPU tensors outside autocast, the model's linear layers are oneDNN's matmul
    # (faster than F.linear's MKL sgemm on an AMD EPYC); with autograd, under autocast, on bf16 or int8 they are not.
    from sbert_cli.model import bert

    if not bert.ONEDNN_LINEAR:
        pytest.skip("this torch has no oneDNN linear")
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96)
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        assert "mkldnn::_linear_pointwise" in _ops_run(lambda: bert.dense(layer, x))
        torch.testing.assert_close(bert.dense(layer, x), torch.nn.functional.linear(x, layer.weight, layer.bias),
                                   atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert "mkldnn::_linear_pointwise" not in _ops_run(lambda: bert.dense(layer, x))
        assert "mkldnn::_linear_pointwise" not in _ops_run(lambda: bert.dense(layer.to(torch.bfloat16), x.bfloat16()))
        layer.float()
        quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear}, dtype=torch.qint8)
        assert "mkldnn::_linear_pointwise" not in _ops_run(lambda: bert.dense(quantized[0], x))
    assert set(bert.ONEDNN_ACTIVATIONS) == set(bert.ACTIVATIONS)
    with torch.no_grad():
        for activation, function in bert.ACTIVATIONS.items():  # fused into the matmul, as applied after it
            torch.testing.assert_close(bert.dense(layer, x, activation), function(bert.dense(layer, x)),
                                       atol=1e-6, rtol=1e-6, msg=activation)
    trained = _ops_run(lambda: bert.dense(layer, x).sum().backward())
    assert "mkldnn::_linear_pointwise" not in trained and layer.weight.grad is not None
    monkeypatch.setattr(bert, "ONEDNN_LINEAR", False)  # a torch without it
    with torch.no_grad():
        assert "mkldnn::_linear_pointwise" not in _ops_run(lambda: bert.dense(layer, x))
