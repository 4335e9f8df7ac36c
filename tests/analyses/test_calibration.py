"""Calibration: the exact temperature against a brute-force grid, ECE / Brier / classwise ECE
against hand computations on small arrays, invariances, ensembles, models, messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from basinscope.analyses import calibration as C
from basinscope.errors import BasinscopeError


def logits(n=200, c=4, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c)) * scale
    z[np.arange(n), y] += 1.5  # better than chance, overconfident at scale 3
    return C.apply_temperature(z, 1.0), y


def brute_nll(z, y, tau):
    lp = C.apply_temperature(z, tau)
    return -lp[np.arange(len(y)), y].mean()


@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_temperature_is_the_grid_minimum(scale):
    z, y = logits(scale=scale)
    t = C.fit_temperature(z, y)
    taus = np.exp(np.linspace(np.log(1e-2), np.log(1e2), 4001))
    nlls = np.array([brute_nll(z, y, tau) for tau in taus])
    best = taus[nlls.argmin()]
    assert abs(np.log(t.tau) - np.log(best)) <= np.log(taus[1] / taus[0])
    assert t.nll_after <= nlls.min() + 1e-12
    assert t.nll_after == pytest.approx(brute_nll(z, y, t.tau), rel=1e-12)
    assert t.nll_before == pytest.approx(brute_nll(z, y, 1.0), rel=1e-12)
    assert (t.tau > 1) == (scale == 3.0)  # overconfident logits are cooled, timid ones heated
    assert not t.at_bound


def test_temperature_at_its_bounds_is_flagged():
    y = np.array([0, 1, 0, 1])
    separable = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]]))
    t = C.fit_temperature(separable, y)
    assert t.at_bound.startswith("lower") and t.tau == pytest.approx(1 / C.BETA_HIGH)
    wrong = separable[:, ::-1].copy()
    t = C.fit_temperature(wrong, y)
    assert t.at_bound.startswith("upper") and t.tau == pytest.approx(1 / C.BETA_LOW)


def test_metrics_equal_hand_computations():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]])
    y = np.array([0, 1, 1, 0, 1])
    m = C.calibration_metrics(np.log(p), y, bins=2, binning="equal_width")
    # top-1 confidences 0.9, 0.6, 0.7, 0.55, 0.8: every one in (0.5, 1], the second bin
    # correct: yes, no, yes, no, yes -> accuracy 3/5, mean confidence 3.55/5
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["ece"] == pytest.approx(abs(0.6 - 3.55 / 5))
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.45, 0.8])))
    brier = np.mean([0.1**2 * 2, 0.6**2 * 2, 0.3**2 * 2, 0.55**2 * 2, 0.2**2 * 2])
    assert m["brier"] == pytest.approx(brier)
    # classwise: class 0 probabilities 0.9, 0.6, 0.3, 0.45, 0.2 (labels 1, 0, 0, 1, 0)
    # bin [0, .5]: 0.3, 0.45, 0.2 -> freq 1/3, mean 0.95/3; bin (.5, 1]: 0.9, 0.6 -> 1/2, 0.75
    c0 = 3 / 5 * abs(1 / 3 - 0.95 / 3) + 2 / 5 * abs(0.5 - 0.75)
    # class 1: 0.1, 0.4, 0.7, 0.55, 0.8 (labels 0, 1, 1, 0, 1): [0, .5]: 0.1, 0.4 -> 1/2, 0.25;
    # (.5, 1]: 0.7, 0.55, 0.8 -> 2/3, 2.05/3
    c1 = 2 / 5 * abs(0.5 - 0.25) + 3 / 5 * abs(2 / 3 - 2.05 / 3)
    assert m["classwise_ece"] == pytest.approx((c0 + c1) / 2)
    # equal mass, 2 bins of sizes 3 and 2 over sorted confidences 0.55, 0.6, 0.7 | 0.8, 0.9
    mm = C.calibration_metrics(np.log(p), y, bins=2, binning="equal_mass")
    ece = 3 / 5 * abs(1 / 3 - 1.85 / 3) + 2 / 5 * abs(1.0 - 0.85)
    assert mm["ece"] == pytest.approx(ece)
    rel = C.reliability(p, y, bins=2, binning="equal_mass")
    assert rel["count"] == [3.0, 2.0] and rel["lower"] == [0.55, 0.8]
    assert rel["accuracy"] == pytest.approx([1 / 3, 1.0])


def test_ece_of_perfect_calibration_vanishes_and_bins_edges_are_right_closed():
    p = np.array([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    y = np.array([0, 0, 1])
    with np.errstate(divide="ignore"):
        m = C.calibration_metrics(np.log(p), y, bins=2)
    # confidence 0.5 is in the first bin [0, 0.5] with accuracy 1/2 (argmax picks class 0)
    assert m["ece"] == pytest.approx(0.0)
    rel = C.reliability(p, y, bins=2)
    assert rel["count"] == [2.0, 1.0]


def test_temperature_keeps_predictions_and_rows_are_shift_invariant():
    z, y = logits(seed=3)
    t = C.fit_temperature(z, y)
    assert (C.apply_temperature(z, t.tau).argmax(1) == z.argmax(1)).all()
    shifted = z + np.random.default_rng(0).normal(size=(len(z), 1)) * 5
    assert C.fit_temperature(shifted, y).tau == pytest.approx(t.tau, rel=1e-9)


def test_ensemble_calibrates_the_average_and_each_member():
    _, ys = zip(*(logits(n=300, seed=s) for s in range(3)))
    y = ys[0]
    members = np.stack([logits(n=300, seed=s, scale=2 + s)[0] for s in range(3)])
    val, test = members[:, :150], members[:, 150:]
    r = C.calibrate_log_probs(val, y[:150], test, y[150:], bins=10)
    avg_val = np.log(np.exp(val).mean(0))
    avg_test = np.log(np.exp(test).mean(0))
    t = C.fit_temperature(avg_val, y[:150])
    assert r.temperature == pytest.approx(t.tau, rel=1e-12)
    ref_after = C.calibration_metrics(C.apply_temperature(avg_test, t.tau), y[150:], bins=10)
    assert r.after == pytest.approx(ref_after, rel=1e-10)
    assert r.before == pytest.approx(C.calibration_metrics(avg_test, y[150:], bins=10), rel=1e-10)
    cal = [
        C.apply_temperature(m_t, C.fit_temperature(m_v, y[:150]).tau) for m_v, m_t in zip(val, test)
    ]
    ref = C.calibration_metrics(np.log(np.exp(np.stack(cal)).mean(0)), y[150:], bins=10)
    assert r.members_calibrated == pytest.approx(ref)
    assert len(r.members) == 3 and r.val_after["nll"] <= r.val_before["nll"]
    assert len(r.summary()) == 7


def test_calibrate_runs_models_through_the_task():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    with torch.no_grad():
        model[0].weight.mul_(8)
    x = torch.randn(120, 5)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    r = C.calibrate(model, (x[:60], y[:60]), (x[60:], y[60:]), bins=5)
    with torch.no_grad():
        lp = torch.log_softmax(model(x).double(), 1).numpy()
    ref = C.calibrate_log_probs(lp[:60], y[:60].numpy(), lp[60:], y[60:].numpy(), bins=5)
    assert r.temperature == pytest.approx(ref.temperature, rel=1e-6)
    assert r.after == pytest.approx(ref.after, rel=1e-6)
    assert r.spec.bins == 5 and r.n_val == 60 and r.n_test == 60
    assert r.members[0]["temperature"] == pytest.approx(r.temperature)


def test_bad_input_is_refused():
    z, y = logits(n=10)
    with pytest.raises(BasinscopeError, match=r"labels must have shape \(10,\)"):
        C.fit_temperature(z, y[:5])
    with pytest.raises(BasinscopeError, match=r"class indices in 0\.\.3"):
        C.fit_temperature(z, y + 4)
    with pytest.raises(BasinscopeError, match="unknown binning 'quantile'"):
        C.calibration_metrics(z, y, binning="quantile")
    with pytest.raises(BasinscopeError, match="shape \\(examples, classes\\)"):
        C.fit_temperature(z[0], y)
    with pytest.raises(BasinscopeError, match="probability 0"):
        C.fit_temperature(np.array([[0.0, -np.inf]]), np.array([1]))
    with pytest.raises(BasinscopeError, match="must be positive"):
        C.apply_temperature(z, 0.0)
    with pytest.raises(BasinscopeError, match="unknown binning"):
        C.CalibrationSpec(binning="x")
    with pytest.raises(BasinscopeError, match="at least one model"):
        C.calibrate([], (torch.zeros(1, 2), torch.zeros(1)), (torch.zeros(1, 2), torch.zeros(1)))


def test_cross_validation_calibrates_each_half_with_the_other():
    z, y = logits(n=101, seed=5)
    r = C.calibrate_log_probs(None, None, z, y, bins=5, repeats=1, seed=7)
    perm = np.random.default_rng(7).permutation(101)
    a, b = perm[:50], perm[50:]
    cal = np.empty_like(z)
    taus = []
    for fit, held in ((a, b), (b, a)):
        t = C.fit_temperature(z[fit], y[fit]).tau
        taus.append(t)
        cal[held] = C.apply_temperature(z[held], t)
    assert r.temperatures == pytest.approx(taus, rel=1e-12)
    assert r.after == pytest.approx(C.calibration_metrics(cal, y, bins=5), rel=1e-10)
    assert r.before == pytest.approx(C.calibration_metrics(z, y, bins=5), rel=1e-12)
    assert r.protocol.startswith("test-time cross-validation") and r.n_test == 101
    many = C.calibrate_log_probs(None, None, z, y, repeats=4)
    assert len(many.temperatures) == 8 and many.temperature == pytest.approx(
        np.median(many.temperatures)
    )


def test_regression_is_refused_by_name():
    model = nn.Linear(3, 2)
    x = torch.randn(6, 3)
    with pytest.raises(
        BasinscopeError,
        match=r"calibration scales a classifier's probabilities over classes, got float32 targets of shape \(6, 2\)",
    ):
        C.calibrate(model, None, (x, torch.randn(6, 2)))


def test_the_average_alone_is_the_same_calibration():
    members = np.stack([logits(n=120, seed=s, scale=2 + s)[0] for s in range(3)])
    y = logits(n=120, seed=0)[1]
    full = C.calibrate_log_probs(members[:, :60], y[:60], members[:, 60:], y[60:])
    avg = C.calibrate_log_probs(members[:, :60], y[:60], members[:, 60:], y[60:], members=False)
    assert avg.after == full.after and avg.members == [] and avg.members_calibrated == {}
    cv = C.calibrate_log_probs(None, None, members, y, members=False, repeats=2)
    assert (
        cv.members == []
        and cv.after == C.calibrate_log_probs(None, None, members, y, repeats=2).after
    )
