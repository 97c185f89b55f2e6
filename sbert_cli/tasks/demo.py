"""sbert demo: the whole pipeline, offline, on the bundled THUCNews titles, in one run dir.

make-mlm-data -> pretrain a tiny BERT from scratch (or continue pretraining a checkpoint, `sbert demo --model`)
-> train-cls from it -> eval on dev -> predict and fill-mask, each stage the library function its command
calls, plus a character n-gram TF-IDF + linear SVM baseline on the same sample, so the BERT's accuracy is
read next to an honest reference.
The dev titles are touched only by the final evaluations: the classifier keeps its last weights
(no selection on dev) and pretraining holds out 5% of the train titles for its own evaluation.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sbert_cli.outputs import write_text

if TYPE_CHECKING:
    from sbert_cli.outputs import OutputDir

DEFAULT_OUT = Path("sbert-demo")
# What a demo run writes into its folder; --force replaces these and nothing else.
DEMO_ARTIFACTS = ("data", "mlm-data", "pretrain", "classifier", "eval", "baseline", "report.json", "report.md")
STAGES = ("make-mlm-data", "pretrain", "train-cls", "eval", "baseline", "predict", "fill-mask")

# Headlines written for the demo (not in the bundled train or dev titles).
PREDICT_HEADLINES = (
    "央行宣布下调存款准备金率0.5个百分点",
    "湖人主场加时险胜凯尔特人 詹姆斯砍下40分",
    "教育部：今年高考报名人数再创新高",
    "《英雄联盟》全球总决赛下月在上海开幕",
    "北京二手房成交量连续三周回升",
    "周杰伦新专辑首周销量突破百万张",
)
# In the style of the titles (组图, 基金 and 高考 are among their most frequent words), so that minutes of
# pretraining have a chance; everyday sentences need a real checkpoint.
FILL_MASK_SENTENCES = (
    "组[MASK]：周杰伦新片首映现场人气火爆",
    "华夏[MASK]金：市场震荡仍是布局良机",
    "今年高[MASK]报名人数公布",
)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and hyperparameters of a demo run."""

    config_name: str | None = "tiny"  # model preset trained from scratch (None with `model`)
    model: str | None = None  # a checkpoint (model dir or hub repo id) to start from instead; see starting_from
    train_lines: int | None = None  # first N bundled train titles (None: all 9,000)
    dev_lines: int | None = None  # first N bundled dev titles (None: all 1,000)
    max_seq_len: int = 64  # the titles are at most ~50 tokens
    # A small corpus seen for several epochs: re-mask it every epoch (make-mlm-data --no-mask, pretrain
    # --dynamic-masking) so each pass asks for new predictions. High learning rates suit a tiny model.
    dynamic_masking: bool = True
    pretrain_epochs: int = 5
    pretrain_batch_size: int = 32
    pretrain_lr: float | None = 2e-3  # None: tasks/lr_rule.py picks it, as pretrain does without --lr
    pretrain_eval_fraction: float = 0.05
    cls_epochs: int = 5
    cls_batch_size: int = 64
    cls_lr: float | None = 2e-3
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"  # every stage; auto: bf16 on a CPU/GPU that does it natively, else fp32


FULL = DemoSettings()
# For smoke tests (`sbert demo --quick`): every stage runs, on few titles and steps; the figures mean nothing.
QUICK = DemoSettings(train_lines=200, dev_lines=100, pretrain_epochs=1, cls_epochs=1)


def starting_from(model: str | None, settings: DemoSettings) -> DemoSettings:
    """`settings` for a run that starts from the checkpoint `model` (unchanged when None).

    A checkpoint has been pretrained already: one epoch of continued pretraining adapts it (and a new MLM head)
    to the titles, and fine-tuning takes BERT's usual 3 epochs at batch 32. The rates are lr_rule's for the
    situation (new MLM head or continued pretraining; fine-tuning), not the tiny model's 2e-3, which would wreck it.
    """
    if model is None:
        return settings
    return replace(settings, model=model, config_name=None, pretrain_epochs=min(settings.pretrain_epochs, 1),
                   pretrain_lr=None, cls_epochs=min(settings.cls_epochs, 3), cls_batch_size=32, cls_lr=None)


