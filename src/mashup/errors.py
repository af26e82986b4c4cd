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
