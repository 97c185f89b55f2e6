"""The model behind `sbert serve`: ServeOptions (the server's limits, one field per CLI flag), ModelService (one
loaded model with every head its checkpoint has, answering requests synchronously), ENDPOINTS (endpoint kind -> path).
A tagger (sbert train-ner) answers /ner beside /embed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sbert_cli.errors import ConfigError

ENDPOINTS = {"embed": "/embed", "predict": "/predict", "fill-mask": "/fill-mask", "ner": "/ner"}
# One request's work (ModelService.work): 2^18 is twice the largest plain request at the default max_texts on a
# 512-position model (256 texts of 512 tokens): a bound on requests that would hold the model thread many times
# longer than any ordinary one, not on ordinary ones.
DEFAULT_MAX_WORK = 1 << 18


@dataclass
class ServeOptions:
    """Limits of the server; the CLI's flags map onto these one to one."""

    max_batch_size: int = 64  # texts per model call
    max_wait_ms: float = 5.0  # how long the oldest waiting request may wait for companions
    max_queue: int = 1024  # texts waiting (not yet running); more is 503
    max_texts: int = 256  # texts in one request
    max_body_bytes: int = 1 << 20  # request body; more is 413
    max_work: int = DEFAULT_MAX_WORK  # what one request may ask of the model (ModelService.work); more is 413
    graceful_timeout_s: float = 30.0  # on SIGINT/SIGTERM: how long in-flight requests may take to finish

    def validate(self) -> None:
        from sbert_cli.limits import BATCH_SIZE_WHY, MAX_BATCH_SIZE, check_range

        check_range("max_batch_size", self.max_batch_size, 1, MAX_BATCH_SIZE, BATCH_SIZE_WHY)
        # Waiting texts and request bodies are held in memory: 10^6 texts or 1 GiB is far past any useful queue.
        check_range("max_queue", self.max_queue, 1, 1_000_000, "waiting texts are held in memory")
        check_range("max_texts", self.max_texts, 1, 1_000_000, "a request's texts are held in memory")
        check_range("max_body_bytes", self.max_body_bytes, 1, 1 << 30, "a request body is held in memory")
        check_range("max_wait_ms", self.max_wait_ms, 0, 10_000, "a request waits this long for company before it runs")
        check_range("max_work", self.max_work, 1, 1 << 40, "tokens run through the model plus answers, per request")
        if self.max_texts > self.max_queue:
            raise ConfigError(f"`max_texts` {self.max_texts} exceeds `max_queue` {self.max_queue}: such a request could never be queued")


