"""Device and numeric precision: what `--device` and `--precision` resolve to, the autocast around forward
passes, how many threads the CPU gets, and a description of the machine for every record of a run.

Training: fp32 keeps everything in float32. bf16 and fp16 keep float32 master weights and run the forward
under torch.autocast; fp16 also needs a GradScaler, which exists on CUDA only, so fp16 is CUDA-only.
Inference (prepare_for_inference): bf16 converts the weights once at load and runs without autocast, which
would re-cast every weight on every call; int8 (CPU only) quantizes the Linear layers dynamically.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

import torch

from sbert_cli.errors import ConfigError
from sbert_cli.limits import check_range, usable_cpus

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAX_THREADS = 1024
CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The flags that decide which kernels torch can use; recorded with every figure.
REPORTED_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_tile"})


def _cpuinfo_field(name: str, cpuinfo: Path | None) -> str | None:
    """The value of the first `name : value` line of /proc/cpuinfo, or None (no such line, or no such file)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str]:
    """The CPU's feature flags (avx2, avx512_bf16, amx_bf16, ...) from /proc/cpuinfo; empty where unknown."""
    return frozenset((_cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_supports_bf16(cpuinfo: Path | None = None) -> bool:
    """Whether the CPU does bfloat16 math natively (AVX512-BF16 or AMX-BF16); without it bf16 is emulated and slow."""
    return bool(cpu_flags(cpuinfo) & BF16_FLAGS)


def cpu_model(cpuinfo: Path | None = None) -> str:
    """The CPU's model name ("AMD EPYC 7B13"), from /proc/cpuinfo, else what the platform module knows."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine() or "unknown CPU"


def describe_machine() -> dict:
    """What a run or a figure came from: CPU model, native bf16 and the flags torch's kernels depend on, usable
    cores, torch threads and version, GPU. Recorded in run.json, eval's metrics.json and the demo's report."""
    return {
        "cpu": cpu_model(),
        "cpu_bf16": cpu_supports_bf16(),
        "cpu_flags": sorted(cpu_flags() & REPORTED_FLAGS),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def configure_threads(threads: int | None = None, sample_s: float = 0.1) -> int:
    """Set torch's intra-op threads for this process and return how many. None: OMP_NUM_THREADS when set; every
    usable core when OMP_WAIT_POLICY=PASSIVE was set before torch loaded; else the usable cores minus those other
    processes keep busy right now (sampled for sample_s; at least 1).

    Why not every core: torch's OpenMP threads spin while they wait for each other at the end of every parallel
    region, so when another process holds one of the cores every region waits for a descheduled thread: with one
    busy process on 2 cores a tiny model trained 27x and ran inference 34x slower than idle. With as many threads as
    free cores it was 3x (the share of the CPU it lost), and with PASSIVE waiting 2.3-2.6x
    (benchmarks/bench_shared_cpu.py). Called once by the commands that run models, before the first forward;
    library functions leave the process's threads alone.
    """
    if threads is not None:
        check_range("threads", threads, 1, MAX_THREADS, "threads beyond the cores only wait on each other")
    elif os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()  # the user's choice, which torch has already applied
    elif os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        threads = usable_cpus()  # waiting threads sleep instead of spinning: every core, busy or not, measured best
    else:
        usable = usable_cpus()
        threads = max(1, min(usable, int(usable - CpuUse().others_busy(sample_s) + 0.5)))
    torch.set_num_threads(threads)
    return threads


class CpuUse:
    """How many cores' worth of CPU time *other* processes used on this process's cores since the last look
    (/proc/stat on Linux, minus this process's own CPU time; the hypervisor's steal counts as others' use).

    For a training loop that sees its throughput collapse: keep one, call others_busy() at each log step, and
    suggest `--threads N` with N = usable_cpus() - round(others_busy()) when it is at least one core.
    """

    def __init__(self):
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self._last = self._snapshot()

    def _snapshot(self) -> tuple[float, float, float] | None:
        """(wall s, busy s on our CPUs, this process's CPU s), or None where /proc/stat cannot be read."""
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        wanted = {f"cpu{i}" for i in self.cpus}
        busy_ticks = 0
        for line in lines:
            fields = line.split()
            if fields and fields[0] in wanted:  # user nice system idle iowait irq softirq steal ...
                ticks = [int(x) for x in fields[1:9]]
                busy_ticks += sum(ticks) - ticks[3] - ticks[4]
        times = os.times()
        return time.monotonic(), busy_ticks / os.sysconf("SC_CLK_TCK"), times.user + times.system

    def others_busy(self, wait_s: float = 0.0) -> float:
        """Cores' worth of time others used since the last call (or construction); waits wait_s first when given."""
        if wait_s:
            time.sleep(wait_s)
        now, last = self._snapshot(), self._last
        self._last = now
        if now is None or last is None or now[0] <= last[0]:
            return 0.0
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / (now[0] - last[0]))


def machine_summary(machine: dict | None = None) -> str:
    """describe_machine() in one line: `AMD EPYC 7B13 (no native bf16; avx2 fma), 2 threads, torch 2.13.0`."""
    m = machine or describe_machine()
    bf16 = "native bf16" if m["cpu_bf16"] else "no native bf16"
    flags = " ".join(m["cpu_flags"])
    threads = f"{m['threads']} thread" + ("s" if m["threads"] != 1 else "")
    return (f"{m['cpu']} ({bf16}{'; ' + flags if flags else ''}), {threads}, torch {m['torch']}"
            + (f", {m['cuda']}" if m["cuda"] else ""))


def resolve_device(name: str = "auto") -> torch.device:
    """auto (CUDA when available, else CPU), cpu, cuda or cuda:N."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"`device` {name}: no CUDA GPU is available (this torch build: {torch.__version__}); use `device` cpu")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(f"`device` {name}: there are {torch.cuda.device_count()} CUDA device(s), numbered from 0")
        return torch.device(name)
    raise ConfigError(f"`device` {name!r}: use auto, cpu, cuda or cuda:N")


def resolve_precision(name: str, device: torch.device, inference: bool = False) -> str:
    """auto|fp32|bf16|fp16 (and int8 for inference) -> what runs on this device; auto picks bf16 where the
    hardware does it natively, else fp32 (never int8: it changes the numbers)."""
    name = name.strip().lower()
    if name == "int8" and not inference:
        raise ConfigError("`precision` int8 is for inference only (eval, predict, fill-mask, embed, serve); train with fp32 or bf16")
    allowed = INFERENCE_PRECISIONS if inference else PRECISIONS
    if name not in allowed:
        raise ConfigError(f"`precision` {name!r}: use one of {', '.join(allowed)}")
    if name == "int8" and device.type != "cpu":
        raise ConfigError("`precision` int8 runs on the CPU only; use `device` cpu, or bf16/fp16 on a GPU")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("`precision` fp16 needs a CUDA GPU (it relies on loss scaling); on CPU use bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("`precision` bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return name


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16/fp16, a no-op for fp32 (and int8, whose layers carry their own arithmetic)."""
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def prepare_for_inference(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Convert an eval-mode model in place, once, for `precision` (resolved, on its device): bf16 casts the
    weights, int8 quantizes every nn.Linear dynamically (CPU); fp32 and fp16 (autocast) leave it as it is.
    Run it under inference_autocast(precision, device).

    bf16: on the CPU, LayerNorm keeps float32 weights (its CPU kernel takes a bf16 input with float32 weights and
    normalizes in float32; CUDA's wants one dtype), and callers take the softmax of float32 logits, so only the
    matmuls and the residual stream are in bf16.
    """
    if precision == "bf16":
        model.to(torch.bfloat16)
        if all(p.device.type == "cpu" for p in model.parameters()):
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.float()
        return model
    if precision == "int8":
        import warnings

        with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice; it still ships in torch 2.13
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return model


def inference_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast around an inference forward of a model from prepare_for_inference: only fp16 still needs one."""
    return autocast(precision, device) if precision == "fp16" else contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that scales only for fp16 (on CUDA); disabled, and a no-op, otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
