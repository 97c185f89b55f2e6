"""What every inference command shares: the device and precision it runs with, and how fast it ran (Runtime);
in_chunks (streaming); KnownOutputs (what a training run already computed on a file, for its closing report)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

if TYPE_CHECKING:
    import torch
    from torch import nn

# progress(examples_done_now, total_or_None): how library loops report progress to the CLI's bar.
ProgressCallback = Callable[[int, "int | None"], None]

Item = TypeVar("Item")


def in_chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """`items` as lists of `size` (the last may be shorter), so a streaming command holds one chunk at a time."""
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class KnownOutputs:
    """What a training run's evaluation computed on a file with the model it kept, in this process, at fp32 on the
    CPU: the same numbers `sbert eval` gets from the saved model (same weights, tokens, batches and kernels), so the
    closing report uses them instead of running the model again. `outputs`: per example, in file order (a
    classifier's probabilities); tokens and seconds: that evaluation's."""

    outputs: object
    tokens: int
    seconds: float


@dataclass
class Runtime:
    """Where and how fast inference ran; `seconds` counts tokenizing and the model, not loading."""

    device: str
    precision: str
    batch_size: int
    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, examples: int, tokens: int, seconds: float) -> None:
        self.examples += examples
        self.tokens += tokens
        self.seconds += seconds

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        from sbert_cli.model.precision import describe_machine

        return {
            "device": self.device,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "seconds": round(self.seconds, 4),
            "examples_per_s": round(self.examples_per_s, 2),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "machine": describe_machine(),  # CPU model and bf16, threads, torch: what the speed and numbers came from
        }

    def summary(self, unit: str = "examples") -> str:
        """One line for stderr: `1,000 examples in 1.25 s: 797.0 examples/s, 15,684 tokens/s (cpu, bf16, 2 threads,
        batch size 64)`."""
        import torch

        count_unit = unit if self.examples != 1 else unit.removesuffix("s")
        threads = torch.get_num_threads()
        return (
            f"{self.examples:,} {count_unit} in {self.seconds:.2f} s: {self.examples_per_s:,.1f} {unit}/s, "
            f"{self.tokens_per_s:,.0f} tokens/s ({self.device}, {self.precision}, {threads} thread{'s' * (threads != 1)}, "
            f"batch size {self.batch_size})"
        )


def default_max_length(model: "nn.Module", meta: dict) -> int:
    """The max_seq_len the model was trained with (sbert.json), else what its positions allow."""
    limit = model.config.max_position_embeddings
    trained = meta.get("max_seq_len")
    return min(int(trained), limit) if trained else limit


def prepare_inference(model: "nn.Module", device: str, precision: str) -> tuple["torch.device", str]:
    """Resolve --device/--precision, move the model there in eval mode, and convert it in place for the precision
    (bf16 weights, or int8 Linear layers: see precision.prepare_for_inference); run it under inference_autocast."""
    from sbert_cli.model.precision import (
        prepare_for_inference,
        resolve_device,
        resolve_precision,
    )

    torch_device = resolve_device(device)
    resolved = resolve_precision(precision, torch_device, inference=True)
    model.to(torch_device).eval()
    prepare_for_inference(model, resolved)
    return torch_device, resolved
