"""The teacher-student study: the minima of two-layer ReLU students of a soft-committee
teacher, described by their order parameters (shared/talks/003, Huang, Loureiro & Sarao
Mannelli, "Sharp description of local minima in the loss landscape of high-dimensional
two-layer ReLU neural networks").

Teacher and student are soft committees :math:`f(x) = \\sum_k \\mathrm{relu}(w_k\\cdot x)`
(second layer fixed to ones, as in the talk: no rescaling symmetry), inputs
:math:`x \\sim \\mathcal N(0, I_d/d)`, teacher units orthogonal with
:math:`\\lVert v_m\\rVert^2 = d` (so :math:`T = VV^\\top/d = I` and every pre-activation is of
order one). Students of width :math:`K = M, M+1, \\dots` are trained from many seeds on the
realisable data (mean squared error; Adam, then L-BFGS to a gradient norm near machine
precision, all in float64), and each minimum is summarised by its order parameters
:math:`R = WV^\\top/d`, :math:`Q = WW^\\top/d` in the aligned (permutation-invariant) order of
:func:`basinscope.analyses.order_parameters`.

Theory. At :math:`K = M` the global minimum (the teacher, up to relabelling) is isolated:
on data the loss is :math:`\\frac1N\\sum_n (f - y)^2`, its Hessian at a zero-loss point is the
Gauss-Newton matrix :math:`\\frac2N\\sum_n J_nJ_n^\\top` with :math:`J_{n,k} =
\\mathbb 1[w_k\\cdot x_n > 0]\\,x_n`, of full rank when the :math:`w_k` point in distinct
directions. At :math:`K > M` a teacher unit can be shared by parallel student units,
:math:`w = \\alpha v, w' = (1-\\alpha) v`: every :math:`\\alpha \\in [0, 1]` fits the teacher
exactly, so the minima form connected sets, and since parallel units have equal
:math:`J`, the Hessian there has :math:`d` zero modes per extra unit:
:math:`d\\,(K - M)` at a zero-loss minimum whose units are all parallel to teacher units
(a unit at zero counts the same way). So the order parameters of the minima reached should
collapse to one point at :math:`K = M` (spurious isolated minima appear only at larger
:math:`M`, Safran & Shamir 2018) and spread over a continuum at :math:`K > M`; the loss
barrier between minima of one width should vanish at :math:`K > M` (connected at zero
loss) and be positive between distinct isolated minima.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from basinscope._checks import at_least, check_seed, positive_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, Study, StudyContext, register
from basinscope.experiments.stages import DEFAULT_DEVICE, cached_stage, placement, stage_dir

__all__ = [
    "DEFINITIONS",
    "STUDY",
    "TeacherStudentConfig",
    "cluster_minima",
    "hessian_modes",
    "run",
    "student_model",
]

NAME = "teacher-student"


@dataclass(frozen=True)
class TeacherStudentConfig:
    """Settings of the teacher-student study."""

    in_features: int = 8  # input dimension d
    teacher_units: int = 4  # M: orthogonal teacher units, ||v_m||^2 = d
    widths: tuple[int, ...] = (4, 5, 6, 7)  # student widths K (each >= M)
    seeds: int = 16  # students trained per width
    examples: int = 2000  # training inputs x ~ N(0, I/d)
    data_seed: int = 0
    teacher_seed: int = 0  # the teacher's orthonormal directions
    init_scale: float = 1.0  # student weights N(0, init_scale^2): ||w_k||^2 ~ d
    lr: float = 0.02  # Adam's learning rate (full batch)
    steps: int = 1500  # Adam steps, then L-BFGS
    lbfgs_iters: int = 500  # L-BFGS iterations after Adam (0: none)
    grad_tol: float = 1e-6  # a run has converged when its gradient norm is below
    cluster_threshold: float = 0.05  # two minima are one when no aligned R, Q differ by more
    hessian_rel_tol: float = 1e-2  # |eigenvalue| < tol x lambda_max counts as zero
    pairs: int = 3  # barrier and Bezier-curve pairs per width
    curve_steps: int = 300  # Bezier training steps (0: the straight line only)
    curve_lr: float = 0.01  # Adam's learning rate of the curve's control point
    curve_points: int = 21  # values of t evaluated on the curve and the line
    # where everything computes (cpu, cuda, cuda:N, mps)
    device: str = DEFAULT_DEVICE
    # precision of training, Hessians, barriers and curves (these nets are tiny)
    dtype: str = "float64"
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        at_least("in_features", self.in_features, 2, high=4096)
        at_least("teacher_units", self.teacher_units, 1, high=self.in_features)
        if not self.widths:
            raise BasinscopeError("widths needs at least one student width, e.g. [4, 5, 6]")
        for k in self.widths:
            at_least("widths", k, self.teacher_units, high=1024)
        if len(set(self.widths)) != len(self.widths):
            raise BasinscopeError(f"widths must be distinct, got {list(self.widths)}")
        at_least("seeds", self.seeds, 1, high=10_000)
        at_least("examples", self.examples, 2, high=10_000_000)
        at_least("steps", self.steps, 0, high=1_000_000)
        at_least("lbfgs_iters", self.lbfgs_iters, 0, high=100_000)
        at_least("pairs", self.pairs, 0, high=1000)
        at_least("curve_steps", self.curve_steps, 0, high=1_000_000)
        at_least("curve_points", self.curve_points, 3, high=10_000)
        for key in ("init_scale", "lr", "grad_tol", "cluster_threshold", "curve_lr"):
            positive_float(key, getattr(self, key))
        positive_float("hessian_rel_tol", self.hessian_rel_tol)
        for key in ("data_seed", "teacher_seed"):
            check_seed(key, getattr(self, key))
        if self.dtype not in ("float32", "float64"):
            raise BasinscopeError(f"dtype must be float32 or float64, got {self.dtype!r}")


QUICK: dict[str, Any] = dict(widths=(4, 5, 6), seeds=6, examples=1000, steps=800)
QUICK.update(pairs=2, curve_steps=150)
SMOKE: dict[str, Any] = dict(in_features=4, teacher_units=2, widths=(2, 3), seeds=2)
SMOKE.update(examples=100, steps=30, lbfgs_iters=10, pairs=1, curve_steps=5, curve_points=5)
SMOKE.update(figure_formats=("png",))

DEFINITIONS = {
    "loss": "(1/N) sum_n (f(x_n) - y_n)^2 over the N training examples (the task's mse)",
    "order_parameters": "R = W V^T / d, Q = W W^T / d in the aligned order of "
    "basinscope.analyses.order_parameters (student units matched to teacher units by the "
    "largest total overlap, the rest by their best teacher unit)",
    "distinct": "hierarchical clustering (scipy, complete linkage) of the aligned (R, Q) "
    "vectors with the Chebyshev distance, cut at cluster_threshold: two minima are one when "
    "no order parameter differs by more than the threshold",
    "sharing": "per teacher unit, how many student units have R_km > 0.05 T_mm (sorted): the "
    "discrete type of a minimum",
    "barrier": "linear (Entezari et al. 2022): max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha "
    "L(1))] of the loss on the straight line between the permutation-aligned minima",
    "curve": "quadratic Bezier curve (Garipov et al. 2018) between the aligned minima, its "
    "control point trained with Adam on E_t L(phi(t)); reported: max_t L(phi(t))",
    "zero_modes": "Hessian eigenvalues (dense, float64) with |lambda| <= hessian_rel_tol x "
    "lambda_max",
    "negative_modes": "Hessian eigenvalues below -hessian_rel_tol x lambda_max",
    "predicted_zero_modes": "d (K - M) at a zero-loss minimum (parallel units share J)",
    "merge_path": "A -> merged(A) -> merged(B) -> B in straight segments, merged(.) folding "
    "every unmatched unit into the matched unit of its best teacher unit (w_k += w_j, w_j = 0)",
}


# -- pieces ---------------------------------------------------------------------------------


def student_model(in_features: int, width: int, w: Any = None):
    """``x -> sum_k relu(w_k . x)``: a :func:`~basinscope.models.two_layer_relu` whose
    second layer is a buffer of ones (not trained), first-layer rows ``w`` when given."""
    import torch

    from basinscope.models import two_layer_relu

    model = two_layer_relu(in_features, width)
    ones = torch.ones_like(model.fc2.weight.detach())
    del model.fc2.weight
    model.fc2.register_buffer("weight", ones)
    if w is not None:
        with torch.no_grad():
            model.fc1.weight.copy_(torch.as_tensor(np.asarray(w), dtype=torch.float32))
    return model


def make_teacher_and_data(cfg: TeacherStudentConfig):
    import torch

    from basinscope.data import gaussian_inputs, teacher_data
    from basinscope.models import soft_committee

    d = cfg.in_features
    gen = torch.Generator().manual_seed(cfg.teacher_seed)
    q, _ = torch.linalg.qr(torch.randn(d, cfg.teacher_units, generator=gen, dtype=torch.float64))
    v = q.T * math.sqrt(d)
    teacher = soft_committee(v).double()
    x = gaussian_inputs(cfg.examples, d, cfg.data_seed, dtype=torch.float64) / math.sqrt(d)
    name = (
        f"gauss-n{cfg.examples}-d{d}-seed{cfg.data_seed}-over-sqrt-d-committee"
        f"{cfg.teacher_units}-orth-seed{cfg.teacher_seed}"
    )
    return teacher, teacher_data(x, teacher, name)


def _loss_fn(x, y):
    def loss(w):
        import torch

        return ((torch.relu(x @ w.T).sum(1, keepdim=True) - y) ** 2).mean()

    return loss


def train_student(cfg: TeacherStudentConfig, data, width: int, seed: int) -> dict[str, Any]:
    """Adam (full batch) for ``steps``, then L-BFGS; the final weights, loss, gradient norm
    and the loss at a few steps."""
    import torch

    dtype = getattr(torch, cfg.dtype)
    x = data.x.to(cfg.device, dtype)
    y = data.y.to(cfg.device, dtype)
    gen = torch.Generator().manual_seed(int(seed))
    w0 = torch.randn(width, cfg.in_features, generator=gen, dtype=torch.float64)
    w = (cfg.init_scale * w0).to(cfg.device, dtype).requires_grad_()
    loss = _loss_fn(x, y)
    curve = []
    record = set(np.linspace(0, cfg.steps, min(cfg.steps + 1, 30)).round().astype(int).tolist())
    opt = torch.optim.Adam([w], lr=cfg.lr)
    for step in range(cfg.steps + 1):
        value = loss(w)
        if step in record:
            curve.append([step, float(value.detach())])
        if step == cfg.steps:
            break
        opt.zero_grad()
        value.backward()
        opt.step()
    if cfg.lbfgs_iters:
        lb = torch.optim.LBFGS(
            [w],
            lr=1.0,
            max_iter=cfg.lbfgs_iters,
            tolerance_grad=1e-14,
            tolerance_change=1e-18,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure():
            lb.zero_grad()
            v = loss(w)
            v.backward()
            return v

        lb.step(closure)
    final = loss(w)
    (g,) = torch.autograd.grad(final, w)
    if not math.isfinite(float(final.detach())):
        raise BasinscopeError(f"training diverged (width {width}, seed {seed}): lower lr")
    curve.append([cfg.steps + cfg.lbfgs_iters, float(final.detach())])
    return {
        "width": width,
        "seed": seed,
        "w": w.detach().double().cpu().numpy().tolist(),
        "loss": float(final.detach()),
        "grad_norm": float(g.norm()),
        "curve": curve,
    }


def hessian_modes(w: Any, x: Any, y: Any, rel_tol: float) -> dict[str, Any]:
    """The dense float64 Hessian of the loss in the first-layer weights ``w`` at ``w``: its
    eigenvalues (ascending), lambda_max, the tolerance and the zero and negative counts."""
    import torch

    w = torch.as_tensor(np.asarray(w), dtype=torch.float64)
    loss = _loss_fn(
        torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    )
    shape = w.shape
    h = torch.autograd.functional.hessian(lambda p: loss(p.view(shape)), w.reshape(-1))
    ev = np.linalg.eigvalsh(h.numpy())
    top = float(max(ev.max(), 0.0))
    tol = rel_tol * top
    positive = ev[ev > tol]
    return {
        "eigenvalues": ev.tolist(),
        "lambda_max": top,
        "tol": tol,
        "zero": int(np.sum(np.abs(ev) <= tol)),
        "negative": int(np.sum(ev < -tol)),
        "smallest_positive_rel": float(positive.min() / top) if len(positive) and top else None,
        "largest_zero_rel": float(np.abs(ev[np.abs(ev) <= tol]).max() / top)
        if np.any(np.abs(ev) <= tol) and top
        else None,
    }


def cluster_minima(vectors: Any, threshold: float) -> list[int]:
    """Cluster labels (0, 1, ... in order of first appearance) of the order-parameter
    vectors: complete linkage, Chebyshev distance, cut at ``threshold``."""
    v = np.asarray(vectors, dtype=np.float64)
    if len(v) == 1:
        return [0]
    from scipy.cluster.hierarchy import fcluster, linkage

    raw = fcluster(linkage(v, method="complete", metric="chebyshev"), threshold, "distance")
    first: dict[int, int] = {}
    return [first.setdefault(int(c), len(first)) for c in raw]


def sharing(aligned_R: Any, T: Any) -> tuple[int, ...]:
    """Per teacher unit, how many student units overlap it (R_km > 0.05 T_mm), sorted."""
    R, T = np.asarray(aligned_R), np.asarray(T)
    counts = [(R[:, m] > 0.05 * T[m, m]).sum() for m in range(R.shape[1])]
    return tuple(sorted(int(c) for c in counts))


def merged(w_aligned: Any, aligned_R: Any, matched: Any) -> np.ndarray:
    """The minimum with every unmatched unit folded into the matched unit of its best
    teacher unit (``w_k += w_j``, ``w_j = 0``): the same function when the folded units are
    parallel (relu is positively homogeneous), reached along a straight zero-loss segment."""
    w, R = np.array(w_aligned, dtype=np.float64), np.asarray(aligned_R)
    where = {int(m): i for i, m in enumerate(matched) if m >= 0}
    for j, m in enumerate(matched):
        if m < 0 and int(np.argmax(R[j])) in where:
            w[where[int(np.argmax(R[j]))]] += w[j]
            w[j] = 0.0
    return w


def merge_path(wa: Any, ra: Any, ma: Any, wb: Any, rb: Any, mb: Any, x, y, points: int = 11):
    """The loss along A -> merged(A) -> merged(B) -> B (three straight segments,
    ``points`` values each): a path the theory says stays at zero loss when K > M."""
    import torch

    loss = _loss_fn(
        torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    )
    nodes = [np.asarray(wa), merged(wa, ra, ma), merged(wb, rb, mb), np.asarray(wb)]
    ts = np.linspace(0.0, 1.0, points)
    out = []
    for a, b in itertools.pairwise(nodes):
        for t in ts:
            out.append(float(loss(torch.as_tensor((1 - t) * a + t * b))))
    return out


def _aligned(run: dict, teacher) -> tuple[Any, Any]:
    from basinscope.analyses.order_parameters import order_parameters

    op = order_parameters(np.asarray(run["w"]), teacher)
    return op, np.asarray(run["w"])[list(op.permutation)]


def analyse_width(cfg, data, teacher, runs: list[dict], width: int) -> dict[str, Any]:
    """Order parameters, clusters, Hessian modes of every run of one width; barriers and
    Bezier curves between aligned minima of distinct clusters (or of one cluster)."""
    import torch

    from basinscope.analyses.barrier import barrier
    from basinscope.analyses.curves import evaluate_curve, train_curve
    from basinscope.engine import Task

    task = Task(loss="mse")
    x, y = data.x.double().numpy(), data.y.double().numpy()
    minima = []
    for r in runs:
        op, w_al = _aligned(r, teacher)
        modes = hessian_modes(r["w"], x, y, cfg.hessian_rel_tol)
        del modes["eigenvalues"][: max(0, len(modes["eigenvalues"]) - 200)]  # keep bounded
        minima.append(
            {
                "seed": r["seed"],
                "loss": r["loss"],
                "grad_norm": r["grad_norm"],
                "converged": bool(r["grad_norm"] < cfg.grad_tol),
                "aligned_R": op.aligned_R.tolist(),
                "aligned_Q": op.aligned_Q.tolist(),
                "matched": list(op.matched),
                "vector": op.vector().tolist(),
                "sharing": list(sharing(op.aligned_R, op.T)),
                "w_aligned": w_al.tolist(),
                "hessian": modes,
                "predicted_zero_modes": cfg.in_features * (width - cfg.teacher_units),
            }
        )
    labels = cluster_minima([m["vector"] for m in minima], cfg.cluster_threshold)
    for m, c in zip(minima, labels, strict=True):
        m["cluster"] = c
    reps: dict[int, int] = {}
    for i, m in enumerate(minima):
        if m["cluster"] not in reps or m["loss"] < minima[reps[m["cluster"]]]["loss"]:
            reps[m["cluster"]] = i
    if len(reps) >= 2:
        ids = sorted(reps.values(), key=lambda i: minima[i]["cluster"])
        cand = [(a, b) for j, a in enumerate(ids) for b in ids[j + 1 :]]
    else:
        cand = [(0, i) for i in range(1, len(minima))]
    pairs = []
    dt = cfg.dtype
    for a, b in cand[: cfg.pairs]:
        ma = student_model(cfg.in_features, width, minima[a]["w_aligned"])
        mb = student_model(cfg.in_features, width, minima[b]["w_aligned"])
        ma, mb = ma.to(getattr(torch, dt)), mb.to(getattr(torch, dt))
        with torch.no_grad():  # the float32 copy in student_model rounded the weights
            ma.fc1.weight.copy_(torch.tensor(minima[a]["w_aligned"]))
            mb.fc1.weight.copy_(torch.tensor(minima[b]["w_aligned"]))
        br = barrier(
            ma,
            mb,
            data,
            definition="linear",
            metric="loss",
            num_points=25,
            dtype=dt,
            task=task,
            device=cfg.device,
            labels=(f"seed{minima[a]['seed']}", f"seed{minima[b]['seed']}"),
        )
        row = {
            "seeds": [minima[a]["seed"], minima[b]["seed"]],
            "clusters": [minima[a]["cluster"], minima[b]["cluster"]],
            "distance": float(
                np.linalg.norm(np.subtract(minima[a]["w_aligned"], minima[b]["w_aligned"]))
            ),
            "barrier": br.value,
            "worst_alpha": br.worst_alpha,
            "line_alphas": np.asarray(br.alphas).tolist(),
            "line_loss": np.asarray(br.values).tolist(),
            "curve": None,
            "merge_path": merge_path(
                *(minima[i][k] for i in (a,) for k in ("w_aligned", "aligned_R", "matched")),
                *(minima[i][k] for i in (b,) for k in ("w_aligned", "aligned_R", "matched")),
                x,
                y,
            ),
            "same_sharing": [
                int(np.argmax(np.asarray(minima[i]["aligned_R"])[j]))
                for i in (a,)
                for j, m in enumerate(minima[i]["matched"])
                if m < 0
            ]
            == [
                int(np.argmax(np.asarray(minima[i]["aligned_R"])[j]))
                for i in (b,)
                for j, m in enumerate(minima[i]["matched"])
                if m < 0
            ],
        }
        row["merge_path_max"] = max(row["merge_path"])
        if cfg.curve_steps:
            tr = train_curve(
                ma,
                mb,
                data,
                kind="bezier",
                order=2,
                steps=cfg.curve_steps,
                batch_size=len(data),
                lr=cfg.curve_lr,
                optimizer="adam",
                momentum=0.0,
                task=task,
                device=cfg.device,
            )
            ev = evaluate_curve(
                ma,
                tr.curve,
                data,
                points=cfg.curve_points,
                metrics=("loss",),
                dtype=dt,
                include_line=True,
                task=task,
                device=cfg.device,
            )
            var = next(iter(ev.max_curve))
            row["curve"] = {
                "max_loss": float(ev.max_curve[var]),
                "max_line_loss": float(ev.max_line[var]),
                "t": ev.curve["t"].values.tolist(),
                "loss": ev.curve[var].values.tolist(),
                "length_ratio": float(ev.length_ratio),
            }
        pairs.append(row)
    for m in minima:
        del m["vector"]
    zero_fn = float(np.mean(y**2))  # the loss of the zero function, a scale for the rest
    return {"width": width, "minima": minima, "pairs": pairs, "loss_at_zero": zero_fn}


# -- the study ------------------------------------------------------------------------------


def run(cfg: TeacherStudentConfig, ctx: StudyContext) -> dict[str, Any]:
    root = ctx.stages_root
    teacher, data = make_teacher_and_data(cfg)
    train_keys = ("init_scale", "lr", "steps", "lbfgs_iters")
    base = {"data": data.name, **{k: getattr(cfg, k) for k in train_keys}, **placement(cfg)}
    jobs = [(k, s) for k in cfg.widths for s in range(cfg.seeds)]
    calls = []
    for k, s in jobs:
        settings = {**base, "width": k, "seed": s}
        name = f"ts-train-K{k}"

        def call(lg, settings=settings, name=name, k=k, s=s):
            return cached_stage(
                root, name, settings, lambda d: train_student(cfg, data, k, s), log=lg
            )

        calls.append(StageCall(stage_dir(root, name, settings), call))
    done = ctx.run_stages(
        calls, what=f"{len(jobs)} students: widths {list(cfg.widths)} x {cfg.seeds} seeds"
    )
    trained: dict[int, list[tuple[dict, Path]]] = {}
    for (k, _), (value, folder) in zip(jobs, done, strict=True):
        trained.setdefault(k, []).append((value, folder))
    an_keys = ("cluster_threshold", "hessian_rel_tol", "pairs", "curve_steps", "curve_lr")
    an_base = {**{k: getattr(cfg, k) for k in an_keys}, "curve_points": cfg.curve_points}
    calls = []
    for k in cfg.widths:
        settings = {**an_base, **placement(cfg), "runs": [f.name for _, f in trained[k]]}
        name = f"ts-minima-K{k}"
        runs = [v for v, _ in trained[k]]

        def call(lg, settings=settings, name=name, k=k, runs=runs):
            return cached_stage(
                root,
                name,
                settings,
                lambda d: analyse_width(cfg, data, teacher, runs, k),
                log=lg,
            )

        calls.append(StageCall(stage_dir(root, name, settings), call))
    analysed = ctx.run_stages(
        calls,
        what=f"order parameters, clusters, Hessians, barriers and curves at {len(cfg.widths)} "
        "widths",
    )
    widths = [value for value, _ in analysed]
    results = {
        "setup": {
            "teacher": f"soft committee of M = {cfg.teacher_units} orthogonal ReLU units, "
            f"||v_m||^2 = d = {cfg.in_features} (T = I)",
            "student": "sum_k relu(w_k . x), second layer fixed to ones",
            "data": data.name,
        },
        "definitions": DEFINITIONS,
        "policies": _policies(cfg),
        "widths": widths,
        "summary": [_summary_row(w, cfg) for w in widths],
    }
    results["conclusions"] = conclusions(results, cfg)
    return results


def _summary_row(w: dict, cfg: TeacherStudentConfig) -> dict[str, Any]:
    ms = w["minima"]
    zero = [m["hessian"]["zero"] for m in ms if m["converged"]]
    neg = [m["hessian"]["negative"] for m in ms if m["converged"]]
    pairs = w["pairs"]
    curves = [p["curve"]["max_loss"] for p in pairs if p["curve"] is not None]
    return {
        "width": w["width"],
        "runs": len(ms),
        "converged": sum(m["converged"] for m in ms),
        "zero_loss": sum(m["loss"] < 1e-8 for m in ms),
        "distinct": len({m["cluster"] for m in ms}),
        "types": len({tuple(m["sharing"]) for m in ms}),
        "max_loss": max(m["loss"] for m in ms),
        "zero_modes": sorted(set(zero)),
        "predicted_zero_modes": cfg.in_features * (w["width"] - cfg.teacher_units),
        "negative_modes": sorted(set(neg)),
        "max_barrier": max((p["barrier"] for p in pairs), default=None),
        "max_curve_loss": max(curves, default=None),
        "max_merge_path_loss": max((p["merge_path_max"] for p in pairs), default=None),
        "loss_at_zero": w["loss_at_zero"],
        "pairs": len(pairs),
    }


def conclusions(res: dict[str, Any], cfg: TeacherStudentConfig) -> list[str]:
    """The study's conclusions, computed from the numbers."""
    out = []
    rows = res["summary"]
    m = cfg.teacher_units
    for r in rows:
        k = r["width"]
        text = (
            f"K = {k}: {r['runs']} seeds reach {r['distinct']} distinct minima by their order "
            f"parameters (threshold {cfg.cluster_threshold:g}) of {r['types']} sharing types; "
            f"{r['zero_loss']} fit the teacher (loss < 1e-8), {r['converged']} converged "
            f"(gradient norm < {cfg.grad_tol:g})"
        )
        if r["zero_modes"]:
            agree = r["zero_modes"] == [r["predicted_zero_modes"]]
            text += (
                f". Hessian zero modes {r['zero_modes']} (theory d (K - M) = "
                f"{r['predicted_zero_modes']}: "
                + ("as predicted" if agree else "they DISAGREE")
                + f"), negative modes {r['negative_modes']}"
            )
        if r["max_barrier"] is not None:
            text += f"; the largest loss barrier between aligned minima is {r['max_barrier']:.2e}"
            text += f" ({r['max_barrier'] / r['loss_at_zero']:.1%} of the zero function's loss)"
            if r["max_curve_loss"] is not None:
                text += f", on the Bezier curve the loss stays below {r['max_curve_loss']:.2e}"
            text += f", on the path through the merged minima below {r['max_merge_path_loss']:.2e}"
        out.append(text + ".")
    well = next((r for r in rows if r["width"] == m), None)
    over = [r for r in rows if r["width"] > m]
    if well is not None:
        isolated = well["distinct"] == 1 and well["zero_modes"] == [0]
        out.append(
            f"Well specified (K = M = {m}): "
            + (
                "every seed reaches the same minimum, the teacher up to relabelling, with no "
                "zero mode: isolated, as the theory says."
                if isolated
                else f"{well['distinct']} distinct minima with zero modes {well['zero_modes']}"
                + (
                    " (spurious minima besides the teacher: the theory expects them isolated)."
                    if well["zero_modes"] == [0]
                    else ": the theory expects isolated minima (no zero mode) -- they disagree."
                )
            )
        )
    if over:
        spread = all(r["distinct"] > 1 for r in over if r["runs"] > 1)
        flat = all(r["zero_modes"] == [r["predicted_zero_modes"]] for r in over)
        path = [r["max_merge_path_loss"] for r in over if r["max_merge_path_loss"] is not None]
        line = [r["max_barrier"] / r["loss_at_zero"] for r in over if r["max_barrier"] is not None]
        connected = bool(path) and max(path) < 1e-6 * min(r["loss_at_zero"] for r in over)
        text = (
            f"Over-parameterised (K > {m}): the minima reached "
            + ("spread over many distinct order parameters" if spread else "do NOT spread")
            + ", and the Hessian has "
            + (
                "d (K - M) zero modes at each, as predicted"
                if flat
                else "NOT the predicted d (K - M) zero modes everywhere"
            )
        )
        if path:
            text += (
                ". They are "
                + (
                    f"connected at zero loss (max {max(path):.1e} on the path through the "
                    "merged minima), as the theory says"
                    if connected
                    else f"NOT connected at zero loss on the merge path (max {max(path):.2e}), "
                    "against the theory"
                )
                + f"; the straight line between them is not flat (barriers up to "
                f"{max(line):.1%} of the zero function's loss where different teacher units "
                "are shared), so the flat set is curved, not convex"
            )
        out.append(text + ".")
    zs = [x["hessian"]["largest_zero_rel"] for w in res["widths"] for x in w["minima"]]
    ps = [x["hessian"]["smallest_positive_rel"] for w in res["widths"] for x in w["minima"]]
    zs, ps = [z for z in zs if z is not None], [p for p in ps if p is not None]
    if ps:
        out.append(
            f"The zero-mode tolerance ({cfg.hessian_rel_tol:g} lambda_max) "
            + (
                f"sits in a gap of the spectrum: eigenvalues counted as zero are at most "
                f"{max(zs, default=0):.1e} lambda_max, the others at least {min(ps):.1e} "
                "lambda_max."
                if max(zs, default=0) < cfg.hessian_rel_tol / 2
                and min(ps) > 2 * cfg.hessian_rel_tol
                else f"is NOT in a clear gap (zero-counted up to {max(zs, default=0):.1e}, "
                f"others from {min(ps):.1e} lambda_max): the counts depend on it."
            )
        )
    worse = [
        r["width"]
        for r in rows
        if r["max_curve_loss"] is not None
        and r["max_barrier"] is not None
        and r["max_curve_loss"] > r["max_barrier"]
    ]
    if worse:
        out.append(
            f"At K = {', '.join(map(str, worse))} the trained Bezier curve ends higher than the straight line: its "
            "control point starts on a line that is already flat, and stochastic training over "
            "t only moves it off; the curve is a poor probe there."
        )
    if over:
        if not cfg.curve_steps:
            out.append("The Bezier curves were not trained (curve_steps = 0): straight line only.")
    return out


