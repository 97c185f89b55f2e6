"""`sbert` command line: the app lives in app.py, each group of commands in its own module."""

from sbert_cli.cli.app import app

# Importing a command module registers its commands on `app`, in the order `sbert --help` lists them.
from sbert_cli.cli import download, convert, data, train, report, fill_mask, demo  # noqa: E402,F401


def main() -> None:
    app(prog_name="sbert")
