"""Classification inference, behind predict, eval, serve's /predict and the demo: load_classifier gives a Classifier
(model, tokenizer, labels, device, precision; `probabilities` runs texts in length-sorted batches); predict_stream
yields a Prediction per TextInput a chunk (CHUNK_SIZE) at a time; top_labels ranks labels; read_inputs reads
texts to classify (arguments, a file in any classification format, or stdin) as Inputs.

torch is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, TextIO

from sbert_cli.errors import ConfigError, DataError
from sbert_cli.tasks.inference import ProgressCallback, Runtime, default_max_length, in_chunks, prepare_inference

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from sbert_cli.data.text_input import ReadStats
    from sbert_cli.model.tokenizer import BertTokenizer


CHUNK_SIZE = 4096  # texts sorted and batched together when streaming; bounds memory, keeps batches full


@dataclass
class Classifier:
    """A sequence classifier ready for inference, with its tokenizer and label names."""

    model: "nn.Module"
    tokenizer: "BertTokenizer"
    label_names: list[str]
    device: "torch.device"
    precision: str
    batch_size: int
    max_length: int
    runtime: Runtime

    def probabilities(
        self, texts: list[str], pairs: list[str] | None = None, progress: ProgressCallback | None = None
    ) -> "np.ndarray":
        """Softmax probabilities (N, num_labels), float32, in the order of `texts`."""
        import numpy as np
        import torch

        from sbert_cli.data.batching import length_sorted_batches, pad_batch
        from sbert_cli.model.precision import inference_autocast

        start = time.perf_counter()
        sequences, type_ids = self._encode(texts, pairs)
        lengths = [len(ids) for ids in sequences]
        order, outputs = [], []
        with torch.inference_mode(), inference_autocast(self.precision, self.device):
            for batch in length_sorted_batches(lengths, self.batch_size):
                input_ids, attention_mask = pad_batch([sequences[i] for i in batch], self.tokenizer.pad_id)
                token_type_ids = None
                if type_ids is not None:
                    token_type_ids = pad_batch([type_ids[i] for i in batch], 0)[0].to(self.device)
                logits = self.model(input_ids.to(self.device), attention_mask.to(self.device), token_type_ids)
                # Kept on the device until the end: one copy back instead of a sync per batch.
                outputs.append(torch.softmax(logits.float(), dim=-1))
                order.extend(batch)
                if progress is not None:
                    progress(len(batch), None)
        probabilities = np.empty((len(texts), len(self.label_names)), dtype=np.float32)
        if outputs:
            probabilities[np.asarray(order)] = torch.cat(outputs).cpu().numpy()
        self.runtime.add(len(texts), sum(lengths), time.perf_counter() - start)
        return probabilities

    def _encode(self, texts: list[str], pairs: list[str] | None) -> tuple[list, list | None]:
        """Token ids with [CLS]/[SEP] (and token type ids for pairs), truncated to max_length: as in training."""
        return self.tokenizer.encode_with_types(texts, pairs, self.max_length)


def load_classifier(
    model: str | Path,
    *,
    batch_size: int = 64,
    precision: str = "auto",
    device: str = "auto",
    max_length: int | None = None,
) -> Classifier:
    """Load a model dir (sbert or HF, with a classification head) for inference."""
    from sbert_cli.model.model_dir import load_for_task, load_tokenizer

    from sbert_cli.limits import BATCH_SIZE_WHY, MAX_BATCH_SIZE, check_range

    check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE, BATCH_SIZE_WHY)
    loaded = load_for_task(model, "cls")
    net = loaded.model
    tokenizer = load_tokenizer(loaded.checkpoint.path)
    torch_device, resolved = prepare_inference(net, device, precision)
    limit = net.config.max_position_embeddings
    if max_length is not None and not 2 <= max_length <= limit:
        raise ConfigError(f"`max_seq_len` must be between 2 and the model's {limit} positions, not {max_length}")
    return Classifier(
        model=net,
        tokenizer=tokenizer,
        label_names=net.config.labels,
        device=torch_device,
        precision=resolved,
        batch_size=batch_size,
        max_length=max_length or default_max_length(net, loaded.checkpoint.meta),
        runtime=Runtime(str(torch_device), resolved, batch_size),
    )


@dataclass
class TextInput:
    text: str
    source: str  # where it came from, for messages: "FILE:LINE", "<stdin>:LINE" or "argument N"
    pair: str | None = None  # second text of a sentence pair


@dataclass
class Prediction:
    text: str
    source: str
    labels: list[tuple[str, float]] = field(default_factory=list)  # top k, most probable first

    def to_json(self) -> dict:
        return {"text": self.text, "labels": [{"label": name, "score": round(score, 6)} for name, score in self.labels]}


def top_labels(probabilities: "np.ndarray", label_names: list[str], top_k: int) -> list[list[tuple[str, float]]]:
    """The top_k (label, probability) of each row, most probable first."""
    import numpy as np

    k = min(top_k, probabilities.shape[1])
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(label_names[j], float(row[j])) for j in idx] for row, idx in zip(probabilities, best)]


def predict_stream(
    classifier: Classifier,
    inputs: Iterable[TextInput],
    top_k: int = 1,
    chunk_size: int = CHUNK_SIZE,
    progress: ProgressCallback | None = None,
) -> Iterator[Prediction]:
    """Predictions for `inputs` in their order, computed a chunk at a time so long inputs stream."""
    if top_k < 1:
        raise ConfigError(f"`top_k` must be at least 1, not {top_k}")
    for chunk in in_chunks(inputs, chunk_size):
        yield from _predict_chunk(classifier, chunk, top_k, progress)


def _predict_chunk(classifier: Classifier, chunk: list[TextInput], top_k: int, progress) -> list[Prediction]:
    pairs = [item.pair for item in chunk] if chunk[0].pair is not None else None
    probabilities = classifier.probabilities([item.text for item in chunk], pairs, progress)
    ranked = top_labels(probabilities, classifier.label_names, top_k)
    return [Prediction(item.text, item.source, labels) for item, labels in zip(chunk, ranked)]


@dataclass
class Inputs:
    items: Iterator[TextInput]
    total: int | None  # None while streaming stdin
    read: ReadStats  # blank_lines: the blank lines skipped, known once `items` is consumed


def read_inputs(texts: list[str], file: str | Path | None = None, stdin: TextIO | None = None) -> Inputs:
    """Texts to classify: the arguments; a file in any format the classification reader takes
    (one text per line, text<TAB>label, CSV, JSONL; sentence pairs too); or stdin ("-" or piped),
    one text per line, streamed. An empty text or no text at all is a DataError; blank lines are skipped
    and counted in `read.blank_lines`."""
    from sbert_cli.data.classification import read_classification_file

    from sbert_cli.data.text_input import ReadStats, iter_texts

    if texts and file is not None:
        raise ConfigError("give texts as arguments or with `file`, not both")
    for i, text in enumerate(texts, 1):
        if not text.strip():
            raise DataError(f"argument {i}: empty text; give a non-empty text to classify")
    if texts or file is None or str(file) == "-":  # the one input layer; files keep the labelled formats below
        read = ReadStats()
        items = (TextInput(text, where) for text, where in iter_texts(texts, file, stdin, "texts to classify", read))
        return Inputs(items, len(texts) if texts else None, read)
    data = read_classification_file(Path(file), require_labels=False)
    pairs = data.pairs or [None] * len(data.texts)
    items = [TextInput(text, f"{file}:{line}", pair) for text, pair, line in zip(data.texts, pairs, data.line_numbers)]
    return Inputs(iter(items), len(items), ReadStats(blank_lines=data.blank_lines))
