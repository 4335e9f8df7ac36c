"""User-facing errors.

Every problem a user can cause (a bad file, a spec that does not fit, a grid range that
makes no sense) raises :class:`BasinscopeError`, whose message says what was expected,
what was found and how to fix it. The CLI prints the message without a traceback and
exits with status 2; library users get an ordinary exception (a ``ValueError``).
"""

from __future__ import annotations


class BasinscopeError(ValueError):
    """A problem with the user's input, stated with its fix."""


class SpecMismatchError(BasinscopeError):
    """A run folder already holds a run with a different specification."""
