"""The dln-saddles study: saddle-to-saddle dynamics of a deep linear network from small
initialisation (Saxe, McClelland & Ganguli 2014; Corlouer et al., shared/talks/003).

A deep linear network :math:`W = W_L\\cdots W_1` (:func:`basinscope.models.deep_linear`, every
weight :math:`\\mathcal N(0, \\sigma^2)` with small :math:`\\sigma`) is trained on the loss
:math:`L = \\frac{1}{2N}\\sum_n \\lVert y_n - W x_n\\rVert^2` with Gaussian inputs whitened to
:math:`X^\\top X/N = I` and targets from a low-rank linear teacher with chosen singular values
(:func:`basinscope.data.low_rank_teacher`), plus optional label noise. With whitened inputs
:math:`L = \\frac12\\lVert \\Sigma_{yx} - W\\rVert_F^2 + \\text{const}`, and for balanced
weights aligned with the SVD :math:`\\Sigma_{yx} = \\sum_\\alpha s_\\alpha r_\\alpha
v_\\alpha^\\top`, gradient flow (time :math:`t = \\eta \\cdot \\text{step}`) decouples into one
equation per mode for :math:`u_\\alpha = r_\\alpha^\\top W v_\\alpha`:

.. math:: \\dot u = L\\, u^{2 - 2/L} (s - u), \\qquad
          u(t) = \\frac{s\\, e^{2st}}{e^{2st} - 1 + s/u_0} \\quad (L = 2),

sigmoidal learning curves whose transition (:math:`u = s/2`) comes at
:math:`t_{1/2} = \\ln(s/u_0 - 1)/(2s)` for depth 2 (:func:`mode_strength`,
:func:`transition_time`). From a random small initialisation the weights are neither
balanced nor aligned; linearising the flow around zero (depth 2) the mode grows from
:math:`u_0 = \\lVert W_1 v_\\alpha + W_2^\\top r_\\alpha\\rVert^2 / 4`
(:func:`effective_initial_strength`), the value the study compares with.

Measured (:func:`run`): the loss against step with its plateaus detected from the numbers
(:func:`detect_plateaus`); the singular values of :math:`W` and the mode strengths
:math:`u_\\alpha` against step next to the solution above; the bottom Hessian eigenvalues
(Lanczos, ``which="smallest"``, float64, on :class:`~basinscope.curvature.HessianOperator`) at
the middle of each plateau, whose count of negative eigenvalues should drop as modes are
learned (at the origin of a depth-2 network it is exactly rank x width: eigenvalues
:math:`\\pm s_\\alpha`, each ``width`` times); and the transition steps of every mode under
SGD at several batch sizes and label-noise levels, next to full-batch gradient descent.

Each training run and the Hessians are stages stored by a hash of their settings.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from basinscope._checks import at_least, check_seed, finite_float, positive_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, Study, StudyContext, register
from basinscope.experiments.stages import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    cached_stage,
    placement,
    stage_dir,
)

__all__ = [
    "DEFINITIONS",
    "STUDY",
    "DLNSaddlesConfig",
    "count_negative",
    "detect_plateaus",
    "effective_initial_strength",
    "mode_strength",
    "predicted_negative_count",
    "run",
    "transition_step",
    "transition_time",
]

NAME = "dln-saddles"
STUDY_MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class DLNSaddlesConfig:
    """Settings of the dln-saddles study (a batch size of 0 is full-batch gradient descent)."""

    in_features: int = 8  # input dimension
    out_features: int = 6  # output dimension
    singular_values: tuple[float, ...] = (4.0, 2.0, 1.0)  # the teacher's (rank = their count)
    teacher_seed: int = 0  # the teacher's singular vectors
    examples: int = 512  # Gaussian inputs, whitened to X^T X / N = I
    data_seed: int = 0  # the inputs
    depth: int = 2  # layers of the deep linear network (the closed form is for depth 2)
    width: int = 6  # units of each hidden layer
    init_scale: float = 1e-4  # standard deviation of every initial weight (small init)
    init_seed: int = 0  # the initial weights (one initialisation for every run)
    lr: float = 0.02  # learning rate of every run (theory time t = lr * step)
    steps: int = 700  # updates of every run
    record_every: int = 2  # steps between recorded points (loss, singular values, weights)
    batch_sizes: tuple[int, ...] = (0, 32, 8)  # 0: full batch (gradient descent)
    label_noise: tuple[float, ...] = (0.0, 0.5)  # std of Gaussian noise added to the targets
    noise_seed: int = 0  # the label noise
    sgd_seeds: int = 2  # minibatch orders per SGD setting (seeds 0..sgd_seeds-1), averaged
    plateau_window: int = 10  # steps over which the loss drop is measured
    plateau_tol: float = 0.002  # a window is flat when the loss drops < this x the initial loss
    plateau_min_steps: int = 20  # shortest plateau (steps)
    hessian_k: int = 30  # bottom eigenvalues at each plateau (>= rank x width to see all)
    lanczos_tol: float = 1e-6  # relative Ritz residual
    lanczos_max_iter: int = 0  # Lanczos steps at most (0: the number of parameters, exact)
    lanczos_seed: int = 0
    negative_tol: float = 0.01  # an eigenvalue < -negative_tol x s_1 counts as negative
    # where training and the Hessians compute (cpu, cuda, cuda:N, mps)
    device: str = DEFAULT_DEVICE
    # precision of training and the recorded curves (float32 or float64); Hessians are float64
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        for key in ("in_features", "out_features", "width"):
            at_least(key, getattr(self, key), 1, high=4096)
        at_least("depth", self.depth, 1, high=64)
        if not self.singular_values:
            raise BasinscopeError("singular_values is empty: give the teacher's, e.g. [4, 2, 1]")
        for s in self.singular_values:
            positive_float("singular_values", s)
        if list(self.singular_values) != sorted(self.singular_values, reverse=True):
            raise BasinscopeError(
                f"singular_values must decrease, got {list(self.singular_values)} (mode 1 is "
                "the largest)"
            )
        if len(self.singular_values) > min(self.in_features, self.out_features):
            raise BasinscopeError(
                f"{len(self.singular_values)} singular values exceed min(in_features, "
                f"out_features) = {min(self.in_features, self.out_features)}"
            )
        at_least("examples", self.examples, self.in_features, high=10_000_000)
        finite_float("init_scale", self.init_scale, low=0, low_open=True, high=10)
        positive_float("lr", self.lr)
        at_least("steps", self.steps, 2, high=STUDY_MAX_STEPS)
        at_least("record_every", self.record_every, 1, high=self.steps)
        if not self.batch_sizes or not self.label_noise:
            raise BasinscopeError("batch_sizes and label_noise need at least one value each")
        for b in self.batch_sizes:
            at_least("batch_sizes", b, 0, high=self.examples)
        for r in self.label_noise:
            finite_float("label_noise", r, low=0)
        if 0 not in self.batch_sizes or 0.0 not in self.label_noise:
            raise BasinscopeError(
                "batch_sizes must contain 0 and label_noise 0: full-batch gradient descent on "
                "clean targets is the run whose plateaus and Hessians are measured"
            )
        for key in ("batch_sizes", "label_noise"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise BasinscopeError(f"{key} lists a value twice: {list(values)}")
        at_least("sgd_seeds", self.sgd_seeds, 1, high=100)
        at_least("plateau_window", self.plateau_window, 1, high=self.steps)
        at_least("plateau_min_steps", self.plateau_min_steps, 1, high=self.steps)
        finite_float("plateau_tol", self.plateau_tol, low=0, low_open=True, high=1)
        at_least("hessian_k", self.hessian_k, 1, high=100_000)
        at_least("lanczos_max_iter", self.lanczos_max_iter, 0, high=100_000)
        finite_float("lanczos_tol", self.lanczos_tol, low=0, high=1, low_open=True, high_open=True)
        finite_float("negative_tol", self.negative_tol, low=0, high=1, low_open=True)
        for key in ("teacher_seed", "data_seed", "init_seed", "noise_seed", "lanczos_seed"):
            check_seed(key, getattr(self, key))


QUICK: dict[str, Any] = dict(batch_sizes=(0, 8), sgd_seeds=1)
SMOKE: dict[str, Any] = dict(steps=160, lr=0.05, record_every=2, init_scale=1e-3)
SMOKE.update(examples=64, batch_sizes=(0, 8), sgd_seeds=1, hessian_k=8, lanczos_max_iter=20)
SMOKE.update(figure_formats=("png",))

DEFINITIONS = {
    "loss": "(1/2N) sum_n ||y_n - W x_n||^2 over the N training examples (with their noisy "
    "targets in a label-noise run)",
    "mode_strength": "u_a = r_a^T W v_a, W the end-to-end map W_L...W_1 and r_a, v_a the a-th "
    "left and right singular vectors of Sigma_yx = Y^T X / N (of the run's own targets)",
    "singular_values": "singular values of the end-to-end map W, descending",
    "teacher_s": "singular values s_a of Sigma_yx (the teacher's chosen values, changed slightly "
    "by label noise)",
    "u0": "effective initial strength of a mode: ||W_1(0) v_a + W_2(0)^T r_a||^2 / 4 (depth 2: "
    "linearised gradient flow grows u_a from it as u0 e^{2 s t}); for depth != 2 the balanced "
    "estimate (init_scale sqrt(width))^depth",
    "theory": "u(t) of balanced, aligned gradient flow: du/dt = L u^(2-2/L) (s - u) with t = lr "
    "x step (closed form s e^{2st} / (e^{2st} - 1 + s/u0) at depth 2)",
    "transition_step": "the first step at which u_a reaches s_a / 2 (linear interpolation "
    "between recorded steps); theory: t_1/2 / lr",
    "plateau": "a maximal stretch of at least plateau_min_steps steps in which every "
    "plateau_window-step window lowers the loss by less than plateau_tol x the initial loss",
    "negative_count": "eigenvalues of the training loss's Hessian below -negative_tol x s_1 "
    "(float64 Lanczos, most negative first, at the recorded step nearest the plateau's middle)",
    "modes_learned": "modes with u_a >= s_a / 2 at that step",
    "predicted_negative_count": "(rank - k)(width - k) at the depth-2 saddle with k modes "
    "learned: each unlearned mode grows along every hidden direction the learned ones leave",
}


# -- theory and pure functions of the numbers ------------------------------------------------


def mode_strength(t: Any, s: float, u0: float, depth: int = 2) -> np.ndarray:
    """Gradient-flow mode strength :math:`u(t)` of a balanced, aligned deep linear network of
    ``depth`` layers on whitened inputs: the solution of :math:`\\dot u = L u^{2-2/L}(s-u)`,
    :math:`u(0) = u_0`. Closed form for depth 1 and 2 (Saxe et al. 2014); otherwise integrated
    (scipy ``solve_ivp``, relative tolerance 1e-10)."""
    t = np.asarray(t, dtype=np.float64)
    if depth == 1:
        return s + (u0 - s) * np.exp(-t)
    if depth == 2:
        e = np.exp(np.minimum(2 * s * t, 700.0))
        return s * e / (e - 1 + s / u0)
    from scipy.integrate import solve_ivp

    order = np.argsort(t.ravel())
    ts = t.ravel()[order]

    def f(_t, u):
        return depth * np.abs(u) ** (2 - 2 / depth) * (s - u)

    sol = solve_ivp(f, (0.0, float(ts[-1]) or 1.0), [u0], t_eval=ts, rtol=1e-10, atol=1e-14)
    out = np.empty_like(ts)
    out[:] = sol.y[0]
    res = np.empty_like(out)
    res[order] = out
    return res.reshape(t.shape)


def transition_time(s: float, u0: float, depth: int = 2) -> float:
    """Time at which :func:`mode_strength` reaches ``s / 2``: :math:`\\ln(s/u_0 - 1)/(2s)` at
    depth 2, otherwise :math:`\\int_{u_0}^{s/2} du / (L u^{2-2/L}(s-u))` (scipy ``quad``)."""
    if u0 >= s / 2:
        return 0.0
    if depth == 2:
        return math.log(s / u0 - 1) / (2 * s)
    if depth == 1:
        return math.log((s - u0) / (s / 2))
    from scipy.integrate import quad

    # substitute u = e^z: du = u dz, smooth over the many decades between u0 and s/2
    val, _ = quad(
        lambda z: math.exp(z) / (depth * math.exp(z) ** (2 - 2 / depth) * (s - math.exp(z))),
        math.log(u0),
        math.log(s / 2),
        limit=200,
    )
    return float(val)


def effective_initial_strength(weights: Sequence[Any], r: Any, v: Any, init_scale: float) -> float:
    """:math:`u_0` of a mode with left/right singular vectors ``r``, ``v``: depth 2,
    :math:`\\lVert W_1 v + W_2^\\top r\\rVert^2/4` (linearised flow around zero: ``W_1 v`` and
    ``W_2^T r`` obey :math:`\\dot a_1 = s a_2, \\dot a_2 = s a_1`, so their sum grows as
    :math:`e^{st}` and :math:`u = a_2\\cdot a_1 \\approx \\lVert a_1 + a_2\\rVert^2 e^{2st}/4`);
    other depths, the balanced estimate :math:`(\\sigma\\sqrt{h})^L` of a layer scale
    :math:`\\sigma\\sqrt{h}` (``weights`` only give the width)."""
    ws = [np.asarray(w, dtype=np.float64) for w in weights]
    if len(ws) == 2:
        a = ws[0] @ np.asarray(v) + ws[1].T @ np.asarray(r)
        return float(a @ a / 4)
    h = ws[0].shape[0]
    return float((init_scale * math.sqrt(h)) ** len(ws))


def transition_step(steps: Sequence[int], u: Sequence[float], s: float) -> float | None:
    """The first step at which ``u`` reaches ``s / 2``, linearly interpolated between the
    recorded ``steps``; None when it never does."""
    half = s / 2
    for i, val in enumerate(u):
        if val >= half:
            if i == 0:
                return float(steps[0])
            a, b = u[i - 1], val
            return float(steps[i - 1] + (half - a) / (b - a) * (steps[i] - steps[i - 1]))
    return None


def detect_plateaus(
    steps: Sequence[int], loss: Sequence[float], window: int, tol: float, min_steps: int
) -> list[dict[str, Any]]:
    """Plateaus of a loss curve (evenly recorded ``steps``): maximal stretches of at least
    ``min_steps`` steps in which every window of ``window`` steps lowers the loss by less
    than ``tol`` x the initial loss. Each: ``start``, ``end``, ``middle`` (a recorded step),
    ``loss`` (at the middle)."""
    steps = np.asarray(steps)
    loss = np.asarray(loss, dtype=np.float64)
    if len(steps) < 2:
        return []
    every = int(steps[1] - steps[0])
    w = max(1, round(window / every))
    if len(loss) <= w:
        return []
    drop = (loss[:-w] - loss[w:]) / loss[0]
    flat = drop < tol
    out = []
    i = 0
    while i < len(flat):
        if not flat[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(flat) and flat[j + 1]:
            j += 1
        start, end = int(steps[i]), int(steps[j + w])
        if end - start >= min_steps:
            mid = int(steps[np.argmin(np.abs(steps - (start + end) / 2))])
            out.append(
                {"start": start, "end": end, "middle": mid, "loss": float(loss[steps == mid][0])}
            )
        i = j + 1
    return out


def predicted_negative_count(rank: int, width: int, learned: int, depth: int) -> int | None:
    """Negative Hessian eigenvalues at the depth-2 saddle with ``learned`` modes learned:
    :math:`(r - k)(h - k)` -- each unlearned mode can still grow along every hidden direction
    the learned modes do not use (at the origin, :math:`r h`: eigenvalues :math:`-s_\\alpha`,
    each ``width`` times). None for other depths (the origin is degenerate there)."""
    if depth != 2:
        return None
    return max(rank - learned, 0) * max(width - learned, 0)


def count_negative(eigenvalues: Sequence[float], threshold: float) -> int:
    """Eigenvalues below ``-threshold``."""
    return int(sum(1 for e in eigenvalues if e < -threshold))


# -- data, training, Hessians -------------------------------------------------------------


def make_data(cfg: DLNSaddlesConfig, noise: float):
    from basinscope.data import gaussian_inputs, low_rank_teacher, teacher_data

    x = gaussian_inputs(cfg.examples, cfg.in_features, cfg.data_seed, whiten=True)
    x = x.double()
    teacher = low_rank_teacher(
        cfg.in_features, cfg.out_features, cfg.singular_values, cfg.teacher_seed
    )
    svals = "-".join(f"{s:g}" for s in cfg.singular_values)
    name = (
        f"gauss-n{cfg.examples}-d{cfg.in_features}-seed{cfg.data_seed}-white-"
        f"lowrank{cfg.out_features}x{cfg.in_features}-s{svals}-seed{cfg.teacher_seed}"
    )
    return teacher_data(x, teacher, name, noise=noise, noise_seed=cfg.noise_seed)


def _model_kwargs(cfg: DLNSaddlesConfig) -> dict[str, Any]:
    return {
        "in_features": cfg.in_features,
        "out_features": cfg.out_features,
        "width": cfg.width,
        "depth": cfg.depth,
        "init_scale": cfg.init_scale,
    }


def _half_sse(pred, y):
    return 0.5 * ((pred - y) ** 2).sum(-1).mean()


def modes_of(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of Sigma_yx = Y^T X / N: (s, R, V) with R out x r, V in x r (float64)."""
    x, y = data.x.double(), data.y.double()
    sigma = (y.T @ x / len(x)).numpy()
    u, s, vt = np.linalg.svd(sigma)
    return s, u, vt.T


