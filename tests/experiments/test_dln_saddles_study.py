"""The dln-saddles study: the analytic solution against a float64 gradient-flow integration,
the plateau detector, the Hessian's negative count against a dense float64 Hessian, and the
smoke run end to end (stages, reuse, report in Chromium).

What the study shows is checked on the quick configuration in the ``science`` tier."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.experiments.dln_saddles import (
    detect_plateaus,
    effective_initial_strength,
    mode_strength,
    predicted_negative_count,
    transition_step,
    transition_time,
)
from basinscope.experiments.registry import make_config, run_study
from study_checks import opens_in_chromium

STUDY = "dln-saddles"
FIGURES = ("loss", "modes", "hessians", "timing")


def _flow(depth, s, u0, t_end, h=1e-3, width=3, d=4):
    """RK4 (float64) on the gradient flow of 1/2 ||T - W_L..W_1||^2, T = diag(s) (whitened
    inputs), from the balanced init aligned with T's modes: each layer a0 * e_a e_a^T."""
    a0 = [u ** (1 / depth) for u in u0]
    ws = []
    for layer in range(depth):
        w = torch.zeros(
            width if layer < depth - 1 else d, d if layer == 0 else width, dtype=torch.float64
        )
        for a, v in enumerate(a0):
            w[a, a] = v
        ws.append(w)
    T = torch.zeros(d, d, dtype=torch.float64)
    for a, v in enumerate(s):
        T[a, a] = v

    def grad(ws):
        ws = [w.detach().requires_grad_(True) for w in ws]
        W = ws[0]
        for w in ws[1:]:
            W = w @ W
        loss = 0.5 * ((T - W) ** 2).sum()
        return [-g for g in torch.autograd.grad(loss, ws)]

    out = []
    steps = round(t_end / h)
    for i in range(steps + 1):
        if i % 100 == 0:
            W = ws[0]
            for w in ws[1:]:
                W = w @ W
            out.append((i * h, [float(W[a, a]) for a in range(len(s))]))
        k1 = grad(ws)
        k2 = grad([w + h / 2 * k for w, k in zip(ws, k1, strict=True)])
        k3 = grad([w + h / 2 * k for w, k in zip(ws, k2, strict=True)])
        k4 = grad([w + h * k for w, k in zip(ws, k3, strict=True)])
        ws = [
            w + h / 6 * (a + 2 * b + 2 * c + e)
            for w, a, b, c, e in zip(ws, k1, k2, k3, k4, strict=True)
        ]
    return out


@pytest.mark.parametrize("depth", [2, 3])
def test_the_analytic_solution_matches_a_float64_gradient_flow_integration(depth):
    s, u0 = [3.0, 1.0], [1e-3, 1e-3]
    t_end = 6.0 if depth == 2 else 4.0 / 1e-3 ** (1 / 3) / 3  # depth 3 is slower from 1e-3
    t_end = min(t_end, 8.0)
    for t, u in _flow(depth, s, u0, t_end):
        for a in range(2):
            assert u[a] == pytest.approx(float(mode_strength(t, s[a], u0[a], depth)), abs=1e-7)
    # the transition time: u reaches s/2 there
    for depth_ in (1, 2, 3, 4):
        tt = transition_time(2.0, 1e-4, depth_)
        assert float(mode_strength(tt, 2.0, 1e-4, depth_)) == pytest.approx(1.0, rel=1e-6)
    assert transition_time(2.0, 1e-4, 2) == pytest.approx(math.log(2 / 1e-4 - 1) / 4)


