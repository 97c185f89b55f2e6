"""sbert make-mlm-data: raw text -> whole-word-masked pretraining data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sbert_cli.cli.app import app, console, in_flags
from sbert_cli.limits import MASKING_SEED

KIND_STYLES = {"mask": "bold white on red", "random": "bold black on yellow", "unchanged": "bold black on green"}


@app.command("make-mlm-data")
def make_mlm_data_command(
    inputs: list[Path] = typer.Argument(
        ..., metavar="INPUT", help="Text files: .txt (a sentence or document per line, blank line between documents), "
        "TSV such as THUCNews (text<TAB>label), .jsonl; .gz accepted; - reads standard input (once, alone or "
        "among files).", show_default=False,
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory. Default: ./NAME-mlm for the first input (./stdin-mlm for -)."),
    model: Optional[str] = typer.Option(None, "--model", help="Use the vocab of this model dir or hub repo id."),
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="Use this vocab.txt. Default: the bundled Chinese BERT vocab."),
    max_seq_len: int = typer.Option(128, "--max-seq-len", help="Tokens per sequence, [CLS] and [SEP] included."),
    masked_lm_prob: float = typer.Option(0.15, "--masked-lm-prob", help="Fraction of tokens to predict."),
    max_predictions: Optional[int] = typer.Option(
        None, "--max-predictions", help="Most predictions per sequence. Default: round(max-seq-len x masked-lm-prob)."
    ),
    mask_token_prob: float = typer.Option(0.8, "--mask-token-prob", help="Share of predictions shown as [MASK]."),
    random_token_prob: float = typer.Option(0.1, "--random-token-prob", help="Share replaced by a random token; the rest stay."),
    whole_word: bool = typer.Option(True, "--whole-word/--no-whole-word", help="Mask whole words, not single tokens."),
    segmenter: str = typer.Option("rjieba", "--segmenter", help="Word segmenter for whole-word masking: rjieba, jieba or none (per character)."),
    user_dict: Optional[Path] = typer.Option(None, "--user-dict", help="jieba user dictionary for domain words: one word per line, optionally followed by a frequency and a tag."),
    dupe_factor: int = typer.Option(1, "--dupe-factor", help="Write N differently masked copies of the data."),
    no_mask: bool = typer.Option(False, "--no-mask", help="Write unmasked sequences with word groups, for pretrain --dynamic-masking."),
    pack: bool = typer.Option(False, "--pack", help="Fill sequences with consecutive lines of one document."),
    truncate: bool = typer.Option(False, "--truncate", help="Cut lines longer than a sequence instead of splitting them."),
    input_format: str = typer.Option("auto", "--format", help="auto, txt, tsv or jsonl. auto: by suffix; a .txt whose lines all have tabs is TSV."),
    text_column: Optional[int] = typer.Option(None, "--text-column", help="TSV column holding the text (0-based). Default: 0."),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="JSONL field holding the text. Default: text."),
    on_bad_lines: Optional[str] = typer.Option(
        None, "--on-bad-lines", help="error or skip. Default: error on invalid UTF-8 and malformed rows, skip empty rows."
    ),
    seed: int = typer.Option(MASKING_SEED, "--seed", help="Random seed; the same seed and inputs give byte-identical output."),
    workers: int = typer.Option(1, "--workers", "-j", help="Worker processes. The output does not depend on it."),
    shard_size: int = typer.Option(100_000, "--shard-size", help="Sequences per shard file."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty --out, replacing earlier make-mlm-data output."),
    show: int = typer.Option(0, "--show", help="Print this many examples from the written data, masks highlighted."),
) -> None:
    """Turn raw text into whole-word-masked masked-LM training data (shards + manifest.json) for pretrain."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sbert_cli.data.mlm_data import (
        MLMDataSettings,
        default_output_dir,
        make_mlm_data,
        resolve_tokenizer,
    )

    settings = MLMDataSettings(
        max_seq_len=max_seq_len, masked_lm_prob=masked_lm_prob, max_predictions=max_predictions,
        mask_token_prob=mask_token_prob, random_token_prob=random_token_prob, whole_word=whole_word,
        segmenter=segmenter, user_dict=str(user_dict) if user_dict else None, dupe_factor=dupe_factor,
        mask=not no_mask, pack=pack, truncate=truncate, seed=seed, format=input_format,
        text_column=text_column, text_field=text_field, on_bad_lines=on_bad_lines, shard_size=shard_size,
    )
    tokenizer = resolve_tokenizer(model, vocab)
    out = out or default_output_dir(inputs[0])

    progress = Progress(
        TextColumn("[bold]make-mlm-data"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[lines]:,} lines"), TextColumn("{task.fields[speed]}"), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task("", total=None, lines=0, speed="")

        def update(lines: int, bytes_read: int, total_bytes: int) -> None:
            elapsed = progress.tasks[task].elapsed or 0.0
            speed = f"{lines / elapsed:,.0f} lines/s" if elapsed > 0 else ""
            progress.update(task, completed=bytes_read, total=total_bytes, lines=lines, speed=speed)

        report = make_mlm_data(inputs, out, tokenizer, settings, workers=workers, force=force, progress=update)
    print_mlm_data_report(report)
    if show > 0:
        _print_examples(report.out, tokenizer, show)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def print_mlm_data_report(report) -> None:
    from rich.filesize import decimal
    from rich.table import Table

    counts = report.counts
    size = sum(f.stat().st_size for f in report.out.rglob("*") if f.is_file())
    shards = len(report.manifest["shards"])
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    skipped = counts["skipped_lines"]
    table.add_row("lines", f"{counts['lines']:,}", f"{skipped:,} skipped" + (f", {counts['blank_lines']:,} blank" if counts["blank_lines"] else ""))
    notes = []
    if counts["split_lines"]:
        notes.append(f"{counts['split_lines']:,} long lines split")
    if counts["truncated_lines"]:
        notes.append(f"{counts['truncated_lines']:,} long lines truncated")
    mean_length = counts["tokens"] / counts["sequences"]
    table.add_row("sequences", f"{counts['sequences']:,}", ", ".join([f"mean length {mean_length:.1f} tokens"] + notes))
    table.add_row("tokens", f"{counts['tokens']:,}", "[CLS]/[SEP] included, no padding")
    if report.manifest["masked"]:
        masked = counts["masked"]
        table.add_row("masked", f"{masked:,}", f"{_percent(masked, counts['tokens'])} of tokens")
        table.add_row(
            "replaced", "",
            f"[MASK] {_percent(counts['masked_as_mask_token'], masked)} · random {_percent(counts['masked_as_random'], masked)}"
            f" · unchanged {_percent(counts['masked_unchanged'], masked)}",
        )
    else:
        table.add_row("masked", "-", "none (--no-mask): pretrain --dynamic-masking masks")
    table.add_row("speed", f"{report.lines_per_second:,.0f}", f"lines/s ({report.seconds:.1f} s)")
    for note in report.notes:
        console.print(f"note: {in_flags(note)}", soft_wrap=True, markup=False)
    console.print(f"wrote [bold]{report.out}[/] ({shards} shard{'s' if shards != 1 else ''}, {decimal(size)})", soft_wrap=True)
    console.print(table)
    if skipped:
        kinds = ", ".join(f"{n:,} {kind}" for kind, n in report.manifest["skipped_by_kind"].items())
        console.print(f"[yellow]skipped {skipped:,} bad lines ({kinds}), e.g.:[/]")
        for example in report.skipped_examples:
            console.print(f"  {example}", soft_wrap=True, markup=False)


def _join_tokens(pieces) -> "Text":
    """(token, style) pairs as readable text: Chinese without spaces, ## pieces glued, words spaced."""
    from rich.text import Text

    text = Text()
    previous = ""
    for token, style in pieces:
        shown = token[2:] if token.startswith("##") else token
        if previous and not token.startswith("##") and previous[-1].isascii() and previous[-1].isalnum() \
                and shown[:1].isascii() and shown[:1].isalnum():
            text.append(" ")
        text.append(shown, style=style)
        previous = shown
    return text


def _print_examples(out: Path, tokenizer, count: int) -> None:
    from rich.text import Text

    from sbert_cli.data.shards import MLMShards

    data = MLMShards(out)
    count = min(count, len(data))
    if data.masked:
        console.print(
            f"\n{count} example(s) as the model sees them, predicted tokens highlighted "
            f"([{KIND_STYLES['mask']}]red[/]: [MASK], [{KIND_STYLES['random']}]yellow[/]: random, "
            f"[{KIND_STYLES['unchanged']}]green[/]: unchanged), and their labels:",
            soft_wrap=True,
        )
    else:
        console.print(f"\n{count} example(s), whole words separated by │")
    for i in range(count):
        example = data[i]
        tokens = tokenizer.convert_ids_to_tokens(example.input_ids[1:-1])
        if not data.masked:
            word_ids = example.word_ids[1:-1].tolist()
            pieces = []
            for k, token in enumerate(tokens):
                if k and word_ids[k] != word_ids[k - 1]:
                    pieces.append(("│", "dim"))
                pieces.append((token, None))
            console.print(_join_tokens(pieces), soft_wrap=True)
            continue
        styles = {}
        for position, label in zip(example.masked_positions.tolist(), example.masked_labels.tolist()):
            shown = int(example.input_ids[position])
            kind = "mask" if shown == tokenizer.mask_id else "unchanged" if shown == label else "random"
            styles[position - 1] = KIND_STYLES[kind]
        console.print(_join_tokens([(token, styles.get(k)) for k, token in enumerate(tokens)]), soft_wrap=True)
        labels = Text("  labels:")
        labels.stylize("dim")
        for position, label in zip(example.masked_positions.tolist(), example.masked_labels.tolist()):
            labels.append(" ")
            labels.append(tokenizer.ids_to_tokens[label], style=styles[position - 1])
        console.print(labels, soft_wrap=True)
