"""The sbert model dir, and loading any BERT (sbert dir, HF dir, or hub repo id) onto our model.

An sbert model dir holds:
    config.json        HF field names (id2label/label2id for classifiers), so transformers reads it too
    model.safetensors  our parameter names: bert.*, and mlm_head.* / classifier.* when trained
    vocab.txt          the tokenizer's vocab (+ tokenizer_config.json with do_lower_case)
    sbert.json         format version, sbert version, task, heads present, where it came from

Reading: resolve_model_dir, read_checkpoint, read_meta, expected_shapes, load_for_task, build_or_load,
load_model, load_tokenizer. Writing, two writers: save_model_dir (a live model, into a new folder the caller
places: training's checkpoints and best/last) and write_model_dir (tensors and a config, placed atomically at
out_dir: convert's sbert dirs and HF exports); model_meta is sbert.json's content.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from sbert_cli.errors import ConfigError, ModelLoadError, OutputError, WeightMismatchError, os_error_message
from sbert_cli.limits import is_int, parse_json
from sbert_cli.model.bert import (
    BertForMaskedLM,
    BertForTokenClassification,
    build_model,
)
from sbert_cli.model.config import BertConfig
from sbert_cli.model.hf_weights import (
    EXTRA_PREFIXES,
    HEAD_PREFIXES,
    OPTIONAL_PREFIXES,
    ConversionReport,
    convert_hf_state_dict,
    find_weights,
    hf_architecture,
    read_state_dict,
)
from sbert_cli.model.tokenizer import BertTokenizer

SBERT_META = "sbert.json"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A checkpoint read from disk, its tensors under our names."""

    path: Path
    config: BertConfig
    state: dict[str, torch.Tensor]
    report: ConversionReport
    source_format: str  # "sbert" or "hf"
    meta: dict = field(default_factory=dict)

    @property
    def heads(self) -> list[str]:
        return self.report.heads


def is_repo_id(text: str) -> bool:
    """`owner/name` (or a bare `name`) that is not a path on disk."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return False
    return all(part and all(c.isalnum() or c in "-_." for c in part) for part in text.split("/"))


def resolve_model_dir(model: str | Path) -> Path:
    """A local model dir, or a hub repo id fetched into (or found in) the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{path}: is a file; `model` takes a model folder (config.json, weights, vocab.txt)")
    owner = str(model).split("/")[0]
    if is_repo_id(str(model)) and "/" in str(model) and Path(owner).is_dir():
        raise ModelLoadError(
            f"{path}: no such model folder (and not a hub repo id: {owner}/ is a local folder); check the folder name"
        )
    if is_repo_id(str(model)):
        from sbert_cli.model.hub import fetch_model

        return fetch_model(str(model))
    raise ModelLoadError(f"{path}: no such model folder; give a local model dir or a hub repo id such as hfl/chinese-bert-wwm-ext")


def expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter a checkpoint with this config may hold, under our names (built on the meta device)."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in BertForMaskedLM(config).state_dict().items()}
        if config.num_labels:
            tagger = BertForTokenClassification(config, crf=True)  # classifier.* as a sequence classifier's, and crf.*
            shapes.update({k: tuple(v.shape) for k, v in tagger.state_dict().items() if k.startswith(("classifier.", "crf."))})
    return shapes


def read_checkpoint(model: str | Path) -> Checkpoint:
    """Read a model dir (sbert or HF format, or a repo id) and map its tensors onto our names."""
    path = resolve_model_dir(model)
    config = BertConfig.from_json(path / "config.json")
    meta_path = path / SBERT_META
    meta = read_meta(meta_path) if meta_path.is_file() else None
    _check_vocab_size(path / "vocab.txt", config)
    weights = find_weights(path)
    state = read_state_dict(weights)
    _check_size_and_types(config, state, weights, path)
    _check_finite(state, weights)
    if meta is not None:
        report = _check_sbert_state(state, expected_shapes(config), path)
    else:
        try:
            state, report = convert_hf_state_dict(state, expected_shapes(config))
        except WeightMismatchError as e:
            raise WeightMismatchError(f"{path}: {e}") from None
    if is_tagger_config(config, meta):  # classifier.* tags tokens: the head is a tagger's
        report.heads = ["ner" if head == "cls" else head for head in report.heads]
    return Checkpoint(path, config, state, report, "sbert" if meta is not None else "hf", meta or {})