def test_the_effective_initial_strength_predicts_random_small_init():
    """Depth 2 from a random (unbalanced, unaligned) small init: the mode reaches s/2 at the
    time the closed form gives from u0 = ||W1 v + W2^T r||^2 / 4, within a few percent."""
    torch.manual_seed(0)
    s = 2.0
    w1 = 1e-3 * torch.randn(5, 4, dtype=torch.float64)
    w2 = 1e-3 * torch.randn(3, 5, dtype=torch.float64)
    r, v = torch.zeros(3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    r[0] = v[0] = 1.0
    T = s * torch.outer(r, v)
    u0 = effective_initial_strength([w1.numpy(), w2.numpy()], r.numpy(), v.numpy(), 1e-3)
    ws, h, us, ts = [w1, w2], 2e-3, [], []
    for i in range(5000):
        W = ws[1] @ ws[0]
        us.append(float(r @ W @ v))
        ts.append(i * h)
        a, b = [w.detach().requires_grad_(True) for w in ws]
        g = torch.autograd.grad(0.5 * ((T - b @ a) ** 2).sum(), [a, b])
        ws = [w - h * gg for w, gg in zip(ws, g, strict=True)]
    measured = transition_step(ts, us, s)
    assert measured == pytest.approx(transition_time(s, u0, 2), rel=0.05)


def test_plateaus_are_detected_from_the_numbers():
    steps = np.arange(0, 601, 2)
    loss = 10.5 - 8 / (1 + np.exp(-(steps - 100) / 5.0)) - 2 / (1 + np.exp(-(steps - 300) / 8.0))
    found = detect_plateaus(steps, loss, window=10, tol=0.002, min_steps=20)
    assert len(found) == 3
    assert found[0]["start"] == 0 and found[0]["end"] < 100 < found[1]["start"]
    assert found[1]["end"] < 300 < found[2]["start"] and found[2]["end"] == 600
    assert found[1]["loss"] == pytest.approx(2.5, abs=0.05)
    assert detect_plateaus(steps, 10 * np.exp(-steps / 10.0), 10, 0.002, 20)[0]["start"] > 50
    assert transition_step([0, 1, 2], [0.0, 0.5, 1.5], 2.0) == pytest.approx(1.5)
    assert transition_step([0, 1], [0.0, 0.1], 2.0) is None


def test_the_negative_count_at_the_origin_and_a_saddle_matches_a_dense_hessian():
    """(rank - k)(width - k) negative eigenvalues at the depth-2 saddle with k modes learned,
    checked against the full float64 Hessian of the loss (torch.autograd.functional)."""
    rank, width, d = 2, 3, 4
    s = torch.tensor([2.0, 1.0], dtype=torch.float64)
    T = torch.zeros(d, d, dtype=torch.float64)
    T[0, 0], T[1, 1] = s

    def loss(flat):
        w1 = flat[: width * d].reshape(width, d)
        w2 = flat[width * d :].reshape(d, width)
        return 0.5 * ((T - w2 @ w1) ** 2).sum()

    for k in (0, 1, 2):
        w1 = torch.zeros(width, d, dtype=torch.float64)
        w2 = torch.zeros(d, width, dtype=torch.float64)
        for a in range(k):  # the saddle with modes 1..k learned, balanced
            w1[a, a] = w2[a, a] = float(s[a]) ** 0.5
        H = torch.autograd.functional.hessian(loss, torch.cat([w1.flatten(), w2.flatten()]))
        neg = int((torch.linalg.eigvalsh(H) < -1e-9).sum())
        assert neg == predicted_negative_count(rank, width, k, 2), k
    assert predicted_negative_count(2, 3, 0, 3) is None


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dln")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def test_smoke_run_stores_every_run_and_defines_every_number(smoke_run):
    root, cfg, res, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    runs = len(cfg.label_noise) * (1 + (len(cfg.batch_sizes) - 1) * cfg.sgd_seeds)
    assert len(saved["curves"]) == runs
    assert sum(s["stage"].startswith("dln-b") for s in saved["stages"]) == runs
    assert any(s["stage"].startswith("dln-hessians") for s in saved["stages"])
    assert saved["plateaus"], "the smoke run starts on a plateau"
    for p in saved["plateaus"]:
        assert len(p["eigenvalues"]) == cfg.hessian_k
        assert p["eigenvalues"] == sorted(p["eigenvalues"])
    for key in ("loss", "mode_strength", "theory", "plateau", "negative_count", "u0"):
        assert saved["definitions"][key]
    assert saved["conclusions"] and all(isinstance(c, str) for c in saved["conclusions"])
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert all(s["reused"] for s in again["stages"])
    assert again["summary"] == res["summary"] and again["plateaus"] == res["plateaus"]


def test_the_report_has_every_figure_and_opens_in_headless_chromium(smoke_run):
    _, _cfg, _, run_dir = smoke_run
    for stem in FIGURES:
        assert (run_dir / "figures" / f"{stem}.png").stat().st_size > 1000, stem
    html = (run_dir / "report.html").read_text()
    assert "Saxe" in html and "balanced" in html and "disagree" in html
    opens_in_chromium(run_dir / "report.html", figures=len(FIGURES))


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(BasinscopeError, match="singular_values must decrease"):
        make_config(STUDY, sets=["singular_values=[1, 2]"])
    with pytest.raises(BasinscopeError, match="batch_sizes must contain 0"):
        make_config(STUDY, sets=["batch_sizes=[8]"])
