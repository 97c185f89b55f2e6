"""Fill-mask: the most probable tokens for every [MASK], one position at a time or whole words jointly.

Scores are probabilities: a softmax over the whole vocab at the masked position, as transformers'
fill-mask pipeline computes them. The same batched prediction also probes whether a checkpoint's
MLM head was trained at all (`probe_mlm_head`), which convert-weights reports.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import torch
from torch import nn

from sbert_cli.data.batching import length_sorted_batches, pad_batch
from sbert_cli.errors import ConfigError, DataError
from sbert_cli.tokenizer import BertTokenizer

MASK_TOKEN = "[MASK]"


@dataclass
class Candidate:
    token: str
    score: float


@dataclass
class MaskPrediction:
    position: int  # token index in the encoded text, [CLS] being 0
    candidates: list[Candidate]


@dataclass
class FillMaskResult:
    text: str
    masks: list[MaskPrediction]

    def to_json(self) -> dict:
        return asdict(self)


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
class JointFillResult:
    text: str
    spans: list[SpanPrediction]

    def to_json(self) -> dict:
        return asdict(self)


def read_texts(
    texts: list[str], file: str | Path | None = None, stdin: TextIO | None = None
) -> tuple[list[str], list[str]]:
    """Texts and where each came from ("argument N", "FILE:LINE", "<stdin>:LINE"): the arguments, or the
    non-blank lines of a UTF-8 file, or of stdin ("-" or piped)."""
    if texts and file is not None:
        raise ConfigError("give texts as arguments or with --file, not both")
    if texts:
        return list(texts), [f"argument {i}" for i in range(1, len(texts) + 1)]
    if file is None or str(file) == "-":
        stdin = stdin if stdin is not None else sys.stdin
        if file is None and (stdin is None or stdin.isatty()):
            raise ConfigError(f"no input: give texts with {MASK_TOKEN} as arguments, --file FILE, or pipe them on stdin")
        lines, name = stdin.read().splitlines(), "<stdin>"
    else:
        path = Path(file)
        try:
            lines, name = path.read_text(encoding="utf-8-sig").splitlines(), str(path)
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise DataError(f"{path}: is a directory; --file takes a text file with one text per line") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
    numbered = [(f"{name}:{number}", line) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise DataError(f"{name}: no texts; give one text with {MASK_TOKEN} per line")
    return [line for _, line in numbered], [origin for origin, _ in numbered]


def masked_topk(
    model: nn.Module,
    sequences: list[list[int]],
    positions: list[list[int]],
    k: int,
    pad_id: int,
    batch_size: int = 32,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each sequence, the k most probable tokens at its `positions`: (probabilities (M, k), token ids (M, k)).

    Sequences are batched by length; the MLM head runs only at the requested positions.
    """
    device = next(model.parameters()).device
    k = min(k, model.config.vocab_size)
    results: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(sequences)  # type: ignore[list-item]
    with torch.inference_mode():
        for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
            input_ids, attention_mask = pad_batch([sequences[i] for i in batch], pad_id)
            # Rows with fewer masks repeat position 0 ([CLS]); those predictions are dropped below.
            masked_positions, _ = pad_batch([positions[i] for i in batch], 0)
            logits = model(input_ids.to(device), attention_mask.to(device), masked_positions=masked_positions.to(device))
            probabilities = logits.float().softmax(dim=-1)  # (b, M, V)
            values, token_ids = probabilities.topk(k, dim=-1)  # (b, M, k)
            for row, i in enumerate(batch):
                count = len(positions[i])
                results[i] = (values[row, :count].cpu(), token_ids[row, :count].cpu())
    return results


