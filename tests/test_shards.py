"""Shard writer and memory-mapped reader: what is written is read back, bad dirs are named errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sbert_cli.data.shards import (
    MANIFEST,
    MLMShards,
    ShardWriter,
    array_dtypes,
    prepare_output_dir,
    write_manifest,
)
from sbert_cli.errors import ConfigError, DataError


def write_random_data(out, masked: bool, n: int = 25, shard_size: int = 10, seed: int = 0):
    """Random sequences through ShardWriter in uneven batches; returns what was written, per sequence."""
    rng = np.random.default_rng(seed)
    out.mkdir()
    dtypes = array_dtypes(21128, 128)
    writer = ShardWriter(out, dtypes, masked=masked, shard_size=shard_size)
    written = []
    for batch in np.array_split(np.arange(n), 4):
        lengths = rng.integers(3, 128, size=len(batch))
        seqs = [rng.integers(0, 21128, size=length) for length in lengths]
        words = [np.concatenate([[-1], np.sort(rng.integers(0, 50, size=length - 2)), [-1]]) for length in lengths]
        preds = [np.sort(rng.choice(np.arange(1, length - 1), size=min(3, length - 2), replace=False)) for length in lengths]
        labels = [rng.integers(0, 21128, size=len(p)) for p in preds]
        writer.add(
            lengths, np.concatenate(seqs), np.concatenate(words) if not masked else None,
            np.array([len(p) for p in preds]) if masked else None,
            np.concatenate(preds) if masked else None, np.concatenate(labels) if masked else None,
        )
        written += list(zip(seqs, words, preds, labels))
    writer.flush()
    manifest = {
        "format": "sbert-mlm-data", "format_version": 1, "masked": masked, "max_seq_len": 128,
        "vocab_sha256": "0" * 64, "shards": writer.shards,
    }
    write_manifest(out, manifest)
    return written


@pytest.mark.parametrize("masked", [True, False])
def test_reader_round_trips_what_the_writer_wrote(tmp_path, masked):
    written = write_random_data(tmp_path / "d", masked)
    data = MLMShards(tmp_path / "d")
    assert len(data) == 25 and data.masked is masked and data.max_seq_len == 128
    assert len(data.manifest["shards"]) > 1  # the round trip crosses shard boundaries
    assert data.lengths().tolist() == [len(s) for s, *_ in written]
    for i, (seq, words, preds, labels) in enumerate(written):
        example = data[i]
        assert example.input_ids.dtype == np.int32 and example.input_ids.tolist() == seq.tolist()
        if masked:
            assert example.masked_positions.tolist() == preds.tolist()
            assert example.masked_labels.tolist() == labels.tolist()
            assert example.word_ids is None
        else:
            assert example.word_ids.tolist() == words.tolist() and example.word_ids.dtype == np.int32
            assert len(example.masked_positions) == 0
    assert data[-1].input_ids.tolist() == written[-1][0].tolist()
    with pytest.raises(IndexError):
        data[25]


def test_shards_are_memory_mapped(tmp_path):
    write_random_data(tmp_path / "d", masked=True)
    data = MLMShards(tmp_path / "d")
    assert isinstance(data._shards[0]["input_ids"], np.memmap)


def test_missing_dir_manifest_or_shard_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        MLMShards(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        MLMShards(tmp_path / "empty")
    write_random_data(tmp_path / "d", masked=True)
    (tmp_path / "d" / "shard-00001" / "masked_labels.npy").unlink()
    with pytest.raises(DataError, match="masked_labels.npy: missing"):
        MLMShards(tmp_path / "d")


def test_foreign_or_inconsistent_manifest_is_a_data_error(tmp_path):
    write_random_data(tmp_path / "d", masked=True)
    manifest_path = tmp_path / "d" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][0]["sequences"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="do not match"):
        MLMShards(tmp_path / "d")
    manifest_path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="not a make-mlm-data manifest"):
        MLMShards(tmp_path / "d")
    manifest_path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        MLMShards(tmp_path / "d")


def test_output_dir_is_refused_when_not_empty_unless_forced(tmp_path):
    written_dir = tmp_path / "d"
    write_random_data(written_dir, masked=True)
    (written_dir / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="`force`"):
        prepare_output_dir(written_dir, force=False)
    outputs = prepare_output_dir(written_dir, force=True)
    assert outputs.created is False
    outputs.release()
    # Forcing removes only earlier make-mlm-data output.
    assert sorted(p.name for p in written_dir.iterdir()) == ["notes.txt"]
    assert prepare_output_dir(tmp_path / "new" / "dir", force=False).created is True
