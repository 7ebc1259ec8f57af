"""The project's one family of errors for mistakes a user can fix.

A :class:`UserError` ends a program with one line naming the file or flag and exit status 2
(:func:`cli.run_main`). Anything else is a bug and keeps its traceback, so a ``ValueError`` from
torch, numpy or Flower is never mistaken for a bad flag.
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad flag, file, config or checkpoint; ``str(err)`` is one line naming it."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))


class UsageError(UserError):
    """A problem with the command line or the environment it names."""
