"""Sentence embeddings: pooling over the encoder, and the `embed` command's library calls.

A text's embedding is the encoder's last hidden state pooled into one vector: the mean over its real
tokens (padding excluded), the [CLS] vector, or the pooler (tanh(W·[CLS]), what the classifier reads),
then L2-normalised unless asked not to. A sentence-transformers model dir (model/st_dir.py) says which
pooling and normalisation it was trained with; we follow it, so our vectors equal
`SentenceTransformer(dir).encode(texts)`. Other dirs default to mean pooling, normalised.

Texts stream through in chunks: each chunk is sorted by length into batches, run, and put back in
input order, so memory depends on the chunk size, not on the number of texts.

In it: EmbeddingSettings and embedding_settings (options, then the ST dir, then defaults), pool, Embedder,
embedder_for, load_embedder, embed_stream, embed, embedding_json, read_texts (the texts to embed), NpyWriter
(a .npy written as rows arrive); POOLINGS, CHUNK_SIZE. `similar` is in tasks/search.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, TextIO

import numpy as np

from sbert_cli.errors import ConfigError, ModelLoadError
from sbert_cli.limits import parse_json
from sbert_cli.model.st_dir import SentenceTransformersDir, read_sentence_transformers_dir
from sbert_cli.tasks.inference import ProgressCallback, Runtime, in_chunks

if TYPE_CHECKING:
    import torch

    from sbert_cli.model.bert import BertModel
    from sbert_cli.model.config import BertConfig
    from sbert_cli.model.tokenizer import BertTokenizer

POOLINGS = ("mean", "cls", "pooler")
CHUNK_SIZE = 4096  # texts sorted and batched together when streaming: bounds memory, keeps batches full
def _tokenizer_max_length(model_dir: Path) -> int | None:
    """tokenizer_config.json's model_max_length, which sentence-transformers >= 6 truncates to; None when unset."""
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        value = parse_json(path.read_text(encoding="utf-8")).get("model_max_length")
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
    encoder: "BertModel", input_ids: "torch.Tensor", attention_mask: "torch.Tensor", pooling: str
) -> "torch.Tensor":
    """A padded batch -> (B, H) float32 sentence vectors. mean reads every token; cls and pooler read [CLS] only,
    so the last layer runs there alone (BertModel.encode_cls)."""
    import torch

    if pooling == "mean":
        hidden = encoder.encode(input_ids, attention_mask)  # (B, T, H)
        mask = attention_mask[..., None].to(hidden.dtype)  # (B, T, 1): padding contributes nothing
        summed = (hidden * mask).sum(dim=1, dtype=torch.float32)
        return summed / mask.sum(dim=1, dtype=torch.float32).clamp(min=1e-9)
    cls = encoder.encode_cls(input_ids, attention_mask)  # (B, 1, H)
    return (cls[:, 0] if pooling == "cls" else encoder.pool(cls)).float()


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
                pooled = pool(self.encoder, input_ids, attention_mask, pooling)
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
    for chunk in in_chunks(texts, chunk_size):
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
    header is written for 0 rows and rewritten once at the end. Written to a temp file and placed on close
    by outputs.place: the target is never half-written, and never replaced without `force` (not even by a
    file that appeared meanwhile), never a link or a device.
    """

    def __init__(self, path: Path, dim: int, force: bool = False):
        from sbert_cli.outputs import check_target, remove_stale_temps, temp_path

        self.path, self.dim, self.rows, self.force = Path(path), dim, 0, force
        check_target(self.path, force)
        remove_stale_temps(self.path.parent, self.path.name)  # what a killed run left
        self.tmp = temp_path(self.path)
        with self._naming_the_path():
            self.file = open(self.tmp, "w+b")
            self.header_size = self._write_header()

    @contextlib.contextmanager
    def _naming_the_path(self):
        """OSError (a full disk, `ulimit -f`, a read-only folder) as an OutputError naming the target."""
        from sbert_cli.errors import OutputError, os_error_message

        try:
            yield
        except OSError as e:
            raise OutputError(os_error_message(e, self.path)) from None

    def _write_header(self) -> int:
        self.file.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (self.rows, self.dim)}
        np.lib.format.write_array_header_1_0(self.file, header)
        return self.file.tell()

    def write(self, vectors: np.ndarray) -> None:
        with self._naming_the_path():
            self.file.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self.rows += len(vectors)

    def close(self) -> Path:
        from sbert_cli.outputs import place

        with self._naming_the_path():
            if self._write_header() != self.header_size:  # numpy's padding guarantees this; never write a broken file
                raise RuntimeError("npy header changed size")
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        return place(self.tmp, self.path, self.force)

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes, and the disk that failed may fail again
            self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "NpyWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()
