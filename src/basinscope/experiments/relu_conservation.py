"""The relu-conservation study: conservation laws and a topological obstruction in shallow
ReLU networks with a scalar output (shared/talks/003, "Topological obstruction to the
training of shallow ReLU neural networks").

The student is :math:`f(x) = \\sum_j a_j\\,\\mathrm{relu}(w_j\\cdot x)`
(:func:`basinscope.models.two_layer_relu`, no biases). Each neuron is positively homogeneous,
so :math:`w_j\\cdot\\nabla_{w_j}L = a_j\\,\\partial_{a_j}L` for any loss of the output and
gradient flow conserves :math:`c_j = \\lVert w_j\\rVert^2 - a_j^2`
(:func:`basinscope.models.conserved_quantities`). A gradient step of size :math:`\\eta` changes
it by exactly :math:`\\eta^2(\\lVert g_{w_j}\\rVert^2 - g_{a_j}^2)` (the first-order terms
cancel), so over a fixed time :math:`T = \\eta\\cdot\\text{steps}` gradient descent drifts by
:math:`O(\\eta)`; SGD's minibatch gradients obey the same identity, with larger gradients.

Trajectories therefore stay on the product of quadrics :math:`\\{c_j = c_j(0)\\}`. With a
scalar output a neuron with :math:`c_j < 0` has :math:`a_j^2 \\ge -c_j > 0`: its quadric is a
two-sheeted hyperboloid, split into two components by the sign of :math:`a_j`, which can
never change; :math:`c_j \\ge 0` gives a connected quadric (input dimension >= 2). The
invariant set has :math:`2^{\\#\\{j: c_j < 0\\}}` components (:func:`components`). For a
teacher :math:`\\sum_k s_k\\,\\mathrm{relu}(v_k\\cdot x)` with signs :math:`s_k`, a global
optimum (the teacher's units up to rescaling and permutation, the rest dead) lies in the
trajectory's component iff the positive units fit on neurons locked positive or free, the
negative ones on neurons locked negative or free, and all on the width (Hall's condition:
:func:`reachable`). When every neuron is locked to one sign the output keeps that sign, and
the loss is at least :math:`\\frac{1}{2N}\\sum_n \\min(y_n, 0)^2` (or ``max`` for negative):
:func:`sign_lower_bound`.

Measured: the drift of :math:`c_j` under gradient descent at several step sizes over one
time horizon, and under SGD with a large learning rate; the loss curves of an initialisation
whose component holds no global optimum next to one whose component does (the same input
weights, one output sign flipped); the function-preserving moves between components
(:func:`find_moves`: rescaling a locked neuron by :math:`\\alpha \\ge \\sqrt{|a_j|/
\\lVert w_j\\rVert}` unlocks it, :math:`c_j \\to \\alpha^2\\lVert w_j\\rVert^2 -
a_j^2/\\alpha^2`; swapping two neurons of equal :math:`c` maps a sign pattern to the swapped
one) and gradient descent from the blocked initialisation unlocked; and, for random
initialisations, the rule's verdict next to where gradient descent ends.
"""

from __future__ import annotations

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
    "ReluConservationConfig",
    "components",
    "find_moves",
    "permute",
    "reachable",
    "rescale",
    "rescaled_c",
    "run",
    "sign_lower_bound",
]

