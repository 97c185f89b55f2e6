"""A run dir's saved state: checkpoints (sbert model dirs plus trainer_state.pt), RNG states, metrics.jsonl.

OUT/checkpoints/step-N is written into a temp dir and renamed into place, so a checkpoint is either
complete or absent; resuming checks that the data and batch layout are the ones the run started with.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from sbert_cli.errors import ConfigError, OutputError, ResumeError, os_error_message
from sbert_cli.limits import parse_json
from sbert_cli.outputs import OutputDir, write_text
from sbert_cli.plots import CURVES_FILE, METRICS_FILE

if TYPE_CHECKING:
    from sbert_cli.train.types import Task

STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 1
# What a run (re)writes at the top of OUT; --force removes sbert's files among these (see outputs.py).
RUN_ARTIFACTS = ("checkpoints", "best", "last", METRICS_FILE, CURVES_FILE, "run.json", "eval-dev", "eval-test")


def check_run_dir(out_dir: Path, resume: bool, force: bool, reads: tuple = ()) -> None:
    """Refuse to write into a run dir that holds earlier results unless resuming or forced (reads only)."""
    outputs = OutputDir(out_dir)
    if resume:
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"`out` {out_dir}: is a file; give a folder for the run")
        if latest_checkpoint(out_dir) is None:
            raise ResumeError(
                f"`resume`: no checkpoint under {out_dir / 'checkpoints'} to resume from; drop `resume` "
                "(with `force` to start over in this `out`)"
            )
        return
    if latest_checkpoint(out_dir) is None and out_dir.is_dir() and outputs.recorded():
        advice = "it holds a run stopped before its first checkpoint: start over with `force`, or choose another `out`"
    else:
        advice = "continue it with `resume`, overwrite its results with `force`, or choose another `out`"
    outputs.check(force, will_write=RUN_ARTIFACTS, reads=reads, not_empty=f"is not empty; {advice}")


def prepare_run_dir(out_dir: Path, resume: bool, force: bool) -> OutputDir:
    """Lock OUT for this run (see outputs.py); forced, remove sbert's results of an earlier run first."""
    outputs = OutputDir(out_dir).acquire()
    if force and not resume:
        outputs.clear()
    checkpoints = out_dir / "checkpoints"
    if checkpoints.is_dir():
        for leftover in checkpoints.glob(".*"):  # temp dirs of a save that was killed
            shutil.rmtree(leftover, ignore_errors=True)
    return outputs


def kept_model_dir(out_dir: Path) -> Path:
    """The model a run keeps: OUT/best when it evaluated, else OUT/last."""
    out_dir = Path(out_dir)
    return out_dir / "best" if (out_dir / "best").is_dir() else out_dir / "last"


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = checkpoint_dirs(out_dir)
    return found[-1] if found else None


def rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_checkpoint(outputs: OutputDir, model: nn.Module, task: Task, trainer_state: dict, keep_last: int) -> Path:
    """Write OUT/checkpoints/step-N atomically (a temp dir renamed into place), then prune to keep_last."""
    from sbert_cli.model.model_dir import save_model_dir

    root = outputs.path / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{trainer_state['step']:07d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model_dir(model, tmp, task.tokenizer, task.model_task, source="sbert checkpoint",
                       extra_meta={"step": trainer_state["step"], **task.save_meta()})
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(trainer_state, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
    except (OSError, RuntimeError, SafetensorError) as e:  # a full disk; torch.save and safetensors wrap the OSError
        shutil.rmtree(tmp, ignore_errors=True)  # the run stays resumable from its last whole checkpoint
        if isinstance(e, RuntimeError) and "writ" not in str(e).lower():
            raise
        reason = os_error_message(e, root / name) if isinstance(e, OSError) else f"{root / name}: cannot write ({_first_line(e)})"
        advice = ("continue from the last checkpoint with `resume` (free space first)" if checkpoint_dirs(outputs.path)
                  else "start over with `force` once there is room")
        raise OutputError(f"{reason}; {advice}") from None
    final = outputs.replace(tmp, f"checkpoints/{name}")
    _fsync_dir(root)
    for old in checkpoint_dirs(outputs.path)[:-keep_last]:
        if old != final:
            outputs.remove(f"checkpoints/{old.name}")
    return final


def load_trainer_state(checkpoint: Path) -> dict:
    """trainer_state.pt of a checkpoint (tensors and plain types only: weights_only=True)."""
    try:
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which
        raise ResumeError(f"{checkpoint / STATE_FILE}: cannot be read ({_first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ResumeError(f"{checkpoint / STATE_FILE}: trainer state format {found} is not {STATE_FORMAT}")
    return state


def read_checkpoint_state(checkpoint: Path, device: torch.device) -> tuple[dict, dict[str, torch.Tensor]]:
    """(trainer state, weights) of a checkpoint, each read back whole; ResumeError names what is damaged."""
    from safetensors.torch import load_file

    state = load_trainer_state(checkpoint)
    weights_file = checkpoint / "model.safetensors"
    try:
        weights = load_file(str(weights_file), device=str(device))
    except Exception as e:  # missing, truncated, not safetensors
        raise ResumeError(f"{weights_file}: cannot be read ({_first_line(e)})") from None
    return state, weights


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def check_resume_compatible(saved: dict, current: dict, checkpoint: Path) -> list[str]:
    """Refuse changes that make resuming meaningless; return notes for changes that only alter the outcome."""
    problems = []
    for key, value in current["strict"].items():
        before = saved["strict"].get(key)
        if before == value:
            continue
        if isinstance(value, dict) and isinstance(before, dict):  # name what differs, not two long dicts
            differing = sorted(k for k in value.keys() | before.keys() if value.get(k) != before.get(k))
            problems.append(f"the {key} differs ({', '.join(differing)})")
        else:
            problems.append(f"{key} was {before!r}, now {value!r}")
    if problems:
        raise ResumeError(
            f"cannot resume from {checkpoint}: {'; '.join(problems)}. Resume with the same data, batch size and "
            "number of processes, or start a new run with another `out`"
        )
    return [
        f"{key} changed from {saved['soft'].get(key)!r} to {value!r}: the run will differ from an uninterrupted one"
        for key, value in current["soft"].items()
        if saved["soft"].get(key) != value
    ]


def append_metrics(out_dir: Path, record: dict) -> None:
    with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def truncate_metrics(out_dir: Path, step: int) -> None:
    """Drop records the interrupted run logged after its last checkpoint; the resumed run logs them again."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if parse_json(line).get("step", 0) <= step:
                kept.append(line)
    write_text(path, "".join(line + "\n" for line in kept), force=True)  # whole, or the earlier one


