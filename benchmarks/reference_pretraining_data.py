"""Reference pipeline for bench_mlm_data.py: Chinese whole-word-masking data the way it is usually made.

Written in the style of Google BERT's create_pretraining_data.py + tokenization.py with jieba, as
the Chinese wwm scripts people copy do it: per line a pure-Python BERT basic tokenizer and greedy
WordPiece, `jieba.lcut` for word boundaries, and per-token Python masking (candidates shuffled,
whole words taken until num_to_predict, 80/10/10). Only here to be measured against; not used by sbert.

    python benchmarks/reference_pretraining_data.py --input corpus.txt --output out.pkl
"""

from __future__ import annotations

import argparse
import logging
import pickle
import random
import time
import unicodedata


def load_vocab(path):
    vocab = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.rstrip("\n")] = index
    return vocab


def is_whitespace(char):
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_control(char):
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def is_punctuation(char):
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_cjk(code):
    return (
        0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F
    )


class BasicTokenizer:
    """Clean, space out CJK characters, lower-case and strip accents, split on whitespace and punctuation."""

    def tokenize(self, text):
        cleaned = []
        for char in text:
            code = ord(char)
            if code == 0 or code == 0xFFFD or is_control(char):
                continue
            if is_whitespace(char):
                cleaned.append(" ")
            elif is_cjk(code):
                cleaned.append(" " + char + " ")
            else:
                cleaned.append(char)
        tokens = []
        for word in "".join(cleaned).split():
            word = word.lower()
            word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
            tokens.extend(self.split_punctuation(word))
        return tokens

    @staticmethod
    def split_punctuation(word):
        pieces, current = [], []
        for char in word:
            if is_punctuation(char):
                if current:
                    pieces.append("".join(current))
                    current = []
                pieces.append(char)
            else:
                current.append(char)
        if current:
            pieces.append("".join(current))
        return pieces


class WordpieceTokenizer:
    """Greedy longest-match-first WordPiece."""

    def __init__(self, vocab, unk_token="[UNK]", max_chars_per_word=100):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_chars_per_word = max_chars_per_word

    def tokenize(self, word):
        if len(word) > self.max_chars_per_word:
            return [self.unk_token]
        pieces = []
        start = 0
        while start < len(word):
            end = len(word)
            piece = None
            while start < end:
                candidate = word[start:end]
                if start > 0:
                    candidate = "##" + candidate
                if candidate in self.vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces


class FullTokenizer:
    def __init__(self, vocab_path):
        self.vocab = load_vocab(vocab_path)
        self.basic = BasicTokenizer()
        self.wordpiece = WordpieceTokenizer(self.vocab)

    def tokenize(self, text):
        return [piece for word in self.basic.tokenize(text) for piece in self.wordpiece.tokenize(word)]

    def convert_tokens_to_ids(self, tokens):
        return [self.vocab.get(t, self.vocab["[UNK]"]) for t in tokens]


def word_starts(tokens, words):
    """Per token: does it start a whole word? ## pieces never do; Chinese characters follow jieba's words."""
    starts = []
    word_ends = set()
    position = 0
    for word in words:
        position += len("".join(word.split()))
        word_ends.add(position)
    consumed = 0
    for token in tokens:
        if token.startswith("##"):
            starts.append(False)
            consumed += len(token) - 2
            continue
        length = 1 if token == "[UNK]" else len(token)
        starts.append(consumed in word_ends or consumed == 0)
        consumed += length
    return starts


def create_masked_lm_predictions(tokens, starts, masked_lm_prob, max_predictions, vocab_words, rng):
    """Google's recipe, per token in Python."""
    candidates = []
    for index, token in enumerate(tokens):
        if token in ("[CLS]", "[SEP]"):
            continue
        if candidates and not starts[index]:
            candidates[-1].append(index)
        else:
            candidates.append([index])
    rng.shuffle(candidates)
    output = list(tokens)
    num_to_predict = min(max_predictions, max(1, int(round(len(tokens) * masked_lm_prob))))
    masked = []
    covered = set()
    for word in candidates:
        if len(masked) >= num_to_predict:
            break
        if len(masked) + len(word) > num_to_predict:
            continue
        for index in word:
            covered.add(index)
            if rng.random() < 0.8:
                replacement = "[MASK]"
            elif rng.random() < 0.5:
                replacement = tokens[index]
            else:
                replacement = vocab_words[rng.randint(0, len(vocab_words) - 1)]
            output[index] = replacement
            masked.append((index, tokens[index]))
    masked.sort()
    return output, [i for i, _ in masked], [t for _, t in masked]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--vocab", default=None)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--masked-lm-prob", type=float, default=0.15)
    parser.add_argument("--max-predictions", type=int, default=19)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()

    import jieba

    from sbert_cli.resources import CHINESE_VOCAB

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    started = time.perf_counter()
    tokenizer = FullTokenizer(args.vocab or CHINESE_VOCAB)
    vocab_words = [t for t in tokenizer.vocab if not t.startswith("##") and not t.startswith("[")]
    rng = random.Random(args.seed)
    body_len = args.max_seq_len - 2
    lines = instances = 0
    batch = []
    with open(args.input, encoding="utf-8") as f, open(args.output, "wb") as out:
        for line in f:
            text = line.rstrip("\r\n").split("\t")[0]
            if not text.strip():
                continue
            lines += 1
            tokens = tokenizer.tokenize(text)
            starts = word_starts(tokens, jieba.lcut(text))
            for begin in range(0, len(tokens), body_len):
                piece = ["[CLS]"] + tokens[begin : begin + body_len] + ["[SEP]"]
                piece_starts = [True] + starts[begin : begin + body_len] + [True]
                masked, positions, labels = create_masked_lm_predictions(
                    piece, piece_starts, args.masked_lm_prob, args.max_predictions, vocab_words, rng
                )
                input_ids = tokenizer.convert_tokens_to_ids(masked)
                input_ids += [0] * (args.max_seq_len - len(input_ids))
                batch.append((input_ids, positions, tokenizer.convert_tokens_to_ids(labels)))
                instances += 1
            if len(batch) >= 10000:
                pickle.dump(batch, out)
                batch = []
        pickle.dump(batch, out)
    seconds = time.perf_counter() - started
    print(f"reference: {lines} lines, {instances} instances in {seconds:.1f} s ({lines / seconds:,.0f} lines/s)")


if __name__ == "__main__":
    main()