class ModelService:
    """One model instance with every head its checkpoint has; its methods run requests synchronously.

    A classifier and an MLM head share one encoder, which /embed uses too.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        max_seq_len: int | None = None,
        precision: str = "auto",
        device: str = "auto",
        batch_size: int = 64,
        pooling: str | None = None,
        normalize: bool | None = None,
    ):
        from sbert_cli.model.model_dir import (
            load_for_task,
            load_tokenizer,
            read_checkpoint,
            resolve_model_dir,
        )
        from sbert_cli.model.precision import prepare_for_inference, resolve_device, resolve_precision
        from sbert_cli.tasks.cls_predict import load_classifier
        from sbert_cli.model.st_dir import read_sentence_transformers_dir
        from sbert_cli.tasks.embedding import embedder_for, embedding_settings

        self.model_name = str(model)
        model_dir = resolve_model_dir(model)
        st = read_sentence_transformers_dir(model_dir)
        encoder_dir = st.encoder_dir if st is not None else model_dir
        checkpoint = read_checkpoint(encoder_dir)
        self.heads = list(checkpoint.heads)
        settings = embedding_settings(encoder_dir, checkpoint.config, checkpoint.meta, st, pooling, normalize, max_seq_len)
        del checkpoint
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device, inference=True)
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(encoder_dir)
        # A second tokenizer for ModelService.work, which runs beside the model thread: a tokenizer may not
        # encode in two threads at once.
        self.admission_tokenizer = load_tokenizer(encoder_dir)
        self.classifier = self.mlm = self.tagger = None
        encoder, initialized = None, []
        if "ner" in self.heads:
            from sbert_cli.tasks.ner_predict import load_tagger

            self.tagger = load_tagger(encoder_dir, batch_size=batch_size, precision=self.precision,
                                      device=str(self.device), max_seq_len=max_seq_len)
            encoder = self.tagger.model.bert
        if "cls" in self.heads:
            # Truncated where `sbert predict` truncates (max_seq_len given, else load_classifier's default), not at
            # the embedding's length, which may come from sentence-transformers' or the tokenizer's settings.
            self.classifier = load_classifier(encoder_dir, batch_size=batch_size, precision=self.precision,
                                              device=str(self.device), max_length=max_seq_len)
            encoder = self.classifier.model.bert
        if "mlm" in self.heads:
            loaded = load_for_task(encoder_dir, "mlm")
            self.mlm = loaded.model
            if encoder is None:
                encoder, initialized = self.mlm.bert, loaded.initialized
            else:
                self.mlm.bert = encoder  # one encoder for every head: the same weights, loaded once
            self.mlm.to(self.device).eval()
        if encoder is None:
            loaded = load_for_task(encoder_dir, "base")
            encoder, initialized = loaded.model, loaded.initialized
        encoder.to(self.device).eval()
        # Converted once for the precision (bf16 weights, int8 Linear layers), as eval/predict/embed do; the
        # classifier (and the encoder it shares) already is, and converting again changes nothing.
        for module in (self.mlm, encoder):
            if module is not None:
                prepare_for_inference(module, self.precision)
        self.embedder = embedder_for(encoder, self.tokenizer, encoder_dir, settings, initialized, self.device,
                                     self.precision, batch_size)

    @property
    def endpoints(self) -> list[str]:
        kinds = (["embed"] + ["predict"] * (self.classifier is not None) + ["fill-mask"] * (self.mlm is not None)
                 + ["ner"] * (self.tagger is not None))
        return [ENDPOINTS[k] for k in kinds]

    def info(self) -> dict:
        from sbert_cli import __version__

        return {
            "model": self.model_name,
            "heads": self.heads,
            "endpoints": self.endpoints,
            "labels": (self.classifier.label_names if self.classifier is not None
                       else self.tagger.labels if self.tagger is not None else None),  # a tagger's: entity types
            "device": str(self.device),
            "precision": self.precision,
            "max_seq_len": self.embedder.max_length,
            **({"predict_max_seq_len": self.classifier.max_length} if self.classifier is not None else {}),
            **({"ner_max_seq_len": self.tagger.max_length, "crf": self.tagger.crf} if self.tagger is not None else {}),
            "embedding": {"dimension": self.embedder.dimension, "pooling": self.embedder.settings.pooling,
                          "normalize": self.embedder.settings.normalize, "has_pooler": self.embedder.has_pooler},
            "sbert_version": __version__,
        }

    def work(self, kind: str, options: tuple, texts: list[str]) -> int:
        """What a request asks of the model, counted before it is queued: the tokens it runs through the model
        (a joint fill-mask runs its text once per beam row and step) plus the candidates it returns. A DataError
        names a text /fill-mask cannot take. Called from one admission thread, on admission_tokenizer."""
        tokenizer = self.admission_tokenizer
        if kind == "embed":
            return sum(len(ids) for ids in tokenizer.encode(texts, max_length=self.embedder.max_length))
        if kind == "predict":
            (top_k,) = options
            tokens = sum(len(ids) for ids in tokenizer.encode(texts, max_length=self.classifier.max_length))
            return tokens + len(texts) * min(top_k, len(self.classifier.label_names))
        if kind == "ner":  # every id once (windows overlap a little more), plus the answers
            return sum(len(ids) for ids in tokenizer.encode(texts)) + len(texts)
        if kind == "fill-mask":
            from sbert_cli.tasks.fill_mask import fill_work

            top_k, joint = options
            return fill_work(tokenizer, texts, [f"texts[{i}]" for i in range(len(texts))], top_k, joint,
                             self.mlm.config.max_position_embeddings, fixes="shorten the text")
        raise ValueError(f"unknown endpoint {kind!r}")

    def run(self, kind: str, options: tuple, texts: list[str]) -> list[dict]:
        """One JSON object per text, for the endpoint `kind` with its options (see the request models)."""
        if kind == "embed":
            from sbert_cli.tasks.embedding import embedding_json

            pooling, normalize = options
            vectors = self.embedder.embed(texts, pooling, normalize)
            return [embedding_json(text, vector) for text, vector in zip(texts, vectors)]
        if kind == "predict":
            from sbert_cli.tasks.cls_predict import Prediction, top_labels

            (top_k,) = options
            ranked = top_labels(self.classifier.probabilities(texts), self.classifier.label_names, top_k)
            return [Prediction(text, f"texts[{i}]", labels).to_json() for i, (text, labels) in enumerate(zip(texts, ranked))]
        if kind == "ner":  # the JSON of `sbert predict --json` on a tagger
            from sbert_cli.tasks.ner_predict import NerPrediction

            found = self.tagger.entities(texts)
            return [NerPrediction(text, f"texts[{i}]", entities).to_json() for i, (text, entities) in enumerate(zip(texts, found))]
        if kind == "fill-mask":
            import torch

            from sbert_cli.model.precision import inference_autocast
            from sbert_cli.tasks.fill_mask import fill_mask

            top_k, joint = options
            origins = [f"texts[{i}]" for i in range(len(texts))]
            with torch.inference_mode(), inference_autocast(self.precision, self.device):
                results = fill_mask(self.mlm, self.tokenizer, texts, top_k, origins, self.batch_size, joint)
            return [result.to_json() for result in results]
        raise ValueError(f"unknown endpoint {kind!r}")
