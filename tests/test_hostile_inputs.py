"""Hostile inputs through the CLI: broken files sbert reads, option values without sense, undecodable text.

Every case in CASES must end with exit code 1, exactly one `error:` line naming the file (or the option) at
fault, no traceback, and the case's folder exactly as it was: no output folder created, no file changed. The
last tests run the worst option values under a 3 GB address-space limit, where a clean error or a clamped,
finishing run is the only way to pass.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import one_line_error
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.resources import NER_SAMPLE_TRAIN, THUCNEWS_TRAIN

runner = CliRunner()
TRAIN_CLS = ["train-cls", "--config", "tiny", "--max-steps", "2", "--batch-size", "4", "--precision", "fp32", "--no-plot"]
TRAIN_NER = ["train-ner", "--config", "tiny", "--max-steps", "2", "--batch-size", "4", "--precision", "fp32", "--no-plot"]
PRETRAIN = ["pretrain", "--config", "tiny", "--max-steps", "2", "--batch-size", "4", "--precision", "fp32", "--no-plot"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, hf_mlm_dir, hf_cls_dir):
    """Good inputs to break copies of: HF and sbert model dirs, masked and unmasked shards, small text files."""
    from sbert_cli.tasks.convert import convert_weights
    from sbert_cli.data.mlm_data import MLMDataSettings, make_mlm_data
    from sbert_cli.model.model_dir import load_tokenizer

    root = tmp_path_factory.mktemp("hostile-inputs")
    rows = THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()[:40]
    (root / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "train.txt").write_text("\n".join(r.split("\t")[0] for r in rows) + "\n", encoding="utf-8")
    (root / "cls.tsv").write_text("".join(f"{r.split(chr(9))[0]}\t{('finance', 'sports', 'game')[i % 3]}\n"
                                          for i, r in enumerate(rows[:12])), encoding="utf-8")
    tokenizer = load_tokenizer(hf_mlm_dir)
    for name, mask in (("masked", True), ("unmasked", False)):
        make_mlm_data([root / "train.txt"], root / name, tokenizer, MLMDataSettings(max_seq_len=32, mask=mask))
    tagged = runner.invoke(app, TRAIN_NER + ["--train", str(NER_SAMPLE_TRAIN), "--crf", "--max-steps", "1",
                                             "--out", str(root / "tagger-run")])
    assert tagged.exit_code == 0, tagged.output
    return {
        "tagger": root / "tagger-run" / "last", "tagger_run": root / "tagger-run",
        "hf_mlm": hf_mlm_dir, "hf_cls": hf_cls_dir, "root": root, "masked": root / "masked", "unmasked": root / "unmasked",
        "sbert_mlm": convert_weights(hf_mlm_dir, root / "sbert-mlm", probe=False).destination,
        "sbert_cls": convert_weights(hf_cls_dir, root / "sbert-cls", probe=False).destination,
    }


# --- helpers that break a copy of a good input inside the case's folder


def copy(inputs, key: str, ws: Path, name: str | None = None) -> Path:
    return Path(shutil.copytree(inputs[key], ws / (name or key)))


def edit_json(path: Path, change) -> Path:
    """Rewrite a JSON file with change(data): a dict of fields to set, or a function returning the new content."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data = change(data) if callable(change) else {**data, **change}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def model_with_config(inputs, ws: Path, key: str = "hf_cls", **changes) -> str:
    model = copy(inputs, key, ws, "model")
    edit_json(model / "config.json", changes)
    return str(model)


def shards_with_manifest(inputs, ws: Path, change, key: str = "masked") -> str:
    data = copy(inputs, key, ws, "data")
    edit_json(data / "manifest.json", change)
    return str(data)


def shards_with_array(inputs, ws: Path, array: str, change, key: str = "masked") -> str:
    data = copy(inputs, key, ws, "data")
    path = data / "shard-00000" / f"{array}.npy"
    np.save(path, change(np.load(path)))
    return str(data)