def is_tagger_config(config: BertConfig, meta: dict | None) -> bool:
    """Whether a model dir's classifier.* is a token classifier: sbert.json's task says ner, or (an HF dir)
    config.json's architectures name BertForTokenClassification."""
    if meta is not None:
        return meta.get("task") == "ner"
    architectures = config.extra.get("architectures")
    return isinstance(architectures, list) and "BertForTokenClassification" in architectures


def read_meta(path: Path) -> dict:
    """sbert.json, its fields checked: format, task, heads, max_seq_len, source."""
    try:
        meta = parse_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, found {type(meta).__name__}; convert the model again")
    problem = None
    version, task, heads, max_seq_len = (meta.get(k) for k in ("format", "task", "heads", "max_seq_len"))
    if version is not None and (not is_int(version) or version > FORMAT_VERSION):
        problem = f"format {version!r}: this sbert reads format {FORMAT_VERSION} model dirs; upgrade sbert"
    elif task is not None and not isinstance(task, str):
        problem = f"task must be a name such as \"mlm\" or \"cls\", not {task!r}"
    elif heads is not None and not (isinstance(heads, list) and all(isinstance(h, str) for h in heads)):
        problem = f"heads must be a list of names such as [\"mlm\"], not {heads!r}"
    elif max_seq_len is not None and (not is_int(max_seq_len) or max_seq_len < 2):
        problem = f"max_seq_len must be an integer of at least 2, not {max_seq_len!r}"
    elif meta.get("source") is not None and not isinstance(meta["source"], str):
        problem = f"source must be a string, not {meta['source']!r}"
    if problem:
        raise ModelLoadError(f"{path}: {problem}")
    return meta


def _check_vocab_size(vocab_path: Path, config: BertConfig) -> None:
    """vocab.txt must list exactly config.json's vocab_size tokens: an id past either end is an IndexError or a
    token the model can never predict."""
    if not vocab_path.is_file():
        return  # load_tokenizer says what is missing, where a tokenizer is needed
    from sbert_cli.model.tokenizer import read_vocab

    tokens = len(read_vocab(vocab_path))
    if tokens != config.vocab_size:
        raise ModelLoadError(
            f"{vocab_path}: {tokens:,} tokens, but config.json's vocab_size is {config.vocab_size:,}; "
            "use the vocab.txt these weights were trained with"
        )


def _check_size_and_types(config: BertConfig, state: dict[str, torch.Tensor], weights: Path, path: Path) -> None:
    """Before any model is built: config.json's arithmetic against the tensors the file holds (100,000 layers over
    a small file), and float weights only (int8 tensors would load and predict garbage)."""
    try:
        config.check_size(sum(t.numel() for t in state.values()), weights)
    except ConfigError as e:
        raise ModelLoadError(f"{path / 'config.json'}: {e}") from None
    for name, tensor in state.items():  # (old checkpoints keep an int64 position_ids buffer: not a weight)
        if not tensor.is_floating_point() and not name.endswith("position_ids"):
            raise ModelLoadError(
                f"{weights}: tensor {name} is {str(tensor.dtype).removeprefix('torch.')}; sbert loads float weights "
                "(fp32, fp16, bf16): use the unquantized checkpoint (`precision` int8 quantizes at load)"
            )


