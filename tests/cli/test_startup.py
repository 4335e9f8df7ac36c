"""Start-up: ``import basinscope`` and ``basinscope --help`` import none of the heavy
optional libraries, and a command imports only what it uses. Checked in a fresh
interpreter (``sys.modules`` of this test process holds everything the suite imported)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("matplotlib", "plotly", "scipy", "sklearn", "xarray", "zarr", "pandas", "transformers")


def _loaded(code: str) -> list[str]:
    """The HEAVY packages in ``sys.modules`` after running ``code`` in a new interpreter."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def _cli(*args: str) -> str:
    """Code that runs ``basinscope ARGS`` in-process and survives its exit."""
    return (
        "import sys\nfrom basinscope.cli.main import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass"
    )


def test_import_basinscope_imports_no_heavy_library():
    assert _loaded("import basinscope") == []


def test_help_imports_no_heavy_library_and_no_torch():
    assert _loaded(_cli("--help")) == []
    assert _loaded(_cli("--help") + "\nimport sys\nassert 'torch' not in sys.modules") == []


@pytest.mark.parametrize("name", ["surface", "hessian", "barrier"])
def test_a_commands_help_imports_no_plotting_library(name):
    assert not {"matplotlib", "plotly"} & set(_loaded(_cli(name, "--help")))


def test_the_probe_sees_a_heavy_import():  # so the checks above can fail
    assert "xarray" in _loaded("import xarray")


def test_a_fresh_process_loads_a_landscape_with_its_own_spec(tmp_path, digits_xy):
    """The landscape specs live in modules imported on first use: a process that did not
    compute the landscape (a study's driver after Ray tasks did, a report) still reads its
    spec as the function's own (here RandomSurfaceSpec), not as the base LandscapeSpec."""
    from basinscope.analyses import random_surface
    from basinscope.models import mlp

    x, y = digits_xy
    run = tmp_path / "surface"
    random_surface(mlp(), (x[:40], y[:40]), alphas=[0, 1], betas=[0, 1], run_dir=run)
    code = (  # the landscape module, as a study's report imports it, but not surface.py
        "import basinscope.analyses.landscape\nfrom basinscope.store import load\n"
        f"print(type(load({str(run)!r}).spec).__name__)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "RandomSurfaceSpec"
