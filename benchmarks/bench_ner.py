"""Named entities on MSRA with a real checkpoint: `sbert train-ner` at its defaults, with and without `--crf`,
against transformers' `Trainer` + `AutoModelForTokenClassification` at the same recipe and tokens, and a
character-window CRF (sklearn-crfsuite) baseline. Every row is scored the same way: exact character spans on the
test split through sbert_cli/tasks/ner_metrics.py (entity F1 = micro F1), with the training's wall time beside it.

- Data: MSRA NER (`fetch-msra-ner DIR`: train.txt, test.txt; BMES). Dev is carved from train: the last
  `--dev-size` sentences of train.txt; training takes the first `--train-limit` of the rest; test is the first
  `--test-limit` sentences of test.txt. Dev picks sbert's best epoch; nothing is tuned on test.
- sbert / sbert-crf: `sbert train-ner --model M --train T --dev D --out O --epochs E --seed S --precision P
  [--crf] --force` in a subprocess, nothing else (lr, warmup, batch size, max length: its defaults), then the
  run's best model tags the test texts in this process (sbert_cli.tasks.ner_predict.load_tagger).
- transformers: `AutoModelForTokenClassification.from_pretrained(M)` + `Trainer` with the recipe sbert's run
  chose (read back from its run.json; without one, from the library's defaults): peak lr, warmup steps, linear
  decay, batch size, epochs, weight decay, clipping, seed, AdamW. The same tokens: sbert's own windows
  (data/ner.encode_windows, the label on each word's first sub-token, -100 elsewhere). The trained model is saved
  with the BIOES tag names and tagged by the same sbert decoder (constrained Viterbi over its softmax), so the
  rows differ only in training. Scored on the last epoch (Trainer keeps no best-on-dev here).
- Wall time: sbert's is its whole `train-ner` process (read, encode, train, dev F1 each epoch, save); the Trainer's
  has the same scope (read, encode, train with a dev loss each epoch, save; `train_seconds`: trainer.train() only).
- crf: sklearn-crfsuite, L-BFGS (c1 0.1, c2 0.1, 100 iterations), character features in a window of +-2
  (characters, bigrams, a character class), BIOES targets; decoded to spans by the same rule as sbert.

Three seeds for the BERT rows; every run appends a line to OUT/results.jsonl (seeds may run in separate
invocations) and the table at the end is computed from every line there. It prints the CPU, its bf16 flags,
threads, precision and torch version.

    python benchmarks/bench_ner.py --msra DIR --model M3E_DIR                       # all rows, 3 seeds
    python benchmarks/bench_ner.py --msra DIR --rows crf                            # the CRF baseline only
    python benchmarks/bench_ner.py --msra DIR --model M3E_DIR --quick               # a smoke test in seconds
    python benchmarks/bench_ner.py --report                                         # the table only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = ("crf", "sbert", "sbert-crf", "transformers")


# ------------------------------------------------------------------------------------------------------- data
def sentence_blocks(path: Path) -> list[str]:
    """The file's sentences as raw CoNLL blocks (their lines, each ending in a newline)."""
    blocks, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.strip():
            current.append(line if line.endswith("\n") else line + "\n")
        elif current:
            blocks.append("".join(current))
            current = []
    if current:
        blocks.append("".join(current))
    return blocks


def make_splits(args, folder: Path) -> dict[str, Path]:
    """train / dev (carved from train.txt's end) / test files under `folder`."""
    train_blocks = sentence_blocks(args.msra / "train.txt")
    test_blocks = sentence_blocks(args.msra / "test.txt")
    dev_blocks = train_blocks[len(train_blocks) - args.dev_size:]
    rest = train_blocks[: len(train_blocks) - args.dev_size]
    splits = {"train": rest[: args.train_limit], "dev": dev_blocks, "test": test_blocks[: args.test_limit]}
    paths = {}
    for name, blocks in splits.items():
        paths[name] = folder / f"{name}.txt"
        paths[name].write_text("\n".join(blocks), encoding="utf-8")
    return paths


def spans_of(entities) -> list:
    from sbert_cli.data.ner import Span

    return [Span(e.start, e.end, e.label) for e in entities]


def score_tagger(model_dir: Path, test_file: Path, precision: str) -> dict:
    """Exact-span scores of a saved tagger on the test file, through sbert's own inference path."""
    from sbert_cli.data.ner import read_ner_file
    from sbert_cli.tasks.ner_metrics import score_entities
    from sbert_cli.tasks.ner_predict import load_tagger

    tagger = load_tagger(model_dir, precision=precision, device="cpu")
    test = read_ner_file(test_file, labels=tagger.labels)
    predicted = [spans_of(entities) for entities in tagger.entities([e.text for e in test.examples])]
    return summary(score_entities([list(e.spans) for e in test.examples], predicted, tagger.labels))


