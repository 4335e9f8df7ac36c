"""Second processes for the fault and concurrency tests.

The child runs this checkout's basinscope (``PYTHONPATH`` points at its ``src``), with one
OpenMP thread (deterministic, and fast on a busy 2-core machine). Tests synchronise with a
child on events, never on the clock: a line the child prints (read with a blocking
``readline``), a file it writes, or its exit (``wait``). The timeouts here are only a
safety net against a hung child.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import basinscope

SRC = str(Path(basinscope.__file__).resolve().parents[1])
SAFETY_TIMEOUT = 300  # seconds; a child that takes this long is hung


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("BASINSCOPE_TEST_KILL_AT_WRITE", None)
    return {**env, **extra}


def basinscope_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "basinscope", *map(str, args)]


def python_cmd(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end and collect its output."""
    return subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(**env), timeout=SAFETY_TIMEOUT
    )


def start(cmd: list[str], **env: str) -> subprocess.Popen:
    """Start ``cmd`` with pipes for stdin, stdout and stderr (text, line-buffered)."""
    return subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=child_env(**env),
    )


def read_until(stream, marker: str) -> list[str]:
    """Lines of ``stream`` up to and including the first containing ``marker``; fails if
    the stream ends first (the child exited)."""
    lines = []
    for line in iter(stream.readline, ""):
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"the child ended before printing {marker!r}:\n{''.join(lines)}")


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=SAFETY_TIMEOUT)
    return proc.returncode, out, err


def invoke(*args: object) -> tuple[int, str, str]:
    """``basinscope ARGS`` in this process, through the real entry point."""
    from basinscope.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def surface_cmd(out: Path, n: int = 5, *extra: object) -> list[str]:
    """Arguments of a small `basinscope surface` run (an MLP on the digits, n x n points)."""
    return [
        "surface",
        "--model",
        "mlp",
        "--xrange",
        f"-1:1:{n}",
        "--yrange",
        f"-1:1:{n}",
        "--strategy",
        "loop",
        "--splits",
        "train",
        "--no-progress",
        "--out",
        str(out),
        *map(str, extra),
    ]
