"""The CLI's error boundary (cli/app.py): SbertError becomes one line on stderr and exit code 1."""

import subprocess
import sys

import typer
from typer.testing import CliRunner

from sbert_cli.cli.app import SbertGroup
from sbert_cli.errors import DataError


def _app_raising(error: Exception) -> typer.Typer:
    app = typer.Typer(cls=SbertGroup)

    @app.command()
    def boom() -> None:
        raise error

    @app.command()
    def other() -> None:  # two commands, so typer keeps the group (and its invoke) in place
        pass

    return app


def test_sbert_error_is_one_line_with_exit_code_1_even_if_the_message_has_newlines():
    result = CliRunner().invoke(_app_raising(DataError("train.txt:3: bad row\nfix it")), ["boom"])
    assert result.exit_code == 1
    assert result.stderr == "error: train.txt:3: bad row fix it\n"
    assert "Traceback" not in result.output


def test_python_dash_m_works_like_sbert():
    result = subprocess.run([sys.executable, "-m", "sbert_cli", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("sbert ")


def test_version_has_one_source_and_matches_the_last_released_changelog_entry():
    import re
    import tomllib
    from pathlib import Path

    from sbert_cli import __version__

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sbert_cli.__version__"}
    released = re.findall(r"^## (\d+\.\d+\.\d+)(?! \(unreleased\))", (root / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    assert __version__ == released[0]
    result = subprocess.run([sys.executable, "-m", "sbert_cli", "--version"], capture_output=True, text=True, timeout=120)
    assert result.stdout == f"sbert {__version__}\n"


def test_training_and_task_options_are_generated_from_their_settings_with_the_library_defaults():
    # No command declares a training or task option twice: the options train-cls, train-ner and pretrain parse,
    # left unset, build exactly TrainConfig's defaults and the task's options dataclass's (ClassifierOptions,
    # NerOptions, PretrainOptions: what a library caller gets), and each field's flag is in --help.
    import dataclasses
    from pathlib import Path

    from sbert_cli.cli import app
    from sbert_cli.cli.options import settings_from
    from sbert_cli.cli.train import train_config_from
    from sbert_cli.tasks.options import ClassifierOptions, NerOptions, PretrainOptions
    from sbert_cli.train.types import TrainConfig

    group = typer.main.get_command(app)
    required = {"data": Path("mlm"), "train_file": Path("train.txt")}  # a required option has no default
    for name, settings in (("train-cls", ClassifierOptions), ("train-ner", NerOptions), ("pretrain", PretrainOptions)):
        command = group.get_command(None, name)
        defaults = {p.name: (None if p.required else p.default) for p in command.params}
        assert train_config_from(defaults) == TrainConfig(out_dir=defaults["out"])
        own = {f.name: required[f.name] for f in dataclasses.fields(settings) if f.default is dataclasses.MISSING}
        assert settings_from(settings, {**defaults, **own}) == settings(**own), name
        flags = {opt for p in command.params for opt in p.opts}
        for f in (*dataclasses.fields(TrainConfig), *dataclasses.fields(settings)):
            assert f.metadata["flags"][0].split("/")[0] in flags, (name, f.name)
        assert {p.name for p in command.params} == ({f.name for f in dataclasses.fields(TrainConfig)} - {"out_dir"}
                                                    | {f.name for f in dataclasses.fields(settings)} | {"out", "threads"})
