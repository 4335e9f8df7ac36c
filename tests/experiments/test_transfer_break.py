"""The "breaks" section of the transfer-methods study: its estimators (first crossing,
breaking point, verdict flip, break-even point) against brute-force references on hand-made
inputs, and its stages, fields, figures, reuse and settings on the shared smoke run
(``transfer_smoke``). What it shows is checked on the quick run in
tests/experiments/test_studies_science.py."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments import transfer_break as tb
from basinscope.experiments.registry import StudyContext, make_config
from basinscope.experiments.stages import StageLog
from basinscope.experiments.transfer_common import QUESTIONS, pretrain

# -- the estimators on hand-made inputs -------------------------------------------------------


def _dense_crossing(x, y, threshold):
    """Brute force: the piecewise-linear curve on a fine grid, its first point >= threshold."""
    grid = np.linspace(x[0], x[-1], 2_000_001)
    curve = np.interp(grid, x, y)
    hit = np.flatnonzero(curve >= threshold - 1e-12)
    return None if not len(hit) else grid[hit[0]]


@pytest.mark.parametrize(
    "x, y",
    [
        ([0, 15, 30, 45], [0.0, 0.02, 0.3, 0.5]),
        ([0, 1, 2, 4, 8], [0.05, 0.0, 0.08, 0.4, 0.1]),  # not monotone: the first crossing
        ([0.0, 0.5, 1.0], [0.0, 0.1, 0.7]),  # exactly at a strength
        ([1, 2, 4, 8], [0.0, 0.03, 0.09, 0.02]),  # never
    ],
)
def test_first_crossing_is_the_dense_scan_of_the_interpolated_curve(x, y):
    status, point = tb.first_crossing(x, y, 0.1)
    ref = _dense_crossing(np.asarray(x, float), np.asarray(y, float), 0.1)
    if ref is None:
        assert (status, point) == ("never", None)
    else:
        assert status == "breaks" and point == pytest.approx(ref, abs=1e-5 * (x[-1] - x[0]))


def test_first_crossing_at_the_weakest_strength_is_always():
    assert tb.first_crossing([0, 1, 2], [0.2, 0.0, 0.3], 0.1) == ("always", None)


def test_breaking_point_bootstrap_matches_the_exact_resampling_distribution():
    """Two units per strength and no test-digit noise: each strength's resampled mean is one
    of the 4 equally likely ordered draws, so the crossing's distribution over the 4**3
    combinations is exact; the bootstrap's fractions and percentile ends match it."""
    x = [0.0, 1.0, 2.0]
    values = [[0.0, 0.04], [0.05, 0.25], [0.12, 0.3]]
    thr = 0.1
    draws = [[(v[a] + v[b]) / 2 for a in range(2) for b in range(2)] for v in values]
    cross = []
    for combo in itertools.product(*draws):
        st, c = tb.first_crossing(x, combo, thr)
        cross.append(c if st == "breaks" else (np.inf if st == "never" else -np.inf))
    cross = np.sort(cross)
    res = tb.breaking_point(x, values, None, thr, level=0.8, resamples=40_000, seed=3)
    exact_breaks = float(np.mean(np.isfinite(cross)))
    assert res["fractions"]["breaks"] == pytest.approx(exact_breaks, abs=0.01)
    assert res["fractions"]["always"] == 0.0
    cdf = np.arange(1, len(cross) + 1) / len(cross)
    lo = cross[np.searchsorted(cdf, 0.1)]
    hi = cross[np.searchsorted(cdf, 0.9)]
    assert res["ci"][0] == pytest.approx(lo)
    assert res["ci"][1] == pytest.approx(hi)
    # the point is the crossing of the mean curve, between the strengths around it
    st, point = tb.first_crossing(x, [np.mean(v) for v in values], thr)
    assert (res["status"], res["point"]) == (st, point) and res["bracket"] == [0.0, 1.0]