def _check_finite(state: dict[str, torch.Tensor], weights: Path) -> None:
    """NaN or infinite weights (a diverged run, a corrupt file) make every output NaN: refuse them by name."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelLoadError(
                f"{weights}: tensor {name} holds {bad:,} NaN or infinite values; the checkpoint is broken "
                "(a diverged training run?): use an earlier checkpoint or download it again"
            )


def _check_sbert_state(state, shapes, path: Path) -> ConversionReport:
    missing = [k for k in shapes if k not in state and not k.startswith(OPTIONAL_PREFIXES)]
    unexpected = [k for k in state if k not in shapes]
    mismatched = [k for k in state if k in shapes and tuple(state[k].shape) != shapes[k]]
    if missing or unexpected or mismatched:
        raise WeightMismatchError(
            f"{path}: model.safetensors does not match config.json — missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatch {mismatched[:5]}"
        )
    heads = [task for task, prefix in HEAD_PREFIXES.items() if any(k.startswith(prefix) for k in state)]
    return ConversionReport(
        mapped=len(state), heads=heads,
        missing_optional=sorted(k for k in shapes if k not in state and not k.startswith(EXTRA_PREFIXES)),
    )


@dataclass
class LoadedModel:
    model: nn.Module
    checkpoint: Checkpoint
    initialized: list[str]  # parameters not in the checkpoint, freshly initialised (a new head)


def load_for_task(
    model: str | Path,
    task: str = "base",
    labels: list[str] | None = None,
    allow_new_head: bool = False,
) -> LoadedModel:
    """Build the model for `task` ("base", "mlm", "cls", "ner") and load the checkpoint into it.

    A head the checkpoint lacks is an error unless allow_new_head (training), in which case it is
    initialised fresh and listed in `initialized`. `labels` gives a classifier its label names (a tagger its
    tag names); a checkpoint whose head has other labels gets a new head only when allow_new_head. A tagger
    has a CRF when the checkpoint has crf.* tensors.
    """
    if task not in ("base", "mlm", "cls", "ner"):
        raise ValueError(f"unknown task {task!r}")
    ck = read_checkpoint(model)
    config = ck.config
    state = dict(ck.state)
    kind = next((head for head in ("ner", "cls") if head in ck.heads), None)  # what its classifier.* is
    if task in ("cls", "ner") and kind is not None and kind != task and not allow_new_head:
        what = {"ner": "a tagger (train-ner)", "cls": "a text classifier (train-cls)"}
        raise ModelLoadError(f"{ck.path}: is {what[kind]}, not {what[task]}; sbert eval/predict/serve tell them apart "
                             "by sbert.json's task (or config.json's architectures)")
    options = {}
    if task == "ner":  # a tagger: its labels are tag names; it has a CRF when the checkpoint holds one
        options["crf"] = any(k.startswith("crf.") for k in state)
        if labels is not None and config.labels != list(labels):
            if not allow_new_head:
                raise ModelLoadError(f"{ck.path}: its tagger has tags {config.labels}, not {list(labels)}")
            state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "crf."))}
            config = config.with_labels(list(labels))
            options["crf"] = False
        if not config.num_labels:
            raise ModelLoadError(f"{ck.path}: has no tag names (id2label); train a tagger with sbert train-ner")
    if task == "cls":
        if labels is not None and config.labels != list(labels):
            if "cls" in ck.heads and not allow_new_head:
                raise ModelLoadError(
                    f"{ck.path}: its classifier has labels {config.labels}, not {list(labels)}"
                )
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            config = config.with_labels(list(labels))
        if not config.num_labels:
            raise ModelLoadError(f"{ck.path}: has no classifier labels (id2label); train one with sbert train-cls")
    net = build_model(config, task, **options)
    if task == "base":
        state = {k[len("bert.") :]: v for k, v in state.items() if k.startswith("bert.")}
    wanted = net.state_dict().keys()
    state = {k: v for k, v in state.items() if k in wanted}
    initialized = sorted(set(wanted) - set(state))
    not_head = [k for k in initialized if not k.startswith(("mlm_head.", "classifier.", "crf.", "pooler.", "bert.pooler."))]
    if not_head:  # read_checkpoint checked the encoder; this would be our own bug
        raise WeightMismatchError(f"{ck.path}: missing {not_head[:5]}")
    head_missing = [k for k in initialized if not k.startswith(("pooler.", "bert.pooler."))]
    if head_missing and not allow_new_head:
        what = {"mlm": "masked-LM head (cls.predictions.*)", "cls": "classification head", "ner": "tagging head"}.get(task, "head")
        trainer = {"mlm": mlm_head_recipe(ck.path), "cls": "sbert train-cls --model ...",
                   "ner": "sbert train-ner --model ..."}.get(task, "sbert pretrain")
        raise ModelLoadError(
            f"{ck.path}: has no {what}; it cannot predict with it. Train one ({trainer}) "
            "or use a checkpoint that ships it"
        )
    net.load_state_dict(state, strict=False)
    net.eval()
    return LoadedModel(net, ck, initialized)


def mlm_head_recipe(model: str | Path) -> str:
    """The whole recipe for a trained MLM head on `model`, in CLI words: data first, then pretraining."""
    return (f"sbert make-mlm-data YOUR_TEXT.txt --model {model} --no-mask --out mlm-data, then sbert pretrain "
            f"--model {model} --data mlm-data --dynamic-masking --out runs/mlm; runs/mlm/best then has the head")


def build_or_load(
    task: str,
    *,
    model: str | Path | None,
    config_name: str | None,
    vocab: str | Path | None,
    seed: int,
    labels: list[str] | None = None,
) -> tuple[nn.Module, BertTokenizer, list[str]]:
    """(model, tokenizer, freshly initialised parameter names) that a training run of `task` starts from:
    a fresh `config_name` preset (tiny|small|base) with `vocab` (default: the bundled Chinese vocab), or the
    model dir / repo id `model` with any head it lacks (or a classifier with other `labels`) initialised fresh.

    The seed is set first, so a fresh head (or model) starts the same in every process and every run.
    """
    from sbert_cli.model.config import preset
    from sbert_cli.resources import CHINESE_VOCAB

    torch.manual_seed(seed)
    if config_name is not None:
        tokenizer = BertTokenizer.from_vocab(vocab or CHINESE_VOCAB)
        config = preset(config_name, vocab_size=len(tokenizer))
        if labels is not None:
            config = config.with_labels(labels)
        return build_model(config, task), tokenizer, ["all parameters (`config_name`)"]
    model_dir = resolve_model_dir(model)
    loaded = load_for_task(model_dir, task, labels=labels, allow_new_head=True)
    return loaded.model, load_tokenizer(model_dir), loaded.initialized


def freeze_unused_pooler(model: nn.Module, initialized: list[str]) -> list[str]:
    """Freeze the pooler of a model that never uses it (so no optimizer or DDP waits for its gradient), and
    `initialized` without it: a pooler the checkpoint lacks is not a new head."""
    model.bert.pooler.requires_grad_(False)
    return [name for name in initialized if not name.startswith("bert.pooler.")]


def load_model(path_or_repo: str | Path, task: str = "base") -> nn.Module:
    """A model in eval mode: task "base" (BertModel), "mlm" (BertForMaskedLM) or "cls" (classifier)."""
    return load_for_task(path_or_repo, task).model


def load_tokenizer(path_or_repo: str | Path) -> BertTokenizer:
    """The tokenizer of a model dir or repo id, or of a vocab.txt file."""
    path = Path(path_or_repo).expanduser()
    if path.is_file():
        return BertTokenizer.from_vocab(path)
    return BertTokenizer.from_model_dir(resolve_model_dir(path_or_repo))


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters under our canonical names (a bare BertModel gets the `bert.` prefix)."""
    from sbert_cli.model.bert import BertModel

    state = model.state_dict()
    if isinstance(model, BertModel):
        state = {f"bert.{k}": v for k, v in state.items()}
    return state