def summary(scores: dict) -> dict:
    return {"entity_f1": round(scores["entity_f1"], 4), "precision": round(scores["precision"], 4),
            "recall": round(scores["recall"], 4),
            "per_label_f1": {k: round(v["f1"], 4) for k, v in scores["per_label"].items()}}


# ---------------------------------------------------------------------------------------------------- sbert
def run_sbert(args, seed: int, crf: bool, splits: dict[str, Path], work: Path) -> dict:
    out = work / f"sbert-{'crf-' if crf else ''}{seed}"
    command = [sys.executable, "-m", "sbert_cli", "train-ner", "--model", str(args.model),
               "--train", str(splits["train"]), "--dev", str(splits["dev"]), "--out", str(out),
               "--seed", str(seed), "--precision", args.precision, "--force",
               *(["--epochs", str(args.epochs)] if args.max_steps is None else ["--max-steps", str(args.max_steps)]),
               *(["--crf"] if crf else [])]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"sbert train-ner failed ({completed.returncode}):\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    run = json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").is_file() else {}
    model_dir = out / "best" if (out / "best").is_dir() else out / "last"
    return {**score_tagger(model_dir, splits["test"], args.precision), "seconds": round(seconds, 1),
            "recipe": recipe_of(run), "command": " ".join(command[2:])}


def recipe_of(run: dict) -> dict:
    """The training recipe a sbert run recorded (run.json), in the terms Trainer takes."""
    train = run.get("train", {})
    return {"lr": train.get("lr"), "warmup_steps": run.get("warmup_steps"), "total_steps": run.get("total_steps"),
            "batch_size": run.get("global_batch_size", train.get("batch_size")),
            "max_seq_len": run.get("max_seq_len"), "crf_lr": run.get("crf_lr"),
            "weight_decay": train.get("weight_decay"), "max_grad_norm": train.get("max_grad_norm"),
            "schedule": train.get("schedule")}


def default_recipe(args, windows: int) -> dict:
    """What `sbert train-ner --model M` would choose, from the library's defaults (a transformers-only run)."""
    from sbert_cli.model.config import BertConfig
    from sbert_cli.tasks.lr_rule import WARMUP_RATIO, choose_lr
    from sbert_cli.tasks.options import NerOptions
    from sbert_cli.train.types import TrainConfig

    config = TrainConfig(out_dir=Path("unused"))
    hidden = BertConfig.from_json(args.model / "config.json").hidden_size
    total = args.max_steps or args.epochs * math.ceil(windows / config.batch_size)
    return {"lr": choose_lr("ner", hidden, False, ["classifier.weight"]), "warmup_steps": round(WARMUP_RATIO * total),
            "total_steps": total, "batch_size": config.batch_size, "max_seq_len": NerOptions(train_file=Path("x")).max_seq_len,
            "weight_decay": config.weight_decay, "max_grad_norm": config.max_grad_norm, "schedule": config.schedule}


# ---------------------------------------------------------------------------------------------- transformers
def encode_for_trainer(path: Path, tokenizer, tag_names: list[str], max_seq_len: int, labels=None) -> list[dict]:
    """sbert's windows of every sentence, each word's BIOES tag on its first sub-token, -100 elsewhere."""
    from sbert_cli.data.ner import encode_windows, read_ner_file, word_offsets, word_tags

    data = read_ner_file(path, labels=labels)
    index = {name: i for i, name in enumerate(tag_names)}
    items = []
    for example in data.examples:
        offsets = word_offsets(tokenizer, example.text)
        tags, _ = word_tags(offsets, example.spans)
        for window in encode_windows(tokenizer, example.text, offsets, max_seq_len):
            target = [-100] * len(window.input_ids)
            for word, position in zip(window.words, window.first_subtoken):
                target[position] = index[tags[word]]
            items.append({"input_ids": window.input_ids, "labels": target})
    return items


