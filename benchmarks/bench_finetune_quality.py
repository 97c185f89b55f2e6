"""Fine-tuning quality on a real checkpoint: `sbert train-cls` at its defaults against transformers' `Trainer`
at the same recipe, beside a character TF-IDF + LinearSVC baseline, on the bundled THUCNews titles.

- sbert: `sbert train-cls --model M --train T --dev D --labels C --epochs E --seed S --precision P` in a
  subprocess, nothing else: the learning rate, warmup, batch size, schedule and max length are its defaults.
  The recipe it chose is read back from the run's run.json (without an sbert run, from the library's defaults).
- transformers: `AutoModelForSequenceClassification.from_pretrained(M)` + `Trainer` with the recipe sbert
  chose: the same peak lr, warmup steps, linear decay, batch size, epochs, weight decay (not on biases and
  LayerNorm), gradient clipping, label smoothing (`label_smoothing_factor`), max length and seed; AdamW (torch),
  dynamic padding (DataCollatorWithPadding);
  and the same tokens: `AutoTokenizer.from_pretrained(M, do_lower_case=...)` as sbert's tokenizer decided.
  m3e-small's tokenizer_config.json says do_lower_case false over a vocab with no capital letters, which sbert
  lower-cases; `transformers-checkpoint-case` takes the checkpoint's setting as it stands (capitals -> [UNK]).
- TF-IDF: character 1-2-grams, sublinear tf, LinearSVC (the demo's baseline).

Both BERTs are scored on the dev titles after every epoch (dev is never used to pick a model here: the
figure is the last epoch's). Each run appends one JSON line to OUT/results.jsonl, so seeds can run in
separate invocations; the table at the end is computed from every line there.

    python benchmarks/bench_finetune_quality.py --model .real-bert --seeds 42 --epochs 3
    python benchmarks/bench_finetune_quality.py --model .real-bert --seeds 43 44 --libraries sbert transformers
    python benchmarks/bench_finetune_quality.py --model .real-bert --limit 2000 --epochs 1     # a quick look
    python benchmarks/bench_finetune_quality.py --report                                       # the table only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIBRARIES = ("sbert", "transformers", "tfidf", "transformers-random-init", "transformers-checkpoint-case")
DEFAULT_LIBRARIES = ("sbert", "transformers", "tfidf")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(found) or "none"


def subset(source: Path, destination: Path, limit: int | None) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    destination.write_text("".join(lines if limit is None else lines[:limit]), encoding="utf-8")
    return destination


def run_sbert(args, seed: int, train: Path, dev: Path, labels: Path, work: Path) -> dict:
    """`sbert train-cls` at its defaults; returns dev accuracy per epoch and the recipe it chose (run.json)."""
    out = work / f"sbert-{seed}"
    command = [sys.executable, "-m", "sbert_cli", "train-cls", "--model", str(args.model), "--train", str(train),
               "--dev", str(dev), "--labels", str(labels), "--out", str(out), "--epochs", str(args.epochs),
               "--seed", str(seed), "--precision", args.precision, "--force", "--no-plot", "--log-every", "50",
               *(["--lr", str(args.lr)] if args.lr is not None else []), *args.sbert_args]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"sbert train-cls failed ({completed.returncode}):\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    return {"per_epoch": [round(r["accuracy"], 4) for r in evals], "macro_f1": evals[-1]["macro_f1"],
            "seconds": round(seconds, 1), "command": " ".join(command[2:]),
            "recipe": {"lr": run["train"]["lr"], "warmup_steps": run["warmup_steps"], "total_steps": run["total_steps"],
                       "batch_size": run["global_batch_size"], "max_seq_len": run["max_seq_len"],
                       "weight_decay": run["train"]["weight_decay"], "schedule": run["train"]["schedule"],
                       "max_grad_norm": run["train"]["max_grad_norm"], "lr_reason": run.get("lr_choice"),
                       "label_smoothing": run["label_smoothing"]},
            "do_lower_case": json.loads((out / "last" / "tokenizer_config.json").read_text())["do_lower_case"]}


def run_transformers(args, seed: int, recipe: dict, train: Path, dev: Path, labels: Path, work: Path,
                     pretrained: bool = True, checkpoint_case: bool = False, save: bool = False,
                     optim: str | None = "adamw_torch") -> dict:
    """transformers' Trainer at `recipe` (sbert's choice); dev accuracy after every epoch.

    pretrained=False: the same model shape with random weights — what a loop gets when the checkpoint's
    weights silently fail to load (the diagnosis of the issue's 0.229). save: a checkpoint per epoch, as sbert writes
    (for timing whole runs). optim: Trainer's optimizer name; None: Trainer's default (adamw_torch_fused on torch
    >= 2.8)."""
    import numpy as np
    import torch
    import transformers

    from sbert_cli.data.classification import read_classification_file, read_label_names
    from sbert_cli.model.model_dir import load_tokenizer

    names = read_label_names(labels)
    case = {} if checkpoint_case else {"do_lower_case": load_tokenizer(args.model).do_lower_case}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(args.model), **case)

    def dataset(path: Path) -> list[dict]:
        data = read_classification_file(path, names, allow_new_labels=False)
        encoded = tokenizer(data.texts, truncation=True, max_length=recipe["max_seq_len"])
        return [{"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": label}
                for ids, mask, types, label in zip(encoded["input_ids"], encoded["attention_mask"],
                                                     encoded["token_type_ids"], data.labels)]

    train_set, dev_set = dataset(train), dataset(dev)
    transformers.set_seed(seed)  # the classifier's fresh weights, as Trainer's model_init would
    labels_config = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if pretrained:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(args.model), **labels_config)
    else:
        config = transformers.AutoConfig.from_pretrained(str(args.model), **labels_config)
        model = transformers.AutoModelForSequenceClassification.from_config(config)

    def accuracy(prediction) -> dict:
        logits, gold = prediction
        return {"accuracy": float((np.argmax(logits, axis=-1) == gold).mean())}

    training_args = transformers.TrainingArguments(
        output_dir=str(work / f"transformers-{seed}"), learning_rate=recipe["lr"], warmup_steps=recipe["warmup_steps"],
        lr_scheduler_type="linear", num_train_epochs=args.epochs, per_device_train_batch_size=recipe["batch_size"],
        per_device_eval_batch_size=64, weight_decay=recipe["weight_decay"], max_grad_norm=recipe["max_grad_norm"] or 0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, seed=seed, **({"optim": optim} if optim else {}),
        eval_strategy="epoch", save_strategy="epoch" if save else "no", logging_strategy="epoch", report_to="none", use_cpu=True,
        bf16=args.precision == "bf16", disable_tqdm=True, dataloader_num_workers=0,
        label_smoothing_factor=recipe["label_smoothing"],
    )
    trainer = transformers.Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=dev_set,
                                   data_collator=transformers.DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    evals = [r["eval_accuracy"] for r in trainer.state.log_history if "eval_accuracy" in r]
    torch.set_num_threads(args.threads)
    return {"per_epoch": [round(a, 4) for a in evals], "seconds": round(seconds, 1),
            "total_steps": trainer.state.max_steps, "do_lower_case": tokenizer.do_lower_case,
            "label_smoothing": recipe["label_smoothing"]}


def run_tfidf(train: Path, dev: Path, labels: Path, seed: int) -> dict:
    from sbert_cli.data.classification import read_label_names
    from sbert_cli.tasks.demo import train_tfidf_baseline

    result = train_tfidf_baseline(train, dev, read_label_names(labels), seed)
    return {"per_epoch": [round(result["accuracy"], 4)], "macro_f1": result["macro_f1"], "seconds": result["train_seconds"]}


def default_recipe(args, examples: int) -> dict:
    """What `sbert train-cls --model M` would choose, read from the library's defaults (for a transformers-only run
    with no sbert run to take it from): TrainConfig's batch size, weight decay and clipping, ClassifierOptions'
    max length, lr_rule's lr and warmup ratio; warmup steps rounded as the loop rounds them."""
    import math

    from sbert_cli.model.config import BertConfig
    from sbert_cli.tasks.options import ClassifierOptions
    from sbert_cli.tasks.lr_rule import LABEL_SMOOTHING, WARMUP_RATIO, choose_lr
    from sbert_cli.train.types import TrainConfig

    config = TrainConfig(out_dir=Path("unused"))
    hidden = BertConfig.from_json(args.model / "config.json").hidden_size
    total = args.epochs * math.ceil(examples / config.batch_size)
    return {"lr": choose_lr("cls", hidden, False, ["classifier.weight"]), "warmup_steps": round(WARMUP_RATIO * total),
            "total_steps": total, "batch_size": config.batch_size, "max_seq_len": ClassifierOptions().max_seq_len,
            "weight_decay": config.weight_decay, "schedule": config.schedule, "max_grad_norm": config.max_grad_norm,
            "label_smoothing": LABEL_SMOOTHING}


