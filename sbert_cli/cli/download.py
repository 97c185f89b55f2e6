"""sbert download: fetch a BERT's config, vocab, tokenizer files and weights from the hub (or a mirror), and a
sentence-transformers repo's modules.json and pooling settings."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from sbert_cli.cli.app import app, console
from sbert_cli.model.hub import (
    DEFAULT_REPO,  # hub imports huggingface_hub only when called, so this stays light
)

EXAMPLE_TEXT = "巴黎是[MASK]国的首都。"
EMBED_EXAMPLE_TEXT = "今天天气很好"


@app.command("download")
def download_command(
    repo_id: str = typer.Argument(DEFAULT_REPO, metavar="REPO_ID", help="Hub repo id (owner/name)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Folder to put the files in. Default: the Hugging Face cache (HF_HOME)."
    ),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit. Default: main."),
    endpoint: Optional[str] = typer.Option(
        None, "--endpoint", help="Hub URL, e.g. https://hf-mirror.com. Default: $HF_ENDPOINT or huggingface.co."
    ),
    force: bool = typer.Option(False, "--force", help="Download into a non-empty --out that holds other files."),
) -> None:
    """Download only what a BERT needs: config, vocab, tokenizer files, safetensors (else .bin) weights.

    A sentence-transformers repo also brings modules.json, sentence_bert_config.json and its modules' config.json
    (e.g. 1_Pooling/), so `sbert embed` pools and normalises as the model was trained.

    Honours HF_ENDPOINT (e.g. a mirror), HF_TOKEN (gated or private repos) and HF_HUB_OFFLINE.
    """
    from rich.filesize import decimal
    from rich.table import Table

    from sbert_cli.model.hub import download

    result = download(repo_id, out_dir=out, revision=revision, endpoint=endpoint, force=force)

    commit = f" @ {result.commit[:10]}" if result.commit else ""
    console.print(f"[bold]{result.repo_id}[/]{commit} -> {result.path}", soft_wrap=True)
    table = Table(show_header=False, box=None, padding=(0, 2))
    for name, size in result.files.items():
        table.add_row(name, decimal(size))
    table.add_row("[bold]total[/]", f"[bold]{decimal(sum(result.files.values()))}[/]")
    console.print(table)
    for name in result.removed:
        console.print(f"removed stale {name} from an earlier download")
    # A cached download is found by repo id only for the default branch.
    model = result.repo_id if result.in_cache and result.revision == "main" else shlex.quote(str(result.path))
    if "modules.json" in result.files:  # a sentence encoder
        console.print(f"next: sbert embed --model {model} \"{EMBED_EXAMPLE_TEXT}\"", soft_wrap=True)
    else:
        console.print(f"next: sbert fill-mask --model {model} \"{EXAMPLE_TEXT}\"", soft_wrap=True)
