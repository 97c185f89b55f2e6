"""Sentence embeddings: pooling over the encoder, sentence-transformers model dirs, `embed` and `similar`.

A text's embedding is the encoder's last hidden state pooled into one vector: the mean over its real
tokens (padding excluded), the [CLS] vector, or the pooler (tanh(W·[CLS]), what the classifier reads),
then L2-normalised unless asked not to. A sentence-transformers model dir (modules.json, 1_Pooling/,
2_Normalize/) says which pooling and normalisation it was trained with; we follow it, so our vectors
equal `SentenceTransformer(dir).encode(texts)`. Other dirs default to mean pooling, normalised.

Texts stream through in chunks: each chunk is sorted by length into batches, run, and put back in
input order, so memory depends on the chunk size, not on the number of texts. `similar` embeds a
corpus once and keeps its vectors beside it as .npy, named by a key over the model and the file's hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, TextIO

import numpy as np

from sbert_cli.errors import ConfigError, DataError, ModelLoadError
from sbert_cli.tasks.inference import ProgressCallback, Runtime

if TYPE_CHECKING:
    import torch

    from sbert_cli.model.bert import BertModel
    from sbert_cli.model.config import BertConfig
    from sbert_cli.model.tokenizer import BertTokenizer

POOLINGS = ("mean", "cls", "pooler")
CHUNK_SIZE = 4096  # texts sorted and batched together when streaming: bounds memory, keeps batches full
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
CACHE_FORMAT = 1  # bump when the cached vectors of the same model and file would change


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
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot read it as JSON ({e})") from None


def _tokenizer_max_length(model_dir: Path) -> int | None:
    """tokenizer_config.json's model_max_length, which sentence-transformers >= 6 truncates to; None when unset."""
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and 0 < value < 1_000_000 else None  # transformers writes 1e30 for "none"


@dataclass(frozen=True)
class EmbeddingSettings:
    """How a model's texts become vectors; resolved once per model from the options and the model dir."""

    pooling: str
    normalize: bool
    max_length: int


def embedding_settings(
    model_dir: Path,
    config: "BertConfig",
    meta: dict,
    st: SentenceTransformersDir | None,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_seq_len: int | None = None,
) -> EmbeddingSettings:
    """Options given win; then the sentence-transformers dir; then mean pooling, normalised.

    The max length: --max-seq-len, else sentence_bert_config.json, the length the model was trained with
    (sbert.json), tokenizer_config.json's model_max_length, and the model's positions, capped by those.
    """
    if pooling is not None and pooling not in POOLINGS:
        raise ConfigError(f"`pooling` {pooling!r}: use one of {', '.join(POOLINGS)}")
    if pooling is None:
        pooling = st.pooling if st is not None else "mean"
        if pooling not in POOLINGS:
            raise ModelLoadError(
                f"{model_dir}: its sentence-transformers pooling is {pooling!r}, which sbert does not do; "
                f"pass `pooling` {'|'.join(POOLINGS)} to choose one (the vectors will then differ from sentence-transformers')"
            )
    if normalize is None:
        normalize = st.normalize if st is not None else True
    limit = config.max_position_embeddings
    if max_seq_len is not None:
        if not 2 <= max_seq_len <= limit:
            raise ConfigError(f"`max_seq_len` must be between 2 and the model's {limit} positions, not {max_seq_len}")
        max_length = max_seq_len
    elif st is not None and st.max_seq_len is not None:
        max_length = min(st.max_seq_len, limit)
    elif meta.get("max_seq_len"):
        max_length = min(int(meta["max_seq_len"]), limit)
    else:
        max_length = min(_tokenizer_max_length(model_dir) or limit, limit)
    return EmbeddingSettings(pooling, normalize, max_length)


def pool(
    encoder: "BertModel", hidden: "torch.Tensor", attention_mask: "torch.Tensor", pooling: str
) -> "torch.Tensor":
    """(B, T, H) hidden states -> (B, H) float32 sentence vectors."""
    import torch

    if pooling == "mean":
        mask = attention_mask[..., None].to(hidden.dtype)  # (B, T, 1): padding contributes nothing
        summed = (hidden * mask).sum(dim=1, dtype=torch.float32)
        return summed / mask.sum(dim=1, dtype=torch.float32).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[:, 0].float()
    return encoder.pool(hidden).float()


