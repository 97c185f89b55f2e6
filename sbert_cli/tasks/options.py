"""What each training task takes besides TrainConfig: ClassifierOptions (train-cls), NerOptions (train-ner),
PretrainOptions (pretrain); DEFAULT_MODEL and `with_default_model` (which checkpoint a fine-tuning run starts from).

Each field is declared once, here: its type, its default and (`option` metadata) its command-line flags, --help
text and panel. cli/options.py generates the commands' options from these fields as it does from TrainConfig's, so
the CLI and a library caller get the same defaults. Torch-free, so `sbert --help` imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from sbert_cli.errors import ConfigError
from sbert_cli.tasks.lr_rule import CRF_LR_SCALE, LABEL_SMOOTHING
from sbert_cli.train.types import TRAINING, option

DEFAULT_MODEL = "hfl/chinese-bert-wwm-ext"  # what train-cls and train-ner fine-tune when given neither model nor config
TAGGING = "Tagging"  # train-ner's --help panel for the CRF's options

_FINE_TUNE_MODEL = option(f"Model dir or hub repo id to fine-tune (default: {DEFAULT_MODEL}; none with --config).",
                          "--model", "-m", panel=None)
_CONFIG = option("Start from scratch with a fresh model: tiny, small or base.", "--config", panel=None)
_VOCAB = option("With --config: vocab.txt (default: the bundled Chinese BERT vocab).", "--vocab", panel=None)


def _data(help: str, *flags: str) -> dict:
    return option(help, *flags, panel=None)


@dataclass
class ClassifierOptions:
    """train-cls: the data files, the model to start from and the classifier's settings."""

    data_dir: Path | None = field(default=Path("data"), metadata=_data(
        "Folder with train.txt, dev.txt, test.txt (text<TAB>label) and class.txt.", "--data-dir"))
    train_file: Path | None = field(default=None, metadata=_data(
        "Training file (TSV, CSV with a header, or JSONL); overrides --data-dir.", "--train"))
    dev_file: Path | None = field(default=None, metadata=_data("Dev file: picks the best model.", "--dev"))
    test_file: Path | None = field(default=None, metadata=_data("Test file: reported at the end.", "--test"))
    labels_file: Path | None = field(default=None, metadata=_data(
        "class.txt: one label name per line (line i = label i).", "--labels"))
    model: str | None = field(default=None, metadata=_FINE_TUNE_MODEL)  # None: DEFAULT_MODEL unless config_name
    config_name: str | None = field(default=None, metadata=_CONFIG)  # tiny|small|base: a fresh model
    vocab: Path | None = field(default=None, metadata=_VOCAB)
    max_seq_len: int = field(default=128, metadata=_data("Longer texts are truncated to this many tokens.", "--max-seq-len"))
    metric: str = field(default="accuracy", metadata=_data("Dev metric that picks OUT/best: accuracy or macro_f1.", "--metric"))
    pooling: str | None = field(default=None, metadata=_data(  # None: the model's own (config.json), else pooler
        "What the classifier reads: pooler (tanh(dense([CLS])), as transformers), cls (the [CLS] vector) or mean "
        "(over tokens; suits sentence-embedding models such as m3e). Default: the model's own, else pooler. Saved in "
        "config.json.", "--pooling"))
    label_smoothing: float = field(default=LABEL_SMOOTHING, metadata=option(
        "Label smoothing: the training target spreads x evenly over all labels and puts the rest on the gold one "
        "(0: plain cross-entropy). Dev loss is always plain.", "--label-smoothing", panel=TRAINING))


@dataclass
class NerOptions:
    """train-ner: the data files, the model to start from and the tagger's settings."""

    train_file: Path = field(metadata=_data(
        "Training file: CoNLL (TOKEN TAG per line, a blank line between sentences; BIO, IOB1, BIOES or BMES tags), "
        "JSONL with character offsets, or CLUENER JSON lines.", "--train"))
    dev_file: Path | None = field(default=None, metadata=_data(
        "Dev file (same formats): picks the best model by entity F1.", "--dev"))
    test_file: Path | None = field(default=None, metadata=_data("Test file: reported at the end.", "--test"))
    model: str | None = field(default=None, metadata=_FINE_TUNE_MODEL)  # None: DEFAULT_MODEL unless config_name
    config_name: str | None = field(default=None, metadata=_CONFIG)
    vocab: Path | None = field(default=None, metadata=_VOCAB)
    # Ids per window, [CLS] and [SEP] included; longer sentences become several windows.
    max_seq_len: int = field(default=128, metadata=_data(
        "Ids per window; longer sentences are read in overlapping windows, never truncated.", "--max-seq-len"))
    crf: bool = field(default=False, metadata=option(
        "A CRF on top: learned tag transitions, Viterbi decoding.", "--crf", panel=TAGGING))
    crf_lr_scale: float = field(default=CRF_LR_SCALE, metadata=option(
        "With --crf: the CRF's lr is this times the peak lr (its scores start at zero and need larger steps).",
        "--crf-lr-scale", panel=TAGGING))


@dataclass
class PretrainOptions:
    """pretrain: the make-mlm-data output, the model to continue (or a fresh one) and dynamic masking."""

    data: Path = field(metadata=_data("make-mlm-data output dir.", "--data"))
    model: str | None = field(default=None, metadata=_data(
        "Model dir or hub repo id to continue pretraining.", "--model", "-m"))
    config_name: str | None = field(default=None, metadata=_CONFIG)
    vocab: Path | None = field(default=None, metadata=_VOCAB)
    dynamic_masking: bool = field(default=False, metadata=_data(
        "Re-mask every epoch (needs make-mlm-data --no-mask output).", "--dynamic-masking"))
    masked_lm_prob: float | None = field(default=None, metadata=_data(  # None: the data's make-mlm-data settings
        "With --dynamic-masking: share of tokens to predict (default: as make-mlm-data, 0.15).", "--masked-lm-prob"))
    max_predictions: int | None = field(default=None, metadata=_data(
        "With --dynamic-masking: most predictions per sequence.", "--max-predictions"))
    eval_data: Path | None = field(default=None, metadata=_data(
        "make-mlm-data dir for held-out masked-token accuracy and perplexity.", "--eval-data"))
    eval_fraction: float | None = field(default=None, metadata=_data(
        "Hold out this share of --data for evaluation (e.g. 0.01).", "--eval-fraction"))


def with_default_model(options):
    """The options of a fine-tuning run (ClassifierOptions, NerOptions) with `model` filled: DEFAULT_MODEL when
    neither model nor config_name is given; both given is a ConfigError."""
    if options.model is not None and options.config_name is not None:
        raise ConfigError("give `model` DIR|REPO to fine-tune a checkpoint, or `config_name` tiny|small|base to start "
                          "from scratch (not both)")
    if options.model is None and options.config_name is None:
        return dataclasses.replace(options, model=DEFAULT_MODEL)
    return options
