"""The MLM-head probe: does a checkpoint's masked-LM head restore masked characters of everyday sentences better
than chance and a unigram guesser? convert-weights and the demo report it.

In it: PROBE_SENTENCES, the verdict thresholds (TRAINED_ACCURACY, CHANCE_P_VALUE, CHANCE_TOP_K, UNTRAINED_TOP100,
PROBE_STRIDE), ProbeResult, probe_verdict, unigram_guesses and probe_mlm_head; the verdict cached in a model dir
(cached_probe, covers_probe) and fill-mask's one-line warning about a poor head (head_warning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sbert_cli.errors import DataError
from sbert_cli.model.tokenizer import BertTokenizer
from sbert_cli.tasks.fill_mask import is_cjk, masked_topk

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
# Verdicts: "untrained" when the masked character is among the head's top CHANCE_TOP_K no more often than chance
# (a uniform guess over the vocab: binomial tail probability above CHANCE_P_VALUE); "trained" from TRAINED_ACCURACY
# top-1 (a trained Chinese BERT restores well over half of these characters); "weak" between the two. The top 100,
# not the top 5, decides "untrained": the demo's tiny BERT (held-out top-1 7% on news titles) puts only 3 of the 207
# characters of these everyday sentences in its top 5 — right at what chance allows — but far more in its top 100.
# The unigram guesser (the most frequent characters of the bundled THUCNews titles, whatever the context) is shown
# beside them: a head that does no better has learned little but word frequencies.
# Beating a uniform guess is not enough, though: a fresh head over a pretrained encoder decodes through the trained
# word embeddings (tied weights), so it is not uniform. Measured on m3e-small's fresh heads: 1.0% and 3.4% top-100
# (seeds 42 and 2; the second beats uniform chance at p < 1e-3), against 19.8% after a single training step, 29% for
# the demo's tiny BERT and 42.5% for m3e after 268 steps. So a head also needs UNTRAINED_TOP100 in its top 100.
TRAINED_ACCURACY = 0.2
CHANCE_P_VALUE = 1e-3
CHANCE_TOP_K = 100
UNTRAINED_TOP100 = 0.10
PROBE_STRIDE = 5  # every 5th character masked per copy: 20% masked, close to pretraining's 15%


@dataclass
class ProbeResult:
    """How well an MLM head restores masked characters of everyday sentences, beside chance and a unigram guesser."""

    accuracy: float  # top-1
    top5_accuracy: float
    top100_accuracy: float  # what the untrained verdict is read from
    predictions: int
    chance: float  # top-1 of a uniform guess over the vocab; top-5 is 5x this
    unigram_accuracy: float  # always guessing the most frequent characters: top-1
    unigram_top5_accuracy: float
    verdict: str  # "untrained", "weak" or "trained"
    threshold: float = TRAINED_ACCURACY  # top-1 from which a head counts as trained

    @property
    def looks_untrained(self) -> bool:
        return self.verdict == "untrained"

    def describe(self) -> str:
        """The verdict in words: "untrained", "weak (top-5 12.1%)" or "trained"."""
        return f"weak (top-5 {self.top5_accuracy:.1%})" if self.verdict == "weak" else self.verdict


def probe_verdict(top1_hits: int, top100_hits: int, predictions: int, vocab_size: int,
                  threshold: float = TRAINED_ACCURACY) -> str:
    """untrained (top-100 hits no more than chance gives, or under UNTRAINED_TOP100), weak, or trained (top-1 at
    least `threshold`)."""
    if _binomial_tail(top100_hits, predictions, min(1.0, CHANCE_TOP_K / vocab_size)) > CHANCE_P_VALUE:
        return "untrained"
    if top100_hits < UNTRAINED_TOP100 * predictions:
        return "untrained"
    return "trained" if top1_hits >= threshold * predictions else "weak"


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return max(0.0, 1.0 - sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k)))


def unigram_guesses(tokenizer: BertTokenizer, k: int = 5) -> list[int]:
    """Ids of the k most frequent Chinese characters of the bundled THUCNews titles (in the vocab), most frequent first."""
    from collections import Counter

    from sbert_cli.resources import THUCNEWS_TRAIN

    text = THUCNEWS_TRAIN.read_text(encoding="utf-8")
    counts = Counter(c for c in text if is_cjk(c) and c in tokenizer.vocab)
    return [tokenizer.vocab[c] for c, _ in counts.most_common(k)]


def probe_mlm_head(
    model: nn.Module,
    tokenizer: BertTokenizer,
    sentences: tuple[str, ...] | list[str] = PROBE_SENTENCES,
    threshold: float = TRAINED_ACCURACY,
    batch_size: int = 32,
) -> ProbeResult:
    """Mask every Chinese character of each sentence (every 5th per copy) and count how often the head restores it."""
    sequences, positions, targets = [], [], []
    for ids in tokenizer.encode(list(sentences)):
        tokens = tokenizer.convert_ids_to_tokens(ids)
        maskable = [p for p, token in enumerate(tokens) if len(token) == 1 and is_cjk(token)]
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
    predictions = masked_topk(model, sequences, positions, CHANCE_TOP_K, tokenizer.pad_id, batch_size)
    top1 = top5 = top100 = total = 0
    for (_, token_ids), expected in zip(predictions, targets):
        expected_ids = torch.tensor(expected)[:, None]  # (M, 1)
        top1 += int((token_ids[:, :1] == expected_ids).sum())
        top5 += int((token_ids[:, :5] == expected_ids).any(dim=1).sum())
        top100 += int((token_ids == expected_ids).any(dim=1).sum())
        total += len(expected)
    every_target = [t for expected in targets for t in expected]
    unigram = unigram_guesses(tokenizer)
    vocab_size = model.config.vocab_size
    return ProbeResult(
        accuracy=top1 / total, top5_accuracy=top5 / total, top100_accuracy=top100 / total, predictions=total, chance=1 / vocab_size,
        unigram_accuracy=sum(t == unigram[0] for t in every_target) / total,
        unigram_top5_accuracy=sum(t in unigram for t in every_target) / total,
        verdict=probe_verdict(top1, top100, total, vocab_size, threshold), threshold=threshold,
    )


# The probe's verdict is kept beside the weights (outputs.PROBE_CACHE), so fill-mask warns about a poor head at every
# call without probing again; it is keyed by the weight files' names, sizes and modification times.
PROBE_COVERAGE = 0.9  # share of the probe's characters a vocab must hold for the verdict to mean anything


def _weights_key(model_dir: Path) -> dict:
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def covers_probe(tokenizer: BertTokenizer) -> bool:
    """Whether the vocab holds the probe sentences' characters: for another language the probe says nothing."""
    characters = [c for sentence in PROBE_SENTENCES for c in sentence if is_cjk(c)]
    return sum(c in tokenizer.vocab for c in characters) >= PROBE_COVERAGE * len(characters)