def starting_model(settings: DemoSettings) -> str:
    """What the demo's BERT starts from, in words: "tiny BERT from scratch" or "checkpoint DIR"."""
    return f"checkpoint {settings.model}" if settings.model else f"{settings.config_name} BERT from scratch"


@dataclass
class StageOutcome:
    """One finished stage: its library result, key figures (JSON), time, and the equivalent command."""

    name: str
    seconds: float
    figures: dict[str, Any]
    result: Any = field(default=None, repr=False)
    command: str | None = None


@dataclass
class DemoReport:
    out_dir: Path
    settings: DemoSettings
    stages: list[StageOutcome]
    total_seconds: float
    files: dict[str, str]

    def stage(self, name: str) -> StageOutcome:
        return next(s for s in self.stages if s.name == name)

    def to_json(self) -> dict:
        from sbert_cli import __version__
        from sbert_cli.model.precision import describe_machine

        bert, baseline = self.stage("eval").figures, self.stage("baseline").figures
        pretrained = self.stage("pretrain").result
        trained = pretrained.train
        return {
            "sbert_version": __version__,
            "settings": asdict(self.settings),
            "starting_model": {
                "description": starting_model(self.settings), "checkpoint": self.settings.model,
                "config": self.settings.config_name,
                # with a checkpoint: the MLM head parameters pretrain initialised fresh ([]: the checkpoint's own head)
                "new_mlm_head": pretrained.new_head if self.settings.model else None,
            },
            "device": trained.device,
            "precision": trained.precision,  # what --precision resolved to, for training and inference alike
            "machine": describe_machine(),
            "dev_accuracy": {"bert": bert["accuracy"], "tfidf_linear_svm": baseline["accuracy"]},
            "dev_macro_f1": {"bert": bert["macro_f1"], "tfidf_linear_svm": baseline["macro_f1"]},
            "stages": [{"name": s.name, "seconds": round(s.seconds, 2), "command": s.command, **s.figures} for s in self.stages],
            "total_seconds": round(self.total_seconds, 2),
            "files": self.files,
        }


def prepare_demo_dir(out_dir: Path, force: bool) -> "OutputDir":
    """Refuse a non-empty folder unless forced; forced, remove only what an earlier demo wrote. Returns the
    folder, locked for this process (see outputs.py)."""
    from sbert_cli.outputs import OutputDir

    outputs = OutputDir(out_dir)
    outputs.check(force, will_write=DEMO_ARTIFACTS,
                  not_empty="is not empty; pass --force to replace an earlier demo there, or choose another --out")
    outputs.acquire()
    if force:
        outputs.clear()
    return outputs


def write_sample(source: Path, destination: Path, lines: int | None) -> Path:
    """Copy the first `lines` lines of a bundled file (all when None) into the run dir."""
    with open(source, encoding="utf-8") as f:
        kept = f.readlines() if lines is None else [line for _, line in zip(range(lines), f)]
    return write_text(destination, "".join(kept), force=True)


