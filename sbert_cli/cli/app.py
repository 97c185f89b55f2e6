"""The Typer app and what every command shares: the console and the error boundary.

Library code raises SbertError; here, and only here, it becomes one line on stderr and exit code 1.
The library names options by their field, in backticks (`max_seq_len must be ...`); `in_flags` turns
each into the running command's flag (`--max-seq-len`), so flags are known to the CLI alone.
Command modules import heavy libraries (torch) inside their functions so `sbert --help` stays fast.
"""

from __future__ import annotations

import re
import sys

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from sbert_cli.errors import SbertError

# Not a terminal (a pipe, a file): lines are not hard-wrapped at 80 columns.
console = Console(highlight=False, soft_wrap=not sys.stdout.isatty())
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


_FIELD = re.compile(r"`([a-z][a-z0-9_]*)`")


def option_names(command) -> dict[str, str]:
    """Field name -> what the user types for it in `command`: `--max-seq-len` (the long flag), `--no-mask` for
    `no_mask` of a --mask/--no-mask pair, and an argument's name in capitals (SOURCE)."""
    names: dict[str, str] = {}
    for param in getattr(command, "params", ()):  # duck-typed: typer may bring its own copy of click
        if getattr(param, "param_type_name", "") == "option":
            if getattr(param, "hidden", False):
                continue
            names[param.name] = next((o for o in param.opts if o.startswith("--")), param.opts[0])
            for secondary in param.secondary_opts:
                names[secondary.lstrip("-").replace("-", "_")] = secondary
        elif param.name:
            names[param.name] = param.name.upper()
    return names


_running_command = None  # the subcommand SbertGroup is running, for in_flags
_all_commands: list = []  # every subcommand, for fields the running one lacks; filled when first needed


def in_flags(message: str, command=None) -> str:
    """A library message in the words of the command line: each `field` becomes the running command's flag
    for it (`--max-seq-len`); a field of another command (a hint to run that one) becomes that command's flag;
    anything else stays a bare name."""
    names = option_names(command if command is not None else _running_command)

    def flag(match: re.Match) -> str:
        field_name = match.group(1)
        if field_name in names:
            return names[field_name]
        if not _all_commands:  # only on the rare message naming another command's field: not at start-up
            group = typer.main.get_command(app)
            _all_commands[:] = [group.get_command(None, n) for n in group.list_commands(None)]
        for other in _all_commands:
            found = option_names(other).get(field_name)
            if found is not None and found.startswith("-"):
                return found
        return field_name

    return _FIELD.sub(flag, message)


def fail(message: str, command=None) -> "typer.Exit":
    """Print one error line (fields named as `command`'s flags) and return the exit to raise."""
    message = in_flags(message, command)
    click.echo("error: " + message.replace("\r", " ").replace("\n", " "), err=True)  # one line, whatever it held
    return typer.Exit(1)


def _argument_usage(param) -> str:
    """An argument as usage lines write it: SRC, [REPO_ID], INPUT..., [TEXT]... (whatever typer's version does)."""
    name = (param.metavar or param.name).strip("[]{}. ").upper()
    if param.nargs != 1:
        return f"{name}..." if param.required else f"[{name}]..."
    return name if param.required else f"[{name}]"


def _flags_show_no_value(command: click.Command) -> click.Command:
    """Help lists `--force`, not `--force <bool>`: a flag takes no value; usage lines name arguments one way."""
    for param in command.params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""

    def collect_usage_pieces(ctx) -> list[str]:
        arguments = [p for p in command.get_params(ctx) if getattr(p, "param_type_name", "") == "argument"]
        return ([command.options_metavar] if command.options_metavar else []) + [_argument_usage(p) for p in arguments]

    if not isinstance(command, TyperGroup):
        command.collect_usage_pieces = collect_usage_pieces
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

    def resolve_command(self, ctx: click.Context, args: list[str]):
        global _running_command
        name, command, rest = super().resolve_command(ctx, args)
        _running_command = command
        return name, command, rest

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a full stdout (/dev/full) fails here, inside the boundary, not at exit
            return result
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
        except OSError as e:  # a read-only folder, a full disk, a full stdout: one line naming the path
            from sbert_cli.errors import os_error_message

            raise fail(os_error_message(e, None if e.filename is not None or _stdout_fine() else "standard output")) from None


def _stdout_fine() -> bool:
    """Whether stdout still takes writes; when not, what it holds is dropped so that exit does not fail again."""
    import os

    try:
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), b"")  # /dev/full refuses even an empty write
        return True
    except (OSError, ValueError):
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), sys.stdout.fileno())
        return False


app = typer.Typer(
    cls=SbertGroup,
    name="sbert",
    help="Chinese BERT toolkit: download, convert-weights, make-mlm-data, pretrain, train-cls, train-ner, eval, predict, "
    "fill-mask, plot, embed, similar, serve, demo.",
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
