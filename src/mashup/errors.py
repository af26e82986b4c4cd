"""The one exception type the CLI turns into a clear, single-line error."""

from __future__ import annotations


class MashupError(Exception):
    """A problem with the user's input or environment.

    ``message`` names the problem (and the file, when there is one); ``hint`` says how to fix
    it. The CLI prints ``error: <message> (<hint>)`` on one line and exits with status 2.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    """``value`` if it is one of ``choices``, else one clear error naming ``name`` (the option
    on the command line) and the choices."""
    if value not in choices:
        listed = f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
        raise MashupError(f"unknown {name} {value!r}", hint=f"use {listed}")
    return value