def train_tfidf_baseline(train_file: Path, dev_file: Path, label_names: list[str], seed: int) -> dict[str, Any]:
    """Character 1-2-gram TF-IDF + LinearSVC (scikit-learn defaults otherwise) trained on train, scored on dev."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    from sbert_cli.data.classification import read_classification_file
    from sbert_cli.tasks.cls_metrics import classification_metrics

    train = read_classification_file(train_file, label_names, allow_new_labels=False)
    dev = read_classification_file(dev_file, label_names, allow_new_labels=False)
    model = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True), LinearSVC(random_state=seed))
    started = time.perf_counter()
    model.fit(train.texts, train.labels)
    train_seconds = time.perf_counter() - started
    metrics = classification_metrics(dev.labels, model.predict(dev.texts), label_names)
    return {"model": "TfidfVectorizer(analyzer='char', ngram_range=(1, 2), sublinear_tf=True) + LinearSVC",
            "features": len(model[0].vocabulary_), "train_seconds": round(train_seconds, 2),
            "accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1, "confusion_matrix": metrics.confusion_matrix}


def _command(*argv: Any) -> str:
    return shlex.join(["sbert", *(str(a) for a in argv)])


def _train_options(epochs: int, batch_size: int, lr: float | None, settings: DemoSettings) -> list[Any]:
    lr_option = [] if lr is None else ["--lr", lr]  # None: the command chooses, as the demo's run did
    return ["--epochs", epochs, "--batch-size", batch_size, *lr_option, "--seed", settings.seed, *_hardware_options(settings)]


def _lr_figures(run_dir: Path) -> dict[str, Any]:
    """The peak lr a training stage ran at, and why (run.json's lr_choice: given, or chosen by tasks/lr_rule.py)."""
    choice = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["lr_choice"]
    return {"lr": choice["lr"], "lr_source": choice["source"], "lr_situation": choice["situation"]}


def _hardware_options(settings: DemoSettings) -> list[str]:
    """--device and --precision as the stage commands need them to run as the demo did (nothing for auto)."""
    return [argument for name, value in (("--device", settings.device), ("--precision", settings.precision))
            if value != "auto" for argument in (name, value)]


def run_demo(
    out_dir: str | Path = DEFAULT_OUT,
    settings: DemoSettings = FULL,
    *,
    force: bool = False,
    training_callbacks: Callable[[], Any] | None = None,
    on_stage_start: Callable[[str, str | None], None] | None = None,
    on_stage_end: Callable[[StageOutcome], None] | None = None,
) -> DemoReport:
    """Run every stage into out_dir and write report.json and report.md.

    training_callbacks: makes the train.loop.Callbacks that report each training stage (None: silent). on_stage_start(name,
    command) and on_stage_end(outcome) let the caller show each stage as it runs.
    """
    from sbert_cli.data.mlm_data import resolve_tokenizer
    from sbert_cli.errors import ConfigError
    from sbert_cli.model.precision import resolve_device, resolve_precision

    resolve_precision(settings.precision, resolve_device(settings.device))  # a bad --device/--precision fails first
    if (settings.model is None) == (settings.config_name is None):
        raise ConfigError("give one of `model` (a checkpoint to start from) and `config_name` (a preset trained from scratch)")
    # A missing or vocab-less checkpoint fails here, before the run dir is touched; a repo id is fetched once.
    tokenizer = resolve_tokenizer(model=settings.model)
    out_dir = Path(out_dir)
    with prepare_demo_dir(out_dir, force) as outputs:
        return _run_stages(out_dir, outputs, settings, tokenizer, training_callbacks, on_stage_start, on_stage_end)


def _run_stages(out_dir, outputs, settings, tokenizer, training_callbacks, on_stage_start, on_stage_end) -> DemoReport:
    from sbert_cli.data.classification import read_label_names
    from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
    from sbert_cli.resources import THUCNEWS_CLASSES, THUCNEWS_DEV, THUCNEWS_TRAIN
    from sbert_cli.tasks.classification import train_classifier
    from sbert_cli.tasks.cls_predict import TextInput, load_classifier, predict_stream
    from sbert_cli.tasks.evaluate import evaluate
    from sbert_cli.tasks.fill_mask import run_fill_mask
    from sbert_cli.tasks.options import ClassifierOptions, PretrainOptions
    from sbert_cli.tasks.pretrain import pretrain
    from sbert_cli.train.types import TrainConfig

    s = settings
    data_dir = out_dir / "data"
    data_dir.mkdir()
    train_file = write_sample(THUCNEWS_TRAIN, data_dir / "train.txt", s.train_lines)
    dev_file = write_sample(THUCNEWS_DEV, data_dir / "dev.txt", s.dev_lines)
    labels_file = write_sample(THUCNEWS_CLASSES, data_dir / "class.txt", None)
    outputs.record(data_dir)
    label_names = read_label_names(labels_file)
    mlm_dir, pretrain_dir, cls_dir, eval_dir = (out_dir / n for n in ("mlm-data", "pretrain", "classifier", "eval"))
    stages: list[StageOutcome] = []

    def stage(name: str, command: str | None, work: Callable[[], tuple[Any, dict[str, Any]]]) -> Any:
        if on_stage_start:
            on_stage_start(name, command)
        started = time.perf_counter()
        result, figures = work()
        outcome = StageOutcome(name, time.perf_counter() - started, figures, result, command)
        stages.append(outcome)
        if on_stage_end:
            on_stage_end(outcome)
        return result

    demo_started = time.perf_counter()
    mlm_settings = MLMDataSettings(max_seq_len=s.max_seq_len, seed=s.seed, mask=not s.dynamic_masking)

    def make_data():
        report = make_mlm_data([train_file], mlm_dir, tokenizer, mlm_settings)
        counts = report.counts
        return report, {"lines": counts["lines"], "sequences": counts["sequences"], "tokens": counts["tokens"],
                        "masked": counts["masked"]}

    no_mask = ["--no-mask"] if s.dynamic_masking else []
    vocab_of = ["--model", s.model] if s.model else []  # from scratch: the bundled vocab, make-mlm-data's default
    stage("make-mlm-data", _command("make-mlm-data", train_file, "--out", mlm_dir, *vocab_of,
                                    "--max-seq-len", s.max_seq_len, *no_mask, "--seed", s.seed), make_data)

    def run_pretrain():
        options = PretrainOptions(data=mlm_dir, model=s.model, config_name=s.config_name,
                                  dynamic_masking=s.dynamic_masking, eval_fraction=s.pretrain_eval_fraction)
        config = TrainConfig(out_dir=pretrain_dir, epochs=s.pretrain_epochs, batch_size=s.pretrain_batch_size,
                             lr=s.pretrain_lr, seed=s.seed, device=s.device, precision=s.precision)
        result = pretrain(options, config, training_callbacks() if training_callbacks else None)
        if result.train.interrupted:  # Ctrl-C: the checkpoint is saved; the later stages have nothing to start from
            raise KeyboardInterrupt
        held_out = result.train.last_eval or {}
        return result, {"steps": result.train.step, "model_dir": str(result.model_dir), **_lr_figures(pretrain_dir),
                        "held_out_mlm_accuracy": held_out.get("mlm_accuracy"), "held_out_perplexity": held_out.get("perplexity")}

    start = ["--model", s.model] if s.model else ["--config", s.config_name]
    pretrained = stage("pretrain", _command(
        "pretrain", "--data", mlm_dir, *start, *(["--dynamic-masking"] if s.dynamic_masking else []),
        "--eval-fraction", s.pretrain_eval_fraction,
        "--out", pretrain_dir, *_train_options(s.pretrain_epochs, s.pretrain_batch_size, s.pretrain_lr, s)), run_pretrain)

    def run_train_cls():
        options = ClassifierOptions(data_dir=None, train_file=train_file, labels_file=labels_file,
                                    model=str(pretrained.model_dir), max_seq_len=s.max_seq_len)
        config = TrainConfig(out_dir=cls_dir, epochs=s.cls_epochs, batch_size=s.cls_batch_size, lr=s.cls_lr,
                             seed=s.seed, device=s.device, precision=s.precision)
        result = train_classifier(options, config, training_callbacks() if training_callbacks else None)
        if result.train.interrupted:
            raise KeyboardInterrupt
        return result, {"steps": result.train.step, "model_dir": str(result.model_dir), **_lr_figures(cls_dir)}

    classifier = stage("train-cls", _command(
        "train-cls", "--train", train_file, "--labels", labels_file, "--model", pretrained.model_dir,
        "--max-seq-len", s.max_seq_len, "--out", cls_dir, *_train_options(s.cls_epochs, s.cls_batch_size, s.cls_lr, s)),
        run_train_cls)

    def run_eval():
        evaluation = evaluate(classifier.model_dir, dev_file, task="cls", out_dir=eval_dir, device=s.device,
                              precision=s.precision)
        return evaluation, {"examples": evaluation.metrics.num_examples, "accuracy": evaluation.metrics.accuracy,
                            "macro_f1": evaluation.metrics.macro_f1, **evaluation.files}

    device_options = _hardware_options(s)
    stage("eval", _command("eval", "--model", classifier.model_dir, "--data", dev_file, "--out", eval_dir, *device_options),
          run_eval)

    def run_baseline():
        figures = train_tfidf_baseline(train_file, dev_file, label_names, s.seed)
        (out_dir / "baseline").mkdir()
        write_text(out_dir / "baseline" / "metrics.json", json.dumps(figures, indent=2) + "\n", force=True)
        outputs.record("baseline")
        return figures, figures

    stage("baseline", None, run_baseline)

    def run_predict():
        model = load_classifier(classifier.model_dir, device=s.device, precision=s.precision)
        inputs = [TextInput(text, f"headline {i}") for i, text in enumerate(PREDICT_HEADLINES, 1)]
        predictions = list(predict_stream(model, inputs, top_k=1))
        return predictions, {"predictions": [p.to_json() for p in predictions]}

    stage("predict", _command("predict", "--model", classifier.model_dir, *device_options, *PREDICT_HEADLINES), run_predict)

    def run_fill():
        results = run_fill_mask(pretrained.model_dir, list(FILL_MASK_SENTENCES), top_k=5, device=s.device,
                                precision=s.precision)
        return results, {"fill_mask": [r.to_json() for r in results]}

    stage("fill-mask", _command("fill-mask", "--model", pretrained.model_dir, *device_options, *FILL_MASK_SENTENCES), run_fill)

    report = DemoReport(out_dir, settings, stages, time.perf_counter() - demo_started,
                        {"report_json": str(out_dir / "report.json"), "report_md": str(out_dir / "report.md")})
    summary = report.to_json()
    write_text(out_dir / "report.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n", force=True)
    write_text(out_dir / "report.md", report_markdown(summary), force=True)
    outputs.record("report.json", "report.md")
    return report


def bert_label(summary: dict) -> str:
    """The demo's BERT in a results table (report.md, the printed summary): what it started from, what the demo did."""
    start = summary["starting_model"]
    if start["checkpoint"] is None:
        return f"{start['config']} BERT, pretrained from scratch here + fine-tuned"
    head = " (new MLM head)" if start["new_mlm_head"] else ""
    return f"checkpoint {start['checkpoint']}, pretrained further here{head} + fine-tuned"


def report_markdown(summary: dict) -> str:
    """report.json as a short Markdown page: the two accuracies, then each stage with its time and command."""
    from sbert_cli.model.precision import machine_summary

    accuracy, macro_f1 = summary["dev_accuracy"], summary["dev_macro_f1"]
    settings, machine = summary["settings"], summary["machine"]
    stages = {s["name"]: s for s in summary["stages"]}
    where = machine["cuda"] if summary["device"].startswith("cuda") else (
        machine["cpu"] + ("" if machine["cpu_bf16"] else " (no native bf16)"))
    lines = [
        "# sbert demo report", "",
        (f"THUCNews titles: {stages['make-mlm-data']['lines']:,} for training, {stages['eval']['examples']:,} dev "
         f"titles held out; starting model: {summary['starting_model']['description']}; seed {settings['seed']}, "
         f"{summary['precision']} on {where}."), "",
        "| model | dev accuracy | dev macro-F1 |", "|---|---:|---:|",
        f"| {bert_label(summary)} | {accuracy['bert']:.4f} | {macro_f1['bert']:.4f} |",
        f"| char 1-2-gram TF-IDF + LinearSVC | {accuracy['tfidf_linear_svm']:.4f} | {macro_f1['tfidf_linear_svm']:.4f} |", "",
        "| stage | seconds | same as |", "|---|---:|---|",
    ]
    for stage in summary["stages"]:
        command = f"`{stage['command']}`" if stage["command"] else "scikit-learn, in the demo"
        lines.append(f"| {stage['name']} | {stage['seconds']:.1f} | {command} |")
    lines += [f"| **total** | **{summary['total_seconds']:.1f}** | |", "",
              f"Ran on {summary['device']} in {summary['precision']}: {machine_summary(machine)}.", ""]
    return "\n".join(lines)
