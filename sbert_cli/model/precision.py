"""Device and numeric precision: what `--device` and `--precision` resolve to, and the autocast around forward passes.

fp32 keeps everything in float32. bf16 and fp16 keep float32 master weights and run the forward
under torch.autocast; fp16 also needs a GradScaler, which exists on CUDA only, so fp16 is CUDA-only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from sbert_cli.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_supports_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU does bfloat16 math natively (AVX512-BF16 or AMX-BF16); without it bf16 is emulated and slow."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_device(name: str = "auto") -> torch.device:
    """auto (CUDA when available, else CPU), cpu, cuda or cuda:N."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is available (this torch build: {torch.__version__}); use --device cpu")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s), numbered from 0")
        return torch.device(name)
    raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")


def resolve_precision(name: str, device: torch.device) -> str:
    """auto|fp32|bf16|fp16 -> fp32|bf16|fp16 for this device; auto picks bf16 where the hardware does it natively."""
    name = name.strip().lower()
    if name not in PRECISIONS:
        raise ConfigError(f"--precision {name!r}: use one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU (it relies on loss scaling); on CPU use bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return name


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that scales only for fp16 (on CUDA); disabled, and a no-op, otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
