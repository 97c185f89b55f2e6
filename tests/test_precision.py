"""Device and precision resolution."""

from __future__ import annotations

import pytest
import torch

from sbert_cli.errors import ConfigError
from sbert_cli.model import precision as precision_module
from sbert_cli.model.precision import (
    CpuUse,
    autocast,
    configure_threads,
    cpu_model,
    cpu_supports_bf16,
    describe_machine,
    grad_scaler,
    inference_autocast,
    machine_summary,
    prepare_for_inference,
    resolve_device,
    resolve_precision,
)


def test_cpu_bf16_flag_detection(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert not cpu_supports_bf16(info)
    info.write_text("processor : 0\nflags : fpu avx512f avx512_bf16\n")
    assert cpu_supports_bf16(info)
    info.write_text("flags\t\t: amx_bf16 amx_tile\n")
    assert cpu_supports_bf16(info)
    assert not cpu_supports_bf16(tmp_path / "missing")


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("fpu sse2 avx2 fma avx512f avx512_vnni amx_tile amx_bf16 amx_int8", "bf16"),  # Sapphire Rapids
        ("fpu sse2 avx2 avx512f avx512_bf16", "bf16"),  # Cooper Lake, Zen 4
        ("fpu sse2 avx2 fma avx512f avx512_vnni", "fp32"),  # Cascade Lake: AVX-512 but no bf16
        ("fpu sse2 avx2 fma", "fp32"),  # AMD EPYC (Zen 2/3)
        (None, "fp32"),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_auto_picks_bf16_exactly_where_cpuinfo_shows_native_bf16(monkeypatch, tmp_path, flags, expected):
    """What `auto` resolves to is read from /proc/cpuinfo: a faked one decides it on any machine running the suite."""
    info = tmp_path / "cpuinfo"
    if flags is not None:
        info.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(precision_module, "CPUINFO", info)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert describe_machine()["cpu_bf16"] == (expected == "bf16")
    if flags is not None:
        assert cpu_model() == "Test CPU" and machine_summary().startswith("Test CPU (")


def test_auto_precision_follows_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("sbert_cli.model.precision.cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr("sbert_cli.model.precision.cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("BF16", cpu) == "bf16"


def test_impossible_combinations_are_refused():
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="use one of"):
        resolve_precision("fp64", cpu)
    with pytest.raises(ConfigError, match="int8 is for inference only"):
        resolve_precision("int8", cpu)  # training
    assert resolve_precision("int8", cpu, inference=True) == "int8"
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")


def test_autocast_runs_matmuls_in_bf16_only_when_asked():
    cpu = torch.device("cpu")
    x = torch.randn(4, 4)
    with autocast("bf16", cpu):
        assert (x @ x).dtype == torch.bfloat16
    with autocast("fp32", cpu):
        assert (x @ x).dtype == torch.float32
    assert not grad_scaler("fp32", cpu).is_enabled()


def _tiny_classifier():
    from sbert_cli.model.bert import BertForSequenceClassification
    from sbert_cli.model.config import BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64).with_labels(["a", "b", "c"])
    return BertForSequenceClassification(config).eval()


def test_bf16_inference_converts_the_weights_once_and_keeps_layer_norm_in_fp32():
    model = _tiny_classifier()
    input_ids = torch.randint(5, 200, (8, 16))
    attention_mask = (torch.arange(16)[None, :] < torch.randint(4, 17, (8, 1))).long()
    with torch.inference_mode():
        expected = model(input_ids, attention_mask).float().softmax(-1)
    fp32_state = {k: v.clone() for k, v in model.state_dict().items()}
    assert prepare_for_inference(model, "fp32") is model
    assert all(torch.equal(v, fp32_state[k]) for k, v in model.state_dict().items())  # fp32: untouched

    prepare_for_inference(model, "bf16")
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    for name, parameter in model.named_parameters():
        assert parameter.dtype == (torch.float32 if name.rpartition(".")[0] in norms else torch.bfloat16), name
    with torch.inference_mode(), inference_autocast("bf16", torch.device("cpu")):
        probabilities = model(input_ids, attention_mask).float().softmax(-1)
    torch.testing.assert_close(probabilities, expected, atol=0.02, rtol=0)


def test_int8_quantizes_the_linear_layers_for_inference():
    model = _tiny_classifier()
    input_ids = torch.randint(5, 200, (4, 12))
    with torch.inference_mode():
        expected = model(input_ids).softmax(-1)
        prepare_for_inference(model, "int8")
        assert not any(type(m) is torch.nn.Linear for m in model.modules())
        torch.testing.assert_close(model(input_ids).softmax(-1), expected, atol=0.05, rtol=0)


def test_machine_description_and_threads():
    machine = describe_machine()
    assert machine["cpu"] and machine["threads"] == torch.get_num_threads() and machine["usable_cpus"] >= 1
    assert set(machine["cpu_flags"]) <= precision_module.REPORTED_FLAGS
    previous = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert 1 <= configure_threads(None, sample_s=0.01) <= machine["usable_cpus"]
        with pytest.raises(ConfigError, match="`threads` must be between 1 and"):
            configure_threads(0)
    finally:
        torch.set_num_threads(previous)
    assert CpuUse().others_busy(0.01) >= 0.0
