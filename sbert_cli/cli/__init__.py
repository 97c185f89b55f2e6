"""`sbert` command line: the app lives in app.py, each group of commands in its own module."""

# Importing a command module registers its commands on `app`, in the order `sbert --help` lists them.
from sbert_cli.cli import convert, data, demo, download, fill_mask, eval, predict, train  # noqa: E402,F401
from sbert_cli.cli import train_ner  # noqa: E402,F401
from sbert_cli.cli import embed, similar, serve  # noqa: E402,F401
from sbert_cli.cli.app import app


def main() -> None:
    app(prog_name="sbert")
