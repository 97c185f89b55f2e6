"""Upper bounds of numeric options, each with its reason: no option value may make sbert use memory or time
without bound (a `--workers 10000` once forked processes until the machine ran out of memory).

Library code checks options with `check_range` before it creates any output folder; the message names the
option, the range and why. Also here, the bounds on what sbert reads (issue 21): the line and input byte limits
the input layer keeps (`byte_limit`, raised by SBERT_MAX_LINE_BYTES / SBERT_MAX_INPUT_BYTES), `parse_json` (deep
nesting is invalid JSON, not a RecursionError) and `available_memory` (what a model of a config.json may take).
"""

from __future__ import annotations

import contextlib
import math
import os

from sbert_cli.errors import ConfigError

# Examples per forward pass (inference) or per micro-batch and process (training): beyond this no CPU or GPU
# runs faster, and memory grows with it; training gets bigger batches from --grad-accum.
MAX_BATCH_SIZE = 4096
BATCH_SIZE_WHY = "larger batches run no faster and need memory in proportion"
# Micro-batches per optimizer step: 1024 x --batch-size 32 is already a global batch of 32k examples.
MAX_GRAD_ACCUM = 1024
GRAD_ACCUM_WHY = "1024 micro-batches per step already make a global batch of 32k examples at `batch_size` 32"
# Optimizer steps (and warmup steps): 10^8 steps take years at any speed.
MAX_STEPS = 100_000_000
STEPS_WHY = "a hundred million optimizer steps take years at any speed"
MAX_EPOCHS = 100_000
# make-mlm-data --dupe-factor: every copy is held in memory per chunk; Google BERT used 10, and
# `--no-mask` + `pretrain --dynamic-masking` gives a fresh mask every epoch at no cost.
MAX_DUPE_FACTOR = 100
DUPE_FACTOR_WHY = "each copy costs memory and disk; for fresh masks every epoch use `no_mask` and pretrain `dynamic_masking`"
# fill-mask --joint keeps max(top-k, 8) partial words per run of [MASK]s and expands each into as many:
# top-k^2 candidates per step; past a few dozen, whole-word candidates are noise.
MAX_JOINT_TOP_K = 100
JOINT_TOP_K_WHY = "joint decoding weighs top-k x top-k partial words per step"
# Classifier labels a config.json may declare without naming them (num_labels only).
MAX_NUM_LABELS = 100_000


def is_int(value) -> bool:
    """An integer, and not a bool (JSON's true is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_range(field: str, value, low, high=None, why: str = "") -> None:
    """ConfigError unless low <= value <= high (high None: no upper bound); NaN is never in range.
    The message names `field` (the CLI shows it as its flag)."""
    in_range = isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))
    in_range = in_range and value >= low and (high is None or value <= high)
    if in_range:
        return
    bounds = f"at least {low}" if high is None else f"between {low} and {high:,}" if isinstance(high, int) else f"between {low} and {high}"
    raise ConfigError(f"`{field}` must be {bounds}{f' ({why})' if why else ''}, not {value}")

# make-mlm-data's default seed, and the one `sbert eval` and pretrain's held-out evaluation mask unmasked data with,
# so the two report the same figures on the same sequences.
MASKING_SEED = 12345


def check_seed(seed: int) -> None:
    """Random generators (numpy's SeedSequence) take non-negative seeds."""
    if not 0 <= seed < 2**63:
        raise ConfigError(f"`seed` must be between 0 and 2^63 - 1 (random generators take non-negative seeds), not {seed}")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# Input bounds, kept by the one input layer (data/text_input.py) for every command that reads text. Raised with
# an environment variable each, so that one setting covers every command (and the server) alike.
MAX_LINE_BYTES_VAR = "SBERT_MAX_LINE_BYTES"
DEFAULT_MAX_LINE_BYTES = 1 << 20  # 1 MiB: a long article on one line fits; /dev/zero or a bomb of zeros fails fast
MAX_INPUT_BYTES_VAR = "SBERT_MAX_INPUT_BYTES"
DEFAULT_MAX_INPUT_BYTES = 64 << 30  # bytes read (decompressed) from one named input: a gzip bomb ends here


def byte_limit(variable: str, default: int) -> int:
    """The bound an environment variable sets (a whole number of bytes, at least 1), else `default`."""
    value = os.environ.get(variable, "").strip().replace("_", "")
    if not value:
        return default
    try:
        number = int(float(value)) if value.lower().count("e") == 1 else int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{variable} must be a whole number of bytes (at least 1), not {value!r}")
    return number


def parse_json(text: str | bytes):
    """json.loads; nesting deeper than Python recurses is a json.JSONDecodeError too (not a RecursionError), so
    every reader's "not valid JSON" message covers it."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text if isinstance(text, str) else "", 0) from None


def available_memory() -> int | None:
    """Bytes this process may still allocate, as far as Linux tells: the least of the system's available memory
    and free swap, the cgroup's room (containers) and the address-space limit's room (ulimit -v); None when unknown."""
    from pathlib import Path

    room = []

    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    info = dict(line.split(":", 1) for line in read("/proc/meminfo").splitlines() if ":" in line)
    with contextlib.suppress(KeyError, ValueError, IndexError):
        room.append((int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])) * 1024)
    limit, current = read("/sys/fs/cgroup/memory.max").strip(), read("/sys/fs/cgroup/memory.current").strip()
    if limit.isdigit() and current.isdigit():
        room.append(int(limit) - int(current))
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            status = dict(line.split(":", 1) for line in read("/proc/self/status").splitlines() if ":" in line)
            room.append(soft - int(status["VmSize"].split()[0]) * 1024 if "VmSize" in status else soft)
    return max(0, min(room)) if room else None