def _policies(cfg: TeacherStudentConfig) -> dict[str, str]:
    return {
        "data": f"{cfg.examples} inputs x ~ N(0, I/d), d = {cfg.in_features} (seed "
        f"{cfg.data_seed}); targets of the teacher, no noise",
        "training": f"full-batch Adam (lr {cfg.lr:g}) for {cfg.steps} steps, then L-BFGS "
        f"(strong Wolfe) for at most {cfg.lbfgs_iters} iterations; student weights "
        f"N(0, {cfg.init_scale:g}^2); {cfg.seeds} seeds per width",
        "clustering": f"{DEFINITIONS['distinct']} (threshold {cfg.cluster_threshold:g})",
        "hessian": f"{DEFINITIONS['zero_modes']} (hessian_rel_tol = {cfg.hessian_rel_tol:g}); "
        "computed at converged minima",
        "connectivity": f"{DEFINITIONS['barrier']}; 25 points refined around the worst; "
        + (
            f"{DEFINITIONS['curve']}, {cfg.curve_steps} full-batch steps at lr {cfg.curve_lr:g}"
            if cfg.curve_steps
            else "no Bezier curve (straight line only)"
        )
        + f"; at most {cfg.pairs} pairs per width, representatives of distinct clusters (or two "
        "seeds of the one cluster)",
        "precision": f"everything in {cfg.dtype} on {cfg.device}",
    }


def _report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.teacher_student_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name=NAME,
        summary="Two-layer ReLU students of a soft-committee teacher: minima counted by their "
        "order parameters against width, barriers and Bezier curves between them, and their "
        "Hessian's zero and negative modes",
        config=TeacherStudentConfig,
        run=run,
        report=_report,
        quick=QUICK,
        smoke=SMOKE,
    )
)