def test_breaking_point_without_noise_is_the_point_and_says_where_it_cannot_be():
    one = tb.breaking_point([0, 1, 2], [[0.0], [0.05], [0.3]], None, 0.1, resamples=50)
    assert one["ci"] == [pytest.approx(one["point"])] * 2 and one["ci_ends"] == ["inside"] * 2
    never = tb.breaking_point([0, 1], [[0.0, 0.01], [0.02, 0.0]], None, 0.1, resamples=50)
    assert never["status"] == "never" and never["point"] is None
    assert never["ci"] == [None, None] and never["ci_ends"] == ["beyond the sweep"] * 2
    always = tb.breaking_point([0, 1], [[0.5], [0.6]], [[0.0], [0.0]], 0.1, resamples=50)
    assert always["status"] == "always" and always["ci_ends"] == ["below the sweep"] * 2
    # the test digits' noise alone (one unit) widens the interval
    noisy = tb.breaking_point([0, 1, 2], [[0.0], [0.05], [0.3]], [[0.0], [0.02], [0.02]], 0.1)
    assert noisy["ci"][0] < one["point"] < noisy["ci"][1]
    with pytest.raises(BasinscopeError, match="increasing strengths"):
        tb.breaking_point([1, 0], [[0.0], [0.1]], None, 0.1)
    with pytest.raises(BasinscopeError, match="at least one value at every strength"):
        tb.breaking_point([0, 1], [[0.0], []], None, 0.1)


def test_basin_flip_break_even_and_the_stability_threshold():
    assert tb.basin_flip([0, 1, 2], [True, True, False], [True, False, True]) == {
        "status": "flips",
        "between": [1.0, 2.0],
        "supported": True,
    }
    assert tb.basin_flip([0, 1], [True, True], [False, True])["status"] == "never"
    assert tb.basin_flip([0, 1], [False, True], [None, True])["status"] == "always"
    assert tb.stability_threshold(0.05, 0.9) == pytest.approx(76.0)
    assert tb.stability_threshold(0.1, 0.0) == pytest.approx(20.0)
    e = tb.break_even([0, 10, 50, 100], [1.0, 30.0, 90.0, 40.0], 76.0)
    assert e["reached"] and e["step"] == 50 and e["after_step"] == 10 and e["peak_step"] == 50
    e = tb.break_even([0, 10], [5.0, 3.0], 76.0)
    assert not e["reached"] and e["step"] is None and e["peak_ratio"] == pytest.approx(5 / 76)


# -- the smoke run -----------------------------------------------------------------------------


def _stages(results, prefix):
    return [s for s in results["stages"] if s["stage"].startswith(prefix)]


def test_every_shift_has_copies_barriers_and_a_basin_test(transfer_smoke):
    _, cfg, results, run_dir = transfer_smoke
    sec = json.loads((run_dir / "result.json").read_text())["sections"][tb.KEY]
    fams = sec["families"]
    assert list(fams) == list(tb.FAMILIES)
    strengths = {
        "rotation": list(cfg.break_angles),
        "block": list(cfg.break_blocks),
        "noise": list(cfg.break_noises),
    }
    pairs = cfg.seeds * (cfg.seeds - 1) // 2
    for fam, f in fams.items():
        assert [p["strength"] for p in f["points"]] == strengths[fam]
        for p in f["points"]:
            assert len(p["target_accuracy"]) == cfg.seeds == len(p["barrier_pretrained"])
            assert len(p["barrier_copies"]) == pairs == len(p["distance_between_copies"])
            for b in p["barrier_copies"] + p["barrier_pretrained"]:
                assert b["value"] >= 0 and b["se"] >= 0 and b["ci"][0] <= b["ci"][1]
            basin = p["basin"]
            assert basin["set"] == "conv(copies)" and basin["delta"] == cfg.break_delta
            assert [c["condition"] for c in basin["conditions"]] == [1, 2, 3]
            assert basin["holds"] == all(c["holds"] for c in basin["conditions"])
            assert basin["data"].startswith(p["data"].replace("train", "test"))
        for kind in ("copies", "pretrained"):
            b = f["breaking"][kind]
            assert b["status"] in ("breaks", "never", "always")
            assert b["x"] == [p["x"] for p in f["points"]] and len(b["band"][0]) == len(b["x"])
            assert b["threshold"] == cfg.break_threshold and b["resamples"] == cfg.break_resamples
            others = b["other_thresholds"]
            assert [o["threshold"] for o in others] == sorted(cfg.break_other_thresholds)
            for o in others:  # the same mean curve, read at another level
                assert (o["status"], o["point"]) == tb.first_crossing(
                    b["x"], b["mean"], o["threshold"]
                )
        assert f["basin_flip"]["status"] in ("flips", "never", "always")
    # the identity shift of every family (rotation 0, block 8, noise 0) is one set of copies
    firsts = {f["points"][0]["folders"]["measure"] for f in fams.values()}
    assert len(firsts) == 1
    shifts = 1 + sum(len(v) - 1 for v in strengths.values())
    assert sec["setup"]["shifts"] == shifts
    assert len(_stages(results, "break-measure")) == shifts
    assert len(_stages(results, "break-lambda-max")) == 2
    assert len(_stages(results, "break-trajectory")) == 1


