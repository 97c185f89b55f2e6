"""fill-mask: the top-k tokens for every [MASK] of a text, or with `joint` whole words for each run of [MASK]s.

In it: the result types (Candidate, MaskPrediction, FillMaskResult; WordCandidate, SpanPrediction, JointFillResult);
reading input (iter_masked_texts, read_masked_texts); masked_topk (top-k ids at given positions, batched by length
and bounded by MAX_LOGITS_PER_PASS: also the probe's scorer); fill_mask / fill_mask_joint on a loaded model, with
the beam search over wordpieces (JOINT_BEAM_WIDTH, mask_spans, join_wordpieces, is_cjk) and its bounds
(MAX_JOINT_SPAN, MAX_JOINT_WORK, check_joint_search); the work of a fill (fill_cost, fill_work: what serve weighs a
request by); run_fill_mask and stream_fill_mask (load a model and fill texts, a chunk at a time, skipping bad texts
into SkippedTexts); check_fill_options.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from sbert_cli.data.batching import length_sorted_batches, pad_batch
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.tasks.pretrain import masked_logits

MASK_TOKEN = "[MASK]"


@dataclass
class Candidate:
    token: str
    score: float


@dataclass
class MaskPrediction:
    position: int  # token index in the encoded text, [CLS] being 0
    candidates: list[Candidate]


class _AsJson:
    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FillMaskResult(_AsJson):
    text: str
    masks: list[MaskPrediction]


@dataclass
class WordCandidate:
    word: str
    tokens: list[str]
    score: float  # product of the probabilities of each token when it was filled in


@dataclass
class SpanPrediction:
    positions: list[int]  # consecutive [MASK] token indices
    candidates: list[WordCandidate]


@dataclass
class JointFillResult(_AsJson):
    text: str
    spans: list[SpanPrediction]


FILL_MASK_CHUNK = 256  # texts encoded and predicted together when streaming: memory stays flat, output comes as it goes
BAD_TEXT_POLICIES = ("error", "skip")
# Logits of one forward pass (rows x masks x vocab), in elements: 2^25 float32 = 128 MB, whatever the batch size.
MAX_LOGITS_PER_PASS = 1 << 25


def iter_masked_texts(
    texts: list[str], file: str | Path | None = None, stdin: TextIO | None = None
) -> Iterator[tuple[str, str]]:
    """fill-mask's input: text_input.iter_texts with a hint about [MASK]."""
    from sbert_cli.data.text_input import iter_texts as read

    return read(texts, file, stdin, what=f"texts with {MASK_TOKEN}")


def read_masked_texts(
    texts: list[str], file: str | Path | None = None, stdin: TextIO | None = None
) -> tuple[list[str], list[str]]:
    """iter_masked_texts as two lists: the texts, and where each came from."""
    items = list(iter_masked_texts(texts, file, stdin))
    return [text for text, _ in items], [origin for _, origin in items]