NAME = "relu-conservation"
STUDY_MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class ReluConservationConfig:
    """Settings of the relu-conservation study (every run is full-batch gradient descent
    except the SGD run)."""

    in_features: int = 4  # input dimension (>= 2: a quadric with c >= 0 is connected)
    teacher_signs: tuple[float, ...] = (1.0, -1.0)  # output weights of the teacher's units
    teacher_seed: int = 0  # the teacher's unit directions
    examples: int = 1000  # standard Gaussian inputs
    data_seed: int = 0
    width: int = 2  # student neurons (the teacher's width: well specified)
    w_norm: float = 0.5  # ||w_j|| of the designed initialisations
    a_norm: float = 1.0  # |a_j| of the designed initialisations (c_j = w_norm^2 - a_norm^2)
    init_seed: int = 0  # directions of the designed initialisations' w_j
    lr: float = 0.05  # learning rate of the loss-curve runs
    steps: int = 4000  # steps of the loss-curve runs
    drift_lrs: tuple[float, ...] = (0.04, 0.02, 0.01)  # GD step sizes of the drift runs
    drift_time: float = 20.0  # time horizon lr x steps of every drift run
    sgd_lr: float = 0.5  # the large learning rate of the SGD run
    sgd_batch_size: int = 8
    sgd_steps: int = 400
    sgd_seed: int = 0
    random_inits: int = 16  # random initialisations checked against the rule
    random_w_scale: float = 0.5  # w_j entries N(0, scale^2 / in_features)
    random_a_scale: float = 1.0  # a_j ~ N(0, scale^2)
    optimum_tol: float = 1e-3  # a run reaches a global optimum when its final loss is below
    records: int = 200  # recorded points per run (evenly spaced)
    # where training computes (cpu, cuda, cuda:N, mps)
    device: str = DEFAULT_DEVICE
    # precision of training (float32 or float64); conserved quantities are read in float64
    dtype: str = DEFAULT_DTYPE
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        at_least("in_features", self.in_features, 2, high=4096)
        if not self.teacher_signs or any(s == 0 for s in self.teacher_signs):
            raise BasinscopeError(
                f"teacher_signs must be nonzero output weights, got {list(self.teacher_signs)}"
            )
        for s in self.teacher_signs:
            finite_float("teacher_signs", s)
        at_least("examples", self.examples, 2, high=10_000_000)
        at_least("width", self.width, len(self.teacher_signs), high=4096)
        for key in ("w_norm", "a_norm", "lr", "drift_time", "sgd_lr", "random_w_scale"):
            positive_float(key, getattr(self, key))
        positive_float("random_a_scale", self.random_a_scale)
        if not self.drift_lrs:
            raise BasinscopeError("drift_lrs needs at least one step size, e.g. [0.02, 0.01]")
        for lr in self.drift_lrs:
            positive_float("drift_lrs", lr)
            if self.drift_time / lr > STUDY_MAX_STEPS:
                raise BasinscopeError(f"drift_time / {lr:g} exceeds {STUDY_MAX_STEPS} steps")
        for key in ("steps", "sgd_steps"):
            at_least(key, getattr(self, key), 1, high=STUDY_MAX_STEPS)
        at_least("sgd_batch_size", self.sgd_batch_size, 1, high=self.examples)
        at_least("random_inits", self.random_inits, 0, high=1000)
        at_least("records", self.records, 2, high=100_000)
        positive_float("optimum_tol", self.optimum_tol)
        for key in ("teacher_seed", "data_seed", "init_seed", "sgd_seed"):
            check_seed(key, getattr(self, key))


QUICK: dict[str, Any] = dict(random_inits=8, steps=3000)
SMOKE: dict[str, Any] = dict(examples=100, steps=60, drift_lrs=(0.04, 0.02), drift_time=0.8)
SMOKE.update(sgd_steps=20, random_inits=2, records=10, figure_formats=("png",))

DEFINITIONS = {
    "loss": "(1/2N) sum_n (f(x_n) - y_n)^2 over the N training examples",
    "c": "per neuron c_j = ||w_j||^2 - a_j^2 (w_j the input weights, a_j the output weight)",
    "drift": "max over neurons and recorded steps of |c_j(t) - c_j(0)|",
    "components": "connected components of the invariant set prod_j {c_j = c_j(0)}: "
    "2^(number of neurons with c_j < 0)",
    "locked": "a neuron with c_j < 0: |a_j| >= sqrt(-c_j) > 0, so a_j keeps its sign",
    "reachable": "Hall's condition: positive teacher units <= neurons locked positive + free, "
    "negative units <= locked negative + free, all units <= width",
    "sign_bound": "when every neuron is locked to one sign s, the output keeps that sign and the "
    "loss is at least (1/2N) sum_n min(s y_n, 0)^2",
    "reached": "final loss below optimum_tol",
    "rescale": "neuron j by alpha > 0: w_j -> alpha w_j, a_j -> a_j / alpha (f unchanged); "
    "c_j -> alpha^2 ||w_j||^2 - a_j^2 / alpha^2",
    "unlock": "alpha* = sqrt(|a_j| / ||w_j||) takes a locked neuron to c_j = 0 (a cone); the "
    "move used, alpha = |a_j| / ||w_j||, swaps ||w_j|| and |a_j| and takes c_j to -c_j > 0",
    "permute": "swapping neurons i and k (f unchanged) maps the component with sign pattern s "
    "to the swapped pattern; it stays in the same invariant set when c_i = c_k",
    "max_df": "max over the training inputs of |f_moved(x) - f(x)| in float64",
}