def label_smoothing(result: dict) -> float | None:
    """The run's label smoothing; records written before sbert had it trained on plain cross-entropy (0)."""
    if result["library"] == "tfidf":
        return None
    return result.get("label_smoothing", result.get("recipe", {}).get("label_smoothing", 0.0))


def table(results: list[dict]) -> str:
    """Mean ± spread (half the range) of the last epoch's dev accuracy, per library and setting."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        lr = r.get("lr") or r.get("recipe", {}).get("lr")
        key = (r["library"], r["epochs"], r["train_examples"], r.get("variant", ""), lr, label_smoothing(r))
        groups.setdefault(key, []).append(r)
    lines = ["| library | variant | lr | label smoothing | epochs | train titles | seeds | dev accuracy (last epoch) | per epoch (mean) | minutes/run |",
             "|---|---|---:|---:|---:|---:|---|---:|---|---:|"]
    for (library, epochs, examples, variant, lr, smoothing), rows in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        last = [r["per_epoch"][-1] for r in rows]
        spread = (max(last) - min(last)) / 2
        epochs_mean = [statistics.mean(col) for col in zip(*(r["per_epoch"] for r in rows))]
        lines.append(f"| {library} | {variant or '-'} | {lr or '-'} | {'-' if smoothing is None else smoothing} | {epochs} | {examples} | {', '.join(str(r['seed']) for r in rows)} | "
                     f"{statistics.mean(last):.4f} ± {spread:.4f} | {' / '.join(f'{a:.3f}' for a in epochs_mean)} | "
                     f"{statistics.mean(r['seconds'] for r in rows) / 60:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("SBERT_REAL_BERT", ".real-bert")))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="use the first N training titles (default: all 9,000)")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(DEFAULT_LIBRARIES),
                        help="transformers-random-init: Trainer on a randomly initialised model of the same shape (a diagnosis)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--lr", type=float, default=None,
                        help="peak lr for every library (default: the one sbert's rule chooses; the rest of the recipe stays sbert's)")
    parser.add_argument("--threads", type=int, default=torch_threads_default())
    parser.add_argument("--variant", default="", help="a name for extra sbert options (--sbert-args), shown in the table")
    parser.add_argument("--sbert-args", nargs=argparse.REMAINDER, default=[],
                        help="extra train-cls options, last on the line (e.g. --sbert-args --pooling mean)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-finetune-quality"))
    parser.add_argument("--report", action="store_true", help="print the table of OUT/results.jsonl and stop")
    args = parser.parse_args()

    results_file = args.out / "results.jsonl"
    if args.report:
        print(table([json.loads(line) for line in results_file.read_text().splitlines()]))
        return
    import torch

    from sbert_cli.resources import THUCNEWS_CLASSES, THUCNEWS_DEV, THUCNEWS_TRAIN

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the sbert subprocess
    args.out.mkdir(parents=True, exist_ok=True)
    train = subset(THUCNEWS_TRAIN, args.out / "train.txt", args.limit)
    examples = sum(1 for _ in train.open(encoding="utf-8"))
    machine = {"cpu": cpu_model(), "bf16_flags": bf16_flags(), "threads": args.threads, "torch": torch.__version__,
               "precision": args.precision}
    print(f"{machine}; {examples} training titles, {args.epochs} epochs, seeds {args.seeds}", flush=True)
    recipes = {}
    if results_file.exists():  # sbert's choice from an earlier invocation, for a transformers-only run
        for line in results_file.read_text().splitlines():
            r = json.loads(line)
            if r["library"] == "sbert" and not r["variant"] and r["epochs"] == args.epochs and r["train_examples"] == examples:
                recipes[r["seed"]] = r["recipe"]
    for seed in args.seeds:
        for library in args.libraries:
            with tempfile.TemporaryDirectory(dir=args.out) as tmp:
                if library == "sbert":
                    result = run_sbert(args, seed, train, THUCNEWS_DEV, THUCNEWS_CLASSES, Path(tmp))
                    recipes[seed] = result["recipe"]
                elif library.startswith("transformers"):
                    recipe = recipes.get(seed) or default_recipe(args, examples)  # sbert's, as its run recorded it
                    recipe = {**recipe, **({"lr": args.lr} if args.lr is not None else {})}
                    result = run_transformers(args, seed, recipe, train, THUCNEWS_DEV, THUCNEWS_CLASSES, Path(tmp),
                                              pretrained=library != "transformers-random-init",
                                              checkpoint_case=library == "transformers-checkpoint-case")
                    result["lr"] = recipe["lr"]
                else:
                    result = run_tfidf(train, THUCNEWS_DEV, THUCNEWS_CLASSES, seed)
            record = {"library": library, "variant": args.variant if library == "sbert" else "", "seed": seed,
                      "epochs": args.epochs if library != "tfidf" else 0, "train_examples": examples, **machine, **result}
            with results_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            print(f"{library:12} seed {seed}: dev accuracy per epoch {result['per_epoch']} ({result['seconds']} s)", flush=True)
    print(table([json.loads(line) for line in results_file.read_text().splitlines()]))


def torch_threads_default() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "0")) or min(2, os.cpu_count() or 1)


if __name__ == "__main__":
    main()
