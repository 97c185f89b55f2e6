"""BertConfig: the fields of Hugging Face's config.json, under the same names, so config.json loads without a map."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbert_cli.errors import ConfigError, ModelLoadError

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


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
    # HF stores label names as {"0": "finance", ...}; we keep int keys in memory.
    id2label: dict[int, str] | None = None
    # Keys of config.json we do not use, written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
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
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}

    @property
    def num_labels(self) -> int | None:
        return len(self.id2label) if self.id2label else None

    @property
    def labels(self) -> list[str] | None:
        """Label names in id order."""
        return [self.id2label[i] for i in range(len(self.id2label))] if self.id2label else None

    def with_labels(self, labels: list[str]) -> "BertConfig":
        return dataclasses.replace(self, id2label=dict(enumerate(labels)), extra=dict(self.extra))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BertConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        # label2id and num_labels are derived from id2label when written back.
        extra = {k: v for k, v in data.items() if k not in names and k not in ("label2id", "num_labels")}
        if "id2label" not in known and data.get("num_labels"):
            known["id2label"] = {i: f"LABEL_{i}" for i in range(int(data["num_labels"]))}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "id2label")}
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
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(f"{path.parent}: no config.json; point --model at a BERT model dir") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{path}: not valid JSON ({e}); re-download or fix the file") from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path}: expected a JSON object")
        model_type = data.get("model_type", "bert")
        if model_type != "bert":
            raise ModelLoadError(f"{path}: model_type is {model_type!r}; sbert loads BERT checkpoints only")
        try:
            return cls.from_dict(data)
        except TypeError as e:
            raise ModelLoadError(f"{path}: {e}") from None
        except ConfigError as e:
            raise ModelLoadError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