def _encode_masked(
    model: nn.Module, tokenizer: BertTokenizer, texts: list[str], origins: list[str] | None, top_k: int
) -> list[list[int]]:
    """Token ids of each text, checking top_k and that each text has a [MASK] and fits the model."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, not {top_k}")
    origins = _default_origins(texts, origins)
    max_length = model.config.max_position_embeddings
    sequences = tokenizer.encode(texts)
    for ids, text, origin in zip(sequences, texts, origins):
        if tokenizer.mask_id not in ids:
            raise _no_mask_error(origin, text)
        if len(ids) > max_length:
            raise DataError(
                f"{origin}: {len(ids)} tokens, more than the model's {max_length} positions; shorten the text"
            )
    return sequences


def _no_mask_error(origin: str, text: str) -> DataError:
    return DataError(f"{origin}: no {MASK_TOKEN} in {text!r}; write {MASK_TOKEN} where a token should be predicted")


def _default_origins(texts: list[str], origins: list[str] | None) -> list[str]:
    return origins if origins is not None else [f"text {i}" for i in range(1, len(texts) + 1)]


def fill_mask(
    model: nn.Module,
    tokenizer: BertTokenizer,
    texts: list[str],
    top_k: int = 5,
    origins: list[str] | None = None,
    batch_size: int = 32,
) -> list[FillMaskResult]:
    """The top_k tokens, with probabilities, at every [MASK] of every text; each mask predicted independently."""
    sequences = _encode_masked(model, tokenizer, texts, origins, top_k)
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
        elif word and not (_is_cjk(word[-1]) or _is_cjk(token[0])):
            word += " " + token
        else:
            word += token
    return word


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F


JOINT_BEAM_WIDTH = 8  # partial words kept per step (at least top_k): a wider beam finds better words


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


def fill_mask_joint(
    model: nn.Module,
    tokenizer: BertTokenizer,
    texts: list[str],
    top_k: int = 5,
    origins: list[str] | None = None,
    batch_size: int = 32,
) -> list[JointFillResult]:
    """The top_k whole words for every run of consecutive [MASK]s, decoded jointly.

    Each run is filled one token at a time, most confident position first, re-running the model after
    every step; a beam of max(top_k, JOINT_BEAM_WIDTH) partial fillings is kept, and a word's score is
    the product of the probabilities of its tokens at the step each was filled. Other [MASK] runs stay
    masked meanwhile. A single [MASK] gets the same candidates and scores as fill_mask.
    """
    sequences = _encode_masked(model, tokenizer, texts, origins, top_k)
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
) -> list[FillMaskResult] | list[JointFillResult]:
    """Load a model with an MLM head (model dir or hub repo id) and fill the masks of `texts`."""
    from sbert_cli.checkpoint import load_for_task, load_tokenizer
    from sbert_cli.precision import resolve_device

    if not texts:
        raise DataError(f"no text to fill; give TEXT arguments, --file, or pipe lines on stdin, each with {MASK_TOKEN}")
    origins = _default_origins(texts, origins)
    tokenizer = load_tokenizer(model)
    for text, origin in zip(texts, origins):  # fail on a text without [MASK] before loading the weights
        if MASK_TOKEN not in text:
            raise _no_mask_error(origin, text)
    net = load_for_task(model, "mlm").model.to(resolve_device(device))
    fill = fill_mask_joint if joint else fill_mask
    return fill(net, tokenizer, texts, top_k, origins, batch_size)


# Everyday sentences; every character is in the Chinese BERT vocab (tests check it).
PROBE_SENTENCES = (
    "今天天气很好，我们去公园散步吧。",
    "中国的首都是北京。",
    "我每天早上七点起床。",
    "他在大学里学习计算机科学。",
    "这家饭店的菜非常好吃。",
    "妈妈正在厨房里做饭。",
    "明天我要坐火车去上海。",
    "学生们在教室里认真听课。",
    "我们应该保护环境，节约用水。",
    "这本书的内容很有意思。",
    "周末我喜欢和朋友一起看电影。",
    "医生说他需要多休息。",
    "春天来了，花都开了。",
    "请问火车站怎么走？",
    "经济发展离不开科技创新。",
    "孩子们在操场上踢足球。",
    "我的手机没有电了。",
    "这个城市的交通非常方便。",
    "他每天晚上都要看新闻。",
    "长城是世界上最伟大的建筑之一。",
)
# Below this top-1 accuracy the head is reported as untrained. Chance is 1/vocab (0.005% for 21128 tokens).
UNTRAINED_ACCURACY = 0.2
PROBE_STRIDE = 5  # every 5th character masked per copy: 20% masked, close to pretraining's 15%


@dataclass
class ProbeResult:
    """How well an MLM head restores masked characters of everyday sentences."""

    accuracy: float  # top-1
    top5_accuracy: float
    predictions: int
    chance: float
    threshold: float

    @property
    def looks_untrained(self) -> bool:
        return self.accuracy < self.threshold


def probe_mlm_head(
    model: nn.Module,
    tokenizer: BertTokenizer,
    sentences: tuple[str, ...] | list[str] = PROBE_SENTENCES,
    threshold: float = UNTRAINED_ACCURACY,
    batch_size: int = 32,
) -> ProbeResult:
    """Mask every Chinese character of each sentence (every 5th per copy) and count how often the head restores it."""
    sequences, positions, targets = [], [], []
    for ids in tokenizer.encode(list(sentences)):
        tokens = tokenizer.convert_ids_to_tokens(ids)
        maskable = [p for p, token in enumerate(tokens) if len(token) == 1 and _is_cjk(token)]
        for offset in range(PROBE_STRIDE):
            chosen = maskable[offset::PROBE_STRIDE]
            if not chosen:
                continue
            masked = list(ids)
            for p in chosen:
                masked[p] = tokenizer.mask_id
            sequences.append(masked)
            positions.append(chosen)
            targets.append([ids[p] for p in chosen])
    if not sequences:
        raise DataError("the probe sentences contain no Chinese characters to mask")
    predictions = masked_topk(model, sequences, positions, 5, tokenizer.pad_id, batch_size)
    top1 = top5 = total = 0
    for (_, token_ids), expected in zip(predictions, targets):
        expected_ids = torch.tensor(expected)[:, None]  # (M, 1)
        top1 += int((token_ids[:, :1] == expected_ids).sum())
        top5 += int((token_ids == expected_ids).any(dim=1).sum())
        total += len(expected)
    return ProbeResult(top1 / total, top5 / total, total, 1 / model.config.vocab_size, threshold)

