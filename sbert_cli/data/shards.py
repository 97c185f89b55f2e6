"""The make-mlm-data output format: manifest.json plus shards of flat numpy arrays, memory-mapped on read.

    OUT/manifest.json               settings, counts, vocab checksum, sbert version, the shard list
    OUT/shard-00000/input_ids.npy   all tokens of the shard's sequences, [CLS] ... [SEP], back to back
                    offsets.npy     int64 (n + 1): sequence i is input_ids[offsets[i]:offsets[i + 1]]
                    masked_positions.npy, masked_labels.npy, masked_offsets.npy   (masked data)
                    word_ids.npy    whole-word group per token, -1 for [CLS]/[SEP]  (--no-mask data)

manifest.json is written last, so a directory without it is an interrupted run, not data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sbert_cli.errors import ConfigError, DataError
from sbert_cli.model.tokenizer import BertTokenizer

MANIFEST = "manifest.json"
FORMAT_NAME = "sbert-mlm-data"
FORMAT_VERSION = 1
SHARD_PREFIX = "shard-"
MASKED_ARRAYS = ("input_ids", "offsets", "masked_positions", "masked_labels", "masked_offsets")
UNMASKED_ARRAYS = ("input_ids", "offsets", "word_ids")


def vocab_sha256(tokenizer: BertTokenizer) -> str:
    """sha256 of the vocab as vocab.txt lines in id order: for an LF vocab.txt, what `sha256sum` prints."""
    tokens = [tokenizer.ids_to_tokens.get(i, "") for i in range(max(tokenizer.ids_to_tokens) + 1)]
    return hashlib.sha256("".join(t + "\n" for t in tokens).encode("utf-8")).hexdigest()


def array_dtypes(id_count: int, max_seq_len: int) -> dict[str, str]:
    """The smallest dtypes that hold token ids (0 .. id_count - 1), positions and word ids."""
    token = "uint16" if id_count <= 1 << 16 else "int32"
    position = "uint16" if max_seq_len <= 1 << 16 else "int32"
    word = "int16" if max_seq_len < 1 << 15 else "int32"
    return {
        "input_ids": token,
        "offsets": "int64",
        "masked_positions": position,
        "masked_labels": token,
        "masked_offsets": "int64",
        "word_ids": word,
    }


@dataclass
class MLMExample:
    input_ids: np.ndarray  # int32, [CLS] ... [SEP]; for masked data the masked tokens are already replaced
    masked_positions: np.ndarray  # int32, token indices of the predictions (empty for --no-mask data)
    masked_labels: np.ndarray  # int32, original token ids at masked_positions
    word_ids: np.ndarray | None  # int32 per token: whole-word group id, -1 for [CLS]/[SEP]; --no-mask data only


def prepare_output_dir(out: Path, force: bool) -> bool:
    """Make `out` ready for writing; returns whether it was created. Refuses a non-empty dir unless force."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"{out}: directory exists and is not empty; pass --force to overwrite or choose another --out")
        # Remove only what an earlier make-mlm-data run wrote; other files stay.
        (out / MANIFEST).unlink(missing_ok=True)
        for child in out.iterdir():
            if child.is_dir() and child.name.startswith(SHARD_PREFIX) and child.name[len(SHARD_PREFIX):].isdigit():
                shutil.rmtree(child)
        return False
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return created


