"""The one table between Hugging Face BERT parameter names and ours, and the checks around it. No network.

HF names are written without the `bert.` prefix that task models add; `{}` stands for a layer index.
Each entry maps a module; its `.weight` / `.bias` follow it. The sbert -> HF direction is derived.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sbert_cli.errors import ModelLoadError, WeightMismatchError
from sbert_cli.limits import parse_json

if TYPE_CHECKING:  # torch is imported where tensors are touched, so hub.py can use this module without it
    import torch

HF_TO_SBERT = {
    "embeddings.word_embeddings": "bert.embeddings.word_embeddings",
    "embeddings.position_embeddings": "bert.embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "bert.embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "bert.embeddings.layer_norm",
    "encoder.layer.{}.attention.self.query": "bert.layers.{}.attention.query",
    "encoder.layer.{}.attention.self.key": "bert.layers.{}.attention.key",
    "encoder.layer.{}.attention.self.value": "bert.layers.{}.attention.value",
    "encoder.layer.{}.attention.output.dense": "bert.layers.{}.attention.output",
    "encoder.layer.{}.attention.output.LayerNorm": "bert.layers.{}.attention_norm",
    "encoder.layer.{}.intermediate.dense": "bert.layers.{}.intermediate",
    "encoder.layer.{}.output.dense": "bert.layers.{}.output",
    "encoder.layer.{}.output.LayerNorm": "bert.layers.{}.output_norm",
    "pooler.dense": "bert.pooler",
    "cls.predictions.transform.dense": "mlm_head.dense",
    "cls.predictions.transform.LayerNorm": "mlm_head.layer_norm",
    "cls.predictions": "mlm_head",  # its `.bias`, the decoder's output bias
    "classifier": "classifier",
    "crf": "crf",  # a tagger's CRF (sbert's own: transformers has none and ignores it)
}

# HF keys we read but do not keep, with the reason reported to the user.
DROPPED = {
    "cls.predictions.decoder.weight": "tied to the word embeddings",
    "cls.seq_relationship.weight": "next-sentence-prediction head, not used by sbert",
    "cls.seq_relationship.bias": "next-sentence-prediction head, not used by sbert",
    "embeddings.position_ids": "buffer, rebuilt by the model",
    "embeddings.token_type_ids": "buffer, rebuilt by the model",
}
# The same tensor under a second name: transformers ties decoder.bias to cls.predictions.bias.
ALIASES = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
# Our parameters that are optional in a checkpoint: the heads, and the pooler (BertForMaskedLM has none).
OPTIONAL_PREFIXES = ("mlm_head.", "classifier.", "crf.", "bert.pooler.")
HEAD_PREFIXES = {"mlm": "mlm_head.", "cls": "classifier."}
# Optional extras no checkpoint "lacks" (a tagger may or may not have a CRF): never listed as missing.
EXTRA_PREFIXES = ("crf.",)
# transformers class for the heads a checkpoint holds (config.json's architectures); the classifier or tagger wins
# when an MLM head is there too.
HF_ARCHITECTURES = (("ner", "BertForTokenClassification"), ("cls", "BertForSequenceClassification"),
                    ("mlm", "BertForMaskedLM"))

LEGACY_SUFFIXES = {".gamma": ".weight", ".beta": ".bias"}  # TF-era LayerNorm names


def hf_architecture(heads: list[str]) -> str:
    """config.json's architectures entry for a model dir whose heads are `heads` (sbert.json's)."""
    return next((name for task, name in HF_ARCHITECTURES if task in heads), "BertModel")


def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{\}", r"(\d+)") + "$")


_FORWARD = [(_template_regex(hf), ours) for hf, ours in HF_TO_SBERT.items()]
_INVERSE = [(_template_regex(ours), hf) for hf, ours in HF_TO_SBERT.items()]


def _map_module(module: str, table) -> str | None:
    for pattern, target in table:
        m = pattern.match(module)
        if m:
            return target.replace("{}", m.group(1)) if m.groups() else target
    return None


def _split(name: str) -> tuple[str, str]:
    module, _, param = name.rpartition(".")
    return module, param


def normalize_hf_name(name: str) -> str:
    """Strip the task model's `bert.` prefix and rename legacy gamma/beta."""
    for old, new in LEGACY_SUFFIXES.items():
        if name.endswith(old):
            name = name[: -len(old)] + new
    if name.startswith("bert."):
        name = name[len("bert.") :]
    return ALIASES.get(name, name)


def hf_to_sbert_name(hf_name: str) -> str | None:
    """Our name for an HF parameter (after normalize_hf_name), or None when the table has no entry."""
    module, param = _split(hf_name)
    ours = _map_module(module, _FORWARD)
    return f"{ours}.{param}" if ours is not None else None


def sbert_to_hf_name(name: str) -> str:
    """HF's name for one of ours, with the `bert.` prefix on encoder keys as transformers' task models save them."""
    module, param = _split(name)
    hf = _map_module(module, _INVERSE)
    if hf is None:
        raise KeyError(name)
    return f"{hf}.{param}" if hf.startswith(("cls.", "classifier", "crf")) else f"bert.{hf}.{param}"


