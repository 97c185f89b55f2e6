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
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sbert_cli.errors import DataError, OutputError, os_error_message
from sbert_cli.limits import is_int, is_number, parse_json
from sbert_cli.outputs import OutputDir, place_folder, temp_path, write_text
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


def prepare_output_dir(out: Path, force: bool, reads: tuple = ()) -> OutputDir:
    """Make `out` ready for writing and lock it (see outputs.py); `.created` says whether it was created.
    Refuses a non-empty dir unless force; forced, removes only what an earlier make-mlm-data run wrote. The
    shards of a run that never finished (no manifest.json, only sbert's files: it was killed) are no data and
    need no force: the same command run again replaces them."""
    outputs = OutputDir(out)
    earlier = [MANIFEST] + [p.name for p in out.glob(f"{SHARD_PREFIX}*")] if out.is_dir() else []
    unfinished = out.is_dir() and not (out / MANIFEST).exists() and not outputs.foreign()
    outputs.check(force or unfinished, will_write=earlier, reads=reads,
                  not_empty="directory exists and is not empty; pass `force` to overwrite or choose another `out`")
    outputs.created = not out.exists()
    outputs.acquire()
    if force or unfinished:
        outputs.clear()
    return outputs


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
        shard_dir = temp_path(self.out / name)  # whole or absent: a killed run leaves only a temp the next one removes
        arrays = {key: np.concatenate(parts) for key, parts in self._parts.items()}
        arrays["offsets"] = _offsets(np.concatenate(self._lengths))
        if self._masked_counts:
            arrays["masked_offsets"] = _offsets(np.concatenate(self._masked_counts))
        try:
            shard_dir.mkdir()
            for key, array in arrays.items():
                np.save(shard_dir / f"{key}.npy", array, allow_pickle=False)
            OutputDir(self.out).expect(name)  # a run killed right after the move leaves nothing unrecorded
            place_folder(shard_dir, self.out / name)
        except OSError as e:  # a full disk, `ulimit -f`
            shutil.rmtree(shard_dir, ignore_errors=True)
            raise OutputError(os_error_message(e, self.out / name)) from None
        OutputDir(self.out).settle(name)
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
    write_text(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", force=True)
    OutputDir(out).record(MANIFEST)


def _is_probability(value) -> bool:
    return is_number(value) and 0 <= value <= 1


# manifest.json's settings that readers use (pretrain --dynamic-masking, eval of --no-mask data), with their checks.
SETTING_CHECKS = {
    "masked_lm_prob": (lambda v: _is_probability(v) and 0 < v < 1, "a number between 0 and 1"),
    "max_predictions": (lambda v: v is None or (is_int(v) and v >= 1), "a positive integer"),
    "mask_token_prob": (_is_probability, "a number between 0 and 1"),
    "random_token_prob": (_is_probability, "a number between 0 and 1"),
    "whole_word": (lambda v: isinstance(v, bool), "true or false"),
    "dupe_factor": (lambda v: is_int(v) and v >= 1, "a positive integer"),
}


def _check_manifest(manifest: dict, path: Path) -> list[dict]:
    """Types and ranges of manifest.json's fields; the shard entries, each naming a folder inside the data dir."""

    def fail(field: str, expected: str, value) -> DataError:
        return DataError(f"{path}: {field} must be {expected}, not {value!r}; remake the data with make-mlm-data")

    checks = {
        "masked": (lambda v: isinstance(v, bool), "true or false"),
        "max_seq_len": (lambda v: is_int(v) and 4 <= v <= 1 << 16, "an integer between 4 and 65536"),
        "vocab_size": (lambda v: v is None or (is_int(v) and v >= 1), "a positive integer"),
        "vocab_sha256": (lambda v: isinstance(v, str) and len(v) == 64, "a sha256 hex digest"),
        "shards": (lambda v: isinstance(v, list), "a list of shard entries"),
    }
    for field, (check, expected) in checks.items():
        if not check(manifest.get(field)):
            raise fail(field, expected, manifest.get(field))
    if "settings" in manifest and not isinstance(manifest["settings"], dict):
        raise fail("settings", "an object", manifest["settings"])
    settings = manifest.get("settings") or {}
    for field, (check, expected) in SETTING_CHECKS.items():
        if field in settings and not check(settings[field]):
            raise fail(f"settings.{field}", expected, settings[field])
    if settings.get("mask_token_prob", 0) + settings.get("random_token_prob", 0) > 1:
        raise fail("settings.mask_token_prob + random_token_prob", "at most 1", "their sum")
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict):
            raise fail(f"shards[{i}]", "an object with name and sequences", entry)
        name = entry.get("name")
        # A plain folder name: `../x`, `/abs/x` or `a/b` would read data from outside the data dir.
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise fail(f"shards[{i}].name", "the name of a folder inside the data dir, such as shard-00000", name)
        if not is_int(entry.get("sequences")) or entry["sequences"] < 0:
            raise fail(f"shards[{i}].sequences", "a count of sequences", entry.get("sequences"))
    return manifest["shards"]


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
            self.manifest = parse_json(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{manifest_path}: not valid JSON ({e})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT_NAME:
            raise DataError(f"{manifest_path}: not a make-mlm-data manifest")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{manifest_path}: format version {self.manifest.get('format_version')}, this sbert reads "
                f"{FORMAT_VERSION}; remake the data with this sbert's make-mlm-data"
            )
        shard_entries = _check_manifest(self.manifest, manifest_path)
        self.masked = self.manifest["masked"]
        self.max_seq_len = self.manifest["max_seq_len"]
        self.vocab_sha256 = self.manifest["vocab_sha256"]
        self.vocab_size: int | None = self.manifest.get("vocab_size")
        self.settings: dict = self.manifest.get("settings") or {}
        self.max_token_id = -1  # the largest token id in the data: a model's vocab must be larger
        names = MASKED_ARRAYS if self.masked else UNMASKED_ARRAYS
        self._shards = [self._open_shard(entry, names) for entry in shard_entries]
        counts = [len(shard["offsets"]) - 1 for shard in self._shards]
        self._ends = np.cumsum(counts, dtype=np.int64)

    def _open_shard(self, entry: dict, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        shard_dir = self.path / entry["name"]
        arrays = {}
        for name in names:
            file = shard_dir / f"{name}.npy"
            try:
                arrays[name] = np.load(file, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise DataError(f"{file}: missing; the data dir is incomplete, remake it with make-mlm-data") from None
            except ValueError as e:
                raise DataError(f"{file}: corrupt ({e}); remake the data with make-mlm-data") from None
            if arrays[name].ndim != 1 or arrays[name].dtype.kind not in "iu":
                raise DataError(f"{file}: {arrays[name].dtype} array of shape {arrays[name].shape}, expected a flat "
                                "array of integers; remake the data with make-mlm-data")
        self._check_values(shard_dir, arrays)
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

    def _check_values(self, shard_dir: Path, arrays: dict[str, np.ndarray]) -> None:
        """Offsets that rise, token ids inside the vocab, predictions inside their sequence: one pass over each
        array (min/max), so a damaged shard is an error naming the file, not an IndexError mid-training."""

        def fail(name: str, problem: str) -> DataError:
            return DataError(f"{shard_dir / name}.npy: {problem}; remake the data with make-mlm-data")

        offsets = np.asarray(arrays["offsets"], dtype=np.int64)
        lengths = np.diff(offsets)
        if len(offsets) == 0 or offsets[0] != 0 or (len(lengths) and not 2 <= lengths.min() <= lengths.max() <= self.max_seq_len):
            raise fail("offsets", f"must start at 0 and rise by 2 to {self.max_seq_len} (max_seq_len) per sequence")
        for name in ("input_ids", "masked_labels"):
            if name not in arrays or not len(arrays[name]):
                continue
            low, high = int(arrays[name].min()), int(arrays[name].max())
            if low < 0 or (self.vocab_size is not None and high >= self.vocab_size):
                raise fail(name, f"token ids from {low} to {high}, outside the vocab of {self.vocab_size} tokens")
            self.max_token_id = max(self.max_token_id, high)
        if "word_ids" in arrays and len(arrays["word_ids"]) and not -1 <= arrays["word_ids"].min() <= arrays["word_ids"].max() < self.max_seq_len:
            raise fail("word_ids", f"word ids from {arrays['word_ids'].min()} to {arrays['word_ids'].max()}; "
                                   f"they run from 0 to max_seq_len - 1 ({self.max_seq_len - 1}), -1 for [CLS] and [SEP]")
        if "masked_offsets" in arrays:
            masked_offsets = np.asarray(arrays["masked_offsets"], dtype=np.int64)
            counts = np.diff(masked_offsets)
            if len(masked_offsets) != len(offsets) or masked_offsets[0] != 0 or (len(counts) and counts.min() < 0) \
                    or masked_offsets[-1] != len(arrays["masked_positions"]):
                raise fail("masked_offsets", "must start at 0, never decrease, and end at the number of predictions")
            positions = np.asarray(arrays["masked_positions"], dtype=np.int64)
            if len(positions) and (positions.min() < 0 or (positions >= np.repeat(lengths, counts)).any()):
                raise fail("masked_positions", "a masked position lies outside its sequence")

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