def masked_topk(
    model: nn.Module,
    sequences: list[list[int]],
    positions: list[list[int]],
    k: int,
    pad_id: int,
    batch_size: int = 32,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each sequence, the k most probable tokens at its `positions`: (probabilities (M, k), token ids (M, k)).

    Sequences are batched by length; the MLM head runs only at the requested positions (masked_logits).
    """
    device = next(model.parameters()).device
    vocab_size = model.config.vocab_size
    k = min(k, vocab_size)
    results: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(sequences)  # type: ignore[list-item]
    batches = []
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        # Texts with many [MASK]s: fewer rows per pass, so the (rows, masks, vocab) logits stay within bounds.
        rows = max(1, MAX_LOGITS_PER_PASS // (max(1, max(len(positions[i]) for i in batch)) * vocab_size))
        batches.extend(batch[start : start + rows] for start in range(0, len(batch), rows))
    with torch.inference_mode():
        for batch in batches:
            input_ids, attention_mask = pad_batch([sequences[i] for i in batch], pad_id)
            # Rows with fewer masks repeat position 0 ([CLS]); those predictions are dropped below.
            masked_positions, _ = pad_batch([positions[i] for i in batch], 0)
            logits = masked_logits(model, input_ids.to(device), attention_mask.to(device), masked_positions.to(device))
            probabilities = logits.float().softmax(dim=-1)  # (b, M, V)
            values, token_ids = probabilities.topk(k, dim=-1)  # (b, M, k)
            for row, i in enumerate(batch):
                count = len(positions[i])
                results[i] = (values[row, :count].cpu(), token_ids[row, :count].cpu())
    return results


def check_fill_options(top_k: int, joint: bool, vocab_size: int, batch_size: int = 32) -> None:
    """--top-k within the vocab (with --joint also within MAX_JOINT_TOP_K) and --batch-size within MAX_BATCH_SIZE."""
    from sbert_cli.limits import BATCH_SIZE_WHY, JOINT_TOP_K_WHY, MAX_BATCH_SIZE, MAX_JOINT_TOP_K, check_range

    if top_k < 1:
        raise ConfigError(f"`top_k` must be at least 1, not {top_k}")
    if joint:
        check_range("top_k", top_k, 1, MAX_JOINT_TOP_K, f"with `joint`: {JOINT_TOP_K_WHY}")
    check_range("top_k", top_k, 1, vocab_size, f"the vocab has {vocab_size:,} tokens")
    check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE, BATCH_SIZE_WHY)


def _encode_masked(
    model: nn.Module, tokenizer: BertTokenizer, texts: list[str], origins: list[str] | None, top_k: int,
    joint: bool = False,
) -> list[list[int]]:
    """Token ids of each text, checking top_k and that each text has a [MASK] and fits the model."""
    check_fill_options(top_k, joint, model.config.vocab_size)
    origins = _default_origins(texts, origins)
    max_length = model.config.max_position_embeddings
    return [_fit(ids, text, origin, tokenizer, max_length, joint_top_k=top_k if joint else None)
            for ids, text, origin in zip(tokenizer.encode(texts), texts, origins)]


TOO_LONG_FIXES = "shorten the text, or pass `truncate` (or `on_bad_lines` skip)"


def _fit(ids: list[int], text: str, origin: str, tokenizer: BertTokenizer, max_length: int, truncate: bool = False,
         joint_top_k: int | None = None, fixes: str = TOO_LONG_FIXES) -> list[int]:
    """The ids the model reads, or a DataError naming the text: it has no [MASK], or more tokens than the model
    has positions (with truncate: it is cut to fit, and an error only when that cuts off every [MASK]; `fixes`:
    what the message advises), or (joint_top_k given) a joint search past its bounds (check_joint_search)."""
    if len(ids) > max_length and truncate:
        ids = ids[: max_length - 1] + [tokenizer.sep_id]
        if tokenizer.mask_id not in ids:
            raise DataError(f"{origin}: no {MASK_TOKEN} in the first {max_length} tokens, where `truncate` cuts the "
                            f"text for the model's {max_length} positions; shorten it before the {MASK_TOKEN}")
    if tokenizer.mask_id not in ids:
        raise _no_mask_error(origin, text)
    if len(ids) > max_length:
        raise DataError(f"{origin}: {len(ids)} tokens, more than the model's {max_length} positions; {fixes}")
    if joint_top_k is not None:
        check_joint_search(ids, origin, tokenizer.mask_id, joint_top_k)
    return ids


def fill_cost(ids: list[int], mask_id: int, top_k: int, joint: bool) -> int:
    """The work of filling one encoded text: the tokens the model runs (joint: the whole text once per [MASK] and
    beam row) plus the candidates it returns."""
    spans = mask_spans(ids, mask_id)
    if not joint:
        return len(ids) + sum(len(span) for span in spans) * top_k
    width = max(top_k, JOINT_BEAM_WIDTH)
    return sum(len(span) for span in spans) * width * len(ids) + len(spans) * top_k


def check_joint_search(ids: list[int], origin: str, mask_id: int, top_k: int) -> None:
    """A DataError naming the text when its joint search would pass MAX_JOINT_SPAN masks in a run or MAX_JOINT_WORK."""
    spans = mask_spans(ids, mask_id)
    longest = max(len(span) for span in spans)
    if longest > MAX_JOINT_SPAN:
        raise DataError(f"{origin}: {longest} consecutive {MASK_TOKEN}s; `joint` fills a run of up to {MAX_JOINT_SPAN} "
                        f"as one word: split the run, or drop `joint` to predict each {MASK_TOKEN} on its own")
    work = fill_cost(ids, mask_id, top_k, joint=True)
    if work > MAX_JOINT_WORK:
        masks = sum(len(span) for span in spans)
        raise DataError(f"{origin}: `joint` on {masks} {MASK_TOKEN}s in {len(ids)} tokens with a beam of "
                        f"{max(top_k, JOINT_BEAM_WIDTH)} would run {work:,} tokens through the model, more than "
                        f"{MAX_JOINT_WORK:,}; fill fewer {MASK_TOKEN}s per text or shorten it"
                        + (", or lower `top_k`" if top_k > JOINT_BEAM_WIDTH else ""))


def fill_work(tokenizer: BertTokenizer, texts: list[str], origins: list[str], top_k: int, joint: bool, max_length: int,
              fixes: str = TOO_LONG_FIXES) -> int:
    """fill_cost summed over `texts`, each checked as fill_mask checks it (a DataError names the first it refuses),
    before any model runs: what serve weighs a request by."""
    check_fill_options(top_k, joint, len(tokenizer))
    return sum(fill_cost(_fit(ids, text, origin, tokenizer, max_length, joint_top_k=top_k if joint else None, fixes=fixes),
                         tokenizer.mask_id, top_k, joint)
               for ids, text, origin in zip(tokenizer.encode(texts), texts, origins))


def _no_mask_error(origin: str, text: str) -> DataError:
    shown = text if len(text) <= 80 else text[:80] + "..."
    return DataError(f"{origin}: no {MASK_TOKEN} in {shown!r}; write {MASK_TOKEN} where a token should be predicted")


def _default_origins(texts: list[str], origins: list[str] | None) -> list[str]:
    return origins if origins is not None else [f"text {i}" for i in range(1, len(texts) + 1)]


def fill_mask(
    model: nn.Module,
    tokenizer: BertTokenizer,
    texts: list[str],
    top_k: int = 5,
    origins: list[str] | None = None,
    batch_size: int = 32,
    joint: bool = False,
) -> list[FillMaskResult] | list[JointFillResult]:
    """The top_k tokens, with probabilities, at every [MASK] of every text, each mask predicted independently;
    joint=True: the top_k whole words for every run of consecutive [MASK]s, decoded jointly (_fill_joint)."""
    sequences = _encode_masked(model, tokenizer, texts, origins, top_k, joint)
    return (_fill_joint if joint else _fill_plain)(model, tokenizer, texts, sequences, top_k, batch_size)


def fill_mask_joint(model: nn.Module, tokenizer: BertTokenizer, texts: list[str], **options) -> list[JointFillResult]:
    """fill_mask(..., joint=True)."""
    return fill_mask(model, tokenizer, texts, joint=True, **options)


def _fill_plain(model, tokenizer, texts: list[str], sequences: list[list[int]], top_k: int, batch_size: int) -> list[FillMaskResult]:
    positions = [[p for p, t in enumerate(ids) if t == tokenizer.mask_id] for ids in sequences]
    predictions = masked_topk(model, sequences, positions, top_k, tokenizer.pad_id, batch_size)
    results = []
    for text, mask_positions, (values, token_ids) in zip(texts, positions, predictions):
        masks = [
            MaskPrediction(
                position,
                [Candidate(token, score) for token, score in zip(tokenizer.convert_ids_to_tokens(ids), scores.tolist())],
            )
            for position, scores, ids in zip(mask_positions, values, token_ids)
        ]
        results.append(FillMaskResult(text, masks))
    return results


def mask_spans(ids: list[int], mask_id: int) -> list[list[int]]:
    """Runs of consecutive [MASK] positions: [[3, 4], [9]] for two masks at 3-4 and one at 9."""
    spans: list[list[int]] = []
    for position, token in enumerate(ids):
        if token != mask_id:
            continue
        if spans and spans[-1][-1] == position - 1:
            spans[-1].append(position)
        else:
            spans.append([position])
    return spans


def join_wordpieces(tokens: list[str]) -> str:
    """Tokens as one word: Chinese characters and ##-continuations joined directly, other tokens by a space."""
    word = ""
    for token in tokens:
        if token.startswith("##"):
            word += token[2:]
        elif word and not (is_cjk(word[-1]) or is_cjk(token[0])):
            word += " " + token
        else:
            word += token
    return word


def is_cjk(char: str) -> bool:
    code = ord(char)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F


JOINT_BEAM_WIDTH = 8  # partial words kept per step (at least top_k): a wider beam finds better words
# A run of n [MASK]s costs n model passes over max(top_k, JOINT_BEAM_WIDTH) rows, each the whole text; both are
# bounded before any pass runs (500 masks in one text once held a server's model thread for minutes). A run is one
# word: Chinese words and idioms have 1-4 characters, long names and transliterations about 10.
MAX_JOINT_SPAN = 16
# Tokens one text's search may run through the model (passes x rows x text length): a full run of 16 masks in a
# 512-token text with a beam of 8, as much as embedding 128 such texts.
MAX_JOINT_WORK = 1 << 16


@dataclass
class _Beam:
    ids: list[int]
    remaining: list[int]  # positions of the span still masked
    log_score: float = 0.0


@dataclass
class _SpanSearch:
    text_index: int
    positions: list[int]
    beams: list[_Beam] = field(default_factory=list)


def _fill_joint(model, tokenizer, texts: list[str], sequences: list[list[int]], top_k: int, batch_size: int) -> list[JointFillResult]:
    """The top_k whole words for every run of consecutive [MASK]s, decoded jointly.

    Each run is filled one token at a time, most confident position first, re-running the model after
    every step; a beam of max(top_k, JOINT_BEAM_WIDTH) partial fillings is kept, and a word's score is
    the product of the probabilities of its tokens at the step each was filled. Other [MASK] runs stay
    masked meanwhile. A single [MASK] gets the same candidates and scores as fill_mask.
    """
    width = max(top_k, JOINT_BEAM_WIDTH)
    searches = [
        _SpanSearch(index, span, [_Beam(list(ids), list(span))])
        for index, ids in enumerate(sequences)
        for span in mask_spans(ids, tokenizer.mask_id)
    ]
    while True:
        active = [(index, beam) for index, search in enumerate(searches) for beam in search.beams if beam.remaining]
        if not active:
            break
        predictions = masked_topk(
            model, [beam.ids for _, beam in active], [beam.remaining for _, beam in active], width,
            tokenizer.pad_id, batch_size,
        )
        children: dict[int, dict[tuple[int, ...], _Beam]] = {}
        for (index, beam), (values, token_ids) in zip(active, predictions):
            best = int(values[:, 0].argmax())  # the position the model is surest about
            position = beam.remaining[best]
            for probability, token_id in zip(values[best].tolist(), token_ids[best].tolist()):
                ids = list(beam.ids)
                ids[position] = token_id
                child = _Beam(ids, [p for p in beam.remaining if p != position],
                              beam.log_score + math.log(max(probability, 1e-45)))
                # The same filling reached in another order counts once, with its best score.
                known = children.setdefault(index, {}).get(tuple(ids))
                if known is None or child.log_score > known.log_score:
                    children[index][tuple(ids)] = child
        for index, found in children.items():
            searches[index].beams = sorted(found.values(), key=lambda b: -b.log_score)[:width]

    results = [JointFillResult(text, []) for text in texts]
    for search in searches:
        candidates = []
        for beam in search.beams[:top_k]:
            tokens = tokenizer.convert_ids_to_tokens([beam.ids[p] for p in search.positions])
            candidates.append(WordCandidate(join_wordpieces(tokens), tokens, math.exp(beam.log_score)))
        results[search.text_index].spans.append(SpanPrediction(search.positions, candidates))
    return results


def run_fill_mask(
    model: str | Path,
    texts: list[str],
    top_k: int = 5,
    joint: bool = False,
    origins: list[str] | None = None,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
) -> list[FillMaskResult] | list[JointFillResult]:
    """Load a model with an MLM head (model dir or hub repo id) and fill the masks of `texts`."""
    if not texts:
        raise DataError(f"no text to fill; give TEXT arguments, `file`, or pipe lines on stdin, each with {MASK_TOKEN}")
    origins = _default_origins(texts, origins)
    for text, origin in zip(texts, origins):  # fail on a text without [MASK] before loading the weights
        if MASK_TOKEN not in text:
            raise _no_mask_error(origin, text)
    return list(stream_fill_mask(model, zip(texts, origins), top_k=top_k, joint=joint, batch_size=batch_size,
                                 device=device, precision=precision))


@dataclass
class SkippedTexts:
    """Texts fill-mask skipped (on_bad_lines="skip"): how many, and the first few with their reason."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(reason)


def stream_fill_mask(
    model: str | Path,
    items: Iterable[tuple[str, str]],
    top_k: int = 5,
    joint: bool = False,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    truncate: bool = False,
    on_bad_lines: str = "error",
    skipped: SkippedTexts | None = None,
    chunk_size: int = FILL_MASK_CHUNK,
    on_note: Callable[[str], None] | None = None,
) -> Iterator[FillMaskResult | JointFillResult]:
    """Load a model with an MLM head and fill the masks of (text, origin) items (see iter_masked_texts), a chunk of
    texts at a time: results come in input order as they are computed, and memory does not grow with the input.

    A bad text (no [MASK]; more tokens than the model's positions, unless truncate cuts it to fit) is a DataError
    raised after the results of the texts before it, or with on_bad_lines="skip" it is skipped and counted in
    `skipped`. The options are checked before the weights load. on_note gets one line when the MLM-head probe
    (cached in the model dir) finds the head untrained or weak.
    """
    from sbert_cli.model.model_dir import load_for_task, load_tokenizer
    from sbert_cli.tasks.inference import prepare_inference

    if on_bad_lines not in BAD_TEXT_POLICIES:
        raise ConfigError(f"`on_bad_lines` must be one of {', '.join(BAD_TEXT_POLICIES)}, not {on_bad_lines!r}")
    tokenizer = load_tokenizer(model)
    check_fill_options(top_k, joint, len(tokenizer), batch_size)
    loaded = load_for_task(model, "mlm")
    net = loaded.model
    torch_device, resolved = prepare_inference(net, device, precision)

    def note_head() -> None:  # before the first results, so that a run that fails at once prints its error alone
        from sbert_cli.tasks.probe import cached_probe, head_warning

        note = head_warning(cached_probe(loaded.checkpoint.path, net, tokenizer), model)
        if note:
            on_note(note)
    return _stream(net, tokenizer, iter(items), top_k, joint, batch_size, torch_device, resolved, truncate,
                   on_bad_lines, skipped, chunk_size, note_head if on_note is not None else None)


def _stream(net, tokenizer, items, top_k, joint, batch_size, device, precision, truncate, on_bad_lines, skipped,
            chunk_size, before_first=None):
    from itertools import islice

    from sbert_cli.model.precision import inference_autocast

    fill = _fill_joint if joint else _fill_plain
    max_length = net.config.max_position_embeddings
    while chunk := list(islice(items, chunk_size)):
        texts, sequences, error = [], [], None
        for (text, origin), ids in zip(chunk, tokenizer.encode([text for text, _ in chunk])):
            try:
                sequences.append(_fit(ids, text, origin, tokenizer, max_length, truncate, top_k if joint else None))
                texts.append(text)
            except DataError as e:
                if on_bad_lines == "error":
                    error = e  # raised after the results of the texts before it
                    break
                if skipped is not None:
                    skipped.add(str(e).split("; ")[0])  # what was wrong; the advice is for the error case
        if texts:
            with inference_autocast(precision, device):
                if before_first is not None:
                    before_first()
                    before_first = None
                results = fill(net, tokenizer, texts, sequences, top_k, batch_size)
            yield from results
        if error is not None:
            raise error
