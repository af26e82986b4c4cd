"""The ``mashup`` command line: a thin shell that wires each stage's commands together.

Every stage keeps its commands in ``mashup/<stage>/commands.py``; those modules import heavy
libraries (torch, transformers) inside the command functions so ``mashup --help`` stays fast.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from mashup.console import err_console
from mashup.errors import MashupError


class _MashupGroup(TyperGroup):
    """Turns a :class:`MashupError` into one ``error: ...`` line on stderr and exit status 2."""

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except MashupError as exc:
            err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from exc


app = typer.Typer(
    cls=_MashupGroup,
    name="mashup",
    help="Reuse what has already been trained: zoo, select, merge, train, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from mashup import demo
    from mashup.bench import commands as bench_commands
    from mashup.data import commands as data_commands
    from mashup.eval import commands as eval_commands
    from mashup.merge import commands as merge_commands
    from mashup.select import commands as select_commands
    from mashup.states import commands as states_commands
    from mashup.train import commands as train_commands
    from mashup.zoo import commands as zoo_commands

    app.add_typer(zoo_commands.app, name="zoo")
    app.add_typer(data_commands.app, name="data")
    app.add_typer(states_commands.app, name="states")
    app.add_typer(bench_commands.app, name="bench")
    app.command("merge")(merge_commands.merge)
    app.command("eval")(eval_commands.evaluate)
    app.command("select")(select_commands.select)
    app.command("train")(train_commands.train)
    app.command("run")(train_commands.run)
    app.command("demo")(demo.demo)
    # `zoo build` trains the zoo, so it lives with training but reads as a zoo command.
    zoo_commands.app.command("build")(train_commands.zoo_build)


_register()


def main() -> None:
    app(prog_name="mashup")


if __name__ == "__main__":
    main()
