"""convert-weights: HF -> sbert -> HF, bit for bit, loadable by transformers; the summary; refusals; the command."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_hf_checkpoint
from safetensors.torch import load_file
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.tasks.convert import convert_weights
from sbert_cli.errors import ConfigError
from sbert_cli.model.hf_weights import normalize_hf_name

transformers = pytest.importorskip("transformers")

HF_CLASSES = {"mlm": "BertForMaskedLM", "pretraining": "BertForMaskedLM", "base": "BertModel",
              "cls": "BertForSequenceClassification"}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    return {
        kind: make_hf_checkpoint(root / kind, kind, seed=7, **({"id2label": {0: "neg", 1: "pos"}} if kind == "cls" else {}))
        for kind in HF_CLASSES
    }


@pytest.mark.parametrize("kind", list(HF_CLASSES))
def test_hf_to_sbert_to_hf_round_trip_is_bit_identical(hf_dirs, tmp_path, kind):
    source = hf_dirs[kind]
    to_sbert = convert_weights(source, tmp_path / "sbert", probe=False)
    to_hf = convert_weights(tmp_path / "sbert", tmp_path / "hf", to="hf", probe=False)
    original = load_file(str(source / "model.safetensors"))
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))

    kept = {normalize_hf_name(k): v for k, v in original.items() if k not in to_sbert.dropped}
    assert {normalize_hf_name(k) for k in exported} == set(kept)
    for name, tensor in exported.items():
        assert torch.equal(tensor, kept[normalize_hf_name(name)]), name
    assert to_hf.architecture == HF_CLASSES[kind]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [HF_CLASSES[kind]]
    assert (tmp_path / "hf" / "vocab.txt").read_bytes() == (source / "vocab.txt").read_bytes()


@pytest.mark.parametrize("kind", ["mlm", "cls", "base"])
def test_exported_dir_loads_in_transformers_with_no_missing_keys(hf_dirs, tmp_path, kind):
    convert_weights(hf_dirs[kind], tmp_path / "sbert", probe=False)
    convert_weights(tmp_path / "sbert", tmp_path / "hf", to="hf", probe=False)
    cls = getattr(transformers, HF_CLASSES[kind])
    model, info = cls.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    original = cls.from_pretrained(str(hf_dirs[kind])).eval()
    input_ids = torch.randint(5, 21128, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids)[0], original(input_ids)[0])
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tokenizer("北京[MASK]")["input_ids"] == [101, 1266, 776, 103, 102]
    if kind == "cls":
        assert model.config.id2label == {0: "neg", 1: "pos"}


def test_summary_of_a_pretraining_checkpoint(hf_dirs, tmp_path):
    summary = convert_weights(hf_dirs["pretraining"], tmp_path / "out")
    assert summary.heads == ["mlm"]
    assert set(summary.dropped) == {"cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    assert summary.missing_parts == []
    model = transformers.BertForPreTraining.from_pretrained(str(hf_dirs["pretraining"]))
    nsp = sum(p.numel() for n, p in model.named_parameters() if "seq_relationship" in n)
    assert summary.parameters == sum(p.numel() for p in model.parameters()) - nsp
    assert summary.files == ["config.json", "model.safetensors", "sbert.json", "tokenizer_config.json", "vocab.txt"]
    assert json.loads((tmp_path / "out" / "sbert.json").read_text())["heads"] == ["mlm"]
    assert summary.probe is not None and summary.probe.looks_untrained  # random weights


def test_summary_reports_missing_parts_without_inventing_them(hf_dirs, tmp_path):
    summary = convert_weights(hf_dirs["base"], tmp_path / "out")
    assert summary.heads == [] and summary.probe is None
    assert any(part.startswith("MLM head") for part in summary.missing_parts)
    assert not any(k.startswith("mlm_head.") for k in load_file(str(tmp_path / "out" / "model.safetensors")))
    mlm = convert_weights(hf_dirs["mlm"], tmp_path / "mlm", probe=False)
    assert [part.split(" ")[0] for part in mlm.missing_parts] == ["pooler"]


def test_existing_destination_is_kept_unless_forced(hf_dirs, tmp_path):
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty; pass `force`"):
        convert_weights(hf_dirs["mlm"], destination, probe=False)
    assert (destination / "notes.txt").read_text() == "mine"
    convert_weights(hf_dirs["mlm"], destination, force=True, probe=False)
    # --force writes the model files beside the user's file: only what sbert wrote is ever replaced (issue 12)
    assert (destination / "notes.txt").read_text() == "mine" and (destination / "model.safetensors").is_file()
    convert_weights(hf_dirs["mlm"], destination, to="hf", force=True, probe=False)  # sbert's own files are replaced
    assert (destination / "notes.txt").read_text() == "mine" and not (destination / "sbert.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_weights(hf_dirs["mlm"], empty, probe=False)  # an empty folder is fine without --force


def test_source_and_file_destinations_are_refused(hf_dirs, tmp_path):
    with pytest.raises(ConfigError, match="is the source model dir"):
        convert_weights(hf_dirs["mlm"], hf_dirs["mlm"], force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        convert_weights(hf_dirs["mlm"], tmp_path / "file", force=True)
    with pytest.raises(ConfigError, match="`to` must be one of sbert, hf"):
        convert_weights(hf_dirs["mlm"], tmp_path / "x", to="onnx")


runner = CliRunner()


def test_command_prints_the_summary_and_warns_about_an_untrained_head(hf_dirs, tmp_path):
    result = runner.invoke(app, ["convert-weights", str(hf_dirs["pretraining"]), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    output = " ".join(result.stdout.split())  # rich wraps table cells at the terminal width
    for expected in ("tensors 44", "parameters 720,712", "heads mlm", "cls.seq_relationship.bias,",
                     "next-sentence-prediction head", "MLM probe", "looks UNTRAINED"):
        assert expected in output, expected
    assert "warning: the MLM head restores only" in result.stderr


def test_command_exports_to_hf(hf_dirs, tmp_path):
    convert_weights(hf_dirs["cls"], tmp_path / "sbert", probe=False)
    result = runner.invoke(app, ["convert-weights", str(tmp_path / "sbert"), str(tmp_path / "hf"), "--to", "hf"])
    assert result.exit_code == 0, result.output
    assert "BertForSequenceClassification" in result.stdout
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_command_errors_are_one_line(hf_dirs, tmp_path):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copyfile(hf_dirs["mlm"] / "config.json", no_weights / "config.json")
    shutil.copyfile(hf_dirs["mlm"] / "vocab.txt", no_weights / "vocab.txt")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "x").write_text("x")
    cases = [
        ([str(tmp_path / "missing"), str(tmp_path / "a")], f"error: {tmp_path / 'missing'}: no such model folder"),
        ([str(no_weights), str(tmp_path / "b")], f"error: {no_weights}: no model.safetensors or pytorch_model.bin"),
        ([str(hf_dirs["mlm"]), str(existing)], f"error: {existing}: exists and is not empty; pass --force"),
    ]
    for arguments, message in cases:
        result = runner.invoke(app, ["convert-weights", *arguments])
        assert result.exit_code == 1, arguments
        assert result.stderr.startswith(message), result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_export_of_a_mean_pooled_classifier_loads_but_transformers_uses_its_pooler(hf_dirs, tmp_path):
    """What the README says: transformers loads such an export whole, keeps classifier_pooling as an unknown
    config attribute, and classifies from the pooler, so only sbert gives the trained model's logits."""
    from sbert_cli.model.model_dir import load_for_task

    convert_weights(hf_dirs["cls"], tmp_path / "sbert", probe=False)
    config = json.loads((tmp_path / "sbert" / "config.json").read_text())
    (tmp_path / "sbert" / "config.json").write_text(json.dumps({**config, "classifier_pooling": "mean"}))
    convert_weights(tmp_path / "sbert", tmp_path / "hf", to="hf", probe=False)
    model, info = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.classifier_pooling == "mean"
    input_ids = torch.tensor([[101, 1266, 776, 102]])
    ours = load_for_task(tmp_path / "sbert", "cls").model
    with torch.no_grad():
        theirs = model.eval()(input_ids).logits
        assert not torch.allclose(theirs, ours(input_ids), atol=1e-4)
        ours.config.classifier_pooling = "pooler"
        torch.testing.assert_close(theirs, ours(input_ids), atol=1e-5, rtol=1e-5)


def test_a_do_lower_case_false_config_over_a_caseless_vocab_is_noted_and_exported_lower_cased(tmp_path):
    """bert-base-chinese-style: the config says do_lower_case false, the vocab has no capitals. The export says
    do_lower_case true, so transformers then tokenizes "NBA" as sbert does instead of as [UNK]."""
    import transformers

    source = make_hf_checkpoint(tmp_path / "cased-config", "base")
    (source / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    summary = convert_weights(source, tmp_path / "hf", to="hf")
    assert any("has no capital letters" in note for note in summary.notes)
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["do_lower_case"] is True
    exported = transformers.BertTokenizer.from_pretrained(str(tmp_path / "hf"))
    as_configured = transformers.BertTokenizer.from_pretrained(str(source))
    assert as_configured.tokenize("AB") == ["[UNK]"]
    assert exported.tokenize("AB") == as_configured.tokenize("ab") and "[UNK]" not in exported.tokenize("AB")
