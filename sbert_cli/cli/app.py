"""The Typer app and what every command shares: the console and the error boundary.

Library code raises SbertError; here, and only here, it becomes one line on stderr and exit code 1.
Command modules import heavy libraries (torch) inside their functions so `sbert --help` stays fast.
"""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from sbert_cli.errors import SbertError

# Not a terminal (a pipe, a file): lines are not hard-wrapped at 80 columns.
console = Console(highlight=False, soft_wrap=not sys.stdout.isatty())
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str) -> "typer.Exit":
    """Print one error line and return the exit to raise."""
    click.echo("error: " + message.replace("\r", " ").replace("\n", " "), err=True)  # one line, whatever it held
    return typer.Exit(1)


def _flags_show_no_value(command: click.Command) -> click.Command:
    """Help lists `--force`, not `--force <bool>`: a flag takes no value."""
    for param in command.params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    if not getattr(command, "_sbert_help_option", False):  # --help itself is made when help is shown
        made = command.get_help_option

        def get_help_option(ctx: click.Context):
            option = made(ctx)
            if option is not None and option.metavar is None:
                option.metavar = ""
            return option

        command.get_help_option = get_help_option
        command._sbert_help_option = True
    return command


class SbertGroup(TyperGroup):
    """Turns SbertError (and a broken pipe) into a one-line message and exit code 1, never a traceback."""

    def get_command(self, ctx: click.Context, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        return _flags_show_no_value(command) if command is not None else None

    def format_help(self, ctx: click.Context, formatter) -> None:
        _flags_show_no_value(self)
        return super().format_help(ctx, formatter)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SbertError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt as e:
            # A second Ctrl-C / SIGTERM in training (train.distributed.Interrupted) says what happened; a Ctrl-C
            # elsewhere ends the command: no traceback either way, exit code 128 + the signal's number.
            click.echo(str(e) or "interrupted", err=True)
            raise typer.Exit(getattr(e, "exit_code", 130)) from None
        except BrokenPipeError:
            # `sbert predict ... | head`: the reader went away; exit quietly.
            sys.stderr.close()
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=SbertGroup,
    name="sbert",
    help="Chinese BERT toolkit: download, convert-weights, make-mlm-data, pretrain, train-cls, eval, predict, fill-mask, "
    "plot, embed, similar, serve, demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from sbert_cli import __version__

        console.print(f"sbert {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())
