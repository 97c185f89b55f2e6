"""sbert demo: the whole pipeline offline on the bundled THUCNews titles, each stage shown as its command shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sbert_cli.cli.app import app, console
from sbert_cli.cli.progress import TrainingProgress
from sbert_cli.cli.options import THREADS_HELP, set_threads
from sbert_cli.tasks.demo import (  # no torch at its top: `sbert --help` stays fast
    DEFAULT_OUT,
    QUICK,
)

STAGE_TITLES = {
    "make-mlm-data": "whole-word-masked pretraining data from the train titles",
    "pretrain": "a BERT pretrained from scratch (masked LM)",
    "train-cls": "fine-tune it as a 10-class news classifier",
    "eval": "evaluate on the held-out dev titles",
    "baseline": "character 1-2-gram TF-IDF + LinearSVC (scikit-learn) on the same titles",
    "predict": "classify new headlines",
    "fill-mask": "fill in [MASK] with the pretrained model",
}
FROM_CHECKPOINT_TITLES = {**STAGE_TITLES, "pretrain": "continue the checkpoint's masked-LM pretraining on the titles"}


@app.command("demo")
def demo_command(
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Run dir for everything the demo writes."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Start from this checkpoint (model dir or hub repo id) instead of a tiny BERT from scratch: its vocab, "
             "1 epoch of continued pretraining, 3 of fine-tuning at batch 32, learning rates as pretrain and train-cls choose them.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an earlier demo in a non-empty --out."),
    quick: bool = typer.Option(
        False, "--quick",
        help=f"Smoke test: {QUICK.train_lines} titles, one epoch per stage, under a minute. Its figures mean nothing.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option(
        "auto", "--precision", help="Every stage: auto (bf16 where the CPU/GPU does it natively, else fp32), fp32, bf16, fp16 (CUDA)."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    seed: int = typer.Option(42, "--seed", help="Seeds masking, model initialisation, dropout and training order."),
) -> None:
    """Run the whole pipeline offline on bundled THUCNews titles: make-mlm-data, pretrain a tiny BERT from
    scratch (or continue pretraining --model), train-cls, eval, predict, fill-mask, next to a TF-IDF baseline
    (from scratch: a few minutes on 2 CPU cores)."""
    import dataclasses

    from rich.markup import escape

    from sbert_cli.tasks.demo import FULL, STAGES, run_demo, starting_from

    settings = dataclasses.replace(starting_from(model, QUICK if quick else FULL), device=device, precision=precision, seed=seed)
    titles = STAGE_TITLES if model is None else FROM_CHECKPOINT_TITLES
    set_threads(threads)  # the figures depend on it (float sums): report.json records it
    if quick:
        console.print("[yellow]--quick:[/] a smoke test on a few titles and steps; its accuracy means nothing")

    def started(name: str, command: str | None) -> None:
        console.rule(f"[bold]{STAGES.index(name) + 1}/{len(STAGES)} {name}[/]: {escape(titles[name])}")
        if command:
            console.print(f"[dim]same as: {escape(command)}[/]", soft_wrap=True)

    report = run_demo(out, settings, force=force, training_callbacks=lambda: TrainingProgress(console),
                      on_stage_start=started, on_stage_end=_render_stage)
    _render_summary(report)


def _render_stage(stage) -> None:
    from rich.markup import escape

    if stage.name == "make-mlm-data":
        from sbert_cli.cli.data import print_mlm_data_report

        print_mlm_data_report(stage.result)
    elif stage.name == "pretrain":
        from sbert_cli.cli.train import print_run_summary

        print_run_summary(stage.result.train)
        from sbert_cli.cli.progress import precision_words

        console.print(f"held-out masked-token accuracy {stage.figures['held_out_mlm_accuracy']:.4f}, "
                      f"perplexity {stage.figures['held_out_perplexity']:.1f} "
                      f"({precision_words(stage.result.train.precision, training=True)})")
    elif stage.name == "train-cls":
        from sbert_cli.cli.train import print_run_summary

        print_run_summary(stage.result.train)
    elif stage.name == "eval":
        from sbert_cli.cli.eval import render_classification

        render_classification(stage.result.to_json())
    elif stage.name == "baseline":
        f = stage.figures
        console.print(f"{f['features']:,} features, trained in {f['train_seconds']:.1f} s: "
                      f"dev accuracy [bold]{f['accuracy']:.4f}[/], macro-F1 {f['macro_f1']:.4f}")
    elif stage.name == "predict":
        from sbert_cli.cli.predict import render_predictions_table

        render_predictions_table(stage.result, top_k=1)
    elif stage.name == "fill-mask":
        from sbert_cli.cli.fill_mask import print_results

        print_results(stage.result, joint=False)
    console.print(f"[dim]{escape(stage.name)}: {stage.seconds:.1f} s[/]")


def _render_summary(report) -> None:
    from rich.markup import escape
    from rich.table import Table

    from sbert_cli.tasks.demo import bert_label
    from sbert_cli.model.precision import machine_summary

    summary = report.to_json()
    settings = report.settings
    console.rule("[bold]summary[/]")
    accuracy, macro_f1 = summary["dev_accuracy"], summary["dev_macro_f1"]
    dev_size, train_size = report.stage("eval").figures["examples"], report.stage("make-mlm-data").figures["lines"]
    table = Table(title=f"dev accuracy on {dev_size:,} held-out titles (both trained on the same {train_size:,} titles)",
                  title_justify="left")
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    table.add_column("macro-F1", justify="right")
    table.add_row(escape(bert_label(summary)), f"{accuracy['bert']:.4f}", f"{macro_f1['bert']:.4f}")
    table.add_row("char 1-2-gram TF-IDF + LinearSVC", f"{accuracy['tfidf_linear_svm']:.4f}",
                  f"{macro_f1['tfidf_linear_svm']:.4f}")
    console.print(table)
    gap = accuracy["bert"] - accuracy["tfidf_linear_svm"]
    bert = f"{settings.config_name} BERT" if settings.model is None else "fine-tuned checkpoint"
    verdict = f"The {bert} is {abs(gap) * 100:.1f} points {'below' if gap < 0 else 'above'} the TF-IDF baseline"
    if gap < 0 and settings.model is None:
        verdict += (f": minutes of pretraining on {train_size:,} titles teach it far less than a real pretrained "
                    "checkpoint knows (examples/full_recipe.sh fine-tunes hfl/chinese-bert-wwm-ext)")
    console.print(verdict + ".", soft_wrap=True)
    times = Table(box=None, show_header=False, padding=(0, 2))
    times.add_column()
    times.add_column(justify="right")
    for stage in report.stages:
        times.add_row(stage.name, f"{stage.seconds:.1f} s")
    times.add_row("[bold]total[/]", f"[bold]{report.total_seconds:.1f} s[/]")
    console.print(times)
    console.print(escape(f"starting model: {summary['starting_model']['description']}; ran on {summary['device']} "
                         f"in {summary['precision']}: {machine_summary(summary['machine'])}"), soft_wrap=True)
    console.print(escape(f"wrote {report.files['report_json']} and {report.files['report_md']}; everything else under "
                         f"{report.out_dir}/"), soft_wrap=True)
