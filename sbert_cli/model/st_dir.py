"""sentence-transformers model dirs: read_sentence_transformers_dir reads modules.json, the Pooling module's config
and sentence_bert_config.json into a SentenceTransformersDir (the encoder's folder, pooling, normalisation, max
length), refusing modules whose vectors sbert would not reproduce (ST_MODULES); ST_POOLING_NAMES maps the older
one-boolean-per-mode configs. Beside the other model-dir readers; embed, similar and serve use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sbert_cli.errors import ModelLoadError
from sbert_cli.limits import parse_json

# sentence-transformers modules we reproduce; any other (Dense, LayerNorm, ...) would change the vectors.
ST_MODULES = ("Transformer", "Pooling", "Normalize", "Dropout")
ST_POOLING_NAMES = {  # sentence-transformers < 6 wrote one boolean per mode
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class SentenceTransformersDir:
    """What a sentence-transformers model dir says about its embeddings."""

    encoder_dir: Path  # the Transformer module's folder: config.json, weights, vocab.txt
    pooling: str  # as named by sentence-transformers: mean, cls, max, ...
    normalize: bool
    max_seq_len: int | None  # sentence_bert_config.json's max_seq_length, when it sets one


def read_sentence_transformers_dir(model_dir: Path) -> SentenceTransformersDir | None:
    """The pooling, normalisation and max length of a sentence-transformers dir; None without modules.json."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return None
    modules = _read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise ModelLoadError(f"{modules_path}: expected a list of modules with a 'type' each")
    kinds = [(str(m["type"]).rsplit(".", 1)[-1], str(m.get("path", ""))) for m in modules]
    unsupported = [f"{kind} ({path or '.'})" for kind, path in kinds if kind not in ST_MODULES]
    if unsupported:
        raise ModelLoadError(
            f"{modules_path}: sbert embeds with a BERT, pooling and normalisation only, not {', '.join(unsupported)}; "
            "its vectors would differ from sentence-transformers'"
        )
    transformer = [path for kind, path in kinds if kind == "Transformer"]
    if len(transformer) != 1:
        raise ModelLoadError(f"{modules_path}: expected one Transformer module, found {len(transformer)}")
    encoder_dir = model_dir / transformer[0]
    pooling = "cls"  # a Transformer without Pooling gives token vectors; sentence-transformers would then fail
    pooling_paths = [path for kind, path in kinds if kind == "Pooling"]
    if pooling_paths:
        pooling = _pooling_mode(model_dir / pooling_paths[0] / "config.json")
    max_seq_len = None
    bert_config = encoder_dir / "sentence_bert_config.json"
    if bert_config.is_file():
        value = _read_json(bert_config).get("max_seq_length")
        max_seq_len = int(value) if isinstance(value, int) and value > 0 else None
    return SentenceTransformersDir(encoder_dir, pooling, any(kind == "Normalize" for kind, _ in kinds), max_seq_len)


def _pooling_mode(path: Path) -> str:
    config = _read_json(path)
    mode = config.get("pooling_mode")  # sentence-transformers >= 6: a name, or a list of names
    if mode is None:
        mode = [name for key, name in ST_POOLING_NAMES.items() if config.get(key)]
    if isinstance(mode, list):
        mode = mode[0] if len(mode) == 1 else "+".join(map(str, mode))
    if not isinstance(mode, str) or not mode:
        raise ModelLoadError(f"{path}: no pooling mode in it")
    return mode


def _read_json(path: Path):
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot read it as JSON ({e})") from None