def run_transformers(args, seed: int, recipe: dict, splits: dict[str, Path], work: Path) -> dict:
    import torch
    import transformers

    from sbert_cli.data.ner import read_ner_file, tag_names
    from sbert_cli.model.model_dir import load_tokenizer

    started = time.perf_counter()  # the same scope as the sbert subprocess: read, encode, train, dev loss, save
    tokenizer = load_tokenizer(args.model)
    labels = read_ner_file(splits["train"]).labels
    names = tag_names(labels)
    train_items = encode_for_trainer(splits["train"], tokenizer, names, recipe["max_seq_len"])
    dev_items = encode_for_trainer(splits["dev"], tokenizer, names, recipe["max_seq_len"], labels)
    if recipe["lr"] is None:
        recipe = default_recipe(args, len(train_items))

    def collate(items: list[dict]) -> dict:
        longest = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), longest), tokenizer.pad_id, dtype=torch.long)
        target = torch.full((len(items), longest), -100, dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item["input_ids"])] = torch.tensor(item["input_ids"])
            target[row, : len(item["labels"])] = torch.tensor(item["labels"])
        return {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_id).long(), "labels": target}

    transformers.set_seed(seed)
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        str(args.model), num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    steps = {"max_steps": args.max_steps} if args.max_steps else {"num_train_epochs": args.epochs}
    training_args = transformers.TrainingArguments(
        output_dir=str(work / f"transformers-{seed}"), learning_rate=recipe["lr"], warmup_steps=recipe["warmup_steps"],
        lr_scheduler_type=recipe.get("schedule") or "linear", per_device_train_batch_size=recipe["batch_size"],
        weight_decay=recipe["weight_decay"], max_grad_norm=recipe["max_grad_norm"] or 0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", seed=seed, save_strategy="no", eval_strategy="epoch",
        logging_strategy="no", report_to="none", use_cpu=True, bf16=args.precision == "bf16", disable_tqdm=True,
        dataloader_num_workers=0, **steps)
    trainer = transformers.Trainer(model=model, args=training_args, train_dataset=train_items, eval_dataset=dev_items,
                                   data_collator=collate)
    train_started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_started
    saved = work / f"transformers-{seed}-model"
    trainer.save_model(str(saved))
    seconds = time.perf_counter() - started
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (args.model / name).is_file():
            (saved / name).write_bytes((args.model / name).read_bytes())
    torch.set_num_threads(args.threads)
    return {**score_tagger(saved, splits["test"], args.precision), "seconds": round(seconds, 1),
            "train_seconds": round(train_seconds, 1), "recipe": recipe, "total_steps": trainer.state.max_steps}


# ------------------------------------------------------------------------------------------------------- crf
def char_class(char: str) -> str:
    if char.isdigit():
        return "digit"
    if char.isascii() and char.isalpha():
        return "latin"
    if "\u4e00" <= char <= "\u9fff":
        return "cjk"
    return "other" if char.isalnum() else "punct"


def char_features(chars: list[str]) -> list[dict]:
    padded = ["<s2>", "<s1>", *chars, "</s1>", "</s2>"]
    features = []
    for i in range(2, len(padded) - 2):
        c = padded[i - 2 : i + 3]
        features.append({"bias": 1.0, "c0": c[2], "c-1": c[1], "c-2": c[0], "c+1": c[3], "c+2": c[4],
                         "c-1c0": c[1] + c[2], "c0c+1": c[2] + c[3], "c-1c+1": c[1] + c[3],
                         "class": char_class(c[2])})
    return features


def char_examples(path: Path, labels=None):
    """(features, BIOES tags, character offsets, gold spans) of each sentence: one 'word' per visible character."""
    from sbert_cli.data.ner import read_ner_file, word_tags

    data = read_ner_file(path, labels=labels)
    out = []
    for example in data.examples:
        offsets = [(i, i + 1) for i, c in enumerate(example.text) if not c.isspace()]
        tags, _ = word_tags(offsets, example.spans)
        out.append((char_features([example.text[s] for s, _ in offsets]), tags, offsets, list(example.spans)))
    return out, data.labels


def run_crf(args, splits: dict[str, Path]) -> dict:
    import sklearn_crfsuite

    from sbert_cli.data.ner import spans_from_word_tags
    from sbert_cli.tasks.ner_metrics import score_entities

    train, labels = char_examples(splits["train"])
    test, _ = char_examples(splits["test"], labels)
    crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=0.1, c2=0.1, max_iterations=args.crf_iterations,
                               all_possible_transitions=True)
    started = time.perf_counter()
    crf.fit([x for x, *_ in train], [y for _, y, *_ in train])
    seconds = time.perf_counter() - started
    predicted = crf.predict([x for x, *_ in test])
    pred_spans = [spans_from_word_tags(tags, offsets) for tags, (_, _, offsets, _) in zip(predicted, test)]
    scores = score_entities([gold for *_, gold in test], pred_spans, labels)
    return {**summary(scores), "seconds": round(seconds, 1)}


