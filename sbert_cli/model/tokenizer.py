"""WordPiece tokenizer on the Rust `tokenizers` library, reproducing transformers' BertTokenizer.

The pipeline is BERT's: clean text, split CJK characters, lower-case and strip accents, split on
whitespace and punctuation, then greedy longest-match WordPiece against vocab.txt. Special tokens
written literally in the text (a "[MASK]" typed by the user) are kept as single tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from tokenizers import (
    Encoding,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import WordPiece

from sbert_cli.errors import ModelLoadError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def read_vocab(path: str | Path) -> dict[str, int]:
    """vocab.txt as {token: id}, line i being id i. A token listed twice is an error: transformers keeps its
    last id, so the first id could never be produced and a second [CLS] would silently move [CLS]."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: vocab file not found") from None
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{path}: vocab is not UTF-8 ({e})") from None
    if lines and lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        token = line.rstrip("\r")
        if token in vocab:
            raise ModelLoadError(
                f"{path}:{i + 1}: token {token!r} is listed twice (first on line {vocab[token] + 1}); "
                "a vocab.txt lists each token once: use the vocab.txt the model was trained with"
            )
        vocab[token] = i
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ModelLoadError(f"{path}: vocab lacks the special tokens {', '.join(missing)}; is this a BERT vocab.txt?")
    return vocab


_SURROGATES = re.compile("[\ud800-\udfff]")


def is_caseless(vocab: dict[str, int]) -> bool:
    """True when no ordinary token holds a capital letter (marker tokens such as [CLS] or <S> aside).

    Text tokenized against such a vocab without lower-casing can only meet [UNK] for its capitals: "NBA",
    "iPhone" and "QDII" all become [UNK]. bert-base-chinese's hub tokenizer_config.json says do_lower_case
    false over exactly such a vocab (built for lower-cased text: it has "nba" and "iphone", no "NBA"), and
    checkpoints derived from it (m3e and many others) copied the setting.
    """
    return not any(token != token.lower() for token in vocab
                   if not (token[:1] in "[<" and token[-1:] in "]>" and len(token) > 2))


def _drop_surrogates(text: str) -> str:
    return _SURROGATES.sub("", text)


