"""convert-weights: a Hugging Face BERT dir to an sbert model dir, and an sbert model dir back to one transformers loads.

Both directions go through hf_weights.py's one name table, so what `sbert` loads in memory for every
other command is exactly what this writes to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sbert_cli.errors import ConfigError
from sbert_cli.model.hf_weights import export_hf_state_dict, hf_architecture
from sbert_cli.model.model_dir import (
    Checkpoint,
    load_for_task,
    load_tokenizer,
    read_checkpoint,
    resolve_model_dir,
    model_meta,
    write_model_dir,
)
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.tasks.probe import ProbeResult, probe_mlm_head

DIRECTIONS = ("sbert", "hf")
OPTIONAL_PARTS = {
    "bert.pooler.": "pooler (BertForMaskedLM checkpoints ship none; only the classifier uses it)",
    "mlm_head.": "MLM head (cls.predictions.*): fill-mask and continued pretraining need one",
    "classifier.": "classification head",
}


@dataclass
class ConversionSummary:
    """What convert_weights read and wrote, for the CLI to show."""

    source: Path
    destination: Path
    to: str  # "sbert" or "hf"
    source_format: str  # "sbert" or "hf"
    tensors: int
    parameters: int
    heads: list[str]
    dropped: dict[str, str]  # source key -> reason
    missing_parts: list[str]  # optional parts the checkpoint lacks, described
    files: list[str]
    architecture: str | None = None  # the transformers class of a --to hf export
    probe: ProbeResult | None = None
    notes: list[str] = field(default_factory=list)


MODEL_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "sbert.json")


def check_destination(destination: Path, source: Path, force: bool) -> None:
    """Refuse to write into a non-empty destination unless forced, and never into or around the source.

    Forced, only model files sbert wrote there before are replaced (see outputs.py); a user's other files stay."""
    from sbert_cli.outputs import OutputDir

    if destination.exists() and destination.is_dir() and destination.resolve() == source.resolve():
        raise ConfigError(f"{destination}: is the source model dir; choose another DST")
    OutputDir(destination).check(force, will_write=MODEL_FILES, reads=[source],
                                 not_empty="exists and is not empty; pass `force` to replace it, or choose another DST")


def convert_weights(
    source: str | Path, destination: str | Path, to: str = "sbert", force: bool = False, probe: bool = True
) -> ConversionSummary:
    """Convert a model dir (HF or sbert, or a hub repo id) into an sbert model dir (to="sbert") or an HF dir (to="hf").

    When the checkpoint has an MLM head, the written dir is loaded back and the head probed on built-in
    sentences, so an untrained head is reported rather than silently converted.
    """
    if to not in DIRECTIONS:
        raise ConfigError(f"`to` must be one of {', '.join(DIRECTIONS)}, not {to!r}")
    destination = Path(destination).expanduser()
    source_dir = resolve_model_dir(source)
    check_destination(destination, source_dir, force)
    checkpoint = read_checkpoint(source_dir)
    tokenizer = load_tokenizer(source_dir)
    from sbert_cli.outputs import OutputDir

    with OutputDir(destination):
        if to == "sbert":
            task = next((t for t in ("mlm", "cls", "ner") if t in checkpoint.heads), "base")
            meta = model_meta(task, checkpoint.state, source=str(source))
            write_model_dir(destination, checkpoint.config.to_dict(), checkpoint.state, tokenizer, meta=meta)
            architecture = None
        else:
            architecture = hf_architecture(checkpoint.heads)
            write_hf_dir(checkpoint, tokenizer, destination, architecture)
    summary = ConversionSummary(
        source=source_dir,
        destination=destination,
        to=to,
        source_format=checkpoint.source_format,
        tensors=len(checkpoint.state),
        parameters=sum(t.numel() for t in checkpoint.state.values()),
        heads=list(checkpoint.heads),
        dropped=dict(checkpoint.report.dropped),
        missing_parts=[
            description
            for prefix, description in OPTIONAL_PARTS.items()
            if any(k.startswith(prefix) for k in checkpoint.report.missing_optional)
        ],
        files=sorted(p.name for p in destination.iterdir() if not p.name.startswith(".")),
        architecture=architecture,
    )
    if architecture == "BertForMaskedLM" and any(k.startswith("bert.pooler.") for k in checkpoint.state):
        summary.notes.append(
            "bert.pooler.* kept: BertForMaskedLM.from_pretrained lists it as unexpected (it has no pooler); "
            "BertForSequenceClassification.from_pretrained uses it"
        )
    if tokenizer.case_note:
        summary.notes.append(tokenizer.case_note)
    if probe and "mlm" in checkpoint.heads:
        loaded = load_for_task(destination, "mlm")  # the written dir, read back the way every command reads it
        summary.probe = probe_mlm_head(loaded.model, load_tokenizer(destination))
    return summary


def write_hf_dir(checkpoint: Checkpoint, tokenizer: BertTokenizer, destination: Path, architecture: str) -> Path:
    """Write config.json, model.safetensors (transformers' names), vocab.txt and tokenizer_config.json atomically."""
    config = checkpoint.config.to_dict()
    config["architectures"] = [architecture]
    config["model_type"] = "bert"
    return write_model_dir(
        destination, config, export_hf_state_dict(checkpoint.state), tokenizer,
        tokenizer_config={"model_max_length": checkpoint.config.max_position_embeddings},
    )