@dataclass
class ConversionReport:
    """What a conversion did, for the user to read."""

    mapped: int = 0
    dropped: dict[str, str] = field(default_factory=dict)  # HF key -> reason
    missing_optional: list[str] = field(default_factory=list)  # our optional keys the checkpoint lacked
    heads: list[str] = field(default_factory=list)  # "mlm", "cls" present in the checkpoint


def convert_hf_state_dict(
    hf_state: dict[str, torch.Tensor], expected_shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map an HF BERT state dict onto our names, checking it against the shapes a model with our config expects.

    expected_shapes covers every parameter we could load (encoder, pooler and both heads). Encoder keys
    are required; optional ones (heads, pooler) that are absent are listed in the report. Missing or
    unexpected encoder keys and shape mismatches raise one WeightMismatchError listing all of them.
    """
    import torch

    report = ConversionReport()
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for raw_name, tensor in hf_state.items():
        name = normalize_hf_name(raw_name)
        if name in DROPPED:
            report.dropped[raw_name] = DROPPED[name]
            continue
        ours = hf_to_sbert_name(name)
        if ours is None or ours not in expected_shapes:
            unexpected.append(raw_name)
            continue
        if ours in state:
            # decoder.bias alongside cls.predictions.bias: one tensor under two names; they must agree.
            if not torch.equal(state[ours], tensor):
                raise WeightMismatchError(f"{raw_name} differs from the tensor already loaded as {ours}")
            report.dropped[raw_name] = "duplicate of cls.predictions.bias"
            continue
        state[ours] = tensor

    mismatched = [
        f"{k}: checkpoint {tuple(t.shape)}, model {tuple(expected_shapes[k])}"
        for k, t in state.items()
        if tuple(t.shape) != tuple(expected_shapes[k])
    ]
    missing = [k for k in expected_shapes if k not in state and not k.startswith(OPTIONAL_PREFIXES)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if mismatched:
            parts.append(f"shape mismatch {len(mismatched)}: {'; '.join(mismatched[:4])}")
        raise WeightMismatchError(
            "checkpoint does not match a BERT with this config.json — " + " | ".join(parts)
        )

    head_dense = "mlm_head.dense.weight"
    if "mlm_head.bias" in state and head_dense not in state:
        # A bias without the transform is not a usable head.
        report.dropped["cls.predictions.bias"] = "MLM head incomplete (no transform weights)"
        del state["mlm_head.bias"]
    for task, prefix in HEAD_PREFIXES.items():
        expected = [k for k in expected_shapes if k.startswith(prefix)]
        present = [k for k in expected if k in state]
        if present and len(present) != len(expected):
            absent = sorted(set(expected) - set(present))
            raise WeightMismatchError(f"the {task} head is incomplete: missing {', '.join(absent)}")
        if present:
            report.heads.append(task)
    report.missing_optional = sorted(k for k in expected_shapes if k not in state and not k.startswith(EXTRA_PREFIXES))
    report.mapped = len(state)

    decoder = hf_state.get("cls.predictions.decoder.weight")
    words = state.get("bert.embeddings.word_embeddings.weight")
    if decoder is not None and words is not None and not torch.equal(decoder, words):
        raise WeightMismatchError(
            "cls.predictions.decoder.weight is not tied to the word embeddings; sbert only loads tied MLM decoders"
        )
    return state, report


def export_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under transformers' names (decoder weight left out: transformers ties it on load)."""
    out = {}
    for name, tensor in state.items():
        try:
            out[sbert_to_hf_name(name)] = tensor
        except KeyError:
            raise WeightMismatchError(f"{name} has no Hugging Face name; is this an sbert model dir?") from None
    return out


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def find_weights(model_dir: Path) -> Path:
    for name in WEIGHT_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise ModelLoadError(
        f"{model_dir}: no model.safetensors or pytorch_model.bin; download the model again or point `model` at its folder"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, a sharded index, or a pytorch_model.bin (loaded with weights_only=True)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.name.endswith(".index.json"):
        try:
            weight_map = parse_json(path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelLoadError(f"{path}: not a valid shard index ({e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ModelLoadError(f"{path}: weight_map must map tensor names to shard file names")
        state = {}
        for shard in sorted(set(weight_map.values())):
            if not shard or "/" in shard or "\\" in shard or shard in (".", "..") or Path(shard).is_absolute():
                raise ModelLoadError(f"{path}: shard {shard!r} is not a file name in {path.parent}; "
                                     "a sharded checkpoint keeps its shards beside the index")
            state.update(read_state_dict(path.parent / shard))
        return state
    if not path.is_file():
        raise ModelLoadError(f"{path}: weight file not found; download the model again")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"{path}: cannot read safetensors file ({e}); download it again") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types; none should reach the user as a traceback
        raise ModelLoadError(f"{path}: cannot load with weights_only=True ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
