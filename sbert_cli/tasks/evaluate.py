"""Evaluate a model on a labelled file (classification, tagging) or on masked text (MLM), and write the report files.

Classification: the figures of cls_metrics (accuracy; macro, micro and weighted precision/recall/F1; per-class
figures; the confusion matrix) and the misclassified examples. MLM: top-1 and top-5 accuracy on the masked tokens,
and perplexity = exp(mean cross-entropy) over them. Tagging (ner): tasks/ner_predict.evaluate_tagger's entity
scores on exactly what `predict` returns, and the sentences it got wrong. `evaluate` returns a result whose `to_json()` is the
documented schema; the CLI only renders it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sbert_cli.errors import ConfigError, DataError, ModelLoadError
from sbert_cli.tasks.cls_metrics import ClassificationMetrics, classification_metrics
from sbert_cli.tasks.cls_predict import Classifier, load_classifier
from sbert_cli.tasks.inference import KnownOutputs, ProgressCallback, Runtime, prepare_inference
from sbert_cli.tasks.pretrain import EVAL_MASKING_SEED, eval_source, score_masked

TASKS = ("cls", "mlm", "ner")
REPORT_FILE = "metrics.json"  # an eval report; a run's training log is metrics.jsonl (plots.METRICS_FILE)
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
MISCLASSIFIED_FILE = "misclassified.tsv"
WRONG_SENTENCES_FILE = "wrong_sentences.tsv"  # a tagger's


@dataclass
class Misclassified:
    line_number: int
    text: str
    gold: str
    predicted: str
    probability: float  # of the predicted label


@dataclass
class ClassificationEvaluation:
    model: str
    data: str
    metrics: ClassificationMetrics
    loss: float  # mean cross-entropy of the gold labels
    predictions: list[int]  # predicted label id per example, in file order
    misclassified: list[Misclassified]  # most confident mistakes first
    runtime: Runtime
    files: dict[str, str] = field(default_factory=dict)

    task = "cls"

    def to_json(self) -> dict:
        m = self.metrics
        return {
            "task": "cls",
            "model": self.model,
            "data": self.data,
            "num_examples": m.num_examples,
            "accuracy": m.accuracy,
            "macro_f1": m.macro_f1,
            "loss": self.loss,
            "macro": m.macro.to_json(),
            "micro": m.micro.to_json(),
            "weighted": m.weighted.to_json(),
            "per_class": [c.to_json() for c in m.per_class],
            "labels": m.labels,
            "confusion_matrix": m.confusion_matrix,
            "num_misclassified": len(self.misclassified),
            "runtime": self.runtime.to_json(),
            "files": self.files,
        }


@dataclass
class MLMEvaluation:
    model: str
    data: str
    source: str  # "shards" (make-mlm-data output) or "text" (masked here)
    seed: int | None  # the masking seed when masked here
    num_sequences: int
    num_predictions: int
    mlm_accuracy: float
    mlm_top5_accuracy: float
    loss: float
    runtime: Runtime
    files: dict[str, str] = field(default_factory=dict)

    task = "mlm"

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf

    def to_json(self) -> dict:
        return {
            "task": "mlm",
            "model": self.model,
            "data": self.data,
            "source": self.source,
            "seed": self.seed,
            "num_sequences": self.num_sequences,
            "num_predictions": self.num_predictions,
            "mlm_accuracy": self.mlm_accuracy,
            "mlm_top5_accuracy": self.mlm_top5_accuracy,
            "loss": self.loss,
            "perplexity": self.perplexity,
            "runtime": self.runtime.to_json(),
            "files": self.files,
        }


def infer_task(model: str | Path, data: str | Path | None = None) -> str:
    """cls, mlm or ner from the model dir: sbert.json's task, else the one head its weights hold."""
    from sbert_cli.model.model_dir import read_checkpoint

    if data is not None and Path(data).is_dir():
        return "mlm"  # only make-mlm-data output is a folder
    checkpoint = read_checkpoint(model)
    if checkpoint.meta.get("task") in TASKS:
        return checkpoint.meta["task"]
    heads = [head for head in checkpoint.heads if head in TASKS]
    if len(heads) == 1:
        return heads[0]
    if not heads:
        raise ModelLoadError(
            f"{checkpoint.path}: has neither a classification nor a masked-LM head; "
            "train one with sbert train-cls or sbert pretrain"
        )
    raise ConfigError(
        f"{checkpoint.path}: has both a classification and a masked-LM head; "
        "say which to evaluate with `task` cls or `task` mlm"
    )