# ----------------------------------------------------------------------------------------------------- table
def table(results: list[dict]) -> str:
    """Mean +- half the range over seeds of the test entity F1, per row and setting, and the training wall time."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["row"], r["train_sentences"], r["test_sentences"], r["epochs"], r.get("dtype", "fp32")), []).append(r)
    lines = ["| row | train sentences | test sentences | epochs | dtype | seeds | test entity F1 | P | R | "
             "PER / LOC / ORG F1 | training s (mean) |", "|---|---:|---:|---:|---|---|---:|---:|---:|---|---:|"]
    for (row, n_train, n_test, epochs, precision), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], ROWS.index(kv[0][0]))):
        f1 = [r["entity_f1"] for r in rows]
        per = [statistics.mean(r["per_label_f1"].get(t, 0.0) for r in rows) for t in ("PER", "LOC", "ORG")]
        lines.append(f"| {row} | {n_train} | {n_test} | {epochs or '-'} | {precision} | "
                     f"{'-' if row == 'crf' else ', '.join(str(r['seed']) for r in rows)} | {statistics.mean(f1):.4f} ± {(max(f1) - min(f1)) / 2:.4f} | "
                     f"{statistics.mean(r['precision'] for r in rows):.4f} | {statistics.mean(r['recall'] for r in rows):.4f} | "
                     f"{' / '.join(f'{x:.3f}' for x in per)} | {statistics.mean(r['seconds'] for r in rows):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--msra", type=Path, default=Path(os.environ.get("SBERT_MSRA", Path.home() / ".cache/sbert-dev/msra-ner")),
                        help="folder with MSRA's train.txt and test.txt (fetch-msra-ner DIR)")
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("SBERT_REAL_BERT", ".real-bert")),
                        help="m3e-small (fetch-real-chinese-bert DIR)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None, help="stop the BERT rows after this many steps")
    parser.add_argument("--train-limit", type=int, default=10_000, help="first N training sentences (after carving dev)")
    parser.add_argument("--dev-size", type=int, default=1_000, help="dev: the last N sentences of train.txt")
    parser.add_argument("--test-limit", type=int, default=2_000, help="first N test sentences")
    parser.add_argument("--crf-iterations", type=int, default=100)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 200 training, 50 dev, 100 test sentences, one seed, 4 steps, 5 CRF iterations")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ner"))
    parser.add_argument("--report", action="store_true", help="print the table of OUT/results.jsonl and stop")
    args = parser.parse_args()
    if args.quick:
        args.train_limit, args.dev_size, args.test_limit = 200, 50, 100
        args.seeds, args.max_steps, args.crf_iterations = args.seeds[:1], 4, 5
        args.out = args.out.with_name(args.out.name + "-quick")

    results_file = args.out / "results.jsonl"
    if args.report:
        print(table([json.loads(line) for line in results_file.read_text().splitlines()]))
        return
    import torch

    from sbert_cli.model.precision import describe_machine, machine_summary

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the sbert subprocesses
    args.out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    print(f"{machine_summary(machine)}; CPU flags {' '.join(machine['cpu_flags']) or 'none'}; precision {args.precision}",
          flush=True)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        work = Path(tmp)
        splits = make_splits(args, work)
        counts = {name: sum(1 for _ in sentence_blocks(path)) for name, path in splits.items()}
        print(f"MSRA: {counts['train']} training, {counts['dev']} dev (carved from train), {counts['test']} test sentences; "
              f"{'max ' + str(args.max_steps) + ' steps' if args.max_steps else str(args.epochs) + ' epochs'}", flush=True)
        recipes: dict[int, dict] = {}
        for row in args.rows:
            for seed in ([0] if row == "crf" else args.seeds):
                if row == "crf":
                    result = run_crf(args, splits)
                elif row.startswith("sbert"):
                    result = run_sbert(args, seed, row == "sbert-crf", splits, work)
                    if row == "sbert":
                        recipes[seed] = result["recipe"]
                else:
                    recipe = recipes.get(seed) or next(iter(recipes.values()), None) or {"lr": None, "max_seq_len": 128}
                    result = run_transformers(args, seed, recipe, splits, work)
                record = {"row": row, "seed": seed, "epochs": 0 if row == "crf" else (args.epochs if not args.max_steps else 0),
                          "max_steps": args.max_steps, "train_sentences": counts["train"], "test_sentences": counts["test"],
                          "dtype": args.precision, "threads": args.threads, "cpu": machine["cpu"],
                          "cpu_bf16": machine["cpu_bf16"], "torch": machine["torch"],
                          "load_average": round(os.getloadavg()[0], 1), **result}
                with results_file.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                print(f"{row:12} seed {seed}: test entity F1 {result['entity_f1']:.4f} "
                      f"(P {result['precision']:.4f}, R {result['recall']:.4f}); training {result['seconds']} s", flush=True)
    print(table([json.loads(line) for line in results_file.read_text().splitlines()]))


if __name__ == "__main__":
    main()
