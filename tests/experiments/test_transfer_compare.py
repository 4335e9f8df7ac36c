"""Section "compare" of the transfer-methods study: every method's stage and numbers, the
definitions, the figures, resume, the verdict's logic on hand-made numbers, and bad
settings refused with the fix. The study runs once (the ``transfer_smoke`` fixture)."""

from __future__ import annotations

import json

import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments import transfer_compare as tc
from basinscope.experiments.registry import make_config, run_study

METHODS = [
    *("ft", "lp", "lp-ft", "surgical", "dfr", "l2sp", "ewc", "trust-region", "ft-sam"),
    *("ft-cflat", "mask-gradient", "mask-fisher", "mask-hessian", "mask-probe", "mask-random"),
]


def _section(transfer_smoke):
    _, cfg, _, run_dir = transfer_smoke
    saved = json.loads((run_dir / "result.json").read_text())
    return cfg, saved["sections"][tc.KEY], saved, run_dir


def test_every_method_and_seed_is_fine_tuned_and_measured(transfer_smoke):
    cfg, sec, _, _ = _section(transfer_smoke)
    assert list(sec["methods"]) == METHODS
    rows = sec["rows"]
    assert [(r["method"], r["seed"]) for r in rows] == [
        (m, s) for m in METHODS for s in range(cfg.seeds)
    ]
    setup = sec["setup"]
    total, count = setup["parameters"], setup["block_params"]
    head = 64 * cfg.width * 10 + 10  # the LeNet's fc2
    assert count == 6 * cfg.width * 9 + 6 * cfg.width  # conv1: 3x3 kernels, one input channel
    want = {"ft": total, "lp": head, "dfr": head, "surgical": count, "l2sp": total}
    for m, v in sec["methods"].items():
        if m.startswith("mask-"):
            assert v["trainable_params"] == count  # equal to the surgical block, exactly
        elif m in want:
            assert v["trainable_params"] == want[m]
    for r in rows:
        for key in ("adaptation", "forgetting"):
            assert -1 <= r[key] <= 1
        assert r["distance"] > 0 and r["relative_distance"] > 0
        assert r["path_excess"] >= 0 and r["barrier"] >= 0
        assert r["f0"] == pytest.approx(rows[0]["f0"])  # the same pre-trained end
        assert r["source_rise"] == pytest.approx(max(r["curve"]["value"]) - r["f0"])
        assert r["connected"] == (r["path_excess"] <= cfg.compare_basin_epsilon)
        assert r["in_basin"] == (r["connected"] and r["flatness"] <= cfg.compare_basin_epsilon)
        d31 = r["definition31"]
        assert d31["epsilon"] == cfg.compare_basin_epsilon and len(d31["estimates"]) == 3
        assert d31["estimates"][0] == pytest.approx(r["flatness"])
        assert r["barrier_ci"] is not None and r["barrier_ci"][0] <= r["barrier_ci"][1]
    trust = [r for r in rows if r["method"] == "trust-region"]
    assert all(r["trust_checks"] >= 1 for r in trust)
    for m, v in sec["methods"].items():
        rs = [r for r in rows if r["method"] == m]
        assert v["adaptation"]["values"] == [r["adaptation"] for r in rs]
        assert v["in_basin_seeds"] == sum(r["in_basin"] for r in rs)
        assert v["in_basin"] == all(r["in_basin"] for r in rs)


def test_dfr_trains_on_the_last_target_training_digits_only(transfer_smoke):
    cfg, sec, _, run_dir = _section(transfer_smoke)
    n = cfg.compare_dfr_examples
    assert sec["setup"]["dfr_examples"] == n and sec["setup"]["dfr_data"].endswith(f"-last{n}")
    (row,) = [r for r in sec["rows"] if r["method"] == "dfr" and r["seed"] == 0]
    manifest = run_dir.parent / "stages" / row["folders"]["finetune"] / "manifest.json"
    spec = json.loads(manifest.read_text())["spec"]
    assert spec["strategy"] == "dfr" and spec["data"] is None
    assert spec["dfr_data"] == sec["setup"]["dfr_data"]
    # every other fine-tuning names no DFR set (their folders are those they had before)
    (ft,) = [r for r in sec["rows"] if r["method"] == "ft" and r["seed"] == 0]
    ft_manifest = run_dir.parent / "stages" / ft["folders"]["finetune"] / "manifest.json"
    assert "dfr_data" not in json.loads(ft_manifest.read_text())["spec"]


def test_answers_definitions_and_figures(transfer_smoke):
    _, sec, saved, run_dir = _section(transfer_smoke)
    mine = [a for a in saved["answers"] if a["section"] == tc.KEY]
    assert [a["question"] for a in mine] == ["subnetworks", "basin-regularizer"]
    v = sec["verdict"]
    assert mine[0]["supported"] == v["subnetworks_supported"]
    assert mine[1]["supported"] == v["basin_regularizer_supported"]
    for a in mine:
        assert "Student-t" in a["answer"] and a["evidence"]
    for key in tc.DEFINITIONS:
        assert f"{tc.KEY}.{key}" in saved["definitions"]
    for key in ("barrier", "path", "in_basin", "definition31", "clearly"):
        assert sec["criteria"][key]
    assert "endpoint-max" in sec["criteria"]["path"]
    for name in tc.FIGURES:
        assert (run_dir / "figures" / f"{name}.png").stat().st_size > 0
    html = (run_dir / "report.html").read_text()
    assert tc.TITLE in html and "in the pre-trained basin" in html


