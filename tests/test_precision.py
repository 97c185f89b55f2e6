"""Device and precision resolution."""

from __future__ import annotations

import pytest
import torch

from sbert_cli.errors import ConfigError
from sbert_cli.model.precision import (
    autocast,
    cpu_supports_bf16,
    grad_scaler,
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
        resolve_precision("int8", cpu)
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
