"""`sbert` command line: the app lives in app.py, each group of commands in its own module."""

from sbert_cli.cli.app import app

# Importing a command module registers its commands on `app`.
from sbert_cli.cli import model_commands  # noqa: E402,F401


def main() -> None:
    app(prog_name="sbert")