def vocab_edited(inputs, ws: Path, change, key: str = "hf_mlm") -> str:
    model = copy(inputs, key, ws, "model")
    lines = (model / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    (model / "vocab.txt").write_text("\n".join(change(lines)) + "\n", encoding="utf-8")
    return str(model)


def with_tensor(inputs, ws: Path, value: float, key: str = "sbert_mlm") -> str:
    from safetensors.torch import load_file, save_file

    model = copy(inputs, key, ws, "model")
    state = load_file(model / "model.safetensors")
    name = next(k for k in sorted(state) if ".1." in k and state[k].ndim == 2)  # a matrix of the second layer
    state[name][0, 0] = value
    save_file(state, model / "model.safetensors")
    return str(model)


def write(ws: Path, name: str, content: str | bytes) -> str:
    path = ws / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(path)


def earlier_output(inputs, ws: Path) -> str:
    """A folder holding an earlier make-mlm-data run and a file of the user's."""
    out = copy(inputs, "masked", ws, "out")
    (out / "photo.jpg").write_bytes(b"\xff\xd8 the user's photo")
    return str(out)


# --- the table: name -> (function(inputs, ws) -> (argv, stdin), what the error line must name)

CASES: dict[str, tuple] = {}


def case(name: str, *names: str):
    def register(build):
        assert name not in CASES
        CASES[name] = (build, names)
        return build
    return register


def mlm_data(ws, inputs, *options):
    return ["make-mlm-data", str(inputs["root"] / "train.txt"), "--out", str(ws / "out"), *options], None


def fill(inputs, *options, model=None):
    return ["fill-mask", "--model", str(model or inputs["hf_mlm"]), *options], None


# numeric options: a range that says why, checked before any folder is made
case("dupe-factor 1e9", "--dupe-factor", "--no-mask")(lambda i, ws: mlm_data(ws, i, "--dupe-factor", "1000000000"))
case("masked-lm-prob 5", "--masked-lm-prob")(lambda i, ws: mlm_data(ws, i, "--masked-lm-prob", "5"))
case("masked-lm-prob nan", "--masked-lm-prob")(lambda i, ws: mlm_data(ws, i, "--masked-lm-prob", "nan"))
case("max-predictions 1e12", "--max-predictions")(lambda i, ws: mlm_data(ws, i, "--max-predictions", str(10**12)))
case("make-mlm-data seed -1", "--seed")(lambda i, ws: mlm_data(ws, i, "--seed", "-1"))
case("shard-size 1e12", "--shard-size")(lambda i, ws: mlm_data(ws, i, "--shard-size", str(10**12)))
case("max-seq-len 1e9", "--max-seq-len")(lambda i, ws: mlm_data(ws, i, "--max-seq-len", str(10**9)))
case("dupe-factor 1e9 --force keeps earlier output", "--dupe-factor")(
    lambda i, ws: (["make-mlm-data", str(i["root"] / "train.txt"), "--out", earlier_output(i, ws), "--force",
                    "--dupe-factor", "1000000000"], None))
case("joint top-k 1e9", "--top-k", "--joint")(lambda i, ws: fill(i, "--joint", "--top-k", "1000000000", "我[MASK][MASK]你"))
case("top-k above the vocab", "--top-k", "21,128")(lambda i, ws: fill(i, "--top-k", "1000000000", "我[MASK]你"))
case("fill-mask batch-size 1e12", "--batch-size")(lambda i, ws: fill(i, "--batch-size", str(10**12), "我[MASK]你"))
case("fill-mask on-bad-lines maybe", "--on-bad-lines")(lambda i, ws: fill(i, "--on-bad-lines", "maybe", "我[MASK]你"))
case("embed batch-size 1e12", "--batch-size")(
    lambda i, ws: (["embed", "--model", str(i["hf_cls"]), "--batch-size", str(10**12), "你好"], None))
case("serve max-batch-size 0", "--max-batch-size")(
    lambda i, ws: (["serve", "--model", str(i["hf_cls"]), "--max-batch-size", "0"], None))
case("serve max-queue 1e12", "--max-queue")(
    lambda i, ws: (["serve", "--model", str(i["hf_cls"]), "--max-queue", str(10**12)], None))
case("serve port 70000", "--port")(lambda i, ws: (["serve", "--model", str(i["hf_cls"]), "--port", "70000"], None))
case("predict top-k 0", "--top-k")(lambda i, ws: (["predict", "--model", str(i["hf_cls"]), "--top-k", "0", "你好"], None))
case("fill-mask top-k 0", "--top-k")(lambda i, ws: fill(i, "--top-k", "0", "我[MASK]你"))
case("predict batch-size 1e12", "--batch-size")(
    lambda i, ws: (["predict", "--model", str(i["hf_cls"]), "--batch-size", str(10**12), "你好"], None))
case("eval batch-size 1e12", "--batch-size")(
    lambda i, ws: (["eval", "--model", str(i["hf_cls"]), "--data", str(i["root"] / "cls.tsv"), "--out", str(ws / "report"),
                    "--batch-size", str(10**12)], None))
case("eval seed -1", "--seed")(
    lambda i, ws: (["eval", "--model", str(i["sbert_mlm"]), "--task", "mlm", "--data", str(i["root"] / "train.txt"),
                    "--out", str(ws / "report"), "--seed", "-1"], None))
case("train-cls batch-size 1e12", "--batch-size", "--grad-accum")(
    lambda i, ws: (TRAIN_CLS + ["--train", str(i["root"] / "train.tsv"), "--out", str(ws / "run"), "--batch-size", str(10**12)], None))
case("train-cls grad-accum 1e9", "--grad-accum")(
    lambda i, ws: (TRAIN_CLS + ["--train", str(i["root"] / "train.tsv"), "--out", str(ws / "run"), "--grad-accum", str(10**9)], None))
case("train-cls epochs 1e9", "--epochs")(
    lambda i, ws: (TRAIN_CLS[:3] + ["--epochs", str(10**9), "--train", str(i["root"] / "train.tsv"), "--out", str(ws / "run")], None))
case("train-cls weight-decay nan", "--weight-decay")(
    lambda i, ws: (TRAIN_CLS + ["--train", str(i["root"] / "train.tsv"), "--out", str(ws / "run"), "--weight-decay", "nan"], None))
case("pretrain max-steps 1e15", "--max-steps")(
    lambda i, ws: (PRETRAIN + ["--data", str(i["root"] / "masked"), "--out", str(ws / "run"), "--max-steps", str(10**15)], None))
case("pretrain seed -1", "--seed")(
    lambda i, ws: (PRETRAIN + ["--data", str(i["root"] / "masked"), "--out", str(ws / "run"), "--seed", "-1"], None))


# config.json: types, ranges, label maps
def predict_with_config(**changes):
    return lambda i, ws: (["predict", "--model", model_with_config(i, ws, **changes), "你好"], None)


for label, changes, field in [
    ("hidden_size -64", dict(hidden_size=-64), "hidden_size"),
    ("hidden_size 32.0", dict(hidden_size=32.0), "hidden_size"),
    ("vocab_size -1", dict(vocab_size=-1), "vocab_size"),
    ("num_attention_heads 0", dict(num_attention_heads=0), "num_attention_heads"),
    ("num_attention_heads 5 does not divide 32", dict(num_attention_heads=5), "num_attention_heads"),
    ("layer_norm_eps abc", dict(layer_norm_eps="abc"), "layer_norm_eps"),
    ("hidden_dropout_prob 5", dict(hidden_dropout_prob=5), "hidden_dropout_prob"),
    ("id2label a list", dict(id2label=["a", "b", "c"]), "id2label"),
    ("id2label keys not ids", dict(id2label={"a": "x", "b": "y", "c": "z"}), "id2label"),
    ("id2label with a gap", dict(id2label={"0": "x", "1": "y", "5": "z"}), "id2label"),
    ("id2label a name twice", dict(id2label={"0": "x", "1": "x", "2": "z"}), "id2label"),
    ("num_labels 10 with 3 names", dict(num_labels=10), "num_labels"),
    ("num_labels 1e9 without names", dict(id2label=None, num_labels=10**9), "num_labels"),
    ("pad_token_id past the vocab", dict(pad_token_id=10**9), "pad_token_id"),
    ("max_position_embeddings 0", dict(max_position_embeddings=0), "max_position_embeddings"),
    ("hidden_size true", dict(hidden_size=True), "hidden_size"),
]:
    case(f"config.json {label}", "config.json", field)(predict_with_config(**changes))
case("config.json a list", "config.json")(
    lambda i, ws: (["predict", "--model", str(edit_json(copy(i, "hf_cls", ws, "model") / "config.json", lambda d: [d]).parent), "x"], None))
case("convert-weights from a broken config", "config.json", "num_attention_heads")(
    lambda i, ws: (["convert-weights", model_with_config(i, ws, "hf_mlm", num_attention_heads=0), str(ws / "dst"), "--no-probe"], None))

# sbert.json
for label, content, field in [
    ("a list", [1], "JSON object"),
    ("heads a string", {"format": 1, "task": "mlm", "heads": "mlm"}, "heads"),
    ("task a number", {"format": 1, "task": 5, "heads": ["mlm"]}, "task"),
    ("max_seq_len a string", {"format": 1, "task": "mlm", "heads": ["mlm"], "max_seq_len": "abc"}, "max_seq_len"),
    ("format from the future", {"format": 99, "task": "mlm", "heads": ["mlm"]}, "format"),
]:
    case(f"sbert.json {label}", "sbert.json", field)(
        lambda i, ws, content=content: fill(i, "我[MASK]你", model=edit_json(copy(i, "sbert_mlm", ws, "model") / "sbert.json", lambda _: content).parent))

# weights
case("NaN weight", "model.safetensors", "bert.layers.1.", "NaN")(lambda i, ws: fill(i, "我[MASK]你", model=with_tensor(i, ws, float("nan"))))
case("infinite weight in an HF dir", "model.safetensors", "NaN or infinite")(
    lambda i, ws: (["predict", "--model", with_tensor(i, ws, float("inf"), "hf_cls"), "你好"], None))

# vocab.txt
case("vocab.txt with a second [CLS]", "vocab.txt:201", "[CLS]", "twice")(
    lambda i, ws: fill(i, "我[MASK]你", model=vocab_edited(i, ws, lambda lines: lines[:200] + ["[CLS]"] + lines[201:])))
case("vocab.txt shorter than vocab_size", "vocab.txt", "vocab_size")(
    lambda i, ws: fill(i, "我[MASK]你", model=vocab_edited(i, ws, lambda lines: lines[:-100])))
case("vocab.txt longer than vocab_size", "vocab.txt", "vocab_size")(
    lambda i, ws: fill(i, "我[MASK]你", model=vocab_edited(i, ws, lambda lines: lines + [f"extra{n}" for n in range(10)])))
case("convert-weights from a vocab with duplicates", "vocab.txt:", "'的' is listed twice (first on line 301)")(
    lambda i, ws: (["convert-weights", vocab_edited(i, ws, lambda lines: lines[:300] + ["的"] + lines[301:]), str(ws / "dst"), "--no-probe"], None))
case("make-mlm-data --vocab with duplicates", "dup.txt:11", "twice")(
    lambda i, ws: mlm_data(ws, i, "--vocab", write(ws, "dup.txt", "".join(t + "\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "的", "了", "是", "在", "有", "是"]))))


# manifest.json: shapes, types, shard names that stay inside the data dir
def pretrain_on(data_builder, *extra):
    return lambda i, ws: (PRETRAIN + list(extra) + ["--data", data_builder(i, ws), "--out", str(ws / "run")], None)


for label, change, field, key in [
    ("a list", lambda m: [m], "manifest.json", "masked"),
    ("shards a string", {"shards": "shard-00000"}, "shards", "masked"),
    ("shard entries strings", lambda m: {**m, "shards": ["shard-00000"]}, "shards[0]", "masked"),
    ("settings null", {"settings": None}, "settings", "masked"),
    ("max_seq_len a string", {"max_seq_len": "abc"}, "max_seq_len", "masked"),
    ("masked a string", {"masked": "yes"}, "masked", "masked"),
    ("sequences a string", lambda m: {**m, "shards": [{**m["shards"][0], "sequences": "40"}]}, "sequences", "masked"),
    ("shard name ../other", lambda m: {**m, "shards": [{**m["shards"][0], "name": "../other/shard-00000"}]}, "shards[0].name", "masked"),
    ("shard name absolute", lambda m: {**m, "shards": [{**m["shards"][0], "name": "/etc"}]}, "shards[0].name", "masked"),
    ("settings.masked_lm_prob 5", lambda m: {**m, "settings": {**m["settings"], "masked_lm_prob": 5}}, "settings.masked_lm_prob", "unmasked"),
]:
    extra = ("--dynamic-masking",) if key == "unmasked" else ()
    case(f"manifest.json {label}", "manifest.json", field)(
        pretrain_on(lambda i, ws, change=change, key=key: shards_with_manifest(i, ws, change, key), *extra))
case("eval on a manifest pointing outside its dir", "manifest.json", "shards[0].name")(
    lambda i, ws: (["eval", "--model", str(i["sbert_mlm"]), "--task", "mlm", "--out", str(ws / "report"), "--data",
                    shards_with_manifest(i, ws, lambda m: {**m, "shards": [{**m["shards"][0], "name": "../masked/shard-00000"}]})], None))

# shard arrays: dtypes, offsets, ids and positions in range
for label, array, change, key in [
    ("token ids past the vocab", "input_ids", lambda a: np.where(np.arange(len(a)) == 3, 30000, a).astype(np.int32), "masked"),
    ("labels past the vocab", "masked_labels", lambda a: a.astype(np.int32) + 30000, "masked"),
    ("masked positions past the sequence", "masked_positions", lambda a: (a + 200).astype(np.uint16), "masked"),
    ("float offsets", "offsets", lambda a: a.astype(np.float64), "masked"),
    ("offsets that decrease", "offsets", lambda a: np.concatenate([[0], a[2:3], a[1:2], a[3:]]), "masked"),
    ("2-D token ids", "input_ids", lambda a: a.reshape(1, -1), "masked"),
    ("word ids of -5", "word_ids", lambda a: np.where(a >= 0, -5, a).astype(a.dtype), "unmasked"),
    ("float word ids", "word_ids", lambda a: a.astype(np.float32), "unmasked"),
]:
    extra = ("--dynamic-masking",) if key == "unmasked" else ()
    case(f"shard {label}", f"{array}.npy")(pretrain_on(lambda i, ws, a=array, c=change, k=key: shards_with_array(i, ws, a, c, k), *extra))
case("eval on token ids past the vocab", "input_ids.npy")(
    lambda i, ws: (["eval", "--model", str(i["sbert_mlm"]), "--task", "mlm", "--out", str(ws / "report"), "--data",
                    shards_with_array(i, ws, "input_ids", lambda a: a.astype(np.int32) + 30000)], None))

# text decoding: lone surrogates, invalid UTF-8 on stdin and in arguments, a CSV without header, a folder
SURROGATE = '{"text": "a\\ud800b", "label": "finance"}\n'
case("lone surrogate in a JSONL text (train-cls)", "sur.jsonl:1", "surrogate")(
    lambda i, ws: (TRAIN_CLS + ["--train", write(ws, "sur.jsonl", SURROGATE + '{"text": "b", "label": "sports"}\n'), "--out", str(ws / "run")], None))
case("lone surrogate in a JSONL text (eval)", "sur.jsonl:1", "surrogate")(
    lambda i, ws: (["eval", "--model", str(i["hf_cls"]), "--data", write(ws, "sur.jsonl", SURROGATE), "--out", str(ws / "report")], None))
case("lone surrogate in a JSONL text (predict)", "sur.jsonl:2", "surrogate")(
    lambda i, ws: (["predict", "--model", str(i["hf_cls"]), "--file", write(ws, "sur.jsonl", '{"text": "ok"}\n' + SURROGATE)], None))
case("lone surrogate in a JSONL label", "sur.jsonl:1", "surrogate")(
    lambda i, ws: (["eval", "--model", str(i["hf_cls"]), "--data", write(ws, "sur.jsonl", '{"text": "ab", "label": "fin\\udc00"}\n'), "--out", str(ws / "report")], None))
case("lone surrogate in a JSONL text (make-mlm-data)", "sur.jsonl:1", "surrogate")(
    lambda i, ws: (["make-mlm-data", write(ws, "sur.jsonl", SURROGATE), "--out", str(ws / "out")], None))
case("invalid UTF-8 on stdin (fill-mask)", "<stdin>:1", "not valid UTF-8")(lambda i, ws: (fill(i)[0], b"\xff\xfe[MASK]\n"))
case("invalid UTF-8 on stdin (predict)", "<stdin>:2", "not valid UTF-8")(
    lambda i, ws: (["predict", "--model", str(i["hf_cls"]), "--format", "tsv"], b"ok\n\xff\xfe\n"))
case("NUL byte on stdin (predict)", "<stdin>:1", "NUL")(lambda i, ws: (["predict", "--model", str(i["hf_cls"])], b"a\x00b\n"))
case("invalid UTF-8 in --file (fill-mask)", "bad.txt:2", "not valid UTF-8")(
    lambda i, ws: fill(i, "--file", write(ws, "bad.txt", b"a[MASK]\n\xff[MASK]\n")))
case("invalid UTF-8 in an argument (fill-mask)", "argument 1", "not valid UTF-8")(lambda i, ws: fill(i, "\udcff[MASK]"))
case("invalid UTF-8 in an argument (predict)", "argument 2", "not valid UTF-8")(
    lambda i, ws: (["predict", "--model", str(i["hf_cls"]), "好", "\udcff\udcfe"], None))
case("CSV without a header (train-cls)", "nohead.csv:1", "header")(
    lambda i, ws: (TRAIN_CLS + ["--train", write(ws, "nohead.csv", "好看的电影,pos\n难看的电影,neg\n不错,pos\n"), "--out", str(ws / "run")], None))
case("CSV without a header (eval)", "nohead.csv:1", "header")(
    lambda i, ws: (["eval", "--model", str(i["hf_cls"]), "--data", write(ws, "nohead.csv", "涨了,finance\n赢了,sports\n"), "--out", str(ws / "report")], None))
case("--train given a folder", "is a folder")(
    lambda i, ws: (TRAIN_CLS + ["--train", str(i["root"]), "--out", str(ws / "run")], None))
case("--file given a folder (fill-mask)", "is a directory")(lambda i, ws: fill(i, "--file", str(i["root"])))
case("a text longer than the model, after the results before it", "long.txt:2", "--truncate")(
    lambda i, ws: fill(i, "--file", write(ws, "long.txt", "我[MASK]你\n" + "很" * 300 + "[MASK]\n")))


# --- issue 21: bounds by design in the one input layer, model size by arithmetic, the newcomer's data mistakes
LONG_LINE = ("好" * 400_000 + "\n").encode("utf-8")  # 1.2 MB: past the 1 MiB line bound
DEEP = "[" * 100_000 + "]" * 100_000


def gzipped(ws: Path, name: str, content: bytes, keep: int | None = None) -> str:
    """A .gz of `content`; `keep` bytes of it only: cut short (a truncated download)."""
    import gzip

    packed = gzip.compress(content, compresslevel=6)
    return write(ws, name, packed[:keep])


def zeros_bomb(ws: Path) -> str:
    """20 MB of zeros in 20 KB: no line end, so the line bound ends the read after 1 MiB."""
    return gzipped(ws, "bomb.txt.gz", bytes(20_000_000))


TRUNCATED = lambda ws, suffix="txt": gzipped(ws, f"trunc.{suffix}.gz", "".join(  # noqa: E731
    f"第{n}条新闻 [MASK]好\t{('finance', 'sports')[n % 2]}\n" for n in range(3_000)).encode("utf-8"), keep=40)
# How each reading command takes a file: argv(inputs, ws, file) -> argv.
READERS = {
    "predict": lambda i, ws, f: ["predict", "--model", str(i["hf_cls"]), "--file", f],
    "embed": lambda i, ws, f: ["embed", "--model", str(i["hf_cls"]), "--file", f],
    "fill-mask": lambda i, ws, f: ["fill-mask", "--model", str(i["hf_mlm"]), "--file", f],
    "make-mlm-data": lambda i, ws, f: ["make-mlm-data", f, "--out", str(ws / "out")],
    "train-cls": lambda i, ws, f: TRAIN_CLS + ["--train", f, "--out", str(ws / "run")],
    "eval": lambda i, ws, f: ["eval", "--model", str(i["hf_cls"]), "--data", f, "--out", str(ws / "report")],
    "similar": lambda i, ws, f: ["similar", "--model", str(i["hf_cls"]), "--file", f, "--no-cache", "你好"],
}
for command, argv in READERS.items():
    case(f"{command}: a truncated .gz", "trunc.", ".gz:", "cut short")(
        lambda i, ws, argv=argv, command=command: (argv(i, ws, TRUNCATED(ws, "tsv" if command in ("train-cls", "eval") else "txt")), None))
    case(f"{command}: a 1.2 MB line", "long.txt:1", "SBERT_MAX_LINE_BYTES")(
        lambda i, ws, argv=argv: (argv(i, ws, write(ws, "long.txt", LONG_LINE)), None))
    zero = ("/dev/zero", "a pipe or a device") if command == "similar" else ("/dev/zero:1", "SBERT_MAX_LINE_BYTES")
    case(f"{command}: /dev/zero", *zero)(lambda i, ws, argv=argv: (argv(i, ws, "/dev/zero"), None))
    case(f"{command}: a gzip bomb of zeros", "bomb.txt.gz:1", "SBERT_MAX_LINE_BYTES")(
        lambda i, ws, argv=argv: (argv(i, ws, zeros_bomb(ws)), None))
for command in ("predict", "make-mlm-data", "train-cls", "eval"):
    case(f"{command}: JSONL nested 100,000 deep", "deep.jsonl:1", "nested too deeply")(
        lambda i, ws, command=command: (READERS[command](i, ws, write(ws, "deep.jsonl", '{"text": ' + DEEP + "}\n")), None))
for command in ("fill-mask", "make-mlm-data"):
    stdin_argv = ["fill-mask", "--model", "{mlm}"] if command == "fill-mask" else ["make-mlm-data", "-", "--out", "{out}"]
    case(f"{command}: a 1.2 MB line on stdin", "<stdin>:1", "SBERT_MAX_LINE_BYTES")(
        lambda i, ws, a=stdin_argv: ([x.format(mlm=i["hf_mlm"], out=ws / "out") for x in a], LONG_LINE))
case("train-cls: labels first, text second (columns swapped)", "swapped.tsv:1", "looks like text", "swapped", "--labels")(
    lambda i, ws: (TRAIN_CLS + ["--train", write(ws, "swapped.tsv", "".join(
        f"{r.split(chr(9))[1]}\t{r.split(chr(9))[0]}\n" for r in THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()[:60])),
        "--out", str(ws / "run")], None))
case("train-cls: the title in both columns", "titles.tsv:1", "looks like text", "--labels")(
    lambda i, ws: (TRAIN_CLS + ["--train", write(ws, "titles.tsv", "".join(
        f"{r.split(chr(9))[0]}\t{r.split(chr(9))[0]}\n" for r in THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()[:60])),
        "--out", str(ws / "run")], None))


def model_file(inputs, ws: Path, name: str, content: str | bytes, key: str = "hf_cls") -> str:
    model = copy(inputs, key, ws, "model")
    write(model, name, content)
    return str(model)


def int8_weights(inputs, ws: Path, key: str) -> str:
    import torch
    from safetensors.torch import load_file, save_file

    model = copy(inputs, key, ws, "model")
    state = load_file(model / "model.safetensors")
    state = {k: (v * 100).to(torch.int8) if v.ndim == 2 else v for k, v in state.items()}
    save_file(state, model / "model.safetensors")
    return str(model)


case("config.json num_hidden_layers 100,000 (predict)", "config.json", "num_hidden_layers 100,000", "use the config.json")(
    predict_with_config(num_hidden_layers=100_000))
case("config.json num_hidden_layers 100,000 (convert-weights)", "config.json", "num_hidden_layers 100,000")(
    lambda i, ws: (["convert-weights", model_with_config(i, ws, "hf_mlm", num_hidden_layers=100_000), str(ws / "dst"), "--no-probe"], None))
case("config.json intermediate_size 16M", "config.json", "intermediate_size 16,000,000")(predict_with_config(intermediate_size=16_000_000))
case("config.json nested 100,000 deep", "config.json", "nested too deeply")(
    lambda i, ws: (["predict", "--model", model_file(i, ws, "config.json", '{"a": ' + DEEP + "}"), "你好"], None))
case("int8 weights (predict)", "model.safetensors", "int8", "float weights")(
    lambda i, ws: (["predict", "--model", int8_weights(i, ws, "sbert_cls"), "你好"], None))
case("int8 weights in an HF dir (fill-mask)", "model.safetensors", "int8")(
    lambda i, ws: fill(i, "我[MASK]你", model=int8_weights(i, ws, "hf_mlm")))
for label, content in (("invalid JSON", "{do_lower_case: true"), ("binary", b"\x89PNG\r\n\x1a\n\xff\xfe"),
                       ("a list", '[{"do_lower_case": true}]'), ("nested 100,000 deep", DEEP)):
    case(f"tokenizer_config.json {label}", "tokenizer_config.json")(
        lambda i, ws, content=content: (["predict", "--model", model_file(i, ws, "tokenizer_config.json", content), "你好"], None))


# --- issue 21: nothing is written through a link, onto a device, or over a file without --force
def embed_out(i, ws: Path, out: Path, *extra: str):
    return ["embed", "--model", str(i["hf_cls"]), "你好", "--out", str(out), *extra], None


def linked(ws: Path, name: str, target_name: str = "precious.txt") -> Path:
    (ws / target_name).write_text("the user's\n", encoding="utf-8")
    os.symlink(ws / target_name, ws / name)
    return ws / name


def fifo(ws: Path, name: str) -> Path:
    os.mkfifo(ws / name)
    return ws / name


case("embed --out an existing file", "x.npy", "already exists", "--force")(
    lambda i, ws: embed_out(i, ws, Path(write(ws, "x.npy", b"earlier"))))
case("embed --out a link, --force", "x.npy", "symbolic link")(lambda i, ws: embed_out(i, ws, linked(ws, "x.npy"), "--force"))
case("embed --out a FIFO, --force", "x.npy", "not a file")(lambda i, ws: embed_out(i, ws, fifo(ws, "x.npy"), "--force"))
case("embed --out a JSONL link, --force", "x.jsonl", "symbolic link")(
    lambda i, ws: embed_out(i, ws, linked(ws, "x.jsonl"), "--force"))
case("embed --out a folder", "x.npy")(lambda i, ws: embed_out(i, ws, (ws / "x.npy").mkdir() or ws / "x.npy", "--force"))


def report_with_link(i, ws: Path, name: str) -> str:
    """An earlier eval report whose `name` the user replaced by a link to a file outside."""
    report = ws / "report"
    assert runner.invoke(app, ["eval", "--model", str(i["hf_cls"]), "--data", str(i["root"] / "cls.tsv"), "--out", str(report)]).exit_code == 0
    (report / name).unlink()
    linked(ws, f"report/{name}", "outside.txt")
    return str(report)


for report_file in ("misclassified.tsv", "metrics.json", "confusion_matrix.png"):
    case(f"eval report: {report_file} a link to a file outside", report_file, "symbolic link")(
        lambda i, ws, f=report_file: (["eval", "--model", str(i["hf_cls"]), "--data", str(i["root"] / "cls.tsv"),
                                       "--out", report_with_link(i, ws, f)], None))


def corpus_with_cache_folder(i, ws: Path) -> str:
    """A corpus whose cache path (after one run) holds a folder."""
    corpus = write(ws, "corpus.txt", "涨停\n进球\n")
    done = runner.invoke(app, ["similar", "--model", str(i["hf_cls"]), "--file", corpus, "涨"])
    assert done.exit_code == 0, done.output
    cache = next(ws.glob("corpus.txt.sbert-*.npy"))
    cache.unlink()
    cache.mkdir()
    return corpus


case("similar: a folder at the cache path", ".npy", "holds a folder or a link", "--no-cache")(
    lambda i, ws: (["similar", "--model", str(i["hf_cls"]), "--file", corpus_with_cache_folder(i, ws), "涨"], None))
case("similar: a corpus from a pipe", "a pipe or a device")(
    lambda i, ws: (["similar", "--model", str(i["hf_cls"]), "--file", str(fifo(ws, "corpus.txt")), "涨"], None))
case("embed: a TSV with a malformed row names no option embed lacks", "bad.tsv:2", "fix the row")(
    lambda i, ws: (["embed", "--model", str(i["hf_cls"]), "--file", write(ws, "bad.tsv", "a\tb\nc\n")], None))
case("sbert.json nested 100,000 deep", "sbert.json", "nested too deeply")(
    lambda i, ws: fill(i, "我[MASK]你", model=model_file(i, ws, "sbert.json", DEEP, key="sbert_mlm")))
case("manifest.json nested 100,000 deep", "manifest.json")(
    lambda i, ws: pretrain_on(lambda i, ws: str(Path(write(copy(i, "masked", ws, "data"), "manifest.json", DEEP)).parent))(i, ws))
case("metrics.jsonl with a line nested 100,000 deep", "metrics.jsonl:1", "nested too deeply")(
    lambda i, ws: (["plot", str(Path(write((ws / "run").mkdir() or ws / "run", "metrics.jsonl", DEEP + "\n")).parent)], None))
case("plot where metrics.jsonl is a folder", "metrics.jsonl", "EISDIR")(
    lambda i, ws: (["plot", str((ws / "run" / "metrics.jsonl").mkdir(parents=True) or ws / "run")], None))


# --- train-ner's entity files and options, and a tagger where a classifier or an MLM head is expected

GOOD_NER = "张 B-PER\n三 I-PER\n去 O\n北 B-LOC\n京 I-LOC\n\n李 B-PER\n四 I-PER\n"


def train_ner_on(content: str | bytes, name: str = "train.txt", *options: str):
    return lambda i, ws: (TRAIN_NER + ["--train", write(ws, name, content), "--out", str(ws / "run"), *options], None)


for title, content, name, fragments in (
    ("BIO: I- after O", "张 B-PER\n三 I-PER\n去 O\n京 I-LOC\n", "train.txt", ("train.txt:4", "I-LOC after O")),
    ("BIO: B-PER then I-ORG", "张 B-PER\n三 I-ORG\n", "train.txt", ("train.txt:2", "I-ORG after B-PER")),
    ("BIOES: E- after O", "张 B-PER\n三 E-PER\n去 O\n京 E-LOC\n", "train.txt", ("train.txt:4", "E-LOC after O")),
    ("BMES with an I- tag", "张 M-PER\n三 I-PER\n", "train.txt", ("train.txt:2", "BMES")),
    ("a line with no tag", "张 B-PER\n三\n", "train.txt", ("train.txt:2", "no tag")),
    ("a tag of no scheme", "张 X-PER\n", "train.txt", ("train.txt:1", "X-PER")),
    ("only blank lines", "\n\n\n", "train.txt", ("train.txt", "no sentences")),
    ("GBK bytes", "张 B-PER\n".encode("gbk"), "train.txt", ("train.txt:1", "GBK")),
    ("JSONL: an entity past the text", '{"text": "张三", "entities": [{"start": 0, "end": 5, "label": "PER"}]}\n',
     "train.jsonl", ("train.jsonl:1", "outside the text")),
    ("JSONL: overlapping entities", '{"text": "张三", "entities": [{"start": 0, "end": 2, "label": "PER"}, '
     '{"start": 1, "end": 2, "label": "LOC"}]}\n', "train.jsonl", ("train.jsonl:1", "overlap")),
    ("JSONL: a label that is a number", '{"text": "张三", "entities": [{"start": 0, "end": 2, "label": 7}]}\n',
     "train.jsonl", ("train.jsonl:1", "label")),
    ("JSONL: an object without text and entities", '{"text": 5}\n', "train.jsonl", ("train.jsonl:1", '"text"')),
    ("CLUENER: an exclusive end", '{"text": "张三在北京", "label": {"PER": {"张三": [[0, 2]]}}}\n', "train.json",
     ("train.json:1", "inclusive")),
):
    case(f"train-ner: {title}", *fragments)(train_ner_on(content, name))

case("train-ner: /dev/zero as the training file", "/dev/zero:1", "SBERT_MAX_LINE_BYTES")(
    lambda i, ws: (TRAIN_NER + ["--train", "/dev/zero", "--out", str(ws / "run")], None))
case("train-ner: a dev type the training file lacks", "dev.txt:4", "TIME")(
    lambda i, ws: (TRAIN_NER + ["--train", write(ws, "train.txt", GOOD_NER), "--out", str(ws / "run"),
                                "--dev", write(ws, "dev.txt", "张 B-PER\n三 I-PER\n\n去 B-TIME\n")], None))
for value, fragment in (("0", "--crf-lr-scale"), ("nan", "--crf-lr-scale"), ("-1", "--crf-lr-scale")):
    case(f"train-ner: --crf-lr-scale {value}", fragment)(train_ner_on(GOOD_NER, "train.txt", "--crf", "--crf-lr-scale", value))
case("train-ner: --max-seq-len 2", "--max-seq-len")(train_ner_on(GOOD_NER, "train.txt", "--max-seq-len", "2"))
case("train-ner: --max-seq-len past the positions", "--max-seq-len", "positions")(
    train_ner_on(GOOD_NER, "train.txt", "--max-seq-len", "100000"))
case("train-ner: --resume a CRF run without --crf", "--crf")(
    lambda i, ws: (TRAIN_NER + ["--train", str(NER_SAMPLE_TRAIN), "--resume", "--max-steps", "3",
                                "--out", str(shutil.copytree(i["tagger_run"], ws / "run"))], None))
case("eval: a tagger on a type it was not trained on", "dev.txt:4", "TIME")(
    lambda i, ws: (["eval", "--model", str(i["tagger"]), "--data",
                    write(ws, "dev.txt", "张 B-PER\n三 I-PER\n\n去 B-TIME\n")], None))
case("eval: a tagger on a classification file", "cls.tsv:1", "finance")(
    lambda i, ws: (["eval", "--model", str(i["tagger"]), "--data", write(ws, "cls.tsv", "今天股市大涨\tfinance\n")], None))
case("eval: a tagger on an inconsistent BIO file", "bad.txt:4", "I-LOC after O")(
    lambda i, ws: (["eval", "--model", str(i["tagger"]), "--data", write(ws, "bad.txt", "张 B-PER\n三 I-PER\n去 O\n京 I-LOC\n")], None))
case("predict: --top-k on a tagger", "--top-k")(lambda i, ws: (["predict", "--model", str(i["tagger"]), "--top-k", "3", "张三"], None))
case("predict: a tagger on /dev/zero", "/dev/zero:1")(
    lambda i, ws: (["predict", "--model", str(i["tagger"]), "--file", "/dev/zero"], None))
case("fill-mask: a tagger (no MLM head)", "masked-LM head", "make-mlm-data")(
    lambda i, ws: (["fill-mask", "--model", str(i["tagger"]), "我[MASK]你"], None))
case("predict: a tagger whose id2label names one tag twice", "config.json", "twice")(
    lambda i, ws: (["predict", "--model", model_with_config(i, ws, "tagger", id2label={
        str(n): ("O" if n == 0 else "B-PER") for n in range(13)}), "张三去北京"], None))
case("predict: a tagger whose id2label is shorter than its head", "model.safetensors", "classifier.weight")(
    lambda i, ws: (["predict", "--model", model_with_config(i, ws, "tagger", id2label={"0": "O", "1": "B-PER"}),
                    "张三去北京"], None))


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_one_clean_error_and_changes_nothing(name, inputs, tmp_path, monkeypatch):
    build, names = CASES[name]
    ws = tmp_path / "case"
    ws.mkdir()
    argv, stdin = build(inputs, ws)
    monkeypatch.chdir(ws)  # a default output folder would land here, and show up below
    before = _snapshot(ws)
    result = runner.invoke(app, argv, input=stdin)
    if name.startswith("a text longer"):  # results came first, and with them fill-mask's warning on an untrained head
        assert "looks untrained" in result.stderr.splitlines()[0]
        result.stderr_bytes = "\n".join(result.stderr.splitlines()[1:]).encode("utf-8")
    line = one_line_error(result, *names)
    assert _snapshot(ws) == before, "the case's folder changed"
    if "names no option" in name:
        assert "on-bad-lines" not in line
    if name.startswith("a text longer"):
        assert "我[MASK]你" in result.stdout  # the text before the bad one was answered first



def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry (links and FIFOs as themselves: lstat) with its size and modification time."""
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


# --- what is accepted, instead of refused


def test_fill_mask_skips_or_truncates_bad_lines_and_says_how_many(inputs, tmp_path):
    path = write(tmp_path, "texts.txt", "我[MASK]你\n没有掩码\n" + "很" * 300 + "[MASK]\n" + "[MASK]" + "很" * 300 + "\n")
    skip = runner.invoke(app, ["fill-mask", "--model", str(inputs["hf_mlm"]), "--json", "--file", path, "--on-bad-lines", "skip"])
    assert skip.exit_code == 0, skip.output
    assert [json.loads(line)["text"] for line in skip.stdout.splitlines()] == ["我[MASK]你"]
    assert "skipped 3 texts" in skip.stderr and f"{path}:2: no [MASK]" in skip.stderr
    cut = runner.invoke(app, ["fill-mask", "--model", str(inputs["hf_mlm"]), "--json", "--file", path,
                              "--on-bad-lines", "skip", "--truncate"])
    assert cut.exit_code == 0, cut.output
    answered = [json.loads(line) for line in cut.stdout.splitlines()]
    assert answered[0]["text"] == "我[MASK]你" and answered[1]["text"].startswith("[MASK]很很")  # a [MASK] past the cut: skipped
    assert answered[1]["masks"][0]["position"] == 1 and "skipped 2 texts" in cut.stderr


def test_fill_mask_streams_results_before_the_input_ends(inputs):
    from sbert_cli.tasks.fill_mask import stream_fill_mask

    def texts():
        for n in range(5):
            yield "我[MASK]你", f"line {n}"
        raise RuntimeError("the input has not ended")

    answered = []
    with pytest.raises(RuntimeError):
        answered.extend(stream_fill_mask(inputs["hf_mlm"], texts(), top_k=2, chunk_size=2, precision="fp32"))
    assert len(answered) == 4  # two whole chunks came out while the input was still being read


def test_valid_configs_and_label_maps_still_load(inputs, tmp_path):
    model = model_with_config(inputs, tmp_path, id2label={0: "finance", 1: "sports", 2: "game"}, num_labels=3,
                              layer_norm_eps=1e-12, classifier_dropout=None)
    result = runner.invoke(app, ["predict", "--model", model, "--format", "tsv", "涨停"])
    assert result.exit_code == 0, result.output
    csv = write(tmp_path, "with-header.csv", "text,label\n涨了,finance\n")
    assert runner.invoke(app, ["eval", "--model", model, "--data", csv, "--json"]).exit_code == 0


# --- the worst option values under a memory cap: a clean error, or a clamped run that finishes

WORST = """
import json, sys
from typer.testing import CliRunner
from sbert_cli.cli import app
runner = CliRunner()
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    result = runner.invoke(app, argv)
    out[name] = [result.exit_code, result.output, type(result.exception).__name__]
print(json.dumps(out))
"""
ADDRESS_SPACE = 3 * 1024**3


def test_worst_option_values_stay_within_3_gb_and_finish(inputs, tmp_path):
    root = str(inputs["root"])
    text, mlm, cls = f"{root}/train.txt", str(inputs["hf_mlm"]), str(inputs["hf_cls"])
    runs = {
        "workers 10000": ["make-mlm-data", text, "--out", str(tmp_path / "w"), "--workers", "10000", "--max-seq-len", "32"],
        "dupe-factor 1e9": ["make-mlm-data", text, "--out", str(tmp_path / "d"), "--dupe-factor", "1000000000"],
        "dupe-factor at its limit": ["make-mlm-data", text, "--out", str(tmp_path / "dmax"), "--dupe-factor", "100"],
        "masked-lm-prob 5": ["make-mlm-data", text, "--out", str(tmp_path / "p"), "--masked-lm-prob", "5"],
        "joint top-k 1e9": ["fill-mask", "--model", mlm, "--joint", "--top-k", "1000000000", "我[MASK][MASK]你"],
        "joint top-k at its limit": ["fill-mask", "--model", mlm, "--joint", "--top-k", "100", "--json", "我[MASK][MASK]你"],
        "fill-mask batch-size 1e12": ["fill-mask", "--model", mlm, "--batch-size", str(10**12), "我[MASK]你"],
        "many masks at batch-size 4096": ["fill-mask", "--model", mlm, "--batch-size", "4096", "--json", "[MASK]" * 120],
        "predict batch-size 1e12": ["predict", "--model", cls, "--batch-size", str(10**12), "你好"],
        "eval batch-size 1e12": ["eval", "--model", cls, "--data", f"{root}/cls.tsv", "--batch-size", str(10**12)],
        "grad-accum 1e9": TRAIN_CLS + ["--train", f"{root}/train.tsv", "--out", str(tmp_path / "g"), "--grad-accum", str(10**9)],
    }

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    done = subprocess.run([sys.executable, "-c", WORST, json.dumps(runs)], capture_output=True, text=True, check=False,
                          timeout=240, preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.splitlines()[-1])
    finishing = {"workers 10000", "dupe-factor at its limit", "joint top-k at its limit", "many masks at batch-size 4096"}
    for name, (code, output, exception) in results.items():
        assert "Traceback" not in output and exception in ("NoneType", "SystemExit"), (name, output[-1000:])
        assert code == (0 if name in finishing else 1), (name, output[-1000:])
    assert "note: --workers 10000: this process may use" in results["workers 10000"][1]
    assert not (tmp_path / "d").exists() and not (tmp_path / "p").exists() and not (tmp_path / "g").exists()


# --- issue 21: accepted where 0.2 went wrong silently


def test_old_mac_line_ends_are_one_text_per_line(inputs, tmp_path):
    path = write(tmp_path, "mac.txt", "涨停\r进球\r新游戏\r")
    result = runner.invoke(app, ["predict", "--model", str(inputs["hf_cls"]), "--file", path, "--format", "tsv"])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["涨停", "进球", "新游戏"]


def test_a_fifo_is_read_by_make_mlm_data_and_embed(inputs, tmp_path):
    import threading

    lines = (inputs["root"] / "train.txt").read_bytes()
    for argv in (["make-mlm-data", "{fifo}", "--out", str(tmp_path / "out"), "--max-seq-len", "32"],
                 ["embed", "--model", str(inputs["hf_cls"]), "--file", "{fifo}"]):
        fifo = tmp_path / f"pipe-{argv[0]}.txt"
        os.mkfifo(fifo)
        writer = threading.Thread(target=lambda f=fifo: f.write_bytes(lines))
        writer.start()
        result = runner.invoke(app, [a.format(fifo=fifo) for a in argv])
        writer.join()
        assert result.exit_code == 0 and "empty" not in result.output, result.output
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_integer_labels_without_names_get_a_note_naming_labels(inputs, tmp_path):
    rows = THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()[:12]
    train = write(tmp_path, "digits.tsv", "".join(f"{r.split(chr(9))[0]}\t{i % 3}\n" for i, r in enumerate(rows)))
    result = runner.invoke(app, TRAIN_CLS + ["--train", train, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    note = next(line for line in result.output.splitlines() if "labels are numbers" in line)
    assert "--labels" in note and "class.txt" in note
    names = write(tmp_path, "class.txt", "finance\nsports\ngame\n")
    named = runner.invoke(app, TRAIN_CLS + ["--train", train, "--labels", names, "--out", str(tmp_path / "named")])
    assert named.exit_code == 0 and "labels are numbers" not in named.output, named.output


def test_a_broken_similar_cache_is_rebuilt_not_trusted(inputs, tmp_path):
    corpus = write(tmp_path, "corpus.txt", "涨停\n进球\n新游戏\n")
    argv = ["similar", "--model", str(inputs["hf_cls"]), "--file", corpus, "--json", "涨停"]
    first = runner.invoke(app, argv)
    assert first.exit_code == 0, first.output
    cache = next(tmp_path.glob("corpus.txt.sbert-*.npy"))
    good = np.load(cache)
    breakages = {
        "too few rows": lambda: np.save(cache, good[:1]),
        "NaN": lambda: np.save(cache, np.full_like(good, np.nan)),
        "cut short": lambda: cache.write_bytes(cache.read_bytes()[:100]),
        "garbage": lambda: cache.write_bytes(b"not a numpy file"),
        "float64": lambda: np.save(cache, good.astype(np.float64)),
    }
    for name, breaking in breakages.items():
        breaking()
        again = runner.invoke(app, argv)
        assert again.exit_code == 0, (name, again.output)
        assert again.stdout == first.stdout, name  # the same answer, from rebuilt vectors ("score": NaN is not JSON)
        assert np.array_equal(np.load(cache), good), name
