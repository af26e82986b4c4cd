"""The CLI shell: help, and how a MashupError reaches the user."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from mashup import cli
from mashup.console import print_json
from mashup.errors import MashupError


def test_help_lists_every_stage() -> None:
    result = CliRunner().invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    for command in ("zoo", "merge", "select", "train", "eval", "run", "demo", "states", "bench"):
        assert command in result.output


def test_mashup_error_becomes_one_line_and_exit_2() -> None:
    app = typer.Typer(cls=cli._MashupGroup)

    @app.command("fail")
    def fail() -> None:
        raise MashupError("model.safetensors is truncated", hint="re-save the model")

    @app.command("ok")
    def ok() -> None:
        pass

    result = CliRunner().invoke(app, ["fail"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: model.safetensors is truncated (re-save the model)"]


def test_print_json_is_one_document(capsys) -> None:
    from dataclasses import dataclass
    from pathlib import Path

    @dataclass
    class Row:
        name: str
        path: Path

    print_json({"rows": [Row("a", Path("/x"))]})
    assert json.loads(capsys.readouterr().out) == {"rows": [{"name": "a", "path": "/x"}]}
