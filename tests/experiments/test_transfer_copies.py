"""Section "copies" of the transfer-methods study: copies from one init, their mistakes and
cross-domain interpolation, on the shared smoke run (``transfer_smoke``), and its pure
functions against brute-force references on hand-made inputs.

What the section shows is checked on the quick configuration in
tests/experiments/test_studies_science.py."""

from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments import transfer_copies as tc
from basinscope.experiments.registry import make_config, run_study
from basinscope.experiments.transfer_common import QUESTIONS

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def _section(transfer_smoke):
    _, cfg, _, run_dir = transfer_smoke
    saved = json.loads((run_dir / "result.json").read_text())
    return cfg, saved["sections"][tc.KEY], saved


def test_every_pair_is_measured_with_its_definitions(transfer_smoke):
    cfg, sec, saved = _section(transfer_smoke)
    n = cfg.seeds
    within = math.comb(n, 2)
    per_seed = cfg.copies_pair_seeds or n
    kinds = [r["kind"] for r in sec["pairs"]]
    expected = {"P-T & P-T": within, "RI-T & RI-T": within, tc.OTHER_INITS: within}
    expected |= {"P-T & P": per_seed, "RI-T & P": per_seed, "P-T & RI-T": per_seed}
    assert {k: kinds.count(k) for k in set(kinds)} == expected
    for r in sec["pairs"]:
        for metric in ("error", "loss"):
            b = r[metric]
            assert b["barrier"] >= 0 and b["definition"] == cfg.copies_barrier_definition
            assert b["formula"] and len(b["ci"]) == 2 and b["ci"][0] <= b["ci"][1]
        line = r["line"]
        assert len(line["alpha"]) == cfg.copies_line_points
        assert line["alpha"][0] == -1.0 and line["alpha"][-1] == 2.0
        assert all(0 <= a <= 1 for a in line["accuracy"])
        assert set(r["distance"]) == {"whole", *LAYERS}
        # the modules' squared distances add up to the whole's
        assert r["distance"]["whole"] ** 2 == pytest.approx(
            sum(r["distance"][m] ** 2 for m in LAYERS), rel=1e-6
        )
        assert list(r["cka"]) == LAYERS and r["cka_method"] == "linear"
        assert all(-1e-9 <= v <= 1 + 1e-9 for v in r["cka"].values())
    for kind, s in sec["summary"].items():
        assert s["pairs"] == expected[kind]
    for key in ("error_barrier", "ambiguity", "jaccard", "boost", "cross_barrier", "RI-T"):
        assert f"copies.{key}" in saved["definitions"]


def test_the_mistakes_are_counted_from_the_copies_predictions(transfer_smoke):
    cfg, sec, _ = _section(transfer_smoke)
    m = sec["mistakes"]
    n = m["all_examples"]["count"]
    assert n == 450
    for fam in ("P-T", "RI-T"):
        assert len(m["mistakes"][fam]) == cfg.seeds
        for acc, wrong in zip(m["accuracy"][fam], m["mistakes"][fam], strict=True):
            assert acc == pytest.approx(1 - wrong / n)
    # the P-T-only mistakes are a subset of the P-T mistakes, pooled over the seeds
    assert m["only_pt_wrong"]["count"] <= sum(m["mistakes"]["P-T"])
    assert m["only_ri_wrong"]["count"] <= sum(m["mistakes"]["RI-T"])
    assert len(m["jaccard"]["P-T & P-T"]) == math.comb(cfg.seeds, 2)
    assert all(v is None or 0 <= v <= 1 for vs in m["jaccard"].values() for v in vs)
    assert 0 <= m["all_examples"]["mean_ambiguity"] <= math.log(10)
    for key, (pt_right, ri_right) in (
        ("only_pt_wrong", (False, True)),
        ("only_ri_wrong", (True, False)),
    ):
        shown = m["examples"][key]
        assert len(shown) <= cfg.copies_shown
        for e in shown:
            assert np.asarray(e["image"]).shape == (8, 8)
            assert (e["pt"] == e["label"]) is pt_right and (e["ri"] == e["label"]) is ri_right


def test_the_cross_domain_curves_cover_every_pair_of_domains(transfer_smoke):
    cfg, sec, _ = _section(transfer_smoke)
    doms = sec["domains"]
    assert len(doms) == len(cfg.copies_domains)
    pairs = [(c["family"], tuple(c["domains"])) for c in sec["cross"]]
    assert sorted(pairs) == sorted(
        (f, p) for p in itertools.combinations(doms, 2) for f in ("P-T", "RI-T")
    )
    for c in sec["cross"]:
        assert len(c["alpha"]) == cfg.copies_cross_points
        da, db = c["domains"]
        mean = (np.asarray(c["accuracy"][da]) + np.asarray(c["accuracy"][db])) / 2
        assert np.allclose(c["union_accuracy"], mean)
        boost, at = tc.interior_boost(c["alpha"], c["union_accuracy"])
        assert (c["boost"], c["boost_alpha"]) == pytest.approx((boost, at))
        assert c["barrier"] >= 0 and c["barrier_definition"] == cfg.copies_barrier_definition
    for fam in ("P-T", "RI-T"):
        assert set(sec["domain_accuracy"][fam]) == set(doms)


