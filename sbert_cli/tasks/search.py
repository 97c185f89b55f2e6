"""similar: the texts of a corpus closest to a query by cosine similarity, with the corpus vectors cached beside it.

`similar` embeds a corpus once and keeps its vectors beside it as .npy (corpus_cache_path: a key over the model,
the settings and the file's hash, CACHE_FORMAT), then scores every row against the query a block at a time
(cosine_scores) and keeps the top k. In it: similar, Match, SimilarResult, corpus_cache_path, file_sha256,
cosine_scores.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sbert_cli.data.text_input import is_regular
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.tasks.embedding import Embedder, NpyWriter, embed_stream
from sbert_cli.tasks.inference import ProgressCallback

CACHE_FORMAT = 1  # bump when the cached vectors of the same model and file would change


@dataclass
class Match:
    rank: int
    index: int  # row of the text in the corpus (and in its cached vectors), from 0
    score: float  # cosine similarity
    text: str

    def to_json(self) -> dict:
        return {"rank": self.rank, "index": self.index, "score": round(self.score, 6), "text": self.text}


@dataclass
class SimilarResult:
    query: str
    matches: list[Match]
    corpus_size: int
    cache: Path | None  # the corpus vectors kept beside the corpus (None with use_cache=False or a read-only folder)
    cache_hit: bool


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def corpus_cache_path(corpus: Path, embedder: Embedder) -> Path:
    """`<corpus>.sbert-<key>.npy`; the key covers the corpus bytes, the model's files and the embedding settings."""
    from sbert_cli.model.hf_weights import find_weights

    model_dir = embedder.model_dir
    model_files = [model_dir / name for name in ("config.json", "vocab.txt", "tokenizer_config.json")]
    model_files.append(find_weights(model_dir))
    identity = {
        "format": CACHE_FORMAT,
        "corpus_sha256": file_sha256(corpus),
        "model": str(model_dir.resolve()),
        "model_files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_files if p.is_file()],
        "pooling": embedder.settings.pooling,
        "normalize": embedder.settings.normalize,
        "max_length": embedder.max_length,
        "precision": embedder.precision,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return corpus.parent / f"{corpus.name}.sbert-{key}.npy"


def similar(
    query: str,
    corpus: str | Path,
    embedder: Embedder,
    top_k: int = 10,
    use_cache: bool = True,
    progress: ProgressCallback | None = None,
) -> SimilarResult:
    """The top_k texts of `corpus` by cosine similarity to `query`.

    The corpus vectors are kept beside the corpus (corpus_cache_path) and reused while the corpus, the
    model and the settings are unchanged; without use_cache, or in a folder we may not write, they go to
    a temporary file.
    """
    import tempfile

    from sbert_cli.data.text_input import TextReader

    if top_k < 1:
        raise ConfigError(f"`top_k` must be at least 1, not {top_k}")
    if not query.strip():
        raise DataError("the query is empty; give a text to search for")
    corpus = Path(corpus)
    TextReader([corpus], can_skip=False)  # a missing, empty or directory corpus fails here, before any work
    if not is_regular(corpus):
        raise DataError(f"{corpus}: is a pipe or a device; similar reads its corpus more than once: save it to a file")
    cache = corpus_cache_path(corpus, embedder) if use_cache else None
    if cache is not None and not os.access(corpus.parent, os.W_OK):
        cache = None
    if cache is not None and (cache.is_symlink() or (cache.exists() and not cache.is_file())):
        raise DataError(f"{cache}: is where similar keeps the corpus vectors, but holds a folder or a link; remove "
                        "it, or pass `no_cache`")
    hit = cache is not None and cache.is_file() and _usable_cache(cache, embedder.dimension, corpus)
    with tempfile.TemporaryDirectory(prefix="sbert-similar-") as scratch:
        vectors_path = cache if cache is not None else Path(scratch) / "corpus.npy"
        if not hit:
            texts = (text for text, _ in TextReader([corpus], can_skip=False))
            with NpyWriter(vectors_path, embedder.dimension, force=True) as writer:  # a broken cache is rebuilt
                for _, vectors in embed_stream(embedder, texts, progress=progress):
                    writer.write(vectors)
        scores = cosine_scores(np.load(vectors_path, mmap_mode="r"), embedder.embed([query])[0])
    if not len(scores):
        raise DataError(f"{corpus}: no texts in it")
    wanted = {int(i): rank for rank, i in enumerate(_top_k(scores, top_k), 1)}
    matches, count = [], 0
    for index, (text, _) in enumerate(TextReader([corpus], can_skip=False)):
        count += 1
        if index in wanted:
            matches.append(Match(wanted[index], index, float(scores[index]), text))
    if count != len(scores):
        raise DataError(f"{corpus}: has {count} texts but its vectors {len(scores)}; it changed while read, run again")
    return SimilarResult(query, sorted(matches, key=lambda m: m.rank), count, cache, hit)


def _usable_cache(cache: Path, dimension: int, corpus: Path) -> bool:
    """Whether cached corpus vectors can be used: a float32 .npy of one finite row of `dimension` per text of the
    corpus. A cut-short, foreign or NaN file, or one of too few rows, is rebuilt, never trusted."""
    from sbert_cli.data.text_input import TextReader

    try:
        vectors = np.load(cache, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != dimension:
        return False
    if sum(1 for _ in TextReader([corpus], can_skip=False)) != len(vectors):
        return False
    return all(np.isfinite(vectors[start : start + 65536]).all() for start in range(0, len(vectors), 65536))


def cosine_scores(vectors: np.ndarray, query: np.ndarray, block: int = 65536) -> np.ndarray:
    """Cosine similarity of every row with `query`, a block of rows at a time (rows may be memory-mapped)."""
    query = query.astype(np.float32) / max(float(np.linalg.norm(query)), 1e-12)
    scores = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), block):
        rows = np.asarray(vectors[start : start + block], dtype=np.float32)
        scores[start : start + block] = rows @ query / np.maximum(np.linalg.norm(rows, axis=1), 1e-12)
    return scores


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
