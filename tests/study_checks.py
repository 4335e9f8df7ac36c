"""Checks every study's tests share: a report is rebuilt from result.json alone.

Import as ``from study_checks import ...`` (``tests`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Iterable
from pathlib import Path

from basinscope.experiments.registry import rebuild_report


def forbid(monkeypatch, targets: Iterable[str]) -> None:
    """Make every ``"module:attribute"`` in ``targets`` raise when called. The module is
    imported by name, so ``basinscope.analyses.barrier:barrier`` is the module's function
    even where ``basinscope.analyses.barrier`` is also the name of a function."""

    def boom(*args, **kwargs):
        raise AssertionError("the report recomputed something")

    for target in targets:
        module, name = target.split(":")
        monkeypatch.setattr(importlib.import_module(module), name, boom)


def rebuild_computing_nothing(
    run_dir: Path,
    monkeypatch,
    targets: Iterable[str],
    figures: Iterable[str] = (),
    *,
    min_html: int = 0,
) -> None:
    """Delete a study run's report and figures, forbid ``targets`` (:func:`forbid`), rebuild
    the report, and check it and the PNG of each of ``figures`` are written again."""
    forbid(monkeypatch, targets)
    shutil.rmtree(run_dir / "figures")
    (run_dir / "report.html").unlink()
    assert rebuild_report(run_dir) == run_dir / "report.html"
    assert (run_dir / "report.html").stat().st_size > min_html
    for stem in figures:
        assert (run_dir / "figures" / f"{stem}.png").stat().st_size > 1000


def opens_in_chromium(report: Path, *, figures: int, exactly: bool = False) -> None:
    """Open ``report`` in headless Chromium (``browser.check_report``): no console error, at
    least (or ``exactly``) ``figures`` figures, each drawn. Skipped where Chromium is not
    installed, except on CI (``.ci/run`` installs it)."""
    import os

    import pytest

    from browser import check_report, chromium_path

    if chromium_path() is None and os.environ.get("CI") != "true":
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    out = check_report(report, timeout=120)
    assert out["console_errors"] == []
    if exactly:
        assert out["n_figures"] == figures
    else:
        assert out["n_figures"] >= figures
    assert all(f["ok"] for f in out["figures"]), out["figures"]
