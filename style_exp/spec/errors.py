"""The project's errors that a person can act on: what is wrong, where, and what to change.

Every module raises these (or subclasses) for mistakes it can name, so the command
line (``cli.py``) prints them as one line, ``error: <what> (<where>)``, plus at most
one hint line, with an exit code that tells a usage error from a failed run. It
imports nothing, so every layer may use it.
"""

from __future__ import annotations


class Reported(Exception):
    """An error with its parts kept apart: ``what`` is wrong, ``where`` (a config key, a
    file or a URI) and an optional ``hint``; ``exit_code`` is what the command exits with."""

    exit_code = 1

    def __init__(self, what: str, where: str = "", hint: str = ""):
        super().__init__(f"{what} ({where})" if where else what)
        self.what, self.where, self.hint = what, where, hint


class UserError(Reported, ValueError):
    """Something the user gave is wrong: a config value, an input file, the tracking URI."""

    exit_code = 2


class RunFailure(Reported, RuntimeError):
    """The run cannot be done or went wrong: the store is unreachable, memory is short, the
    optimisation made no progress."""