def evaluate_classifier(
    classifier: Classifier, data: str | Path, model_name: str = "", progress: ProgressCallback | None = None,
    known: KnownOutputs | None = None,
) -> ClassificationEvaluation:
    """Classify every example of a labelled file and compute the metrics (nothing is written); `known`: the
    classifier's probabilities on this file, already computed (its shape is checked)."""
    import numpy as np

    from sbert_cli.data.classification import read_classification_file

    dataset = read_classification_file(
        Path(data), classifier.label_names, require_labels=True, allow_new_labels=False, label_source="the model's labels"
    )
    total = len(dataset.texts)
    if known is not None and getattr(known.outputs, "shape", None) == (total, len(classifier.label_names)):
        probabilities = known.outputs
        classifier.runtime.add(total, known.tokens, known.seconds)
    else:
        probabilities = classifier.probabilities(
            dataset.texts, dataset.pairs, progress and (lambda n, _: progress(n, total))
        )
    gold = np.asarray(dataset.labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    gold_probability = probabilities[np.arange(len(gold)), gold]
    loss = float(-np.log(np.maximum(gold_probability.astype(np.float64), 1e-12)).mean())
    names = classifier.label_names
    wrong = np.flatnonzero(gold != predicted)
    confidence = probabilities[wrong, predicted[wrong]]
    misclassified = [
        Misclassified(dataset.line_numbers[i], _joined_text(dataset, i), names[gold[i]], names[predicted[i]],
                      float(probabilities[i, predicted[i]]))
        for i in wrong[np.argsort(-confidence, kind="stable")]
    ]
    return ClassificationEvaluation(
        model=model_name,
        data=str(data),
        metrics=classification_metrics(gold, predicted, names),
        loss=loss,
        predictions=predicted.tolist(),
        misclassified=misclassified,
        runtime=classifier.runtime,
    )


def _joined_text(dataset, i: int) -> str:
    return dataset.texts[i] if dataset.pairs is None else f"{dataset.texts[i]} ||| {dataset.pairs[i]}"


def _tsv_field(text: str) -> str:
    return " ".join(text.replace("\t", " ").splitlines())


def write_misclassified(rows: list[Misclassified], path: Path) -> Path:
    """TSV with a header: line, text, gold, predicted, probability (tabs and newlines in texts become spaces).
    Report files go through outputs.new_file: whole or the earlier one, never through a link."""
    from sbert_cli.outputs import new_file

    with new_file(path, force=True) as out:
        out.write("line\ttext\tgold\tpredicted\tprobability\n")
        for row in rows:
            out.write(f"{row.line_number}\t{_tsv_field(row.text)}\t{row.gold}\t{row.predicted}\t{row.probability:.4f}\n")
    return path


def write_wrong_sentences(rows: list, path: Path) -> Path:
    """A tagger's wrong sentences (ner_predict.WrongSentence) as TSV with a header: origin, text, gold, predicted;
    spans as `start-end:LABEL:text` separated by spaces (tabs and newlines in texts become spaces)."""
    def shown(text, spans):
        return " ".join(f"{s.start}-{s.end}:{s.label}:{_tsv_field(text[s.start:s.end])}"
                        for s in sorted(spans, key=lambda s: (s.start, s.end, s.label)))

    from sbert_cli.outputs import new_file

    with new_file(path, force=True) as out:
        out.write("origin\ttext\tgold\tpredicted\n")
        for row in rows:
            out.write(f"{row.origin}\t{_tsv_field(row.text)}\t{shown(row.text, row.gold)}\t{shown(row.text, row.predicted)}\n")
    return path


def write_metrics(result: ClassificationEvaluation | MLMEvaluation, path: Path) -> Path:
    from sbert_cli.outputs import write_text

    return write_text(path, json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n", force=True)


def default_out_dir(model: str | Path, data: str | Path) -> Path | None:
    """Where a report goes when no folder is asked for: RUN/eval-<data name> when the model is a run's best/ or
    last/ (a run dir holds run.json), else nowhere (the report is only printed)."""
    run_dir = Path(model).expanduser().parent
    if not (Path(model).expanduser().is_dir() and (run_dir / "run.json").is_file()):
        return None
    data = Path(data)
    return run_dir / f"eval-{data.stem if data.is_file() else data.name}"


def _check_out_dir(out_dir: Path, names: Sequence[str], reads: Sequence[Path]) -> None:
    """Refuse (before any inference) a report folder whose files of these names sbert did not write; a rerun
    replaces its own earlier report."""
    from sbert_cli.outputs import OutputDir, check_target

    outputs = OutputDir(out_dir)
    outputs.check(force=True, will_write=names, reads=reads)
    for name in names:
        check_target(out_dir / name, force=True)  # a link or a device where a report file goes: refused now


def evaluate(
    model: str | Path,
    data: str | Path,
    *,
    task: str | None = None,
    out_dir: str | Path | None = None,
    force: bool = False,
    batch_size: int = 64,
    precision: str = "auto",
    device: str = "auto",
    max_length: int | None = None,
    seed: int = EVAL_MASKING_SEED,
    progress: ProgressCallback | None = None,
    known: KnownOutputs | None = None,
) -> ClassificationEvaluation | MLMEvaluation:
    """Evaluate `model` on `data` for `task` (inferred when None) and write metrics.json (and, for cls,
    the confusion-matrix PNG and misclassified TSV; for ner, the wrong sentences' TSV) into out_dir, replacing an earlier report there;
    out_dir=None writes nothing. `force` is accepted for compatibility: a report replaces its own files anyway.
    `known`: the model's outputs on `data`, already computed (evaluate_kept_model); cls only."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"`task` must be cls, mlm or ner, not {task!r}")
    from sbert_cli.limits import BATCH_SIZE_WHY, MAX_BATCH_SIZE, check_range, check_seed

    check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE, BATCH_SIZE_WHY)
    check_seed(seed)
    if not Path(data).exists():
        raise DataError(f"{data}: no such file or folder")
    task = task or infer_task(model, data)
    names = {"cls": (REPORT_FILE, CONFUSION_MATRIX_FILE, MISCLASSIFIED_FILE),
             "ner": (REPORT_FILE, WRONG_SENTENCES_FILE)}.get(task, (REPORT_FILE,))
    if out_dir is not None:
        out_dir = Path(out_dir)
        reads = [Path(p) for p in (model, data) if Path(p).is_dir()]
        _check_out_dir(out_dir, names, reads)
    if task == "cls":
        if Path(data).is_dir():
            raise DataError(f"{data}: is a folder; `task` cls takes a labelled file (TSV, CSV or JSONL)")
        classifier = load_classifier(model, batch_size=batch_size, precision=precision, device=device, max_length=max_length)
        result = evaluate_classifier(classifier, data, str(model), progress, known)
    elif task == "ner":
        from sbert_cli.tasks.ner_predict import evaluate_tagger, load_tagger

        if Path(data).is_dir():
            raise DataError(f"{data}: is a folder; `task` ner takes an entity file (CoNLL, JSONL or CLUENER)")
        tagger = load_tagger(model, batch_size=batch_size, precision=precision, device=device, max_seq_len=max_length)
        result = evaluate_tagger(tagger, data, str(model), progress)
    else:
        result = _evaluate_mlm(model, data, batch_size, precision, device, max_length, seed, progress)
    if out_dir is None:
        return result
    from sbert_cli.outputs import OutputDir

    with OutputDir(out_dir) as outputs:
        if task == "cls":
            from sbert_cli.plots import plot_confusion_matrix

            m = result.metrics
            result.files = {
                "metrics": str(out_dir / REPORT_FILE),
                "confusion_matrix": str(plot_confusion_matrix(m.confusion_matrix, m.labels, out_dir / CONFUSION_MATRIX_FILE)),
                "misclassified": str(write_misclassified(result.misclassified, out_dir / MISCLASSIFIED_FILE)),
            }
        elif task == "ner":
            result.files = {"metrics": str(out_dir / REPORT_FILE),
                            "wrong_sentences": str(write_wrong_sentences(result.wrong, out_dir / WRONG_SENTENCES_FILE))}
        else:
            result.files = {"metrics": str(out_dir / REPORT_FILE)}
        write_metrics(result, out_dir / REPORT_FILE)
        outputs.record(*names)
    return result


def evaluate_kept_model(splits: dict, task: str, config, result, known: dict | None = None) -> tuple[Path, dict]:
    """A training run's closing reports: the kept model (OUT/best, else OUT/last) and `evaluate` on the dev and test
    files among `splits` (name -> data with a .path), written to OUT/eval-<split>, at the run's batch size (config:
    its TrainConfig), device and precision (result: its TrainResult). `known` (split -> KnownOutputs or None): what
    the run's evaluation of OUT/best computed; used where it equals what `evaluate` would compute (fp32 on the CPU),
    so the dev split is not run through the model a second time."""
    from sbert_cli.train.state import kept_model_dir

    model_dir = kept_model_dir(config.out_dir)
    exact = result.precision == "fp32" and result.device == "cpu" and model_dir.name == "best"
    return model_dir, {name: evaluate(model_dir, splits[name].path, task=task, out_dir=Path(config.out_dir) / f"eval-{name}",
                                      force=True, batch_size=config.batch_size, precision=result.precision,
                                      device=result.device, known=(known or {}).get(name) if exact else None)
                       for name in ("dev", "test") if name in splits}


# --- masked LM ---------------------------------------------------------------------------------------------


def _evaluate_mlm(model: str | Path, data: str | Path, batch_size: int, precision: str, device: str,
                  max_length: int | None, seed: int, progress: ProgressCallback | None) -> MLMEvaluation:
    """evaluate() for task mlm: masked-token top-1/top-5 accuracy and perplexity on make-mlm-data output, or on a raw
    text file turned into it with `seed` (so the figures equal those on `make-mlm-data FILE --seed SEED` output)."""
    import tempfile

    from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
    from sbert_cli.data.shards import MLMShards, vocab_sha256
    from sbert_cli.model.model_dir import load_for_task, load_tokenizer

    loaded = load_for_task(model, "mlm")
    net = loaded.model
    tokenizer = load_tokenizer(loaded.checkpoint.path)
    limit = net.config.max_position_embeddings
    if max_length is not None and not 4 <= max_length <= limit:
        raise ConfigError(f"`max_seq_len` must be between 4 and the model's {limit} positions, not {max_length}")
    torch_device, resolved = prepare_inference(net, device, precision)
    runtime = Runtime(str(torch_device), resolved, batch_size)
    data = Path(data)
    with tempfile.TemporaryDirectory(prefix="sbert-eval-") as scratch:
        start = time.perf_counter()
        if data.is_dir():
            shards, source = MLMShards(data), "shards"
        else:
            trained = loaded.checkpoint.meta.get("max_seq_len") or MLMDataSettings.max_seq_len
            settings = MLMDataSettings(max_seq_len=max_length or min(int(trained), limit), seed=seed)
            shards = MLMShards(make_mlm_data([data], Path(scratch) / "masked", tokenizer, settings).out)
            source = "text"
        if shards.vocab_sha256 != vocab_sha256(tokenizer) or shards.max_token_id >= len(tokenizer):
            raise DataError(f"{data}: made with another vocab than {loaded.checkpoint.path}'s vocab.txt; "
                            "remake it with make-mlm-data `model` MODEL")
        if shards.max_seq_len > limit:
            raise ConfigError(f"{data}: sequences of up to {shards.max_seq_len} tokens, but the model has "
                              f"{limit} positions; remake it with a smaller `max_seq_len`")
        runtime.seconds += time.perf_counter() - start
        sums = score_masked(net, eval_source(shards, tokenizer, seed), tokenizer.pad_id, batch_size, torch_device,
                            resolved, runtime, progress)
    loss_sum, count, correct, correct_top5 = sums
    count = int(count)
    if count == 0:
        raise DataError(f"{data}: no masked tokens to score; are the texts long enough to mask?")
    return MLMEvaluation(
        model=str(model),
        data=str(data),
        source=source,
        seed=None if source == "shards" and shards.masked else seed,
        num_sequences=len(shards),
        num_predictions=count,
        mlm_accuracy=correct / count,
        mlm_top5_accuracy=correct_top5 / count,
        loss=loss_sum / count,
        runtime=runtime,
    )
