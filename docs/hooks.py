"""The docs site's generated parts: each command's `--help`, and the command table, rendered from the Typer app.

mkdocs runs this file as a hook (mkdocs.yml `hooks:`); tests/test_docs.py imports it directly (no mkdocs needed).

- `command_paths()`  every registered command, as the words typed after `sbert` (`("train-cls",)`), in --help order
- `page_for(path)`   the docs page a command's reference lives on: `commands/<name>.md`
- `render_help(path)` what `sbert <path> --help` prints, at WIDTH columns, without colour, trailing spaces trimmed
- `command_table()`  a Markdown table: each command linked to its page, with the first line of its help
- `expand(markdown)` replaces the markers `<!-- sbert help: NAME -->` and `<!-- sbert commands -->` with the above
- `on_files`, `on_page_markdown`  the mkdocs events: a command without a page is a warning (a failure under
  `mkdocs build --strict`); markers are expanded when each page is built

Nothing generated is committed, so the site cannot drift from the CLI: it is rendered from it at every build.
"""

from __future__ import annotations

import logging
import posixpath
import re

WIDTH = 88  # columns the help is rendered at, on the site and in the test that compares it with `sbert ... --help`
HELP_MARKER = re.compile(r"^<!-- sbert help: ([a-z0-9 -]+?) -->$", re.MULTILINE)
COMMANDS_MARKER = "<!-- sbert commands -->"

log = logging.getLogger("mkdocs.plugins.sbert")


def _group():
    import typer

    from sbert_cli.cli import app

    return typer.main.get_command(app)


def command_paths() -> list[tuple[str, ...]]:
    """Every visible command (and subcommand of a group), as the words after `sbert`, in the order --help lists them."""
    import click

    paths: list[tuple[str, ...]] = []

    def walk(group: click.Group, prefix: tuple[str, ...]) -> None:
        for name in group.list_commands(None):
            command = group.get_command(None, name)
            if command is None or command.hidden:
                continue
            if isinstance(command, click.Group):
                walk(command, prefix + (name,))
            else:
                paths.append(prefix + (name,))

    walk(_group(), ())
    return paths


def page_for(path: tuple[str, ...]) -> str:
    """The docs page (relative to docs/) of a command: commands/<words joined by ->.md."""
    return "commands/" + "-".join(path) + ".md"


def render_help(path: tuple[str, ...] = ()) -> str:
    """`sbert <path> --help` as the CLI prints it to a pipe WIDTH columns wide: typer's own formatting, no colour."""
    import typer.rich_utils as rich_utils
    from typer.testing import CliRunner

    from sbert_cli.cli import app

    saved = rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL, rich_utils.COLOR_SYSTEM
    rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL, rich_utils.COLOR_SYSTEM = WIDTH, False, None
    try:
        result = CliRunner().invoke(app, [*path, "--help"], prog_name="sbert", env={"COLUMNS": str(WIDTH)})
    finally:
        rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL, rich_utils.COLOR_SYSTEM = saved
    if result.exit_code != 0:
        raise RuntimeError(f"sbert {' '.join(path)} --help exited {result.exit_code}: {result.output}")
    return normalise(result.stdout)


def normalise(text: str) -> str:
    """Help text as the docs show it: trailing spaces trimmed, no blank lines at either end."""
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def _first_line(help_text: str | None) -> str:
    return (help_text or "").strip().split("\n\n")[0].replace("\n", " ").replace("|", "\\|")


def command_table(from_page: str = "commands/index.md") -> str:
    """A Markdown table of every command, linked to its page (relative to `from_page`), with its help's first line."""
    group = _group()
    rows = ["| command | what it does |", "|---|---|"]
    for path in command_paths():
        command = group
        for word in path:
            command = command.get_command(None, word)
        link = posixpath.relpath(page_for(path), posixpath.dirname(from_page) or ".")
        rows.append(f"| [`sbert {' '.join(path)}`]({link}) | {_first_line(command.help)} |")
    return "\n".join(rows)


def expand(markdown: str, page: str = "commands/index.md") -> str:
    """Replace every marker in a page's Markdown with what it stands for (`page`: its path under docs/)."""
    known = set(command_paths())

    def help_block(match: re.Match) -> str:
        words = match.group(1).strip()
        path = tuple(words.split()) if words != "sbert" else ()
        if path and path not in known:
            raise ValueError(f"docs/{page}: <!-- sbert help: {words} --> names no command of sbert")
        return f"```text\n$ sbert {' '.join(path + ('--help',))}\n{render_help(path)}\n```"

    markdown = HELP_MARKER.sub(help_block, markdown)
    if COMMANDS_MARKER in markdown:
        markdown = markdown.replace(COMMANDS_MARKER, command_table(page))
    return markdown


# mkdocs events ------------------------------------------------------------------------------------------------


def on_files(files, config):
    """Every command has its page: a command added without docs fails `mkdocs build --strict`."""
    present = {f.src_uri for f in files}
    for path in command_paths():
        if page_for(path) not in present:
            log.warning("sbert %s has no docs page: write docs/%s (see docs/contributing.md)", " ".join(path), page_for(path))
    return files


def on_page_markdown(markdown, page, config, files):
    return expand(markdown, page.file.src_uri)