def test_a_second_run_reuses_every_stage(transfer_smoke):
    root, cfg, first, _ = transfer_smoke
    again = run_study("transfer-methods", root, cfg, say=lambda _m: None, report=False)
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    mine = {r["folders"]["finetune"] for r in first["sections"][tc.KEY]["rows"]}
    mine |= {r["folders"]["lands"] for r in first["sections"][tc.KEY]["rows"]}
    assert mine <= {s["stage"] for s in again["stages"]}
    assert again["sections"][tc.KEY]["methods"] == first["sections"][tc.KEY]["methods"]


# -- the verdict on hand-made numbers -------------------------------------------------------


def _s(mean: float, half: float | None = 0.01) -> dict:
    return {"mean": mean, "ci": None if half is None else [mean - half, mean + half]}


def _m(adapt: float, forget: float, in_basin: bool = True, half: float | None = 0.01) -> dict:
    return {
        "label": "x",
        "adaptation": _s(adapt, half),
        "forgetting": _s(forget, half),
        "in_basin": in_basin,
    }


def test_clearly_dominates_needs_one_clear_win_and_no_clear_loss():
    assert tc.clearly_dominates(_m(0.6, 0.1), _m(0.5, 0.1))  # higher adaptation, same forgetting
    assert tc.clearly_dominates(_m(0.5, 0.1), _m(0.5, 0.3))  # lower forgetting
    assert not tc.clearly_dominates(_m(0.6, 0.3), _m(0.5, 0.1))  # better and worse: a trade
    assert not tc.clearly_dominates(_m(0.505, 0.1), _m(0.5, 0.1))  # intervals overlap
    assert not tc.clearly_dominates(_m(0.9, 0.0, half=None), _m(0.1, 0.5))  # one seed: no CI


def _methods(**changes: dict) -> dict:
    base = {m: _m(0.5, 0.4) for m in METHODS}
    base["mask-random"] = _m(0.1, 0.1)
    base["surgical"] = _m(0.1, 0.1)
    for m in METHODS:
        if m.startswith("mask-") and m != "mask-random":
            base[m] = _m(0.1, 0.1)
    return {**base, **changes}


def test_the_verdict_says_yes_no_and_cannot_tell_from_the_intervals():
    # trust-region: in the basin, adapts, forgets clearly less than every baseline
    v = tc.verdict(_methods(**{"trust-region": _m(0.5, 0.05)}))
    assert v["basin_regularizer_supported"] is True
    assert v["basin"]["trust-region"]["success"] and "trust-region" in v["pareto"]
    # forgets clearly less but leaves the basin: not adapting inside a basin
    v = tc.verdict(_methods(**{"trust-region": _m(0.5, 0.05, in_basin=False)}))
    assert v["basin_regularizer_supported"] is False  # l2sp, ewc forget as much as ft
    # l2sp forgets a little less than ft, the intervals overlap: cannot tell
    v = tc.verdict(_methods(l2sp=_m(0.5, 0.395)))
    assert v["basin_regularizer_supported"] is None
    # every regularizer forgets as much as ft: the data contradict the claim
    assert tc.verdict(_methods())["basin_regularizer_supported"] is False
    # masks equal to random and surgical: cannot tell; one clearly better: yes
    assert tc.verdict(_methods())["subnetworks_supported"] is None
    v = tc.verdict(_methods(**{"mask-fisher": _m(0.3, 0.1)}))
    assert v["subnetworks_supported"] is True and v["masks"]["mask-fisher"]["success"]
    # every landscape mask clearly worse than random: no
    worse = {m: _m(0.05, 0.3) for m in METHODS if m.startswith("mask-") and m != "mask-random"}
    assert tc.verdict(_methods(**worse))["subnetworks_supported"] is False


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("compare_surgical_block=conv9", r"give one of the LeNet's modules .*e\.g\."),
        ('compare_mask_signals=["fisher"]', r"include 'random' \(the control\)"),
        ('compare_mask_signals=["random"]', r"at least one landscape signal"),
        ('compare_mask_signals=["random", "curvature"]', "expected distinct values of gradient"),
        ("compare_dfr_examples=5000", r"split has 1,347 digits\), got 5,000; e\.g\."),
        ("compare_barrier_definition=worst", "expected one of"),
        ("compare_barrier_metric=accuracy", "expected one of"),
        ("compare_basin_pairs=1", "a standard error needs two"),
        ("compare_basin_delta=0", "compare_basin_delta must be a positive number"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(setting, message):
    with pytest.raises(BasinscopeError, match=message):
        make_config("transfer-methods", sets=[setting])


def test_figure_labels_are_placed_apart_inside_the_axes():
    from basinscope.experiments.transfer_compare_report import label_offsets

    # ten points on one spot of the bottom edge (every barrier 0), two far apart
    pts = [(0.50 + 0.01 * i, 0.0) for i in range(10)] + [(0.05, 0.5), (0.9, 0.9)]
    w, h = 0.14, 0.045
    off = label_offsets(pts, width=w, height=h)
    boxes = [(x + dx, y + dy) for (x, y), (dx, dy) in zip(pts, off, strict=True)]
    for i, (xi, yi) in enumerate(boxes):
        for xj, yj in boxes[i + 1 :]:  # no two label boxes overlap
            assert abs(xi - xj) >= w - 1e-12 or abs(yi - yj) >= h - 1e-12
    assert all(0 <= y <= 1 for _, y in boxes[:10])  # stacked upward, not below the axes
    assert off[10] == (0.01, 0.0) and off[11] == (0.01, 0.0)  # lone points keep their place