class BertTokenizer:
    """BERT WordPiece tokenizer. Build it with `BertTokenizer.from_vocab(path)` or `load_tokenizer`."""

    def __init__(self, vocab: dict[str, int], do_lower_case: bool = True, vocab_path: Path | None = None):
        self.vocab = vocab
        self.vocab_path = vocab_path
        self.do_lower_case = do_lower_case
        self.case_note: str | None = None  # set when a model dir's do_lower_case false was overridden
        self.ids_to_tokens = {i: t for t, i in vocab.items()}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (vocab[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset((self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))

        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=do_lower_case
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)],
        )
        self.backend = tok
        self._flat_encoder = None

    @classmethod
    def from_vocab(cls, path: str | Path, do_lower_case: bool = True) -> "BertTokenizer":
        path = Path(path)
        return cls(read_vocab(path), do_lower_case=do_lower_case, vocab_path=path)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> "BertTokenizer":
        """vocab.txt of a model dir; honours do_lower_case from tokenizer_config.json when present, except that
        a vocab without capital letters is always lower-cased (see `is_caseless`; `case_note` says so)."""
        model_dir = Path(model_dir)
        vocab = model_dir / "vocab.txt"
        if not vocab.is_file():
            raise ModelLoadError(f"{model_dir}: no vocab.txt; copy the checkpoint's vocab.txt there or pass `vocab`")
        do_lower_case = True
        tok_config = model_dir / "tokenizer_config.json"
        if tok_config.is_file():
            from sbert_cli.limits import parse_json

            try:
                settings = parse_json(tok_config.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ModelLoadError(f"{tok_config}: not valid JSON ({e}); fix it, or delete it to lower-case text") from None
            if not isinstance(settings, dict):
                raise ModelLoadError(f"{tok_config}: expected a JSON object, found {type(settings).__name__}; fix it, "
                                     "or delete it to lower-case text")
            do_lower_case = bool(settings.get("do_lower_case", True))
        words = read_vocab(vocab)
        overridden = not do_lower_case and is_caseless(words)
        tokenizer = cls(words, do_lower_case=do_lower_case or overridden, vocab_path=vocab)
        if overridden:
            tokenizer.case_note = (f"{tok_config} says do_lower_case false, but {vocab.name} has no capital letters, so "
                                   "every capital would read as [UNK] (NBA, iPhone); sbert lower-cases the text, as "
                                   "the vocab was built for, and saves do_lower_case true with the models it writes")
        return tokenizer

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _encodings(self, texts, pairs=None, max_length=None, add_special_tokens=True) -> list[Encoding]:
        if max_length:
            self.backend.enable_truncation(max_length, strategy="longest_first")
        else:
            self.backend.no_truncation()
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        return self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)

    def encode(self, texts: list[str], max_length: int | None = None, pairs: list[str] | None = None) -> list[list[int]]:
        """Token ids with [CLS]/[SEP] for each text (or text pair), truncated to max_length when given."""
        return self.encode_with_types(texts, pairs, max_length)[0]

    def encode_with_types(
        self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None
    ) -> tuple[list[list[int]], list[list[int]] | None]:
        """(ids, token type ids or None) with [CLS]/[SEP]: the one way text becomes model input, in training,
        eval, predict and embed alike. Single texts take the flat path (flat_encode.py): the same ids as the
        tokenizer, several times faster on Chinese; pairs go through the tokenizer's pair template."""
        texts = list(texts)
        try:
            if pairs is not None:
                encodings = self._encodings(texts, pairs, max_length)
                return [e.ids for e in encodings], [e.type_ids for e in encodings]
            if not texts:
                return [], None
            flat = self.flat_encoder.encode(texts)
        except (UnicodeEncodeError, TypeError):
            # A lone surrogate (U+D800-U+DFFF) cannot be encoded; BERT's text cleaning drops it (category Cs), so do that.
            cleaned = [_drop_surrogates(t) for t in texts]
            if cleaned == texts:
                raise
            return self.encode_with_types(cleaned, None if pairs is None else [_drop_surrogates(p) for p in pairs], max_length)
        ends = np.cumsum(flat.token_counts)
        kept = flat.token_counts if not max_length else np.minimum(flat.token_counts, max_length - 2)
        ids = flat.ids.tolist()
        cls, sep = [self.cls_id], [self.sep_id]
        return [cls + ids[end - count : end - count + n] + sep
                for end, count, n in zip(ends.tolist(), flat.token_counts.tolist(), kept.tolist())], None

    @property
    def flat_encoder(self):
        """The fast single-text encoder (built once: a lookup table of the vocab's CJK ideographs)."""
        if self._flat_encoder is None:
            from sbert_cli.model.flat_encode import FlatEncoder

            self._flat_encoder = FlatEncoder(self)
        return self._flat_encoder

    def encode_batch(
        self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None, add_special_tokens=True
    ) -> list[Encoding]:
        """Full encodings: ids, type_ids, tokens and character offsets into the original text."""
        return self._encodings(texts, pairs, max_length, add_special_tokens)

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of one text, without [CLS]/[SEP]."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def encode_words(self, text: str) -> list[tuple[int, int, list[int]]]:
        """(start, end, WordPiece ids) of each word the pre-tokenizer splits `text` into (a CJK character, a run
        of letters and digits, a punctuation mark; whitespace and what the cleaner drops are no words), with
        character offsets into the original text, not the normalized one. Sequence labelling's word path."""
        self.backend.no_truncation()
        encoding = self.backend.encode(text, add_special_tokens=False)
        words: list[tuple[int, int, list[int]]] = []
        last_word = None
        for word, (start, end), token_id in zip(encoding.word_ids, encoding.offsets, encoding.ids):
            if word != last_word or not words:
                words.append((start, end, [token_id]))
                last_word = word
            else:
                words[-1] = (words[-1][0], end, words[-1][2] + [token_id])
        return words

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.ids_to_tokens.get(int(i), "[UNK]") for i in ids]

    def convert_tokens_to_ids(self, tokens) -> list[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