def test_lambda_max_along_both_trajectories(transfer_smoke):
    _, cfg, results, _ = transfer_smoke
    lam = results["sections"][tb.KEY]["lambda_max"]
    assert lam["pretrain"]["steps"] == sorted({*cfg.pretrain_checkpoints, 0, cfg.pretrain_steps})
    assert lam["finetune"]["steps"] == sorted(cfg.break_finetune_checkpoints)
    for name, lr in (("pretrain", cfg.pretrain_lr), ("finetune", cfg.lr)):
        v = lam[name]
        assert len(v["lambda_max"]) == len(v["steps"]) == len(v["converged"])
        assert all(np.isfinite(v["lambda_max"]))
        assert v["threshold"] == pytest.approx(2 * (1 + cfg.momentum) / lr)
        assert v["semantics"]["dtype"] == "float64"
        e = v["break_even"]
        assert e["peak"] == max(v["lambda_max"]) and e["peak_step"] in v["steps"]
        assert e["reached"] == (max(v["lambda_max"]) >= v["threshold"])


def test_answers_definitions_figures_and_report(transfer_smoke):
    _, cfg, results, run_dir = transfer_smoke
    mine = [a for a in results["answers"] if a["section"] == tb.KEY]
    assert [a["question"] for a in mine] == ["breaks", "breaks"]
    assert all(a["question"] in QUESTIONS and a["supported"] in (True, False, None) for a in mine)
    # supported is computed: False exactly when no barrier reaches the threshold in a sweep
    fams = results["sections"][tb.KEY]["families"]
    statuses = [f["breaking"][k]["status"] for f in fams.values() for k in f["breaking"]]
    assert (mine[0]["supported"] is False) == ("breaks" not in statuses)
    reached = results["sections"][tb.KEY]["lambda_max"]["pretrain"]["break_even"]["reached"]
    assert mine[1]["supported"] is reached
    defs = results["definitions"]
    for k in ("barrier_copies", "barrier_pretrained", "basin", "breaking_point", "break_even"):
        assert defs[f"{tb.KEY}.{k}"]
    for stem in tb.FIGURES:
        for ext in cfg.figure_formats:
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    html = (run_dir / "report.html").read_text()
    assert tb.TITLE.replace('"', "&quot;") in html
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    assert any("breaking point" in c for c in captions)
    assert any("2(1+beta)/lr" in c for c in captions)


def test_running_the_section_again_reuses_every_stage(transfer_smoke):
    root, cfg, results, run_dir = transfer_smoke
    from basinscope.store import paths

    log = StageLog()
    ctx = StudyContext(run_dir, root / paths.STAGES, log, say=lambda _m: None)
    pre = pretrain(cfg, ctx, what="")
    again = tb.run(cfg, ctx, pre)
    rows = log.rows()
    assert len(rows) > 10 and all(r["reused"] for r in rows)
    assert json.loads(json.dumps(again)) == results["sections"][tb.KEY]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("seeds=1", r"needs seeds >= 2, e\.g\. seeds=3"),
        ("break_angles=[0]", r"break_angles \[0\.0\]: give at least two angles.*e\.g\."),
        ("break_angles=[90, 45]", r"weakest shift first"),
        ("break_blocks=[8, 3]", r"must divide the 8x8 digits.*e\.g\. \[8, 4, 2, 1\]"),
        ("break_blocks=[1, 8]", r"break_blocks .*largest first"),
        ("break_noises=[0, -1]", r"break_noises"),
        ("break_metric='accuracy'", r"break_metric must be one of"),
        ("break_barrier_definition='max'", r"break_barrier_definition must be one of"),
        ("break_threshold=0", r"break_threshold"),
        ("break_other_thresholds=[0.05, -1]", r"break_other_thresholds"),
        ("break_delta=-1", r"break_delta"),
        ("break_basin_pairs=1", r"break_basin_pairs"),
        ("break_finetune_checkpoints=[0, 9999]", r"give distinct steps in \[0, steps\]"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(setting, message):
    with pytest.raises(BasinscopeError, match=message):
        make_config("transfer-methods", sets=[setting])