class ShardWriter:
    """Appends sequences and writes a shard each time `shard_size` sequences have gathered."""

    def __init__(self, out: Path, dtypes: dict[str, str], masked: bool, shard_size: int):
        self.out = out
        self.dtypes = dtypes
        self.names = MASKED_ARRAYS if masked else UNMASKED_ARRAYS
        self.shard_size = shard_size
        self.shards: list[dict] = []
        self._reset()

    def _reset(self):
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in self.names if not name.endswith("offsets")}
        self._lengths: list[np.ndarray] = []
        self._masked_counts: list[np.ndarray] = []
        self._sequences = 0

    def add(self, lengths: np.ndarray, input_ids: np.ndarray, word_ids: np.ndarray | None = None,
            masked_counts: np.ndarray | None = None, masked_positions: np.ndarray | None = None,
            masked_labels: np.ndarray | None = None) -> None:
        """Append sequences given as flat arrays and per-sequence lengths (and prediction counts)."""
        self._lengths.append(lengths)
        self._parts["input_ids"].append(input_ids.astype(self.dtypes["input_ids"], copy=False))
        if "word_ids" in self._parts:
            self._parts["word_ids"].append(word_ids.astype(self.dtypes["word_ids"], copy=False))
        if "masked_positions" in self._parts:
            self._masked_counts.append(masked_counts)
            self._parts["masked_positions"].append(masked_positions.astype(self.dtypes["masked_positions"], copy=False))
            self._parts["masked_labels"].append(masked_labels.astype(self.dtypes["masked_labels"], copy=False))
        self._sequences += len(lengths)
        if self._sequences >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the gathered sequences as one shard (nothing when none gathered)."""
        if not self._sequences:
            return
        name = f"{SHARD_PREFIX}{len(self.shards):05d}"
        shard_dir = self.out / name
        shard_dir.mkdir()
        arrays = {key: np.concatenate(parts) for key, parts in self._parts.items()}
        arrays["offsets"] = _offsets(np.concatenate(self._lengths))
        if self._masked_counts:
            arrays["masked_offsets"] = _offsets(np.concatenate(self._masked_counts))
        for key, array in arrays.items():
            np.save(shard_dir / f"{key}.npy", array, allow_pickle=False)
        self.shards.append({
            "name": name,
            "sequences": self._sequences,
            "tokens": int(len(arrays["input_ids"])),
            "predictions": int(len(arrays.get("masked_positions", ()))),
        })
        self._reset()


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def write_manifest(out: Path, manifest: dict) -> None:
    """manifest.json, atomically: a reader sees the old state or the complete new one."""
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


class MLMShards:
    """Read-only, memory-mapped view of a make-mlm-data output dir."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such directory; make it with `sbert make-mlm-data`")
        if not manifest_path.is_file():
            raise DataError(f"{self.path}: no {MANIFEST}; not a make-mlm-data output dir (or the run was interrupted)")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{manifest_path}: not valid JSON ({e})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT_NAME:
            raise DataError(f"{manifest_path}: not a make-mlm-data manifest")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{manifest_path}: format version {self.manifest.get('format_version')}, this sbert reads "
                f"{FORMAT_VERSION}; remake the data with this sbert's make-mlm-data"
            )
        try:
            self.masked = bool(self.manifest["masked"])
            self.max_seq_len = int(self.manifest["max_seq_len"])
            self.vocab_sha256 = str(self.manifest["vocab_sha256"])
            shard_entries = self.manifest["shards"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{manifest_path}: missing or invalid field {e}") from None
        names = MASKED_ARRAYS if self.masked else UNMASKED_ARRAYS
        self._shards = [self._open_shard(entry, names) for entry in shard_entries]
        counts = [len(shard["offsets"]) - 1 for shard in self._shards]
        self._ends = np.cumsum(counts, dtype=np.int64)

    def _open_shard(self, entry: dict, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        shard_dir = self.path / str(entry.get("name", ""))
        arrays = {}
        for name in names:
            file = shard_dir / f"{name}.npy"
            try:
                arrays[name] = np.load(file, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise DataError(f"{file}: missing; the data dir is incomplete, remake it with make-mlm-data") from None
            except ValueError as e:
                raise DataError(f"{file}: corrupt ({e}); remake the data with make-mlm-data") from None
        n = len(arrays["offsets"]) - 1
        consistent = (
            n == entry.get("sequences")
            and arrays["offsets"][-1] == len(arrays["input_ids"])
            and ("word_ids" not in arrays or len(arrays["word_ids"]) == len(arrays["input_ids"]))
            and ("masked_offsets" not in arrays or (
                len(arrays["masked_offsets"]) == n + 1
                and arrays["masked_offsets"][-1] == len(arrays["masked_positions"]) == len(arrays["masked_labels"])
            ))
        )
        if not consistent:
            raise DataError(f"{shard_dir}: arrays do not match each other or the manifest; remake the data")
        return arrays

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def lengths(self) -> np.ndarray:
        """Real tokens per sequence, [CLS] and [SEP] included."""
        if not self._shards:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.diff(shard["offsets"]) for shard in self._shards])

    def __getitem__(self, i: int) -> MLMExample:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range ({n} sequences)")
        shard_index = int(np.searchsorted(self._ends, i, side="right"))
        shard = self._shards[shard_index]
        local = i - (int(self._ends[shard_index - 1]) if shard_index else 0)
        a, b = shard["offsets"][local], shard["offsets"][local + 1]
        input_ids = np.asarray(shard["input_ids"][a:b], dtype=np.int32)
        word_ids = np.asarray(shard["word_ids"][a:b], dtype=np.int32) if "word_ids" in shard else None
        if self.masked:
            m, e = shard["masked_offsets"][local], shard["masked_offsets"][local + 1]
            positions = np.asarray(shard["masked_positions"][m:e], dtype=np.int32)
            labels = np.asarray(shard["masked_labels"][m:e], dtype=np.int32)
        else:
            positions = labels = np.zeros(0, dtype=np.int32)
        return MLMExample(input_ids, positions, labels, word_ids)
