"""The result protocol, for every command ported to it: the command's --json output is its
result's ``to_dict()``; ``basinscope.store.load(run_dir)`` returns the typed result with the
same dict; ``basinscope.plotting.plot`` draws it; ``basinscope report RUN_DIR`` builds a page
that opens in headless Chromium without errors.

Each command appears once in ``COMMANDS`` with tiny settings (an MLP on digits): the
entries of this file, and those of each ``tests/protocol_cases/*.py`` module's ``COMMANDS``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> list[Path]:
    from basinscope.models import build_model, save_weights

    d = tmp_path_factory.mktemp("weights")
    return [
        save_weights(build_model("mlp", {"hidden": [16]}, init_seed=i), d / f"m{i}.safetensors")
        for i in range(3)
    ]


from protocol_cases import MLP, _w, all_commands  # noqa: E402

# name -> (the command line without --out, given the weight files; the result's kind)
COMMANDS = {
    "barrier": (lambda w: ["barrier", *MLP, *_w(w[:2]), "--num-points", "3"], "barrier"),
    "barrier-matrix": (
        lambda w: ["barrier", *MLP, *_w(w), "--num-points", "3", "--no-refine"],
        "barrier_matrix",
    ),
}


COMMANDS = all_commands(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_follows_the_result_protocol(name, weights, tmp_path, cli):
    from basinscope.plotting import plot
    from basinscope.result import Result
    from basinscope.store import load
    from browser import check_report, chromium_path

    args, kind = COMMANDS[name]
    out = tmp_path / "run"
    res = cli(*args(weights), "--out", out, "--json", "--no-plot")
    assert res.code == 0, res.err
    printed = json.loads(res.out)
    assert printed["kind"] == kind and printed["schema"] >= 1
    result = load(out)
    assert isinstance(result, Result) and result.kind == kind
    assert json.loads(json.dumps(result.to_dict())) == printed
    assert json.loads((out / "result.json").read_text()) == printed
    fig, ax = plot(result)
    assert fig.axes and ax in fig.axes
    drawn = cli("plot", out, "--format", "svg", "--json")
    assert drawn.code == 0, drawn.err
    listed = json.loads(drawn.out)["figures"]
    assert listed[0] == str(out / "figures" / f"{kind}.svg"), listed
    # a landscape also redraws its figures of every variable (contours, 3D, HTML, VTP)
    assert len(listed) == 1 or kind == "landscape", listed
    assert all(Path(f).stat().st_size > 0 for f in listed)
    report = cli("report", out)
    assert report.code == 0, report.err
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "figures" / f"{kind}.png").stat().st_size > 1000
    if chromium_path() is None and os.environ.get("CI") != "true":
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    page = check_report(out / "report.html", timeout=120)
    assert page["console_errors"] == [] and page["n_figures"] == 1
    assert all(f["ok"] for f in page["figures"]), page["figures"]


def test_a_run_folder_of_the_old_format_is_refused_with_the_fix(tmp_path, cli, weights):
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(
        json.dumps({"kind": "barrier", "spec": {}, "versions": {"basinscope": "0.1.0"}})
    )
    (old / "results.json").write_text("{}")
    for args in (["report", old], [*COMMANDS["barrier"][0](weights), "--out", old]):
        res = cli(*args)
        assert res.code == 2, res.err
        assert "written by basinscope 0.1.0 in run-folder format 1" in res.err
        assert "reads format 2" in res.err and "into a new --out folder" in res.err