# -- the rule -------------------------------------------------------------------------------


def components(c: Sequence[float]) -> int:
    """Connected components of :math:`\\prod_j\\{c_j\\}`-quadrics with a scalar output:
    :math:`2^{\\#\\{j: c_j < 0\\}}` (input dimension >= 2)."""
    return 2 ** sum(1 for x in c if x < 0)


def reachable(c: Sequence[float], a: Sequence[float], teacher_signs: Sequence[float]) -> bool:
    """Does the invariant component of (``c``, signs of ``a``) hold a global optimum of a
    teacher with these output signs (its units up to rescaling and permutation, other neurons
    dead)? Hall's condition on the locked (c < 0) and free neurons."""
    pos = sum(1 for s in teacher_signs if s > 0)
    neg = len(teacher_signs) - pos
    lp = sum(1 for cj, aj in zip(c, a, strict=True) if cj < 0 and aj > 0)
    ln = sum(1 for cj, aj in zip(c, a, strict=True) if cj < 0 and aj < 0)
    free = len(c) - lp - ln
    return pos <= lp + free and neg <= ln + free and pos + neg <= len(c)


def sign_lower_bound(c: Sequence[float], a: Sequence[float], y: Any) -> float | None:
    """When every neuron is locked to one sign, the least loss any point of the component
    reaches: :math:`\\frac{1}{2N}\\sum_n \\min(s y_n, 0)^2`; None otherwise."""
    signs = {np.sign(aj) for cj, aj in zip(c, a, strict=True) if cj < 0}
    if len(signs) != 1 or any(cj >= 0 for cj in c):
        return None
    s = signs.pop()
    y = np.asarray(y, dtype=np.float64).ravel()
    return float(0.5 * np.mean(np.minimum(s * y, 0.0) ** 2))


# -- moves between components ---------------------------------------------------------------


