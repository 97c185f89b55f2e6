"""Tagging inference: text in, entities with exact character offsets out; the one decoding rule that training's
dev scoring, `sbert eval`, `sbert predict`, `sbert serve` and the Python API all share.

The path: text -> words (data.ner.word_offsets) -> windows of at most max_seq_len ids (data.ner.encode_windows)
-> tag scores per token (the model) -> per-word scores, each word from the window where it sits farthest from a
cut (data.ner.merge_windows) -> tags by `decode_words` -> spans (data.ner.spans_from_word_tags) -> `Entity`s.

Decoding rule (`decode_words`): the best tag path under the allowed-transition constraints (BIOES: I-X and E-X
only after B-X or I-X; a sentence starts with O, B- or S-, and ends with O, E- or S-), by Viterbi:
- with a CRF, over its emission, transition, start and end scores;
- without one, over the log-softmax of each word's scores with zero transitions, so the path is the most
  probable one (the product of the per-word probabilities) among the well-formed ones.
An entity's `score` is the mean, over its words, of the probability of the word's decoded tag: the CRF's
marginal probability (forward-backward) with a CRF, the softmax probability without.

Also here: `ner` (the Python API: `from sbert_cli import ner`), `Tagger` (a loaded model for repeated calls),
`load_tagger`, `is_tagger`, `window_scores` (batched model runs over windows), `predict_stream` / `NerPrediction`
(streamed predictions for the CLI), and `evaluate_tagger` / `NerEvaluation` (what `sbert eval` reports on a
tagger: tasks/ner_metrics.py's entity scores on exactly these predictions; the report files are written by tasks/evaluate.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from sbert_cli.errors import ConfigError
from sbert_cli.tasks.inference import ProgressCallback, Runtime, default_max_length, in_chunks, prepare_inference

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sbert_cli.data.ner import Window
    from sbert_cli.model.tokenizer import BertTokenizer

CHUNK_SIZE = 1024  # texts tagged together when streaming: bounds memory, keeps batches full


@dataclass(frozen=True)
class Entity:
    """An entity found in a text: text[start:end] == text (end exclusive), its type, and its score."""

    text: str
    label: str
    start: int
    end: int
    score: float

    def to_json(self) -> dict:
        return {"text": self.text, "label": self.label, "start": self.start, "end": self.end,
                "score": round(self.score, 6)}


def constraints_for(tag_names: Sequence[str]):
    """The decoding constraints of a BIOES tag set (crf.Constraints)."""
    from sbert_cli.data.ner import allowed_transitions
    from sbert_cli.tasks.crf import Constraints

    return Constraints.from_lists(*allowed_transitions(tag_names))


def decode_words(word_scores: Sequence["np.ndarray | torch.Tensor"], crf, constraints,
                 with_probabilities: bool = True) -> tuple[list[list[int]], list[np.ndarray]]:
    """(tag ids, the probability of each decoded tag) of each sentence, from its per-word scores (n_words, L):
    constrained Viterbi (see the module docstring); crf is the model's TagTransitions or None. Without
    with_probabilities the probabilities are left empty (training's dev scoring needs only the tags)."""
    import torch

    from sbert_cli.tasks.crf import marginals, viterbi

    rows = [i for i, s in enumerate(word_scores) if len(s)]
    tags: list[list[int]] = [[] for _ in word_scores]
    probs: list[np.ndarray] = [np.zeros(0, dtype=np.float32) for _ in word_scores]
    if not rows:
        return tags, probs
    longest = max(len(word_scores[i]) for i in rows)
    L = word_scores[rows[0]].shape[-1]
    emissions = torch.zeros(len(rows), longest, L)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for b, i in enumerate(rows):
        n = len(word_scores[i])
        emissions[b, :n] = torch.as_tensor(np.asarray(word_scores[i], dtype=np.float32))
        mask[b, :n] = True
    if crf is not None:
        scores = [p.detach().float().cpu() for p in (crf.transitions, crf.start_scores, crf.end_scores)]
        probabilities = marginals(emissions, mask, *scores, constraints) if with_probabilities else None
    else:
        emissions = torch.log_softmax(emissions, dim=-1)
        scores = [torch.zeros(L, L), torch.zeros(L), torch.zeros(L)]
        probabilities = emissions.exp()
    paths = viterbi(emissions, mask, *scores, constraints)
    for b, i in enumerate(rows):
        tags[i] = paths[b]
        if probabilities is not None:
            probs[i] = probabilities[b, torch.arange(len(paths[b])), torch.tensor(paths[b], dtype=torch.long)].numpy()
    return tags, probs


def entities_of(text: str, offsets: Sequence[tuple[int, int]], tags: Sequence[int], probs: np.ndarray,
                tag_names: Sequence[str]) -> list[Entity]:
    """The entities of decoded word tags, with the text they cover and their score."""
    from sbert_cli.data.ner import spans_from_word_tags

    first_word = {start: i for i, (start, _) in enumerate(offsets)}
    last_word = {end: i for i, (_, end) in enumerate(offsets)}
    entities = []
    for span in spans_from_word_tags([tag_names[t] for t in tags], offsets):
        words = probs[first_word[span.start] : last_word[span.end] + 1]
        entities.append(Entity(text[span.start : span.end], span.label, span.start, span.end, float(words.mean())))
    return entities


def window_scores(model: "nn.Module", windows: Sequence["Window"], pad_id: int, batch_size: int,
                  device: "torch.device") -> list[np.ndarray]:
    """Per-token tag scores (len(input_ids), L), float32, of each window, in batches of similar length. The caller
    sets the mode (eval) and the autocast."""
    from sbert_cli.data.batching import length_sorted_batches, pad_batch

    out: list[np.ndarray] = [None] * len(windows)  # type: ignore[list-item]
    for batch in length_sorted_batches([len(w.input_ids) for w in windows], batch_size):
        input_ids, attention_mask = pad_batch([windows[i].input_ids for i in batch], pad_id)
        logits = model(input_ids.to(device), attention_mask.to(device)).float().cpu().numpy()
        for row, i in enumerate(batch):
            out[i] = logits[row, : len(windows[i].input_ids)]
    return out


def sentence_scores(windows_per_text: Sequence[Sequence["Window"]], n_words: Sequence[int],
                    scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each text's per-word scores (n_words, L), merged from its windows' scores (`scores`, in the order of the
    flattened windows)."""
    from sbert_cli.data.ner import merge_windows

    merged, k = [], 0
    for windows, n in zip(windows_per_text, n_words):
        part = scores[k : k + len(windows)]
        k += len(windows)
        merged.append(merge_windows(windows, part, n) if n else np.zeros((0, 0), dtype=np.float32))
    return merged


@dataclass
class Tagger:
    """A tagger ready for inference: the model, its tokenizer, tag names (BIOES) and entity types."""

    model: "nn.Module"
    tokenizer: "BertTokenizer"
    tag_names: list[str]
    labels: list[str]  # entity types
    device: "torch.device"
    precision: str
    batch_size: int
    max_length: int
    runtime: Runtime

    def __post_init__(self):
        self.constraints = constraints_for(self.tag_names)

    @property
    def crf(self) -> bool:
        return self.model.crf is not None

    def entities(self, texts: Sequence[str], progress: ProgressCallback | None = None) -> list[list[Entity]]:
        """The entities of each text, in order."""
        import torch

        from sbert_cli.data.ner import encode_windows, word_offsets
        from sbert_cli.model.precision import inference_autocast

        start = time.perf_counter()
        offsets = [word_offsets(self.tokenizer, text) for text in texts]
        windows = [encode_windows(self.tokenizer, text, o, self.max_length) for text, o in zip(texts, offsets)]
        flat = [w for ws in windows for w in ws]
        with torch.inference_mode(), inference_autocast(self.precision, self.device):
            scores = window_scores(self.model, flat, self.tokenizer.pad_id, self.batch_size, self.device)
        words = sentence_scores(windows, [len(o) for o in offsets], scores)
        tags, probs = decode_words(words, self.model.crf, self.constraints)
        found = [entities_of(*args, self.tag_names) for args in zip(texts, offsets, tags, probs)]
        if progress is not None:
            progress(len(texts), None)
        self.runtime.add(len(texts), sum(len(w.input_ids) for w in flat), time.perf_counter() - start)
        return found


def is_tagger(model: str | Path) -> bool:
    """Whether a model dir (or repo id) holds a tagger (model_dir.is_tagger_config). Reads no weights."""
    from sbert_cli.model.config import BertConfig
    from sbert_cli.model.model_dir import SBERT_META, is_tagger_config, read_meta, resolve_model_dir

    path = resolve_model_dir(model)
    meta = read_meta(path / SBERT_META) if (path / SBERT_META).is_file() else None
    return is_tagger_config(BertConfig.from_json(path / "config.json"), meta)


def load_tagger(model: str | Path, *, batch_size: int = 64, precision: str = "auto", device: str = "auto",
                max_seq_len: int | None = None) -> Tagger:
    """Load a tagger's model dir (sbert train-ner's, or an HF token classifier with BIOES tag names) for inference."""
    from sbert_cli.limits import BATCH_SIZE_WHY, MAX_BATCH_SIZE, check_range
    from sbert_cli.model.model_dir import load_for_task, load_tokenizer

    check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE, BATCH_SIZE_WHY)
    loaded = load_for_task(model, "ner")
    net = loaded.model
    tag_names = net.config.labels
    labels = entity_types(tag_names, loaded.checkpoint.path)
    torch_device, resolved = prepare_inference(net, device, precision)
    limit = net.config.max_position_embeddings
    if max_seq_len is not None and not 3 <= max_seq_len <= limit:
        raise ConfigError(f"`max_seq_len` must be between 3 and the model's {limit} positions, not {max_seq_len}")
    return Tagger(net, load_tokenizer(loaded.checkpoint.path), tag_names, labels, torch_device, resolved, batch_size,
                  max_seq_len or default_max_length(net, loaded.checkpoint.meta), Runtime(str(torch_device), resolved, batch_size))


def ner(texts: str | Iterable[str], model: "str | Path | Tagger", **load_options) -> list[Entity] | list[list[Entity]]:
    """The entities of one text (a list of Entity), or of each of many (a list of lists), in order.

    `model` is a tagger's model dir or repo id, or a Tagger from load_tagger (to load once, tag often);
    load_options (max_seq_len, batch_size, precision, device) go to load_tagger.
    """
    tagger = model if isinstance(model, Tagger) else load_tagger(model, **load_options)
    if isinstance(texts, str):
        return tagger.entities([texts])[0]
    return [p.entities for p in predict_stream(tagger, ((text, "") for text in texts))]


def entity_types(tag_names: Sequence[str], where: Path | str) -> list[str]:
    """The entity types of a BIOES tag set, in order; another tag set is a ModelLoadError naming `where`."""
    from sbert_cli.data.ner import tag_names as bioes
    from sbert_cli.errors import ModelLoadError

    labels = list(dict.fromkeys(t[2:] for t in tag_names if t != "O"))
    if list(tag_names) != bioes(labels):
        raise ModelLoadError(f"{where}: its tags {list(tag_names)[:6]} are not sbert's BIOES tag set (O, B-X, I-X, E-X, "
                             "S-X per type); train the tagger with sbert train-ner")
    return labels


@dataclass
class NerPrediction:
    text: str
    source: str  # where the text came from: "FILE:LINE", "<stdin>:LINE", "argument N"
    entities: list[Entity]

    def to_json(self) -> dict:
        return {"text": self.text, "entities": [e.to_json() for e in self.entities]}


def predict_stream(tagger: Tagger, inputs: Iterable[tuple[str, str]], chunk_size: int = CHUNK_SIZE,
                   progress: ProgressCallback | None = None) -> Iterator[NerPrediction]:
    """Predictions for (text, source) pairs in their order, a chunk at a time so long inputs stream."""
    for chunk in in_chunks(inputs, chunk_size):
        yield from _predict_chunk(tagger, chunk, progress)


def _predict_chunk(tagger: Tagger, chunk: list[tuple[str, str]], progress) -> list[NerPrediction]:
    found = tagger.entities([text for text, _ in chunk], progress)
    return [NerPrediction(text, source, entities) for (text, source), entities in zip(chunk, found)]


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class WrongSentence:
    origin: str  # "file:line" of the sentence's first line
    text: str
    gold: list  # Spans
    predicted: list[Entity]


@dataclass
class NerEvaluation:
    model: str
    data: str
    scheme: str  # the data file's
    num_sentences: int
    scores: dict  # ner_metrics.score_entities's result
    wrong: list[WrongSentence]  # sentences whose predicted spans differ from the gold ones, in file order
    runtime: Runtime
    files: dict[str, str] = field(default_factory=dict)

    task = "ner"

    def to_json(self) -> dict:
        return {"task": "ner", "model": self.model, "data": self.data, "scheme": self.scheme,
                "num_sentences": self.num_sentences, **self.scores, "num_wrong_sentences": len(self.wrong),
                "runtime": self.runtime.to_json(), "files": self.files}


def evaluate_tagger(tagger: Tagger, data: str | Path, model_name: str = "",
                    progress: ProgressCallback | None = None) -> NerEvaluation:
    """Tag every sentence of a labelled file as `predict` does and score the entities (nothing is written)."""
    from sbert_cli.data.ner import Span, read_ner_file
    from sbert_cli.tasks.ner_metrics import score_entities

    dataset = read_ner_file(data, labels=tagger.labels)
    texts = [example.text for example in dataset.examples]
    total = len(texts)
    predicted: list[list[Entity]] = []
    for start in range(0, total, CHUNK_SIZE):
        predicted += tagger.entities(texts[start : start + CHUNK_SIZE], progress and (lambda n, _: progress(n, total)))
    gold = [list(example.spans) for example in dataset.examples]
    found = [[Span(e.start, e.end, e.label) for e in entities] for entities in predicted]
    wrong = [WrongSentence(example.origin, example.text, g, p)
             for example, g, f, p in zip(dataset.examples, gold, found, predicted) if _keys(g) != _keys(f)]
    return NerEvaluation(str(model_name), str(data), dataset.scheme, total, score_entities(gold, found, tagger.labels), wrong,
                         tagger.runtime)


def _keys(spans) -> set[tuple[int, int, str]]:
    return {(s.start, s.end, s.label) for s in spans}
