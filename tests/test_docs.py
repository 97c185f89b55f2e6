"""The README and the docs site (docs/, mkdocs.yml) against the CLI they describe.

The site's command reference is rendered from the Typer app by docs/hooks.py at build time; these tests check that it
equals what `sbert ... --help` prints, that every command has its page, nav entry and README row, that commands and
options written in the docs exist, that files the docs name exist, and that the README stays a screen of text.
Only the last test needs mkdocs (it builds the site, as CI does).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _load_hooks():
    spec = importlib.util.spec_from_file_location("sbert_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()
COMMANDS = hooks.command_paths()


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _help_from_the_real_entry_point(paths: list[tuple[str, ...]]) -> list[str]:
    """`sbert <path> --help` for each path, printed by the console script's main() in a fresh interpreter whose stdout
    is a pipe, hooks.WIDTH columns wide: what a user's `sbert ... --help | cat` shows."""
    separator = "=====sbert-help-separator====="
    code = (
        "import json, sys\n"
        "from sbert_cli.cli import main\n"
        "for words in json.loads(sys.argv[1]):\n"
        "    sys.argv = ['sbert', *words, '--help']\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        f"    print({separator!r}, flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS", "_TYPER_FORCE_DISABLE_TERMINAL")}
    env.update(TERMINAL_WIDTH=str(hooks.WIDTH), COLUMNS=str(hooks.WIDTH))
    result = subprocess.run([sys.executable, "-c", code, json.dumps(paths)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    outputs = result.stdout.split(separator + "\n")
    assert outputs[-1] == "" and len(outputs) == len(paths) + 1
    return [hooks.normalise(text) for text in outputs[:-1]]


def test_the_generated_reference_equals_help_for_every_command():
    paths = [(), *COMMANDS]
    real = _help_from_the_real_entry_point(paths)
    for path, printed in zip(paths, real):
        generated = hooks.render_help(path)
        assert "\x1b[" not in generated, f"sbert {' '.join(path)}: colour codes in the docs"
        assert generated == printed, f"docs reference of `sbert {' '.join(path)}` differs from its --help"
        assert f"Usage: sbert {' '.join(path)}".rstrip() in generated


def test_a_page_shows_its_command_help_and_the_table_lists_every_command():
    page = hooks.expand("# x\n\n<!-- sbert help: train-cls -->\n", "commands/train-cls.md")
    assert hooks.render_help(("train-cls",)) in page and "$ sbert train-cls --help" in page
    table = hooks.expand("<!-- sbert commands -->", "commands/index.md")
    for path in COMMANDS:
        assert f"[`sbert {' '.join(path)}`]({'-'.join(path)}.md)" in table
    with pytest.raises(ValueError, match="names no command"):
        hooks.expand("<!-- sbert help: no-such-command -->", "commands/x.md")


def test_every_command_has_a_docs_page_a_nav_entry_and_a_readme_row():
    """A command added (or renamed) without docs fails here, naming what to write."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    for path in COMMANDS:
        name, page = " ".join(path), hooks.page_for(path)
        assert (DOCS / page).is_file(), f"sbert {name}: write docs/{page} (see docs/contributing.md)"
        assert f"<!-- sbert help: {name} -->" in (DOCS / page).read_text(encoding="utf-8"), f"docs/{page}: end it with <!-- sbert help: {name} -->"
        assert re.search(rf"^\s*- {re.escape(page)}$", nav, re.MULTILINE), f"mkdocs.yml: add {page} to the Commands nav"
        assert re.search(rf"^\| `sbert {re.escape(name)}[` ]", readme, re.MULTILINE), f"README.md: add sbert {name} to the command table"
    pages = {p.relative_to(DOCS).as_posix() for p in (DOCS / "commands").glob("*.md")} - {"commands/index.md"}
    assert pages == {hooks.page_for(path) for path in COMMANDS}, "a page under docs/commands/ names no command"


def test_readme_fits_on_a_screen_and_its_test_command_is_what_ci_runs():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail into docs/"
    quickstart = [line for line in lines if line.startswith("pip install torch==")]
    assert len(quickstart) == 2 and quickstart[1].endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    marker = next(i for i, line in enumerate(ci) if line.startswith("# README Quickstart, second command"))
    assert ci[marker + 1] == quickstart[1], ".ci/run must run the README's Quickstart test command exactly"


def _command_lines(text: str):
    """What follows `sbert` in every command line of a Markdown file: code blocks (backslash continuations joined),
    code spans, sample output (`same as: sbert ...`), `python -m sbert_cli ...` and `... | sbert ...`."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines() + re.findall(r"`(sbert [^`]+)`", text)
    for line in lines:
        found = re.search(r"(?:^(?:\$ )?|(?<=\| )|(?<=: )|(?<=-m ))(?:sbert|sbert_cli) +(?=[a-z-])", line.strip())
        if found:
            yield line.strip()[found.end():]


def _options(command) -> set[str]:
    names = {"-h", "--help"}
    for param in command.params:
        names.update(getattr(param, "opts", ()))
        names.update(getattr(param, "secondary_opts", ()))
    return names


def test_commands_and_options_written_in_the_docs_exist():
    group = hooks._group()
    problems = []
    for file in _markdown_files():
        for line in _command_lines(file.read_text(encoding="utf-8")):
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # an apostrophe in prose
                words = line.split()
            for i, word in enumerate(words):  # the command ends at a pipe, a redirection or the next command
                if word in ("|", ">", "2>", "<", "&&", ";", "#"):
                    words = words[:i]
                    break
            command, consumed = group, 0
            while consumed < len(words) and hasattr(command, "get_command"):
                sub = command.get_command(None, words[consumed])
                if sub is None:
                    break
                command, consumed = sub, consumed + 1
            name = " ".join(words[:consumed])
            if command is group:
                if words and re.fullmatch(r"[a-z]+(-[a-z]+)*", words[0]):
                    problems.append(f"{file.relative_to(ROOT)}: sbert {words[0]}: no such command")
                continue
            known = _options(command)
            for word in words[consumed:]:
                flag = word.strip("[]").split("=")[0]
                if re.fullmatch(r"--?[a-zA-Z][\w-]*", flag) and flag not in known:
                    problems.append(f"{file.relative_to(ROOT)}: sbert {name} has no option {flag}")
    assert not problems, "\n".join(sorted(set(problems)))


def _defined_in(module_file: Path, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", module_file.read_text(encoding="utf-8")) is not None


def test_files_and_python_names_in_the_docs_exist():
    problems = []
    for file in _markdown_files():
        text = file.read_text(encoding="utf-8")
        for path in set(re.findall(r"(?<![\w./-])(sbert_cli/[\w./-]*\w|(?:tests|benchmarks|examples)/[\w./-]*\.\w+)", text)):
            if not (ROOT / path).exists():
                problems.append(f"{file.relative_to(ROOT)}: {path} does not exist")
        for dotted in set(re.findall(r"\bsbert_cli(?:\.\w+)+", text)):
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):
                base = ROOT.joinpath(*parts[:cut])
                module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
                if module.is_file():
                    rest = parts[cut:]
                    if len(rest) > 1 or (rest and not _defined_in(module, rest[0])):
                        problems.append(f"{file.relative_to(ROOT)}: {dotted}: no {'.'.join(rest)} in {module.relative_to(ROOT)}")
                    break
            else:
                problems.append(f"{file.relative_to(ROOT)}: {dotted} is no module")
    assert not problems, "\n".join(sorted(problems))


def test_the_site_builds_strict(tmp_path):
    """As CI does: a broken link, a missing anchor or a command without a page fails the build."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs-material is not installed: pip install -e '.[docs]'")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    built = (tmp_path / "site" / "commands" / "train-cls" / "index.html").read_text(encoding="utf-8")
    assert "--label-smoothing" in built and "Usage: sbert train-cls" in built