def train_run(init, data, cfg: DLNSaddlesConfig, batch_size: int, seed: int, rank: int):
    """Train a copy of ``init`` for ``cfg.steps`` steps; the recorded curves and weights."""
    import torch

    from basinscope.models import end_to_end

    dtype = getattr(torch, cfg.dtype)
    model = copy.deepcopy(init).to(device=cfg.device, dtype=dtype)
    x = data.x.to(device=cfg.device, dtype=dtype)
    y = data.y.to(device=cfg.device, dtype=dtype)
    n = len(x)
    s, R, V = modes_of(data)
    R_, V_ = R[:, :rank], V[:, :rank]
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(int(seed))
    rec: dict[str, list] = {"steps": [], "loss": [], "singular_values": [], "u": [], "weights": []}
    for step in range(cfg.steps + 1):
        if step % cfg.record_every == 0 or step == cfg.steps:
            with torch.no_grad():
                w = end_to_end(model).double().cpu().numpy()
                rec["steps"].append(step)
                rec["loss"].append(float(_half_sse(model(x), y)))
                rec["singular_values"].append(np.linalg.svd(w, compute_uv=False).tolist())
                rec["u"].append(np.einsum("ia,ij,ja->a", R_, w, V_).tolist())
                rec["weights"].append([p.detach().double().cpu().numpy().tolist() for p in params])
        if step == cfg.steps:
            break
        if batch_size and batch_size < n:
            idx = torch.randint(n, (batch_size,), generator=gen).to(cfg.device)
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        grads = torch.autograd.grad(_half_sse(model(xb), yb), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(cfg.lr * g)
    if not all(math.isfinite(v) for v in rec["loss"]):
        raise BasinscopeError(
            f"training diverged (lr {cfg.lr:g}, batch size {batch_size}): lower lr"
        )
    return {**rec, "teacher_s": s[:rank].tolist(), "batch_size": batch_size, "seed": seed}


def hessians(init, weights_at: dict[int, list], data, cfg: DLNSaddlesConfig) -> dict[str, Any]:
    """The bottom ``hessian_k`` Hessian eigenvalues (float64 Lanczos) at each given step."""
    import torch

    from basinscope.curvature import HessianOperator, lanczos_eigenpairs

    out = {}
    data64 = type(data)(data.x.double(), data.y.double(), data.name)
    for step, ws in weights_at.items():
        model = copy.deepcopy(init).double()
        with torch.no_grad():
            for p, w in zip(model.parameters(), ws, strict=True):
                p.copy_(torch.tensor(w, dtype=torch.float64))
        op = HessianOperator(
            model,
            data64,
            loss_fn=_half_sse,
            method="double-backward",
            dtype=torch.float64,
            device=cfg.device,
            batch_size=max(len(data64), 1),
        )
        k = min(cfg.hessian_k, op.n)
        eig = lanczos_eigenpairs(
            op,
            k=k,
            which="smallest",
            tol=cfg.lanczos_tol,
            max_iter=cfg.lanczos_max_iter or op.n,
            seed=cfg.lanczos_seed,
        )
        out[str(step)] = {
            "eigenvalues": [float(e) for e in eig.eigenvalues],
            "converged": [bool(c) for c in eig.converged],
            "parameters": op.n,
            "matvecs": eig.num_matvecs,
        }
    return out


# -- the study --------------------------------------------------------------------------------


def run(cfg: DLNSaddlesConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.models import build_model

    root = ctx.stages_root
    rank = len(cfg.singular_values)
    init = build_model("deep_linear", _model_kwargs(cfg), init_seed=cfg.init_seed)
    datas = {r: make_data(cfg, r) for r in cfg.label_noise}
    base = {"model": "deep_linear", "model_kwargs": _model_kwargs(cfg), "init_seed": cfg.init_seed}
    base |= {"lr": cfg.lr, "steps": cfg.steps, "record_every": cfg.record_every, "rank": rank}
    base |= placement(cfg)

    # -- 1. every run: GD and SGD, clean and noisy targets -----------------------------------
    grid = [
        (b, r, seed)
        for r in cfg.label_noise
        for b in cfg.batch_sizes
        for seed in (range(1) if b == 0 else range(cfg.sgd_seeds))
    ]
    calls = []
    for b, r, seed in grid:
        settings = {**base, "data": datas[r].name, "batch_size": b, "sgd_seed": seed}
        name = f"dln-b{b}-noise{r:g}-s{seed}"

        def call(lg, settings=settings, name=name, b=b, r=r, seed=seed):
            return cached_stage(
                root,
                name,
                settings,
                lambda d: train_run(init, datas[r], cfg, b, seed, rank),
                log=lg,
            )

        calls.append(StageCall(stage_dir(root, name, settings), call))
    done = ctx.run_stages(
        calls,
        what=f"[1/2] {len(grid)} runs of {cfg.steps} steps (batch sizes "
        f"{list(cfg.batch_sizes)}, label noise {list(cfg.label_noise)})",
    )
    runs = []
    for (b, r, seed), (value, folder) in zip(grid, done, strict=True):
        runs.append(
            {"batch_size": b, "label_noise": r, "seed": seed, "value": value, "stage": folder.name}
        )
    main = next(x for x in runs if x["batch_size"] == 0 and x["label_noise"] == 0.0)
    mv = main["value"]

    # -- 2. plateaus of gradient descent and the Hessian at each -------------------------------
    plateaus = detect_plateaus(
        mv["steps"], mv["loss"], cfg.plateau_window, cfg.plateau_tol, cfg.plateau_min_steps
    )
    at = {p["middle"]: mv["weights"][mv["steps"].index(p["middle"])] for p in plateaus}
    hsettings = {
        "train": main["stage"],
        "steps": sorted(at),
        "k": cfg.hessian_k,
        "tol": cfg.lanczos_tol,
        "max_iter": cfg.lanczos_max_iter,
        "seed": cfg.lanczos_seed,
        "device": cfg.device,
        "loss": "half_sse",
    }

    def hess_call(lg):
        return cached_stage(
            root, "dln-hessians", hsettings, lambda d: hessians(init, at, datas[0.0], cfg), log=lg
        )

    ((hess, hess_dir),) = ctx.run_stages(
        [StageCall(stage_dir(root, "dln-hessians", hsettings), hess_call)],
        what=f"[2/2] bottom {cfg.hessian_k} Hessian eigenvalues at {len(at)} plateau(s)",
    )
    s_top = float(cfg.singular_values[0])
    threshold = cfg.negative_tol * s_top
    for p in plateaus:
        h = hess[str(p["middle"])]
        i = mv["steps"].index(p["middle"])
        u = mv["u"][i]
        p["eigenvalues"] = h["eigenvalues"]
        p["converged"] = all(h["converged"])
        p["negative_count"] = count_negative(h["eigenvalues"], threshold)
        p["saw_all_negative"] = p["negative_count"] < len(h["eigenvalues"])
        p["modes_learned"] = int(sum(ua >= s / 2 for ua, s in zip(u, mv["teacher_s"], strict=True)))
        p["min_eigenvalue"] = h["eigenvalues"][0]
        p["predicted_negative_count"] = predicted_negative_count(
            rank, cfg.width, p["modes_learned"], cfg.depth
        )

    # -- theory and transitions per run ------------------------------------------------------
    w0 = [np.asarray(w) for w in mv["weights"][0]]
    theory_steps = np.arange(0, cfg.steps + 1, max(1, cfg.steps // 400))
    summary = []
    for x in runs:
        v = x["value"]
        s, R, V = modes_of(datas[x["label_noise"]])
        u0 = [effective_initial_strength(w0, R[:, a], V[:, a], cfg.init_scale) for a in range(rank)]
        theory_t = [transition_time(s[a], u0[a], cfg.depth) / cfg.lr for a in range(rank)]
        measured = [transition_step(v["steps"], [u[a] for u in v["u"]], s[a]) for a in range(rank)]
        x["u0"] = u0
        x["theory_transition_steps"] = theory_t
        x["transition_steps"] = measured
        if x is main:
            x["theory_curves"] = {
                "steps": theory_steps.tolist(),
                "u": [
                    mode_strength(cfg.lr * theory_steps, s[a], u0[a], cfg.depth).tolist()
                    for a in range(rank)
                ],
            }
    for b in cfg.batch_sizes:
        for r in cfg.label_noise:
            sel = [x for x in runs if x["batch_size"] == b and x["label_noise"] == r]
            meas = [_mean([x["transition_steps"][a] for x in sel]) for a in range(rank)]
            summary.append(
                {
                    "batch_size": b,
                    "label_noise": r,
                    "runs": len(sel),
                    "transition_steps": meas,
                    "theory_transition_steps": sel[0]["theory_transition_steps"],
                    "final_loss": _mean([x["value"]["loss"][-1] for x in sel]),
                    "teacher_s": sel[0]["value"]["teacher_s"],
                }
            )
    gd = next(x for x in summary if x["batch_size"] == 0 and x["label_noise"] == 0.0)
    for row in summary:
        row["shift_vs_gd"] = [
            None if m is None or g is None else (m - g) / g
            for m, g in zip(row["transition_steps"], gd["transition_steps"], strict=True)
        ]
        row["theory_shift_vs_gd"] = [
            (m - g) / g
            for m, g in zip(
                row["theory_transition_steps"], gd["theory_transition_steps"], strict=True
            )
        ]
        row["vs_theory"] = [
            None if m is None else m / t
            for m, t in zip(row["transition_steps"], row["theory_transition_steps"], strict=True)
        ]
    curves = []
    for x in runs:
        v = x["value"]
        curves.append(
            {
                "batch_size": x["batch_size"],
                "label_noise": x["label_noise"],
                "seed": x["seed"],
                "stage": x["stage"],
                "steps": v["steps"],
                "loss": v["loss"],
                "u": v["u"],
                "singular_values": [sv[: rank + 1] for sv in v["singular_values"]],
                "teacher_s": v["teacher_s"],
                "u0": x["u0"],
                "transition_steps": x["transition_steps"],
                "theory_transition_steps": x["theory_transition_steps"],
                **({"theory": x["theory_curves"]} if "theory_curves" in x else {}),
            }
        )
    return {
        "setup": {
            "model": f"deep linear network {cfg.in_features}→"
            + "→".join([str(cfg.width)] * (cfg.depth - 1) + [str(cfg.out_features)]),
            "parameters": sum(p.numel() for p in init.parameters()),
            "rank": rank,
            "data": {str(r): d.name for r, d in datas.items()},
            "negative_threshold": threshold,
            "origin_negative_prediction": rank * cfg.width if cfg.depth == 2 else None,
        },
        "definitions": DEFINITIONS,
        "policies": _policies(cfg),
        "plateaus": plateaus,
        "summary": summary,
        "curves": curves,
        "conclusions": conclusions(plateaus, summary, cfg),
        "stage_folders": {"gd": main["stage"], "hessians": hess_dir.name},
    }


def _mean(values):
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def conclusions(plateaus: list[dict], summary: list[dict], cfg: DLNSaddlesConfig) -> list[str]:
    """The study's conclusions, computed from the numbers."""
    rank = len(cfg.singular_values)
    out = []
    gd = next(x for x in summary if x["batch_size"] == 0 and x["label_noise"] == 0.0)
    n_pl = len(plateaus)
    out.append(
        f"Gradient descent's loss shows {n_pl} plateau(s) (the teacher has rank {rank}: theory "
        f"expects {rank + 1}, one before each mode is learned and the minimum after the last)"
        + ("." if n_pl == rank + 1 else "; they disagree in number.")
    )
    ratios = [r for r in gd["vs_theory"] if r is not None]
    if ratios:
        worst = max(abs(r - 1) for r in ratios)
        out.append(
            "Measured transition steps (u_a = s_a/2) against the gradient-flow solution from the "
            "effective initial strength: "
            + ", ".join(
                f"mode {a + 1}: {m:.0f} vs {t:.0f}"
                for a, (m, t) in enumerate(
                    zip(gd["transition_steps"], gd["theory_transition_steps"], strict=True)
                )
                if m is not None
            )
            + f" (largest relative difference {worst:.1%}; "
            + ("they agree within 10%)." if worst <= 0.1 else "they disagree by more than 10%).")
        )
    missing = [a + 1 for a, m in enumerate(gd["transition_steps"]) if m is None]
    if missing:
        out.append(f"Modes {missing} are not learned within {cfg.steps} steps.")
    counts = [p["negative_count"] for p in plateaus]
    if counts:
        mono = all(a > b for a, b in itertools.pairwise(counts))
        text = (
            "Negative Hessian eigenvalues at the plateaus, in order: "
            + ", ".join(
                f"{c} ({p['modes_learned']} mode(s) learned)"
                for c, p in zip(counts, plateaus, strict=True)
            )
            + (
                ": the count drops at every plateau, as the saddle-to-saddle picture predicts"
                if mono
                else ": the count does NOT drop at every plateau, against the prediction"
            )
        )
        if cfg.depth == 2:
            pred = [p["predicted_negative_count"] for p in plateaus]
            text += (
                "; the depth-2 count (rank - k)(width - k) at the saddle with k modes learned "
                "predicts "
                + ", ".join(map(str, pred))
                + (
                    ", exactly as measured"
                    if pred == counts
                    else " (they disagree at "
                    + ", ".join(
                        f"plateau {i + 1}"
                        for i, (a, b) in enumerate(zip(pred, counts, strict=True))
                        if a != b
                    )
                    + ")"
                )
            )
        if counts[-1] == 0:
            text += "; none at the last plateau (the minimum)"
        if any(not p["saw_all_negative"] for p in plateaus):
            text += (
                f"; at least one plateau has all {cfg.hessian_k} computed eigenvalues negative, "
                "so its count is a lower bound (raise hessian_k)"
            )
        out.append(text + ".")
    for row in summary:
        if row is gd:
            continue
        sh = [x for x in row["shift_vs_gd"] if x is not None]
        th = row["theory_shift_vs_gd"]
        what = f"batch size {row['batch_size'] or 'full'}, label noise {row['label_noise']:g}"
        if not sh:
            out.append(f"With {what}, no mode reaches s/2.")
            continue
        out.append(
            f"With {what}: mode transitions shift by "
            + ", ".join(f"{x:+.1%}" for x in sh)
            + " against full-batch gradient descent (the gradient-flow solution with this run's "
            "Sigma_yx predicts "
            + ", ".join(f"{x:+.1%}" for x in th)
            + "); "
            + (
                "SGD noise leaves the saddle-to-saddle timing within 10% of gradient flow's"
                if max(abs(x - t) for x, t in zip(sh, th, strict=False)) <= 0.1
                else "the timing moves by more than 10% beyond what gradient flow predicts"
            )
            + "."
        )
    return out


def _policies(cfg: DLNSaddlesConfig) -> dict[str, str]:
    return {
        "data": f"{cfg.examples} standard Gaussian inputs of dimension {cfg.in_features} (seed "
        f"{cfg.data_seed}), whitened so that X^T X / N = I exactly; targets from a rank-"
        f"{len(cfg.singular_values)} linear teacher with singular values "
        f"{list(cfg.singular_values)} and Haar-random singular vectors (seed {cfg.teacher_seed}), "
        f"plus Gaussian label noise of std {list(cfg.label_noise)} (seed {cfg.noise_seed})",
        "training": f"one initialisation (every weight N(0, {cfg.init_scale:g}^2), seed "
        f"{cfg.init_seed}) for every run; {cfg.steps} steps at constant lr {cfg.lr:g} on (1/2B) "
        f"sum ||y - W x||^2 over a minibatch of B drawn with replacement (seeds "
        f"0..{cfg.sgd_seeds - 1}), or the full batch (batch size 0)",
        "hessian": f"bottom {cfg.hessian_k} eigenvalues of the full-batch training loss's Hessian "
        f"(HessianOperator, double backward, float64; Lanczos with full reorthogonalisation, "
        f"tolerance {cfg.lanczos_tol:g}, at most "
        + (f"{cfg.lanczos_max_iter}" if cfg.lanczos_max_iter else "as many as parameters")
        + f" steps) at the recorded step nearest each plateau's middle; negative below "
        f"-{cfg.negative_tol:g} x s_1",
        "precision": f"training and curves in {cfg.dtype} on {cfg.device}; Hessians in float64; "
        "SVDs and theory in float64 on the CPU",
    }


def _report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.dln_saddles_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name=NAME,
        summary="Deep linear networks from small initialisation (Saxe et al. 2014): loss "
        "plateaus, singular values against the analytic gradient-flow solution, negative "
        "Hessian eigenvalues at each saddle, and SGD's batch size and label noise",
        config=DLNSaddlesConfig,
        run=run,
        report=_report,
        quick=QUICK,
        smoke=SMOKE,
    )
)