def rescale(w: Any, a: Any, j: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Neuron ``j`` rescaled by ``alpha`` > 0: :math:`w_j \\to \\alpha w_j`,
    :math:`a_j \\to a_j/\\alpha` (copies; the network's function is unchanged)."""
    positive_float("alpha", alpha)
    w, a = np.array(w, dtype=np.float64), np.array(a, dtype=np.float64)
    w[j] *= alpha
    a[j] /= alpha
    return w, a


def rescaled_c(w_j: Any, a_j: float, alpha: float) -> float:
    """The conserved quantity after rescaling by ``alpha``:
    :math:`\\alpha^2\\lVert w_j\\rVert^2 - a_j^2/\\alpha^2`."""
    return float(alpha**2 * np.sum(np.asarray(w_j, dtype=np.float64) ** 2) - a_j**2 / alpha**2)


def permute(w: Any, a: Any, perm: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Neurons reordered (neuron ``k`` of the result is neuron ``perm[k]``); f unchanged."""
    idx = list(perm)
    return np.asarray(w, dtype=np.float64)[idx], np.asarray(a, dtype=np.float64)[idx]


def _f(w: Any, a: Any, x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ np.asarray(w, dtype=np.float64).T, 0.0) @ np.asarray(a, np.float64)


def _pattern(c: Sequence[float], a: Sequence[float]) -> str:
    """The component's label: the sign of a_j on locked neurons, '0' on free ones."""
    return "".join(("+" if aj > 0 else "-") if cj < 0 else "0" for cj, aj in zip(c, a, strict=True))


def find_moves(init: dict[str, list], teacher_signs: Sequence[float], x: Any) -> dict[str, Any]:
    """The function-preserving moves out of ``init``'s component, checked on inputs ``x``.

    Rescalings: for each locked neuron the threshold :math:`\\alpha^* = \\sqrt{|a_j|/
    \\lVert w_j\\rVert}` (c_j -> 0) and the move :math:`\\alpha = |a_j|/\\lVert w_j
    \\rVert` (c_j -> -c_j); the fewest such moves (cheapest first) that make the component
    reachable give the unlocked initialisation. Permutations: every swap of two neurons with
    equal c (so the invariant set maps to itself) whose locked signs differ, i.e. that maps
    the component to another one. Each move's max |Delta f| on ``x`` and its c against the
    formula."""
    x = np.asarray(x, dtype=np.float64)
    w, a = np.asarray(init["w"], dtype=np.float64), np.asarray(init["a"], dtype=np.float64)
    c0 = _c0(init)
    f0 = _f(w, a, x)
    rescales = []
    for j, cj in enumerate(c0):
        if cj >= 0:
            continue
        wn = float(np.linalg.norm(w[j]))
        alpha = abs(a[j]) / wn
        w2, a2 = rescale(w, a, j, alpha)
        c_after = _c0({"w": w2, "a": a2})
        rescales.append(
            {
                "neuron": j,
                "c": cj,
                "alpha_threshold": math.sqrt(alpha),
                "alpha": alpha,
                "c_predicted": rescaled_c(w[j], a[j], alpha),
                "c_after": c_after[j],
                "c_error": abs(c_after[j] - rescaled_c(w[j], a[j], alpha)),
                "others_unchanged": bool(
                    all(c_after[k] == c0[k] for k in range(len(c0)) if k != j)
                ),
                "max_df": float(np.max(np.abs(_f(w2, a2, x) - f0))),
            }
        )
    chosen: list[int] = []
    wu, au = w.copy(), a.copy()
    for r in sorted(rescales, key=lambda r: (r["alpha"], r["neuron"])):
        if reachable(_c0({"w": wu, "a": au}), au, teacher_signs):
            break
        wu, au = rescale(wu, au, r["neuron"], r["alpha"])
        chosen.append(r["neuron"])
    cu = _c0({"w": wu, "a": au})
    tol = 1e-12 * max(1.0, max(abs(c) for c in c0))
    swaps = []
    for i in range(len(c0)):
        for k in range(i + 1, len(c0)):
            if abs(c0[i] - c0[k]) > tol:
                continue
            perm = list(range(len(c0)))
            perm[i], perm[k] = k, i
            wp, ap = permute(w, a, perm)
            cp = _c0({"w": wp, "a": ap})
            if _pattern(cp, ap) == _pattern(c0, a):
                continue
            swaps.append(
                {
                    "swap": [i, k],
                    "to": _pattern(cp, ap),
                    "reachable_after": reachable(cp, ap, teacher_signs),
                    "max_df": float(np.max(np.abs(_f(wp, ap, x) - f0))),
                }
            )
    return {
        "pattern": _pattern(c0, a),
        "components": components(c0),
        "rescales": rescales,
        "unlocked_neurons": chosen,
        "unlocked": {"w": wu.tolist(), "a": au.tolist()},
        "unlocked_c": cu,
        "unlocked_pattern": _pattern(cu, au),
        "unlocked_reachable": reachable(cu, au, teacher_signs),
        "unlocked_max_df": float(np.max(np.abs(_f(wu, au, x) - f0))),
        "swaps": swaps,
    }


# -- data and training ----------------------------------------------------------------------


def make_data(cfg: ReluConservationConfig):
    import torch

    from basinscope.data import gaussian_inputs, teacher_data
    from basinscope.models import soft_committee

    gen = torch.Generator().manual_seed(cfg.teacher_seed)
    v = torch.randn(len(cfg.teacher_signs), cfg.in_features, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    teacher = soft_committee(v, cfg.teacher_signs).double()
    x = gaussian_inputs(cfg.examples, cfg.in_features, cfg.data_seed, dtype=torch.float64)
    signs = "".join("+" if s > 0 else "-" for s in cfg.teacher_signs)
    name = (
        f"gauss-n{cfg.examples}-d{cfg.in_features}-seed{cfg.data_seed}-committee{signs}"
        f"-seed{cfg.teacher_seed}"
    )
    return teacher_data(x, teacher, name), v.numpy()


def designed_inits(cfg: ReluConservationConfig) -> dict[str, dict[str, list]]:
    """The blocked and the reachable initialisation: the same input weights (random
    directions, norm ``w_norm``), output weights of size ``a_norm``; all positive (blocked
    for a teacher with a negative unit) or with the signs of the teacher (reachable)."""
    rng = np.random.default_rng(cfg.init_seed)
    w = rng.standard_normal((cfg.width, cfg.in_features))
    w = cfg.w_norm * w / np.linalg.norm(w, axis=1, keepdims=True)
    teacher = list(cfg.teacher_signs) + [1.0] * (cfg.width - len(cfg.teacher_signs))
    pos = [cfg.a_norm] * cfg.width
    good = [cfg.a_norm * (1.0 if s > 0 else -1.0) for s in teacher]
    blocked = pos if any(s < 0 for s in cfg.teacher_signs) else [-x for x in pos]
    return {
        "blocked": {"w": w.tolist(), "a": blocked},
        "reachable": {"w": w.tolist(), "a": good},
    }


def random_init(cfg: ReluConservationConfig, seed: int) -> dict[str, list]:
    rng = np.random.default_rng([cfg.init_seed, 1, seed])
    w = (
        rng.standard_normal((cfg.width, cfg.in_features))
        * cfg.random_w_scale
        / math.sqrt(cfg.in_features)
    )
    a = rng.standard_normal(cfg.width) * cfg.random_a_scale
    return {"w": w.tolist(), "a": a.tolist()}


def train_run(
    init: dict[str, list],
    data,
    cfg: ReluConservationConfig,
    *,
    lr: float,
    steps: int,
    batch_size: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the student from ``init`` (``w``: width x in, ``a``: width); loss and the
    conserved quantities at ``records`` evenly spaced steps, and the final weights."""
    import torch

    from basinscope.models import conserved_quantities, two_layer_relu

    dtype = getattr(torch, cfg.dtype)
    model = two_layer_relu(cfg.in_features, cfg.width)
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor(init["w"]))
        model.fc2.weight.copy_(torch.tensor(init["a"])[None])
    model = model.to(device=cfg.device, dtype=dtype)
    x = data.x.to(device=cfg.device, dtype=dtype)
    y = data.y.to(device=cfg.device, dtype=dtype)
    n = len(x)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(int(seed))
    record = set(np.linspace(0, steps, min(cfg.records, steps + 1)).round().astype(int).tolist())
    rec: dict[str, list] = {"steps": [], "loss": [], "c": [], "a": []}

    def loss_of(xb, yb):
        return 0.5 * ((model(xb) - yb) ** 2).mean()

    for step in range(steps + 1):
        if step in record:
            with torch.no_grad():
                rec["steps"].append(step)
                rec["loss"].append(float(loss_of(x, y)))
                rec["c"].append(conserved_quantities(model, dtype=torch.float64).tolist())
                rec["a"].append(model.fc2.weight.detach()[0].double().cpu().tolist())
        if step == steps:
            break
        if batch_size and batch_size < n:
            idx = torch.randint(n, (batch_size,), generator=gen).to(cfg.device)
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        grads = torch.autograd.grad(loss_of(xb, yb), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)
    if not all(math.isfinite(v) for v in rec["loss"]):
        raise BasinscopeError(f"training diverged at lr {lr:g}: lower it")
    c = np.asarray(rec["c"])
    return {
        **rec,
        "drift": float(np.max(np.abs(c - c[0]))),
        "final_w": model.fc1.weight.detach().double().cpu().numpy().tolist(),
        "final_a": model.fc2.weight.detach()[0].double().cpu().numpy().tolist(),
        "lr": lr,
        "batch_size": batch_size,
    }


def _c0(init: dict[str, list]) -> list[float]:
    w, a = np.asarray(init["w"]), np.asarray(init["a"])
    return ((w**2).sum(1) - a**2).tolist()


def _judge(init, value, y, cfg) -> dict[str, Any]:
    c0 = _c0(init)
    final = value["loss"][-1]
    return {
        "c0": c0,
        "a0": list(init["a"]),
        "components": components(c0),
        "reachable": reachable(c0, init["a"], cfg.teacher_signs),
        "sign_bound": sign_lower_bound(c0, init["a"], y),
        "final_loss": final,
        "reached": bool(final < cfg.optimum_tol),
        "a_signs_kept": [
            bool(np.sign(af) == np.sign(a0))
            for af, a0, c in zip(value["final_a"], init["a"], c0, strict=True)
            if c < 0
        ],
        "drift": value["drift"],
    }


# -- the study ------------------------------------------------------------------------------


def run(cfg: ReluConservationConfig, ctx: StudyContext) -> dict[str, Any]:
    root = ctx.stages_root
    data, teacher_v = make_data(cfg)
    y = data.y.numpy()
    base = {"data": data.name, "width": cfg.width, "records": cfg.records, **placement(cfg)}
    designed = designed_inits(cfg)
    x64 = data.x.numpy().astype(np.float64)
    moves = {k: find_moves(v, cfg.teacher_signs, x64) for k, v in designed.items()}
    jobs: list[tuple[str, dict, dict]] = []  # (group, init, train kwargs)
    for label, init in designed.items():
        jobs.append((f"curve-{label}", init, {"lr": cfg.lr, "steps": cfg.steps}))
    jobs.append(
        ("curve-unlocked", moves["blocked"]["unlocked"], {"lr": cfg.lr, "steps": cfg.steps})
    )
    for lr in cfg.drift_lrs:
        steps = round(cfg.drift_time / lr)
        jobs.append((f"drift-gd-lr{lr:g}", designed["reachable"], {"lr": lr, "steps": steps}))
    jobs.append(
        (
            f"drift-sgd-lr{cfg.sgd_lr:g}",
            designed["reachable"],
            {
                "lr": cfg.sgd_lr,
                "steps": cfg.sgd_steps,
                "batch_size": cfg.sgd_batch_size,
                "seed": cfg.sgd_seed,
            },
        )
    )
    for k in range(cfg.random_inits):
        jobs.append((f"random-{k}", random_init(cfg, k), {"lr": cfg.lr, "steps": cfg.steps}))
    calls = []
    for label, init, kw in jobs:
        settings = {**base, "init": init, **kw}
        name = f"relu-{label}"

        def call(lg, settings=settings, name=name, init=init, kw=kw):
            return cached_stage(
                root, name, settings, lambda d: train_run(init, data, cfg, **kw), log=lg
            )

        calls.append(StageCall(stage_dir(root, name, settings), call))
    done = ctx.run_stages(
        calls,
        what=f"{len(jobs)} runs: 2 designed initialisations and the blocked one unlocked, {len(cfg.drift_lrs)} GD step "
        f"sizes and SGD at lr {cfg.sgd_lr:g} for the drift, {cfg.random_inits} random "
        "initialisations",
    )
    runs = {}
    for (label, init, kw), (value, folder) in zip(jobs, done, strict=True):
        runs[label] = {"init": init, "settings": kw, "stage": folder.name, **value}
        runs[label]["judged"] = _judge(init, value, y, cfg)
    drift = [
        {
            "optimizer": "GD",
            "lr": lr,
            "steps": round(cfg.drift_time / lr),
            "drift": runs[f"drift-gd-lr{lr:g}"]["drift"],
        }
        for lr in cfg.drift_lrs
    ]
    sgd = runs[f"drift-sgd-lr{cfg.sgd_lr:g}"]
    drift.append(
        {
            "optimizer": f"SGD (batch {cfg.sgd_batch_size})",
            "lr": cfg.sgd_lr,
            "steps": cfg.sgd_steps,
            "drift": sgd["drift"],
        }
    )
    gd = sorted(drift[:-1], key=lambda r: r["lr"])
    order = None
    if len(gd) >= 2 and all(r["drift"] > 0 for r in gd):
        order = float(
            np.polyfit(np.log([r["lr"] for r in gd]), np.log([r["drift"] for r in gd]), 1)[0]
        )
    randoms = [runs[f"random-{k}"]["judged"] | {"seed": k} for k in range(cfg.random_inits)]
    c_scale = float(np.mean(np.abs(runs["drift-gd-lr" + f"{cfg.drift_lrs[0]:g}"]["c"][0])))
    results = {
        "setup": {
            "student": f"sum_j a_j relu(w_j . x), {cfg.width} neurons, input dimension "
            f"{cfg.in_features}, no biases",
            "teacher": {"directions": teacher_v.tolist(), "signs": list(cfg.teacher_signs)},
            "data": data.name,
        },
        "definitions": DEFINITIONS,
        "policies": _policies(cfg),
        "designed": {k: runs[f"curve-{k}"] | {"label": k} for k in designed},
        "drift": {"rows": drift, "order": order, "c_scale": c_scale},
        "drift_curves": {
            k: {"steps": v["steps"], "c": v["c"], "lr": v["lr"]}
            for k, v in runs.items()
            if k.startswith("drift-")
        },
        "random": randoms,
        "moves": moves
        | {
            "unlocked_run": runs["curve-unlocked"] | {"label": "unlocked", "moved_from": "blocked"},
        },
    }
    results["conclusions"] = conclusions(results, cfg)
    return results


def conclusions(res: dict[str, Any], cfg: ReluConservationConfig) -> list[str]:
    """The study's conclusions, computed from the numbers."""
    out = []
    rows, order = res["drift"]["rows"], res["drift"]["order"]
    gd = [r for r in rows if r["optimizer"] == "GD"]
    text = (
        f"Over the time horizon {cfg.drift_time:g}, gradient descent moves the conserved "
        "quantities by at most " + ", ".join(f"{r['drift']:.2e} (lr {r['lr']:g})" for r in gd)
    )
    if order is not None:
        text += (
            f": drift ~ lr^{order:.2f}; theory (per-step change eta^2 (||g_w||^2 - g_a^2), "
            "summed over T/eta steps) predicts order 1"
            + (", as measured" if abs(order - 1) <= 0.25 else " -- they disagree")
        )
    out.append(text + ".")
    sgd = rows[-1]
    out.append(
        f"SGD with the large learning rate {sgd['lr']:g} (batch {cfg.sgd_batch_size}, "
        f"{sgd['steps']} steps) moves them by {sgd['drift']:.3g}, "
        f"{sgd['drift'] / res['drift']['c_scale']:.1%} of the mean |c_j(0)| "
        f"({res['drift']['c_scale']:.3g}): conservation is a property of the flow, not of "
        "large discrete steps."
    )
    b, r = res["designed"]["blocked"]["judged"], res["designed"]["reachable"]["judged"]
    out.append(
        f"The designed initialisations share their input weights (c_j = "
        f"{', '.join(f'{c:.3g}' for c in b['c0'])}, so {b['components']} components). With the "
        f"output signs {['+' if a > 0 else '-' for a in b['a0']]} the rule says the optimum is "
        + ("reachable" if b["reachable"] else "unreachable")
        + f"; gradient descent ends at loss {b['final_loss']:.3g}"
        + (
            f" (the sign bound is {b['sign_bound']:.3g}: "
            + ("respected" if b["final_loss"] >= b["sign_bound"] * (1 - 1e-6) else "VIOLATED")
            + ")"
            if b["sign_bound"] is not None
            else ""
        )
        + f". With the signs {['+' if a > 0 else '-' for a in r['a0']]} it is "
        + ("reachable" if r["reachable"] else "unreachable")
        + f" and gradient descent ends at {r['final_loss']:.3g}"
        + (" (a global optimum)." if r["reached"] else " (above optimum_tol).")
    )
    out.append(_moves_conclusion(res, cfg))
    rnd = res["random"]
    if rnd:
        unr = [x for x in rnd if not x["reachable"]]
        rea = [x for x in rnd if x["reachable"]]
        kept = all(all(x["a_signs_kept"]) for x in rnd)
        text = (
            f"Of {len(rnd)} random initialisations the rule calls {len(unr)} unreachable; "
            f"{sum(not x['reached'] for x in unr)} of them end above optimum_tol "
            f"({cfg.optimum_tol:g}), as the rule requires"
        )
        if rea:
            text += (
                f"; of the {len(rea)} reachable ones, {sum(x['reached'] for x in rea)} reach a "
                "global optimum (reachable is necessary, not sufficient: gradient descent can "
                "still stop elsewhere)"
            )
        text += (
            "; every locked neuron kept the sign of its output weight"
            if kept
            else "; a locked neuron CHANGED the sign of its output weight, against the theory"
        )
        out.append(text + ".")
    return out


def _moves_conclusion(res: dict[str, Any], cfg: ReluConservationConfig) -> str:
    mv, blocked = res["moves"], res["designed"]["blocked"]["judged"]
    b, u = mv["blocked"], mv["unlocked_run"]["judged"]
    if not b["rescales"]:
        return "The blocked initialisation has no locked neuron, so no rescaling move is needed."
    dfs = [r["max_df"] for r in b["rescales"]] + [b["unlocked_max_df"]]
    dfs += [s["max_df"] for k in ("blocked", "reachable") for s in mv[k]["swaps"]]
    cerr = max(r["c_error"] for r in b["rescales"])
    run = mv["unlocked_run"]
    flips = [
        f"neuron {j}: {run['init']['a'][j]:.3g} -> {run['final_a'][j]:.3g}"
        for j in b["unlocked_neurons"]
        if np.sign(run["final_a"][j]) != np.sign(run["init"]["a"][j])
    ]
    text = (
        "Moves out of the blocked component (pattern "
        f"{b['pattern']}): rescaling locked neuron j by alpha >= sqrt(|a_j|/||w_j||) unlocks "
        "it; the moves alpha = |a_j|/||w_j|| = "
        + ", ".join(f"{r['alpha']:.3g} (neuron {r['neuron']})" for r in b["rescales"])
        + " each take c_j to -c_j, change f on the data by at most "
        f"{max(dfs):.2e} and set c_j to the formula alpha^2||w_j||^2 - a_j^2/alpha^2 within "
        f"{cerr:.1e}. The fewest that make the component reachable, neuron(s) "
        f"{b['unlocked_neurons']}, give the pattern {b['unlocked_pattern']} ("
        + ("reachable" if b["unlocked_reachable"] else "still unreachable")
        + f" by the rule); gradient descent from it ends at loss {u['final_loss']:.3g} against "
        f"{blocked['final_loss']:.3g} from the blocked start"
        + (
            " (a global optimum: the move removed the obstruction"
            if u["reached"]
            else f" (above optimum_tol {cfg.optimum_tol:g}"
        )
        + (
            "; the unlocked output weight changed sign, " + ", ".join(flips) + ")"
            if flips
            else "; no unlocked output weight changed sign)"
        )
        + ". Permutations: "
    )
    if b["swaps"]:
        text += f"{len(b['swaps'])} swaps map the blocked component to another one"
    else:
        text += (
            f"none maps the blocked component elsewhere (its pattern {b['pattern']} is "
            "symmetric under every swap of neurons with equal c)"
        )
    r = mv["reachable"]
    if r["swaps"]:
        text += "; from the reachable one, " + ", ".join(
            f"swapping {s['swap'][0]} and {s['swap'][1]} maps {r['pattern']} to {s['to']}"
            for s in r["swaps"]
        )
    return text + "."


def _policies(cfg: ReluConservationConfig) -> dict[str, str]:
    return {
        "data": f"{cfg.examples} standard Gaussian inputs of dimension {cfg.in_features} (seed "
        f"{cfg.data_seed}); targets of a soft-committee teacher with unit directions (seed "
        f"{cfg.teacher_seed}) and output signs {list(cfg.teacher_signs)}",
        "training": f"full-batch gradient descent on (1/2N) sum (f - y)^2 at lr {cfg.lr:g} for "
        f"{cfg.steps} steps (loss curves, random inits); drift runs at lr "
        f"{list(cfg.drift_lrs)} for {cfg.drift_time:g} / lr steps each; SGD at lr "
        f"{cfg.sgd_lr:g}, batches of {cfg.sgd_batch_size} drawn with replacement (seed "
        f"{cfg.sgd_seed}), {cfg.sgd_steps} steps",
        "inits": f"designed: ||w_j|| = {cfg.w_norm:g} (directions seed {cfg.init_seed}), |a_j| "
        f"= {cfg.a_norm:g}; random: w entries N(0, {cfg.random_w_scale:g}^2 / "
        f"{cfg.in_features}), a ~ N(0, {cfg.random_a_scale:g}^2)",
        "precision": f"training in {cfg.dtype} on {cfg.device}; conserved quantities in float64",
    }


def _report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.relu_conservation_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name=NAME,
        summary="Shallow ReLU networks with a scalar output: per-neuron conserved quantities "
        "under GD and SGD, the components of the invariant set, and an initialisation that "
        "cannot reach the global optimum, and the rescaling and permutation moves between components",
        config=ReluConservationConfig,
        run=run,
        report=_report,
        quick=QUICK,
        smoke=SMOKE,
    )
)
