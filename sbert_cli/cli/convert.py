"""sbert convert-weights: a Hugging Face BERT dir to an sbert model dir, or back (--to hf)."""

from __future__ import annotations

from pathlib import Path

import typer

from sbert_cli.cli.app import app, console, err_console, in_flags


@app.command("convert-weights")
def convert_weights_command(
    source: str = typer.Argument(..., metavar="SRC", help="Model dir (HF or sbert format) or hub repo id."),
    destination: Path = typer.Argument(..., metavar="DST", help="Folder to write."),
    to: str = typer.Option("sbert", "--to", help="sbert: an sbert model dir; hf: a dir transformers loads."),
    force: bool = typer.Option(False, "--force", help="Replace a DST that exists and is not empty."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Check the MLM head on built-in sentences."),
) -> None:
    """Convert BERT weights through sbert's name table, and check that the MLM head was trained.

    Reads model.safetensors, a sharded index or pytorch_model.bin (with weights_only=True); maps legacy
    gamma/beta names; drops the next-sentence head with a note. Other commands convert in memory, so
    this is only needed to keep a converted copy or to hand a model back to transformers.
    """
    from rich.markup import escape
    from rich.table import Table

    from sbert_cli.tasks.convert import convert_weights

    summary = convert_weights(source, destination, to=to, force=force, probe=probe)

    kind = "sbert model dir" if summary.to == "sbert" else f"Hugging Face dir, {summary.architecture}"
    console.print(
        f"[bold]{escape(str(summary.source))}[/] ({summary.source_format}) -> "
        f"[bold]{escape(str(summary.destination))}[/] ({kind})",
        soft_wrap=True,
    )
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_row("tensors", str(summary.tensors))
    table.add_row("parameters", f"{summary.parameters:,}")
    table.add_row("heads", ", ".join(summary.heads) or "none (encoder only)")
    keys_by_reason: dict[str, list[str]] = {}
    for key, reason in summary.dropped.items():
        keys_by_reason.setdefault(reason, []).append(key)
    for reason, keys in keys_by_reason.items():
        table.add_row("dropped", f"{', '.join(sorted(keys))} — {reason}")
    for part in summary.missing_parts:
        table.add_row("not in checkpoint", part)
    table.add_row("files", ", ".join(summary.files))
    probe_result = summary.probe
    if probe_result is not None:
        styles = {"untrained": "[bold red]looks UNTRAINED[/]", "weak": f"[yellow]{probe_result.describe()}[/]",
                  "trained": "[green]trained[/]"}
        table.add_row(
            "MLM probe",
            f"top-1 {probe_result.accuracy:.1%}, top-5 {probe_result.top5_accuracy:.1%}, top-100 "
            f"{probe_result.top100_accuracy:.1%} on {probe_result.predictions} masked characters (chance "
            f"{probe_result.chance:.3%} / {5 * probe_result.chance:.3%} / {100 * probe_result.chance:.2%}; most frequent "
            f"characters {probe_result.unigram_accuracy:.1%} / {probe_result.unigram_top5_accuracy:.1%}) — "
            f"{styles[probe_result.verdict]}",
        )
    console.print(table)
    for note in summary.notes:
        console.print(f"note: {in_flags(note)}", soft_wrap=True)
    if probe_result is not None and probe_result.looks_untrained:
        err_console.print(
            f"[bold red]warning:[/] the MLM head restores only {probe_result.top100_accuracy:.1%} of masked characters in "
            f"everyday sentences even within its top 100 (chance: {100 * probe_result.chance:.2%}; a head trained for even one "
            "step: about 20%). It was "
            "probably never trained or was saved without its weights: fill-mask output will be noise, and continued "
            "pretraining starts from an untrained head.",
            soft_wrap=True,
        )
    elif probe_result is not None and probe_result.verdict == "weak":
        err_console.print(
            f"note: the MLM head is trained but weak: top-1 {probe_result.accuracy:.1%} (a well-trained Chinese BERT "
            f"gets far above {probe_result.threshold:.0%}); fill-mask suggestions will be rough. More pretraining "
            "(sbert pretrain --model ...) improves it.",
            soft_wrap=True,
        )
