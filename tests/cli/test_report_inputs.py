"""`basinscope report` on study folders that were edited, truncated or poisoned (issue 11).

One tiny flatness-vs-batch-size run (a few seconds) is copied for each test; the test
edits the copy's result.json or manifest.json and rebuilds the report through the CLI.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pytest

from user_errors import assert_one_line

TINY = [
    "steps=4",
    "line_points=3",
    "grid=3",
    "hessian_subset=16",
    "trace_max_probes=10",
    "ascent_steps=1",
    "ascent_restarts=1",
    "fn_directions=2",
    "small_batch=8",
    "large_batch=64",
    "hidden=[8]",
]
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from basinscope.experiments.registry import make_config, run_study

    cfg = make_config("flatness-vs-batch-size", sets=TINY)
    root = tmp_path_factory.mktemp("runs")
    result = run_study("flatness-vs-batch-size", root, cfg, say=lambda m: None)
    return Path(result["run_dir"])


@pytest.fixture
def run_copy(finished_run, request) -> Path:
    """A copy of the finished run folder beside it (the report reads ../stages)."""
    dst = finished_run.parent / f"copy-{request.node.name[:40]}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(finished_run, dst)
    return dst


def _edit(run: Path, fn, name: str = "result.json") -> Path:
    path = run / name
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


def test_the_untouched_copy_rebuilds(cli, run_copy):
    res = cli("report", run_copy)
    assert res.code == 0, res.err
    assert (run_copy / "report.html").is_file()


def test_results_with_a_missing_key(cli, run_copy):
    """Today's symptom was a KeyError traceback."""
    path = _edit(run_copy, lambda r: r["solutions"]["small"].pop("batch_size"))
    assert_one_line(
        cli("report", run_copy),
        rf"'{path}' \(or a stage folder it names\) lacks the key 'batch_size' that the "
        r"flatness-vs-batch-size report needs: the file was edited",
        r"Run the study again to rewrite it \(finished stages are reused\), then `basinscope "
        r"report` works",
    )


def test_results_with_a_value_of_the_wrong_type(cli, run_copy):
    _edit(run_copy, lambda r: r.update(solutions=[1, 2]))
    assert_one_line(
        cli("report", run_copy),
        r"result\.json' does not have the structure the flatness-vs-batch-size report needs "
        r"\(TypeError: list indices must be integers",
    )


def test_truncated_results(cli, run_copy):
    path = run_copy / "result.json"
    path.write_text(path.read_text()[:100])
    assert_one_line(
        cli("report", run_copy),
        rf"'{path}' is not valid JSON \(JSONDecodeError: .*\): it was edited or truncated\. Run "
        r"the study again to rewrite it",
    )


def test_results_that_are_not_an_object(cli, run_copy):
    (run_copy / "result.json").write_text("[1, 2, 3]")
    assert_one_line(
        cli("report", run_copy),
        r"result\.json' holds list \[1, 2, 3\], not the JSON object a study writes",
    )


def test_a_manifest_without_a_study(cli, run_copy):
    _edit(run_copy, lambda m: m["spec"].pop("study"), "manifest.json")
    assert_one_line(
        cli("report", run_copy),
        r"manifest\.json' does not name its study \(expected a 'spec' object with a 'study' name",
    )


def test_injected_markup_appears_only_escaped(cli, run_copy):
    """Settings, stage names and model descriptions from result.json reach the page as
    text. (The plotly figures' own labels are checked in tests/report/test_escaping.py.)"""

    def poison(r):
        r["setup"]["description"] = IMG  # subtitle and text
        r["setup"]["bn_policy"] = SCRIPT  # text
        r["config"]["schedule"] = SCRIPT  # a figure caption
        r["stages"][0]["stage"] = IMG  # the stages table

    _edit(run_copy, poison)
    res = cli("report", run_copy)
    assert res.code == 0, res.err
    page = (run_copy / "report.html").read_text()
    for raw in ("<script>alert", "<img src=x", "\\u003cscript", "\\u003cimg"):
        assert raw not in page, raw
    assert page.count(html.escape(SCRIPT)) >= 3
    assert page.count(html.escape(IMG)) >= 3


def _broken_report(monkeypatch):
    """Replace the study's report builder by one with a bug (it raises ValueError)."""
    import dataclasses

    from basinscope.experiments.registry import STUDIES, get_study

    def report(run_dir, results):
        raise ValueError("a bug in the report builder")

    study = get_study("flatness-vs-batch-size")
    monkeypatch.setitem(STUDIES, study.name, dataclasses.replace(study, report=report))


def test_a_report_that_fails_on_results_as_written_shows_the_bug(cli, run_copy, monkeypatch):
    _broken_report(monkeypatch)
    res = cli("report", run_copy)
    assert res.code == 1 and "Traceback" in res.err, res.err
    assert "a bug in the report builder" in res.err and "internal error in basinscope" in res.err


def test_the_same_failure_on_an_edited_result_json_is_the_users(cli, run_copy, monkeypatch):
    _broken_report(monkeypatch)
    _edit(run_copy, lambda r: r.update(note="edited by hand"))
    assert_one_line(
        cli("report", run_copy),
        r"result\.json' does not have the structure the flatness-vs-batch-size report needs "
        r"\(ValueError: a bug in the report builder\): the file was edited",
    )