def write_model_dir(
    out_dir: str | Path,
    config_json: dict,
    tensors: dict[str, torch.Tensor],
    tokenizer: BertTokenizer,
    *,
    meta: dict | None = None,
    tokenizer_config: dict | None = None,
) -> Path:
    """Write tensors and a config as a model dir at out_dir, placed atomically: config.json, model.safetensors,
    vocab.txt, tokenizer_config.json, and sbert.json when `meta` is given (see model_meta; an HF export has none).

    Written into a temporary sibling first, then moved into place: a new out_dir appears whole; into an
    existing one the files move one rename each, replacing only files sbert wrote there before (see
    outputs.py), so a user's other files stay. The one writer behind converted model dirs and HF exports.
    """
    from sbert_cli.outputs import OutputDir, place_folder, remove_stale_temps, temp_path

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir.parent, out_dir.name)  # what a killed run left beside it
    tmp = temp_path(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            _write_files(tmp, config_json, tensors, tokenizer, meta, tokenizer_config)
        except (OSError, SafetensorError) as e:  # a full disk, `ulimit -f`, a read-only folder
            raise OutputError(os_error_message(e, out_dir) if isinstance(e, OSError) else f"{out_dir}: cannot write ({e})") from None
        if out_dir.exists() and OutputDir(out_dir).foreign():
            OutputDir(out_dir).install(tmp)  # a user's files stay: sbert's are replaced one rename each
        else:  # missing, empty or only sbert's: one rename, so out_dir is the old whole or the new
            place_folder(tmp, out_dir, force=True)
            OutputDir(out_dir).record(*out_dir.iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already unless something above failed
    return out_dir


def save_model_dir(model: nn.Module, folder: Path, tokenizer: BertTokenizer, task: str, source: str | None = None,
                   extra_meta: dict | None = None) -> Path:
    """Save a live model as an sbert model dir (with sbert.json) into `folder`, a new folder: no temp dir, no
    replacing, the caller places it (training's checkpoints and best/last)."""
    state = full_state_dict(model)
    return _write_files(folder, model.config.to_dict(), state, tokenizer, model_meta(task, state, source, extra_meta))


def _write_files(folder: Path, config_json: dict, tensors: dict[str, torch.Tensor], tokenizer: BertTokenizer,
                 meta: dict | None = None, tokenizer_config: dict | None = None) -> Path:
    """The files of a model dir, into the new folder `folder`. With sbert.json's `meta`, config.json's architectures
    name the transformers class of the heads written (a classifier: BertForSequenceClassification)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    if meta is not None:
        config_json = {**config_json, "architectures": [hf_architecture(meta["heads"])]}
    json_files = {
        "config.json": config_json,
        "tokenizer_config.json": {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": tokenizer.do_lower_case,
            **(tokenizer_config or {}),
        },
        **({SBERT_META: meta} if meta is not None else {}),
    }
    for name, content in json_files.items():
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    except SafetensorError as e:  # a full disk or `ulimit -f` inside safetensors: an OSError as every writer's
        code = re.search(r"os error (\d+)", str(e))
        number = int(code[1]) if code else errno.EIO
        raise OSError(number, os.strerror(number), str(folder / "model.safetensors")) from None
    if tokenizer.vocab_path is not None and Path(tokenizer.vocab_path).is_file():
        shutil.copyfile(tokenizer.vocab_path, folder / "vocab.txt")
    else:
        ordered = sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])
        (folder / "vocab.txt").write_text("".join(t + "\n" for t, _ in ordered), encoding="utf-8")
    from sbert_cli.outputs import finish_folder

    return finish_folder(folder)  # the user's umask (safetensors writes 0600), on disk before it is placed


def model_meta(task: str, state: dict, source: str | None, extra_meta: dict | None = None) -> dict:
    """sbert.json's content for a model dir."""
    from sbert_cli import __version__

    heads = [t for t, prefix in HEAD_PREFIXES.items() if any(k.startswith(prefix) for k in state)]
    if task == "ner":  # a tagger's classifier.* tags tokens
        heads = ["ner" if head == "cls" else head for head in heads]
    return {
        "format": FORMAT_VERSION,
        "sbert_version": __version__,
        "task": task,
        "heads": heads,
        "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra_meta or {}),
    }
