"""The shared report-rebuild check forbids what it names, by module, not by a shadowing name."""

from __future__ import annotations

import importlib

import pytest

from study_checks import forbid


def test_forbid_makes_each_target_raise_where_a_function_shadows_its_module(monkeypatch):
    forbid(monkeypatch, ["basinscope.analyses.barrier:barrier", "basinscope.training:train"])
    module = importlib.import_module("basinscope.analyses.barrier")
    for fn in (module.barrier, importlib.import_module("basinscope.training").train):
        with pytest.raises(AssertionError, match="the report recomputed something"):
            fn()
