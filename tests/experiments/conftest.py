"""Fixtures shared by the study tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from basinscope.experiments.registry import make_config, run_study


@pytest.fixture(scope="session")
def transfer_smoke(tmp_path_factory):
    """One smoke run of the transfer-methods study, shared by the skeleton's and every
    section's tests: ``(root, cfg, results, run_dir)``."""
    root = tmp_path_factory.mktemp("transfer-methods")
    cfg = make_config("transfer-methods", smoke=True)
    results = run_study("transfer-methods", root, cfg, say=lambda _m: None)
    return root, cfg, results, Path(results["run_dir"])