def cached_probe(model_dir: str | Path, model: nn.Module, tokenizer: BertTokenizer) -> ProbeResult | None:
    """probe_mlm_head for a model dir, read from its PROBE_CACHE while the weights are unchanged, else probed and
    written there (through the one safe writer; a folder sbert cannot write just goes without). None when the vocab
    does not cover the probe sentences."""
    import json
    from dataclasses import asdict, fields

    from sbert_cli.errors import SbertError
    from sbert_cli.outputs import PROBE_CACHE, write_text

    if not covers_probe(tokenizer):
        return None
    model_dir = Path(model_dir)
    path, key = model_dir / PROBE_CACHE, _weights_key(model_dir)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached["weights"] == key:
            return ProbeResult(**{f.name: cached["result"][f.name] for f in fields(ProbeResult)})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # none yet, or unreadable: probe again
    result = probe_mlm_head(model, tokenizer)
    try:
        write_text(path, json.dumps({"weights": key, "result": asdict(result)}, indent=1) + "\n", force=path.is_file())
    except (SbertError, OSError):
        pass  # a read-only model dir: the probe runs again next time
    return result


def head_warning(result: ProbeResult | None, model: str | Path) -> str | None:
    """What fill-mask says once about an untrained or weak head (the probe's verdict); None for a trained one."""
    from sbert_cli.model.model_dir import mlm_head_recipe

    if result is None or result.verdict == "trained":
        return None
    if result.looks_untrained:
        return (f"warning: the MLM head of {model} looks untrained: it restores {result.top100_accuracy:.1%} of masked "
                f"characters of everyday sentences even within its top 100 (a head trained for a single step: about 20%), "
                f"so these candidates are noise. To train it: {mlm_head_recipe(model)}")
    return (f"note: the MLM head of {model} is weak: top-1 {result.accuracy:.1%} on masked characters of everyday "
            f"sentences (a well-trained Chinese BERT: far above {result.threshold:.0%}), so the candidates are rough; "
            "more pretraining improves it")