def test_the_answers_are_computed_and_the_figures_written(transfer_smoke):
    _, _, _, run_dir = transfer_smoke
    _, _, saved = _section(transfer_smoke)
    mine = [a for a in saved["answers"] if a["section"] == tc.KEY]
    assert [a["question"] for a in mine] == ["fit", "fit", "fit", "fit", "breaks"]
    for a in mine:
        assert a["question"] in QUESTIONS and a["answer"] and a["evidence"]
        assert a["supported"] in (True, False, None)
    for name in tc.FIGURES:
        assert (run_dir / "figures" / f"{name}.png").stat().st_size > 0
    html = (run_dir / "report.html").read_text()
    assert tc.TITLE in html and "Cross-domain interpolation" in html


def _with_barriers(sec, kind, ci, family=None):
    """A copy of ``sec`` whose barriers of ``kind`` pairs (or of ``family``'s cross-domain
    pairs) have interval ``ci``."""
    out = copy.deepcopy(sec)
    for r in out["pairs"]:
        if r["kind"] == kind:
            r["error"]["ci"] = list(ci)
            r["error"]["barrier"] = sum(ci) / 2
    for c in out["cross"]:
        if c["family"] == family:
            c["barrier_ci"] = list(ci)
            c["barrier"] = sum(ci) / 2
    return out


def test_the_answers_follow_the_intervals(transfer_smoke):
    _, sec, _ = _section(transfer_smoke)
    tol = sec["tolerance"]
    low, high, straddle = (0.0, tol / 2), (2 * tol, 3 * tol), (tol / 2, 2 * tol)
    s = _with_barriers(_with_barriers(sec, "P-T & P-T", low), "RI-T & RI-T", high)
    assert tc.answers(s)[0]["supported"] is True
    s = _with_barriers(s, "P-T & P-T", high)
    assert tc.answers(s)[0]["supported"] is False
    assert "P-T copies are not in one basin" in tc.answers(s)[0]["answer"]
    s = _with_barriers(_with_barriers(sec, "P-T & P-T", low), "RI-T & RI-T", straddle)
    assert tc.answers(s)[0]["supported"] is None
    s = _with_barriers(_with_barriers(sec, None, low, "P-T"), None, high, "RI-T")
    cross, breaks = tc.answers(s)[3], tc.answers(s)[4]
    assert cross["supported"] is True and breaks["supported"] is False
    s = _with_barriers(sec, None, high, "P-T")
    assert tc.answers(s)[3]["supported"] is False and tc.answers(s)[4]["supported"] is True
    s = _with_barriers(sec, None, straddle, "P-T")
    assert tc.answers(s)[4]["supported"] is None
    m = copy.deepcopy(sec)
    m["mistakes"].update(jaccard_gap=0.1, jaccard_gap_ci=[0.05, 0.2])
    m["mistakes"].update(ambiguity_gap=-0.3, ambiguity_gap_ci=[-0.5, -0.1])
    assert [a["supported"] for a in tc.answers(m)[1:3]] == [True, False]
    m["mistakes"].update(jaccard_gap=None, jaccard_gap_ci=None)
    assert tc.answers(m)[1]["supported"] is None


def test_the_report_takes_a_section_without_the_control_or_mistakes_to_show(
    transfer_smoke, tmp_path
):
    from basinscope.report import Report

    _, sec, saved = _section(transfer_smoke)
    sec = copy.deepcopy(sec)
    sec["pairs"] = [r for r in sec["pairs"] if r["kind"] != tc.OTHER_INITS]
    del sec["summary"][tc.OTHER_INITS], sec["accuracy"]["RI-T own init"]
    sec["mistakes"]["examples"]["only_ri_wrong"] = []
    assert "control" not in tc.answers(sec)[0]["answer"]
    rep = Report("t", formats=("png",))
    tc.report(rep, sec, saved["config"], tmp_path)
    assert "own inits" not in rep.render()
    assert all((tmp_path / f"{name}.png").is_file() for name in tc.FIGURES)


