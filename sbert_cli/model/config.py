"""BertConfig: the fields of Hugging Face's config.json, under the same names, so config.json loads without a map."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbert_cli.errors import ConfigError, ModelLoadError
from sbert_cli.limits import MAX_NUM_LABELS, available_memory, is_int, is_number, parse_json

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
CLASSIFIER_POOLINGS = ("pooler", "cls", "mean")
# Integer fields and their least value; no released BERT comes near MAX_SIZE in any of them.
SIZE_FIELDS = {"vocab_size": 1, "hidden_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1,
               "intermediate_size": 1, "max_position_embeddings": 2, "type_vocab_size": 1}
MAX_SIZE = 1 << 24


@dataclass
class BertConfig:
    vocab_size: int = 21128
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    # What the classifier reads: "pooler" (tanh(dense([CLS])), transformers' BertForSequenceClassification), "cls" (the
    # [CLS] vector) or "mean" (the mean over real tokens). sbert-only: transformers ignores it and uses the pooler.
    classifier_pooling: str = "pooler"
    # HF stores label names as {"0": "finance", ...}; we keep int keys in memory.
    id2label: dict[int, str] | None = None
    # Keys of config.json we do not use, written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._check_values()
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(SUPPORTED_ACTIVATIONS)}"
            )
        if self.position_embedding_type != "absolute":
            raise ConfigError(
                f"position_embedding_type {self.position_embedding_type!r} is not supported; only 'absolute' BERTs load"
            )
        if self.id2label is not None:
            self.id2label = _label_map(self.id2label)
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ConfigError(f"classifier_pooling {self.classifier_pooling!r}: use one of {', '.join(CLASSIFIER_POOLINGS)}")

    def _check_values(self) -> None:
        """Types and ranges of the fields, so a broken config.json is one clear error, not a crash deep in torch."""
        for name, low in SIZE_FIELDS.items():
            value = getattr(self, name)
            if not is_int(value) or not low <= value <= MAX_SIZE:
                raise ConfigError(f"{name} must be an integer between {low} and {MAX_SIZE:,}, not {value!r}")
        if self.pad_token_id is not None and not (is_int(self.pad_token_id) and 0 <= self.pad_token_id < self.vocab_size):
            raise ConfigError(f"pad_token_id must be a token id below vocab_size {self.vocab_size}, not {self.pad_token_id!r}")
        dropouts = ["hidden_dropout_prob", "attention_probs_dropout_prob"] + (["classifier_dropout"] if self.classifier_dropout is not None else [])
        for name in dropouts:
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be a probability in [0, 1), not {value!r}")
        if not is_number(self.layer_norm_eps) or not 0 < self.layer_norm_eps < 1:
            raise ConfigError(f"layer_norm_eps must be a small positive number such as 1e-12, not {self.layer_norm_eps!r}")
        if not is_number(self.initializer_range) or self.initializer_range < 0:
            raise ConfigError(f"initializer_range must be a non-negative number, not {self.initializer_range!r}")
        for name in ("hidden_act", "position_embedding_type"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, not {getattr(self, name)!r}")

    @property
    def num_labels(self) -> int | None:
        return len(self.id2label) if self.id2label else None

    @property
    def labels(self) -> list[str] | None:
        """Label names in id order."""
        return [self.id2label[i] for i in range(len(self.id2label))] if self.id2label else None

    def encoder_parameters(self) -> int:
        """Parameters of the embeddings and layers, which every checkpoint of this config holds: by arithmetic,
        nothing is built (a config.json of 100,000 layers is refused before any memory is taken)."""
        h, i = self.hidden_size, self.intermediate_size
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h
        layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h  # attention, LayerNorm, FFN, LayerNorm
        return embeddings + self.num_hidden_layers * layer

    def parameter_count(self) -> int:
        """Every parameter: the encoder, pooler, MLM head (its decoder tied to the embeddings) and classifier."""
        h = self.hidden_size
        return self.encoder_parameters() + (h * h + h) + (h * h + 3 * h + self.vocab_size) + (self.num_labels or 0) * (h + 1)

    def check_size(self, weights_hold: int | None = None, weights: Path | None = None) -> None:
        """ConfigError when a model of this config cannot fit the memory this process may still take (fp32), or is
        larger than the tensors of its weight file (`weights_hold` elements) can fill."""
        count = self.parameter_count()
        shape = (f"num_hidden_layers {self.num_hidden_layers:,}, hidden_size {self.hidden_size:,}, intermediate_size "
                 f"{self.intermediate_size:,}, vocab_size {self.vocab_size:,}")
        if weights_hold is not None and self.encoder_parameters() > weights_hold:
            raise ConfigError(
                f"its {shape} make an encoder of {self.encoder_parameters():,} parameters, but {weights} holds "
                f"{weights_hold:,} in all; use the config.json saved with these weights"
            )
        room = available_memory()
        if room is not None and count * 4 > room:
            raise ConfigError(
                f"its {shape} make a model of {count:,} parameters ({count * 4 / 1e9:,.1f} GB in fp32), more than the "
                f"{room / 1e9:,.1f} GB of memory this process can take; check config.json or use a larger machine"
            )

    def with_labels(self, labels: list[str]) -> "BertConfig":
        return dataclasses.replace(self, id2label=dict(enumerate(labels)), extra=dict(self.extra))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BertConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        # label2id and num_labels are derived from id2label when written back.
        extra = {k: v for k, v in data.items() if k not in names and k not in ("label2id", "num_labels")}
        num_labels = data.get("num_labels")
        if num_labels is not None and (not is_int(num_labels) or not 0 <= num_labels <= MAX_NUM_LABELS):
            raise ConfigError(f"num_labels must be an integer between 0 and {MAX_NUM_LABELS:,}, not {num_labels!r}")
        if known.get("id2label") is None and num_labels:
            known["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
        config = cls(**known, extra=extra)
        if num_labels and config.id2label and num_labels != len(config.id2label):
            raise ConfigError(f"num_labels is {num_labels} but id2label names {len(config.id2label)} labels; make them agree")
        return config

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "id2label")}
        if self.classifier_pooling == "pooler":
            del data["classifier_pooling"]  # the default: config.json stays as transformers writes it
        data.update(self.extra)
        data.setdefault("model_type", "bert")
        data.setdefault("architectures", ["BertForMaskedLM"])
        if self.id2label:
            data["id2label"] = {str(i): name for i, name in self.id2label.items()}
            data["label2id"] = {name: i for i, name in self.id2label.items()}
        return data

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            data = parse_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(f"{path.parent}: no config.json; point `model` at a BERT model dir") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{path}: not valid JSON ({e}); re-download or fix the file") from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path}: expected a JSON object")
        model_type = data.get("model_type", "bert")
        if model_type != "bert":
            raise ModelLoadError(f"{path}: model_type is {model_type!r}; sbert loads BERT checkpoints only")
        try:
            config = cls.from_dict(data)
            config.check_size()
        except (TypeError, ConfigError) as e:
            raise ModelLoadError(f"{path}: {e}") from None
        return config

    def save(self, path: str | Path) -> None:
        from sbert_cli.outputs import write_text

        write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", force=True)


def _label_map(id2label) -> dict[int, str]:
    """id2label with int keys 0 .. n-1 and distinct string names (config.json writes the keys as strings)."""
    if not isinstance(id2label, dict):
        raise ConfigError(f"id2label must be an object such as {{\"0\": \"finance\", \"1\": \"sports\"}}, not {type(id2label).__name__}")
    labels: dict[int, str] = {}
    for key, name in id2label.items():
        if isinstance(key, str) and key.strip().isdigit():
            index = int(key)
        elif is_int(key):
            index = key
        else:
            raise ConfigError(f"id2label key {key!r} is not a label id; the keys are 0, 1, 2, ...")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"id2label[{key!r}] must be a label name (a non-empty string), not {name!r}")
        labels[index] = name
    if sorted(labels) != list(range(len(labels))):
        gap = next(i for i in range(len(labels) + 1) if i not in labels)
        raise ConfigError(f"id2label has no label {gap}; its keys must be 0 .. {len(labels) - 1} without gaps")
    seen: dict[str, int] = {}
    for index in range(len(labels)):
        if labels[index] in seen:
            raise ConfigError(f"id2label names {labels[index]!r} twice (labels {seen[labels[index]]} and {index})")
        seen[labels[index]] = index
    return {i: labels[i] for i in range(len(labels))}


PRESETS: dict[str, dict[str, Any]] = {
    # For tests and the offline demo: trains in seconds on a CPU.
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, max_position_embeddings=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, max_position_embeddings=512),
    "base": dict(),
}


def preset(name: str, vocab_size: int = 21128) -> BertConfig:
    """A fresh config by preset name: tiny, small or base (BERT-base shape)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown config preset {name!r}; use one of {', '.join(PRESETS)}")
    return BertConfig(vocab_size=vocab_size, **PRESETS[name])
