"""The shape of a user error on the command line, shared by the CLI tests."""

from __future__ import annotations

import re


def assert_one_line(res, *patterns: str) -> str:
    """Exit status 2 and exactly one line, ``error: ...``, with every pattern in it."""
    assert res.code == 2, (res.code, res.err)
    assert "Traceback" not in res.err, res.err
    assert res.err.startswith("error: ") and res.err.count("\n") == 1, res.err
    for pattern in patterns:
        assert re.search(pattern, res.err), f"{pattern!r} not in {res.err!r}"
    return res.err