def test_running_again_reuses_every_stage(transfer_smoke):
    root, cfg, results, _ = transfer_smoke
    again = run_study("transfer-methods", root, cfg, say=lambda _m: None, report=False)
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    assert again["sections"][tc.KEY]["summary"] == results["sections"][tc.KEY]["summary"]


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["seeds=1"], r"seeds=1: .*needs seeds >= 2, e\.g\. seeds=3"),
        (["copies_domains=rot30"], r"at least two distinct domains, e\.g\."),
        (["copies_domains=rot30,rot30.0"], r"at least two distinct domains"),
        (["copies_domains=rot30,tilt5"], r"cannot read the domain 'tilt5': write rot"),
        (["copies_domains=rot30,block3"], r"block3 does not tile the 8x8 digits: use block1"),
        (["copies_line_points=30"], r"give 3k \+ 1 points, e\.g\. 31"),
        (["copies_barrier_definition=top"], r"must be one of mean, linear, midpoint, got .top."),
        (["copies_tolerance=-0.1"], r"copies_tolerance must be in \[0, 1\], got -0.1"),
        (["copies_pair_seeds=9"], r"copies_pair_seeds must be <= 3, got 9"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(sets, match):
    with pytest.raises(BasinscopeError, match=match):
        make_config("transfer-methods", sets=sets)


# -- pure functions against brute force -----------------------------------------------------------


def test_jaccard_is_the_set_formula():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(30) < 0.3, rng.random(30) < 0.4
        sa, sb = set(np.flatnonzero(a)), set(np.flatnonzero(b))
        want = len(sa & sb) / len(sa | sb) if sa | sb else None
        assert tc.jaccard(a, b) == want
    assert tc.jaccard([False, False], [False, False]) is None
    assert tc.jaccard([True, False], [True, False]) == 1.0
    with pytest.raises(BasinscopeError, match="masks of one shape"):
        tc.jaccard([True], [True, False])


def test_predictive_entropy_is_the_entropy_of_the_mean():
    from scipy.stats import entropy

    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(10), size=(3, 7))
    p[0, 0] = np.eye(10)[2]  # zeros are 0 log 0 = 0
    want = [entropy(p[:, i].mean(0)) for i in range(7)]
    assert tc.predictive_entropy(p) == pytest.approx(want)
    assert tc.predictive_entropy(np.tile(np.eye(3)[None], (2, 1, 1))) == pytest.approx(0)
    with pytest.raises(BasinscopeError, match=r"shape \(models, examples, classes\)"):
        tc.predictive_entropy(np.ones((3, 4)))


def test_interior_boost_needs_both_ends_and_a_point_between():
    assert tc.interior_boost([1, 0, 0.25, 0.75], [0.2, 0.3, 0.1, 0.5]) == (
        pytest.approx(0.2),
        0.75,
    )
    with pytest.raises(BasinscopeError, match=r"alpha 0, alpha 1 and a point between"):
        tc.interior_boost([0, 1], [0.1, 0.2])


def test_mean_difference_ci_brackets_the_difference():
    x, y = [1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.5]
    diff, ci = tc.mean_difference_ci(x, y, bootstrap=500, level=0.9, seed=0)
    assert diff == pytest.approx(2.5 - 0.5)
    assert ci[0] < diff < ci[1]
    # the resampled means stay within the data's range
    assert ci[0] >= min(x) - max(y) and ci[1] <= max(x) - min(y)
    assert tc.mean_difference_ci(x, [], bootstrap=10, level=0.9, seed=0) == (None, None)
    assert tc.mean_difference_ci(x, y, bootstrap=0, level=0.9, seed=0)[1] is None


def test_parse_domain_reads_rotations_and_block_shuffles():
    assert tc.parse_domain("rot30") == (30.0, None)
    assert tc.parse_domain("rot-45.5") == (-45.5, None)
    assert tc.parse_domain("block4") == (0.0, 4)
    assert tc.parse_domain("rot30+block2") == (30.0, 2)
    for bad in ("", "rot", "30", "rot30+", "block", "rot30block4x"):
        with pytest.raises(BasinscopeError, match="cannot read the domain"):
            tc.parse_domain(bad)


def test_the_jaccard_gap_is_the_difference_of_the_mean_indices():
    wrong = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]], bool)
    right = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]], bool)
    pairs = list(itertools.combinations(range(3), 2))
    gap, ci = tc._jaccard_gap(wrong, right, pairs, 0, 0.95, 0)
    want = np.mean([tc.jaccard(wrong[i], wrong[j]) for i, j in pairs]) - np.mean(
        [tc.jaccard(right[i], right[j]) for i, j in pairs]
    )
    assert gap == pytest.approx(want) and ci is None
    gap2, ci2 = tc._jaccard_gap(wrong, right, pairs, 50, 0.95, 0)
    assert gap2 == gap and ci2[0] <= ci2[1]