@dataclass
class Embedder:
    """A BERT encoder ready to embed texts, with its tokenizer and pooling settings."""

    encoder: "BertModel"
    tokenizer: "BertTokenizer"
    model_dir: Path  # the folder the encoder came from (for a sentence-transformers dir: its Transformer module's)
    settings: EmbeddingSettings
    has_pooler: bool  # the checkpoint carried pooler weights (else the pooler would be random)
    device: "torch.device"
    precision: str
    batch_size: int
    runtime: Runtime

    @property
    def dimension(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def max_length(self) -> int:
        return self.settings.max_length

    def check_pooling(self, pooling: str) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        if pooling == "pooler" and not self.has_pooler:
            raise ModelLoadError("this checkpoint has no pooler weights (bert.pooler.*); use pooling mean or cls")

    def embed(
        self,
        texts: list[str],
        pooling: str | None = None,
        normalize: bool | None = None,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """(N, hidden) float32 vectors in the order of `texts`, run in length-sorted batches."""
        import torch
        import torch.nn.functional as F

        from sbert_cli.data.batching import length_sorted_batches, pad_batch
        from sbert_cli.model.precision import inference_autocast

        pooling = pooling or self.settings.pooling
        normalize = self.settings.normalize if normalize is None else normalize
        self.check_pooling(pooling)
        start = time.perf_counter()
        sequences = self.tokenizer.encode(list(texts), max_length=self.max_length)
        lengths = [len(ids) for ids in sequences]
        vectors = np.empty((len(sequences), self.dimension), dtype=np.float32)
        with torch.inference_mode(), inference_autocast(self.precision, self.device):  # weights already converted
            for batch in length_sorted_batches(lengths, self.batch_size):
                input_ids, attention_mask = pad_batch([sequences[i] for i in batch], self.tokenizer.pad_id)
                input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
                hidden = self.encoder.encode(input_ids, attention_mask)
                pooled = pool(self.encoder, hidden, attention_mask, pooling).float()
                if normalize:
                    pooled = F.normalize(pooled, p=2, dim=1)
                vectors[batch] = pooled.cpu().numpy()
                if progress is not None:
                    progress(len(batch), None)
        self.runtime.add(len(sequences), sum(lengths), time.perf_counter() - start)
        return vectors


def embedder_for(
    encoder: "BertModel",
    tokenizer: "BertTokenizer",
    model_dir: Path,
    settings: EmbeddingSettings,
    initialized: list[str],
    device: "torch.device",
    precision: str,
    batch_size: int = 32,
) -> Embedder:
    """An Embedder over an encoder already loaded (and placed on `device`), e.g. a classifier's."""
    from sbert_cli.limits import BATCH_SIZE_WHY, MAX_BATCH_SIZE, check_range

    check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE, BATCH_SIZE_WHY)
    has_pooler = not any(name.startswith(("pooler.", "bert.pooler.")) for name in initialized)
    embedder = Embedder(encoder, tokenizer, Path(model_dir), settings, has_pooler, device, precision, batch_size,
                        Runtime(str(device), precision, batch_size))
    embedder.check_pooling(settings.pooling)
    return embedder


def load_embedder(
    model: str | Path,
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_seq_len: int | None = None,
    batch_size: int = 32,
    precision: str = "auto",
    device: str = "auto",
) -> Embedder:
    """Load any BERT (sbert dir, HF dir, sentence-transformers dir, hub repo id) as a sentence encoder."""
    from sbert_cli.model.model_dir import load_for_task, load_tokenizer, resolve_model_dir
    from sbert_cli.tasks.inference import prepare_inference

    model_dir = resolve_model_dir(model)
    st = read_sentence_transformers_dir(model_dir)
    encoder_dir = st.encoder_dir if st is not None else model_dir
    loaded = load_for_task(encoder_dir, "base")
    settings = embedding_settings(encoder_dir, loaded.model.config, loaded.checkpoint.meta, st, pooling, normalize, max_seq_len)
    torch_device, resolved = prepare_inference(loaded.model, device, precision)
    return embedder_for(loaded.model, load_tokenizer(encoder_dir), encoder_dir, settings, loaded.initialized, torch_device,
                        resolved, batch_size)


def embed_stream(
    embedder: Embedder,
    texts: Iterable[str],
    pooling: str | None = None,
    normalize: bool | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """(texts, vectors) a chunk at a time, in input order: memory depends on chunk_size only."""
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) >= chunk_size:
            yield chunk, embedder.embed(chunk, pooling, normalize, progress)
            chunk = []
    if chunk:
        yield chunk, embedder.embed(chunk, pooling, normalize, progress)


def embed(
    texts: str | Iterable[str],
    model: "str | Path | Embedder",
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    **load_options,
) -> np.ndarray:
    """Sentence embeddings, float32: (N, hidden) for a list of texts, (hidden,) for one string.

    `model` is a model dir, a hub repo id, or an Embedder from load_embedder (to load once, embed often);
    load_options (max_seq_len, batch_size, precision, device) go to load_embedder.
    """
    embedder = model if isinstance(model, Embedder) else load_embedder(
        model, pooling=pooling, normalize=normalize, **load_options
    )
    if isinstance(texts, str):
        return embedder.embed([texts], pooling, normalize)[0]
    vectors = [v for _, v in embed_stream(embedder, texts, pooling, normalize)]
    return np.concatenate(vectors) if vectors else np.empty((0, embedder.dimension), dtype=np.float32)


def embedding_json(text: str, vector: np.ndarray) -> dict:
    """One text's JSON, as `sbert embed --format jsonl` writes it and `POST /embed` answers: the float32 values exactly."""
    return {"text": text, "embedding": vector.tolist()}


# Reading texts ------------------------------------------------------------------------------------


def read_texts(texts: list[str], file: str | Path | None = None, stdin: TextIO | None = None) -> Iterator[str]:
    """The texts to embed, through the one input layer (data/text_input.iter_texts)."""
    from sbert_cli.data.text_input import iter_texts

    return (text for text, _ in iter_texts(texts, file, stdin))


# .npy written as rows arrive ------------------------------------------------------------------------


class NpyWriter:
    """A float32 (N, dim) .npy written row block by row block, N unknown until the end.

    numpy pads the header so the first dimension can grow in place (GROWTH_AXIS_MAX_DIGITS), so the
    header is written for 0 rows and rewritten once at the end. Written to a temp file, renamed on close:
    the target is never half-written.
    """

    def __init__(self, path: Path, dim: int):
        self.path, self.dim, self.rows = Path(path), dim, 0
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"
        self.file = open(self.tmp, "wb")
        self.header_size = self._write_header()

    def _write_header(self) -> int:
        self.file.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (self.rows, self.dim)}
        np.lib.format.write_array_header_1_0(self.file, header)
        return self.file.tell()

    def write(self, vectors: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self.rows += len(vectors)

    def close(self) -> Path:
        if self._write_header() != self.header_size:  # numpy's padding guarantees this; never write a broken file
            raise RuntimeError("npy header changed size")
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "NpyWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


# similar: cosine top-k over a corpus ---------------------------------------------------------------


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
    TextReader([corpus])  # a missing, empty or directory corpus fails here, before any work
    cache = corpus_cache_path(corpus, embedder) if use_cache else None
    if cache is not None and not os.access(corpus.parent, os.W_OK):
        cache = None
    hit = cache is not None and cache.is_file()
    with tempfile.TemporaryDirectory(prefix="sbert-similar-") as scratch:
        vectors_path = cache if cache is not None else Path(scratch) / "corpus.npy"
        if not hit:
            texts = (text for text, _ in TextReader([corpus]))
            with NpyWriter(vectors_path, embedder.dimension) as writer:
                for _, vectors in embed_stream(embedder, texts, progress=progress):
                    writer.write(vectors)
        scores = cosine_scores(np.load(vectors_path, mmap_mode="r"), embedder.embed([query])[0])
    if not len(scores):
        raise DataError(f"{corpus}: no texts in it")
    wanted = {int(i): rank for rank, i in enumerate(_top_k(scores, top_k), 1)}
    matches, count = [], 0
    for index, (text, _) in enumerate(TextReader([corpus])):
        count += 1
        if index in wanted:
            matches.append(Match(wanted[index], index, float(scores[index]), text))
    if count != len(scores):
        raise DataError(f"{corpus}: has {count} texts but its vectors {len(scores)}; it changed while read, run again")
    return SimilarResult(query, sorted(matches, key=lambda m: m.rank), count, cache, hit)


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
