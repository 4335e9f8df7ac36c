"""The ensembles-and-width study: power laws of the calibrated NLL in ensemble size and in
width, and the best split of a memory budget between them.

Lobacheva, Chirkova, Kodryan & Vetrov (2020), *On power laws in deep ensembles* (the Vetrov
talk): after temperature scaling, the test NLL of an ensemble of :math:`n` networks follows
:math:`\\mathrm{NLL}(n) = c + b\\,n^{-a}`, so does the NLL of one network in its width, and
calibration removes the non-monotonicity ("double descent") of the NLL in width. For a
memory budget the fitted laws predict the best split between width and ensemble size. On
built-in data (scikit-learn's 8x8 digits) this study

1. trains ``members`` ReLU MLPs (different initialization and data-order seeds) at each of
   several ``widths`` (a training stage each, stored by the hash of its settings),
2. computes each member's log-probabilities on a validation split (held out of the
   training digits) and on the test digits once, and builds from them ensembles of every
   size :math:`n = 1..N` from ``resamples`` subsets of the members: the NLL before and after
   temperature scaling (:func:`~basinscope.analyses.calibration.calibrate_log_probs`: the
   temperature of the averaged probabilities fitted on the validation split, every number
   reported on the test split), error, ECE, Brier score and the members' disagreement; the
   mean and the spread over the subsets,
3. fits :math:`\\mathrm{NLL}_w(n)` per width and :math:`\\mathrm{NLL}(w)` of single networks
   (:func:`~basinscope.analyses.scaling.fit_power_law`, bootstrap over the subsets), both
   calibrated and not, and splits memory budgets (:func:`~basinscope.analyses.scaling.memory_split`),
4. at one width, spends the budget of the independent ensembles on FGE and on SWA from the
   first member instead (:func:`~basinscope.analyses.ensembles.fge`,
   :func:`~basinscope.analyses.ensembles.swa`).

Settings are at the top; :mod:`basinscope.experiments.ensembles_and_width_report` draws the
report from the stored results.
"""

from __future__ import annotations

import itertools
import math
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
    StageLog,
    cached_stage,
    placement,
    stage_dir,
    train_stage,
)

__all__ = ["DEFINITIONS", "QUICK", "SMOKE", "STUDY", "EnsemblesConfig", "run", "subsets"]

NAME = "ensembles-and-width"
DIGITS_TRAIN = 1347  # examples in basinscope.data.load_digits("train")
STUDY_MAX_STEPS = 1_000_000  # far more than any study needs: a larger value is a typo


@dataclass(frozen=True)
class EnsemblesConfig:
    """Settings of the ensembles-and-width study (steps are SGD updates; a member is one MLP)."""

    widths: tuple[int, ...] = (4, 8, 16, 32, 64, 128)  # hidden units of every hidden layer
    depth: int = 1  # hidden layers of the MLP (64 pixels -> width x depth -> 10 classes)
    members: int = 8  # N: members trained at each width; ensembles of n = 1..N of them
    seed: int = 0  # member i has init_seed = data_seed = seed + i
    steps: int = 1000  # SGD updates of each member (also the budget unit of FGE and SWA)
    lr: float = 0.05  # peak learning rate of the members
    momentum: float = 0.9  # SGD momentum (members, FGE, SWA)
    weight_decay: float = 0.0  # L2 penalty (members, FGE, SWA)
    batch_size: int = 64  # minibatch size (members, FGE, SWA)
    schedule: str = "cosine"  # learning-rate schedule of the members (cosine: decay to 0)
    # held out of the 1,347 training digits (stratified, fixed) to fit the temperatures;
    # the members train on the rest, every number is reported on the 450 test digits
    val_examples: int = 300
    resamples: int = 20  # member subsets per ensemble size n (every subset when fewer exist)
    resample_seed: int = 0  # seed of the subsets and of the fits' bootstrap
    bins: int = 15  # bins of the ECE and the reliability diagrams
    binning: str = "equal_width"  # equal_width or equal_mass
    bootstrap: int = 200  # bootstrap resamples of each power-law fit (one subset per point)
    fit_loss: str = "soft_l1"  # robust loss of the fits (soft_l1, huber, cauchy, arctan, linear)
    level: float = 0.95  # level of the fits' bootstrap intervals and of the subsets' spread
    # memory budgets in parameters; empty: 8 geometric from the smallest network to N of the
    # largest
    budgets: tuple[int, ...] = ()
    # width of the FGE and SWA comparison and of the reliability diagrams (one of widths)
    compare_width: int = 16
    fge_cycles_per_member: int = 2  # FGE cycles per member's worth of updates (steps / cycle)
    fge_lr_max: float = 0.05  # FGE's cyclic learning rate: highest
    fge_lr_min: float = 0.0005  # ... and lowest, where the snapshots are taken
    swa_lr: float = 0.01  # SWA's constant learning rate (averaging from half its run on)
    swa_every: int = 16  # SWA averages every this many updates (16: about an epoch)
    threads: int = 1  # torch CPU threads during the run (restored after; tiny models: 1)
    device: str = DEFAULT_DEVICE  # where training and evaluation compute: cpu, cuda, cuda:N, mps
    dtype: str = DEFAULT_DTYPE  # precision of the evaluations (float32 or float64)
    figure_formats: tuple[str, ...] = ("png", "pdf")  # files of each report figure

    def check(self) -> None:
        from basinscope.analyses.calibration import BINNINGS
        from basinscope.analyses.scaling import LOSSES

        if len(set(self.widths)) < 3 or len(set(self.widths)) != len(self.widths):
            raise BasinscopeError(
                f"widths must be at least 3 distinct widths (a power law c + b w^-a has 3 "
                f"parameters), got {list(self.widths)}"
            )
        for w in self.widths:
            at_least("widths", w, 1, high=4096, high_why=" units per layer")
        if self.compare_width not in self.widths:
            raise BasinscopeError(
                f"compare_width {self.compare_width} is not among widths {list(self.widths)}; "
                "FGE and SWA start from a member of that width"
            )
        at_least("depth", self.depth, 1, high=8)
        at_least("members", self.members, 3, high=64, why=" (a power law in n needs n = 1, 2, 3)")
        at_least("steps", self.steps, 2, high=STUDY_MAX_STEPS)
        at_least("batch_size", self.batch_size, 1)
        at_least(
            "val_examples",
            self.val_examples,
            10,
            high=DIGITS_TRAIN - 100,
            high_why=" (the members train on the rest of the 1,347 training digits)",
        )
        at_least("resamples", self.resamples, 1, high=10_000)
        at_least("bins", self.bins, 1, high=1000)
        at_least("bootstrap", self.bootstrap, 0, high=100_000)
        at_least("fge_cycles_per_member", self.fge_cycles_per_member, 1, high=self.steps // 2)
        at_least("swa_every", self.swa_every, 1, high=STUDY_MAX_STEPS)
        at_least("threads", self.threads, 1, high=1024)
        for b in self.budgets:
            at_least("budgets", b, 1, high=None)
        for key in ("lr", "fge_lr_max", "fge_lr_min", "swa_lr"):
            positive_float(key, getattr(self, key))
        finite_float("momentum", self.momentum, low=0, high=1, high_open=True)
        finite_float("weight_decay", self.weight_decay, low=0)
        finite_float("level", self.level, low=0, high=1, low_open=True, high_open=True)
        if self.binning not in BINNINGS:
            raise BasinscopeError(
                f"binning must be one of {', '.join(BINNINGS)}, got {self.binning!r}"
            )
        if self.fit_loss not in LOSSES:
            raise BasinscopeError(
                f"fit_loss must be one of {', '.join(LOSSES)}, got {self.fit_loss!r}"
            )
        if self.schedule not in ("constant", "cosine", "linear"):
            raise BasinscopeError(
                f"schedule {self.schedule!r}: expected constant, cosine or linear (the schedules "
                "that need no other setting)"
            )
        for key in ("seed", "resample_seed"):
            check_seed(key, getattr(self, key))


# The reduced version (--quick): under a minute on two cores.
QUICK: dict[str, Any] = dict(widths=(4, 8, 16, 32), members=4, steps=300, resamples=6)
QUICK.update(bootstrap=50)
# The smoke version (tests, pipeline checks): every stage and figure, in seconds.
SMOKE: dict[str, Any] = dict(widths=(4, 8, 16), members=3, steps=40, resamples=3, bootstrap=5)
SMOKE.update(figure_formats=("png",), fge_cycles_per_member=1)

# Every number of an ensemble row of the results, with its definition.
DEFINITIONS = {
    "n": "ensemble size: members whose softmax outputs are averaged",
    "subsets": "member subsets of this size the statistics are over (every subset when at "
    "most `resamples` exist, else `resamples` distinct random ones)",
    "nll": "test NLL of the averaged probabilities, -mean log p(y | x), uncalibrated",
    "nll_cal": "test NLL after temperature scaling of the averaged probabilities, the "
    "temperature fitted on the validation split (Ashukha et al.'s calibrated NLL)",
    "nll_members_cal": "test NLL of the average of the members, each calibrated on its own first",
    "error": "test error of the ensemble's arg-max (temperature scaling does not change it)",
    "ece": "expected calibration error of the top-1 confidence on the test split, uncalibrated",
    "ece_cal": "the same after temperature scaling",
    "brier": "Brier score on the test split, uncalibrated",
    "brier_cal": "the same after temperature scaling",
    "val_nll": "NLL on the validation split, uncalibrated",
    "val_nll_cal": "NLL on the validation split at the fitted temperature (never above val_nll)",
    "temperature": "the fitted temperature tau: p_cal = softmax(log p / tau)",
    "disagreement": "mean over member pairs of the fraction of test digits whose arg-max "
    "predictions differ (none for n = 1)",
    "<metric>_mean, _std": "mean and standard deviation over the subsets",
    "<metric>_lo, _hi": "the subsets' percentile interval at `level` (e.g. 2.5% and 97.5%)",
    "fits": "c + b x^-a by robust least squares to the means over the subsets; ci: bootstrap "
    "percentile intervals at `level`, each resample drawing one bootstrap replicate of every "
    "point's mean; degenerate: a at a bound, b <= 0 or c far below the points",
}


def mlp_kwargs(width: int, depth: int) -> dict[str, Any]:
    return {"hidden": [int(width)] * int(depth)}


def parameters(width: int, depth: int) -> int:
    """Trainable parameters of the MLP 64 -> width x depth -> 10."""
    sizes = [64, *[width] * depth, 10]
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


def subsets(members: int, n: int, resamples: int, seed: int) -> list[tuple[int, ...]]:
    """The member subsets of size ``n``: all of them when there are at most ``resamples``,
    else ``resamples`` distinct ones drawn with a generator seeded by ``(seed, members, n)``."""
    if math.comb(members, n) <= resamples:
        return list(itertools.combinations(range(members), n))
    rng = np.random.default_rng([seed, members, n])
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < resamples:
        s = tuple(sorted(int(i) for i in rng.choice(members, n, replace=False)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def disagreement(log_probs: np.ndarray) -> float | None:
    """Mean over member pairs of the fraction of examples whose arg-max predictions differ
    (``log_probs``: ``(M, N, C)``); None for one member."""
    if log_probs.shape[0] < 2:
        return None
    pred = log_probs.argmax(2)
    pairs = itertools.combinations(range(len(pred)), 2)
    return float(np.mean([np.mean(pred[i] != pred[j]) for i, j in pairs]))


def ensemble_row(zv, yv, zt, yt, *, bins: int, binning: str) -> tuple[dict[str, Any], Any]:
    """The numbers of one ensemble (members' log-probabilities ``(n, N, C)`` on the
    validation and test splits) and its :class:`CalibrationResult`."""
    from basinscope.analyses.calibration import calibrate_log_probs

    res = calibrate_log_probs(zv, yv, zt, yt, bins=bins, binning=binning)
    row = {
        "nll": res.before["nll"],
        "nll_cal": res.after["nll"],
        "nll_members_cal": res.members_calibrated.get("nll", res.after["nll"])
        if len(zt) > 1
        else res.members[0]["after"]["nll"],
        "error": 1.0 - res.before["accuracy"],
        "ece": res.before["ece"],
        "ece_cal": res.after["ece"],
        "brier": res.before["brier"],
        "brier_cal": res.after["brier"],
        "val_nll": res.val_before["nll"],
        "val_nll_cal": res.val_after["nll"],
        "temperature": res.temperature,
        "disagreement": disagreement(zt),
    }
    return row, res


METRICS = ("nll", "nll_cal", "nll_members_cal", "error", "ece", "ece_cal", "brier", "brier_cal")
METRICS += ("val_nll", "val_nll_cal", "temperature", "disagreement")


def summarize(rows: list[dict[str, Any]], level: float) -> dict[str, Any]:
    """Mean, standard deviation and percentile interval of each metric over ``rows``."""
    out: dict[str, Any] = {"subsets": len(rows)}
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    for k in METRICS:
        v = np.array([r[k] for r in rows if r[k] is not None], dtype=np.float64)
        if not len(v):
            out.update({f"{k}_{s}": None for s in ("mean", "std", "lo", "hi")})
            continue
        lo, hi = np.percentile(v, q)
        out.update(
            {
                f"{k}_mean": float(v.mean()),
                f"{k}_std": float(v.std()),
                f"{k}_lo": float(lo),
                f"{k}_hi": float(hi),
            }
        )
    return out


def _reliability(res) -> dict[str, Any]:
    return {
        "temperature": res.temperature,
        "before": res.reliability_before,
        "after": res.reliability_after,
        "ece_before": res.before["ece"],
        "ece_after": res.after["ece"],
        "nll_before": res.before["nll"],
        "nll_after": res.after["nll"],
    }


def ensembles_of_width(models, val, test, cfg: EnsemblesConfig) -> dict[str, Any]:
    """Stage: every member's log-probabilities once, then the ensembles of every size from
    subsets of the members (see :data:`DEFINITIONS`)."""
    from basinscope.analyses.calibration import log_probabilities

    kw = placement(cfg)
    zv, yv = log_probabilities(models, val, **kw)
    zt, yt = log_probabilities(models, test, **kw)
    m = len(models)
    kw = {"bins": cfg.bins, "binning": cfg.binning}
    by_n = []
    for n in range(1, m + 1):
        rows = []
        for s in subsets(m, n, cfg.resamples, cfg.resample_seed):
            idx = list(s)
            rows.append({"members": idx, **ensemble_row(zv[idx], yv, zt[idx], yt, **kw)[0]})
        by_n.append({"n": n, **summarize(rows, cfg.level), "rows": rows})
    # the reliability diagrams of member 0 alone and of all the members
    reliability = {
        name: _reliability(ensemble_row(zv[idx], yv, zt[idx], yt, **kw)[1])
        for name, idx in (("single", [0]), ("ensemble", list(range(m))))
    }
    return {
        "members": m,
        "val_examples": len(yv),
        "test_examples": len(yt),
        "member_nll": [r["nll"] for r in by_n[0]["rows"]],
        "member_nll_cal": [r["nll_cal"] for r in by_n[0]["rows"]],
        "member_error": [r["error"] for r in by_n[0]["rows"]],
        "by_n": by_n,
        "reliability": reliability,
    }


def _fge(model, train, val, test, cfg: EnsemblesConfig) -> dict[str, Any]:
    """Stage: FGE from one trained member, its snapshots' ensembles at the budgets of the
    independent ensembles (n member trainings: the snapshots collected within n x steps)."""
    from basinscope.analyses.calibration import log_probabilities
    from basinscope.analyses.ensembles import fge

    cycle = cfg.steps // cfg.fge_cycles_per_member
    cycles = (cfg.members - 1) * cfg.fge_cycles_per_member
    res = fge(
        model,
        train,
        cycles=cycles,
        cycle_steps=cycle,
        lr_max=cfg.fge_lr_max,
        lr_min=cfg.fge_lr_min,
        config=_train_config(cfg, seed=cfg.seed + cfg.members),
        eval_data=test,
        pretrain_steps=cfg.steps,
        barriers=False,
        device=cfg.device,
    )
    snaps = list(res.models)
    kw = placement(cfg)
    zv, yv = log_probabilities([model, *snaps], val, **kw)
    zt, yt = log_probabilities([model, *snaps], test, **kw)
    steps = res.settings["snapshot_steps"]
    points = []
    for n in range(1, cfg.members + 1):
        k = (n - 1) * cfg.fge_cycles_per_member  # snapshots within n member trainings
        idx = [0] if k == 0 else list(range(1, k + 1))
        row, _ = ensemble_row(zv[idx], yv, zt[idx], yt, bins=cfg.bins, binning=cfg.binning)
        last = cfg.steps + (steps[k - 1] if k else 0)
        points.append({"n": n, "budget": n * cfg.steps, "snapshots": k, "last_step": last, **row})
    return {
        "method": "fge",
        "cycles": cycles,
        "cycle_steps": cycle,
        "snapshot_steps": steps,
        "snapshot_lrs": res.settings["snapshot_lrs"],
        "budget": res.budget,
        "ensemble_accuracy": res.ensemble_accuracy,
        "points": points,
    }


def _swa(model, train, val, test, cfg: EnsemblesConfig) -> dict[str, Any]:
    """Stage: SWA from one trained member with the budget of the N-member ensemble."""
    from basinscope.analyses.calibration import log_probabilities
    from basinscope.analyses.ensembles import swa

    steps = (cfg.members - 1) * cfg.steps
    res = swa(
        model,
        train,
        steps=steps,
        start=steps // 2,
        lr=cfg.swa_lr,
        every=cfg.swa_every,
        config=_train_config(cfg, seed=cfg.seed + cfg.members + 1),
        eval_data=test,
        pretrain_steps=cfg.steps,
        barriers=False,
        device=cfg.device,
    )
    sgd, averaged = res.models
    kw = placement(cfg)
    zv, yv = log_probabilities([sgd, averaged], val, **kw)
    zt, yt = log_probabilities([sgd, averaged], test, **kw)
    out: dict[str, Any] = {"method": "swa", "steps": steps, "start": steps // 2}
    out.update(averaged=res.members, budget=res.budget)
    for name, i in (("swa", 1), ("sgd_final", 0)):
        row, _ = ensemble_row(zv[[i]], yv, zt[[i]], yt, bins=cfg.bins, binning=cfg.binning)
        out[name] = {"n": cfg.members, "budget": res.budget, **row}
    return out


def _train_config(cfg: EnsemblesConfig, seed: int):
    """The members' training (the final weights recorded); FGE and SWA replace its schedule."""
    from basinscope.training import TrainConfig

    return TrainConfig(
        steps=cfg.steps,
        checkpoint_steps=(cfg.steps,),
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        data_seed=seed,
    )


# -- fits -------------------------------------------------------------------------------------


def mean_replicates(samples: list[list[float]], replicates: int, seed: int) -> np.ndarray:
    """``(len(samples), replicates)``: bootstrap replicates of the mean of each row (its
    values drawn with replacement, as many as it has, and averaged), so that the fits'
    bootstrap, which draws one replicate per point, resamples the means the law is fitted to
    (drawing single subsets instead would bound the law of one subset's NLL)."""
    rng = np.random.default_rng([seed, 1])
    out = np.empty((len(samples), replicates))
    for i, row in enumerate(samples):
        v = np.asarray(row, dtype=np.float64)
        out[i] = v[rng.integers(0, len(v), (replicates, len(v)))].mean(axis=1)
    return out


def noise_scale(samples: np.ndarray, y: np.ndarray) -> float:
    """The robust loss's inlier scale: the median over points of the spread of their
    replicates (at least a millionth of the largest |y|); the library's default, the
    residuals' MAD, collapses when 3 points are fitted exactly and the fit then crawls."""
    spread = float(np.median(samples.std(axis=1)))
    return max(spread, 1e-6 * max(1.0, float(np.abs(y).max())))


def fit(x, y, samples: list[list[float]], cfg: EnsemblesConfig) -> dict[str, Any]:
    """:func:`~basinscope.analyses.scaling.fit_power_law` of the means ``y`` with
    ``y_samples`` the bootstrap replicates of each mean (:func:`mean_replicates`), as a
    JSON-ready dict."""
    from basinscope.analyses.scaling import fit_power_law

    x, y = np.asarray(x, float), np.asarray(y, float)
    s = mean_replicates(samples, max(cfg.bootstrap, 1), cfg.resample_seed)
    res = fit_power_law(
        x,
        y,
        y_samples=s,
        loss=cfg.fit_loss,
        f_scale=noise_scale(s, y),
        bootstrap=cfg.bootstrap,
        level=cfg.level,
        seed=cfg.resample_seed,
    )
    return _fit_dict(res)


def _fit_dict(res) -> dict[str, Any]:
    return {
        "a": res.a,
        "b": res.b,
        "c": res.c,
        "ci": res.ci,
        "rmse": res.rmse,
        "x": res.x.tolist(),
        "y": res.y.tolist(),
        "bootstrap": res.bootstrap,
        "failed_bootstraps": res.failed_bootstraps,
        "resample": res.resample,
        "loss": res.loss,
        "f_scale": res.f_scale,
        "level": res.level,
        "decreasing": bool(res.a > 0 and res.b > 0),
        "degenerate": degenerate(res.a, res.b, res.c, res.y),
    }


def degenerate(a: float, b: float, c: float, y: Any) -> bool:
    """A fit that is no decreasing power law of the points: ``a`` at a bound of [0, 20]
    (below 0.01 or above 19.9), ``b <= 0``, or the asymptote ``c`` farther below the
    smallest point than ten times the points' range."""
    y = np.asarray(y, dtype=np.float64)
    span = float(y.max() - y.min())
    return bool(a < 0.01 or a > 19.9 or b <= 0 or c < float(y.min()) - 10 * span)


def default_budgets(cfg: EnsemblesConfig) -> list[int]:
    """8 budgets, geometric from the smallest network to N networks of the largest."""
    lo = parameters(min(cfg.widths), cfg.depth)
    hi = cfg.members * parameters(max(cfg.widths), cfg.depth)
    return sorted({int(b) for b in np.rint(np.geomspace(lo, hi, 8))})


def power_laws(tables: dict[int, dict[str, Any]], cfg: EnsemblesConfig) -> dict[str, Any]:
    """Stage: NLL(n) per width and NLL(width) of single networks, calibrated and not; the
    memory split of each budget (calibrated NLL, with the per-width calibrated laws)."""
    import xarray as xr

    from basinscope.analyses.scaling import PowerLawFit, memory_split

    widths = sorted(tables)
    out: dict[str, Any] = {"n": {}, "width": {}}
    laws: dict[str, dict[int, Any]] = {"nll": {}, "nll_cal": {}}
    for w in widths:
        rows = tables[w]["by_n"]
        ns = [r["n"] for r in rows]
        out["n"][str(w)] = {}
        for key in ("nll", "nll_cal"):
            samples = [[x[key] for x in r["rows"]] for r in rows]
            f = fit(ns, [r[f"{key}_mean"] for r in rows], samples, cfg)
            out["n"][str(w)][key] = f
            laws[key][w] = PowerLawFit(
                a=f["a"], b=f["b"], c=f["c"], x=np.asarray(f["x"]), y=np.asarray(f["y"])
            )
    for key in ("nll", "nll_cal"):
        samples = [[x[key] for x in tables[w]["by_n"][0]["rows"]] for w in widths]
        mean = [tables[w]["by_n"][0][f"{key}_mean"] for w in widths]
        out["width"][key] = fit(widths, mean, samples, cfg)
    params = {w: parameters(w, cfg.depth) for w in widths}
    budgets = list(cfg.budgets) or default_budgets(cfg)
    out["params"] = {str(w): p for w, p in params.items()}
    out["budgets"] = budgets
    out["memory_split"] = {}
    for key in ("nll", "nll_cal"):
        ns = [r["n"] for r in tables[widths[0]]["by_n"]]
        grid = np.array(
            [[tables[w]["by_n"][i][f"{key}_mean"] for i in range(len(ns))] for w in widths]
        )
        nll = xr.DataArray(grid, dims=("width", "n"), coords={"width": widths, "n": ns})
        split = memory_split(
            nll,
            params,
            budgets,
            laws=laws[key],
            loss=cfg.fit_loss,
            bootstrap=cfg.bootstrap,
            seed=cfg.resample_seed,
        )
        t = split.table
        rows = []
        for i, b in enumerate(t.budget.values):
            r = t.isel(budget=i)
            rows.append(
                {
                    "budget": int(b),
                    **{k: _plain(r[k].item()) for k in t.data_vars},
                }
            )
        out["memory_split"][key] = {
            "rows": rows,
            "envelope": None if split.envelope is None else _fit_dict(split.envelope),
            "definition": split.definition,
        }
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


def monotonicity(
    widths: list[int], mean: list[float], std: list[float] | None = None, count: int = 1
) -> dict:
    """Where the NLL rises from one width to the next: every rise and, given the standard
    deviations of ``count`` independent measurements behind each mean, whether it exceeds
    two standard errors of the difference of the two means (``significant``; None without)."""
    rises = []
    for i in range(len(widths) - 1):
        d = mean[i + 1] - mean[i]
        if d <= 0:
            continue
        se = None if std is None else math.sqrt((std[i] ** 2 + std[i + 1] ** 2) / count)
        rises.append(
            {
                "from": widths[i],
                "to": widths[i + 1],
                "rise": d,
                "se": se,
                "significant": None if se is None else bool(d > 2 * se),
            }
        )
    return {
        "monotone": not rises,
        "rises": rises,
        "significant_rises": None if std is None else sum(r["significant"] for r in rises),
    }


# -- the study --------------------------------------------------------------------------------


def run(cfg: EnsemblesConfig, ctx: StudyContext) -> dict[str, Any]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, ctx)
    finally:
        torch.set_num_threads(before)


def splits(cfg: EnsemblesConfig) -> dict[str, Any]:
    """The members' training digits, the validation digits (held out of the training
    split, stratified, fixed) and the test digits."""
    from basinscope.data import load_digits
    from basinscope.data.digits import stratified_split

    full = load_digits("train")
    keep, held = stratified_split(full.y.numpy(), cfg.val_examples, seed=0)
    return {
        "train": full.subset(keep, f"digits-train-minus-val{cfg.val_examples}"),
        "val": full.subset(held, f"digits-val{cfg.val_examples}"),
        "test": load_digits("test"),
    }


def _run(cfg: EnsemblesConfig, ctx: StudyContext) -> dict[str, Any]:
    from basinscope.models import build_model

    data = splits(cfg)
    train, val, test = data["train"], data["val"], data["test"]
    root, progress = ctx.stages_root, ctx.progress
    on_device, where = placement(cfg, dtype=False), placement(cfg)
    logs = {w: StageLog() for w in cfg.widths}
    both = StageLog()
    seeds = [cfg.seed + i for i in range(cfg.members)]

    # -- 1. train every member of every width (at once) --------------------------------------
    calls = []
    for w in cfg.widths:
        for s in seeds:
            kwargs = mlp_kwargs(w, cfg.depth)
            model = build_model("mlp", kwargs, init_seed=s)
            tc = _train_config(cfg, seed=s)
            spec = {"model": "mlp", "model_kwargs": kwargs, "init_seed": s, "data": train.name}
            folder = stage_dir(root, f"member-w{w}", {**spec, **tc.to_dict(), **on_device})

            def train_call(lg, folder=folder, model=model, tc=tc, spec=spec):
                return train_stage(
                    folder, model, train, tc, spec, progress=progress, log=lg, device=cfg.device
                )

            calls.append(StageCall(folder, train_call, logs[w]))
    trained = ctx.run_stages(
        calls,
        what=f"[1/3] training {cfg.members} MLPs at each width {', '.join(map(str, cfg.widths))} "
        f"({cfg.steps} steps each)",
    )
    members = {
        w: trained[i * cfg.members : (i + 1) * cfg.members] for i, w in enumerate(cfg.widths)
    }

    # -- 2. ensembles of every size at every width; FGE and SWA at one width (at once) -------
    calib = {"val": val.name, "test": test.name, "bins": cfg.bins, "binning": cfg.binning}
    calls = []
    for w in cfg.widths:
        settings = {"members": [m.run_dir.name for m in members[w]], **calib}
        settings.update(resamples=cfg.resamples, resample_seed=cfg.resample_seed, level=cfg.level)
        settings.update(where)
        models = [m.model for m in members[w]]

        def ens_call(lg, settings=settings, models=models, w=w):
            return cached_stage(
                root,
                f"ensembles-w{w}",
                settings,
                lambda d: ensembles_of_width(models, val, test, cfg),
                log=lg,
            )

        calls.append(StageCall(stage_dir(root, f"ensembles-w{w}", settings), ens_call, logs[w]))
    start = members[cfg.compare_width][0]
    common = {"start": start.run_dir.name, "members": cfg.members, "steps": cfg.steps, **calib}
    common.update(batch_size=cfg.batch_size, momentum=cfg.momentum)
    common.update(weight_decay=cfg.weight_decay, data=train.name, **where)
    fge_settings = {**common, "cycles_per_member": cfg.fge_cycles_per_member}
    fge_settings.update(lr_max=cfg.fge_lr_max, lr_min=cfg.fge_lr_min, seed=cfg.seed + cfg.members)
    swa_settings = {**common, "lr": cfg.swa_lr, "every": cfg.swa_every}
    swa_settings["seed"] = cfg.seed + cfg.members + 1
    for name, settings, fn in (("fge", fge_settings, _fge), ("swa", swa_settings, _swa)):
        stage = f"{name}-w{cfg.compare_width}"

        def call(lg, stage=stage, settings=settings, fn=fn, m=start.model):
            return cached_stage(
                root, stage, settings, lambda d: fn(m, train, val, test, cfg), log=lg
            )

        calls.append(StageCall(stage_dir(root, stage, settings), call, both))
    done = ctx.run_stages(
        calls,
        what=f"[2/3] ensembles of 1..{cfg.members} members ({cfg.resamples} subsets each), "
        f"calibrated and not; FGE and SWA at width {cfg.compare_width}",
    )
    tables = {w: v for w, (v, _) in zip(cfg.widths, done, strict=False)}
    ens_dirs = {w: d.name for w, (_, d) in zip(cfg.widths, done, strict=False)}
    (fge_res, fge_dir), (swa_res, swa_dir) = done[len(cfg.widths) :]

    # -- 3. power laws and the memory split ---------------------------------------------------
    law_settings = {"ensembles": [ens_dirs[w] for w in cfg.widths], "bootstrap": cfg.bootstrap}
    law_settings.update(loss=cfg.fit_loss, level=cfg.level, seed=cfg.resample_seed)
    law_settings.update(depth=cfg.depth, budgets=list(cfg.budgets) or default_budgets(cfg))

    def law_call(lg):
        return cached_stage(
            root, "power-laws", law_settings, lambda d: power_laws(tables, cfg), log=lg
        )

    ((laws, laws_dir),) = ctx.run_stages(
        [StageCall(stage_dir(root, "power-laws", law_settings), law_call, both)],
        what=f"[3/3] power-law fits ({cfg.bootstrap} bootstrap resamples each) and the memory "
        "split",
    )
    for w in cfg.widths:
        ctx.log.extend(logs[w])
    ctx.log.extend(both)

    widths = list(cfg.widths)
    first = {w: tables[w]["by_n"][0] for w in widths}
    last = {w: tables[w]["by_n"][-1] for w in widths}
    mono = {}
    for key in ("nll", "nll_cal"):
        mono[key] = monotonicity(
            widths,
            [first[w][f"{key}_mean"] for w in widths],
            [first[w][f"{key}_std"] for w in widths],
            cfg.members,
        )
        mono[f"{key}_ensemble"] = monotonicity(widths, [last[w][f"{key}_mean"] for w in widths])
    per_width = []
    for w in widths:
        t = tables[w]
        per_width.append(
            {
                "width": w,
                "parameters": parameters(w, cfg.depth),
                "members": [m.run_dir.name for m in members[w]],
                "stage": ens_dirs[w],
                "member_nll": t["member_nll"],
                "member_nll_cal": t["member_nll_cal"],
                "member_error": t["member_error"],
                "by_n": [{k: v for k, v in r.items() if k != "rows"} for r in t["by_n"]],
                "reliability": t["reliability"],
            }
        )
    independent = next(p for p in per_width if p["width"] == cfg.compare_width)["by_n"]
    return {
        "definitions": DEFINITIONS,
        "setup": {
            "model": f"ReLU MLP 64 -> {' -> '.join(['w'] * cfg.depth)} -> 10",
            "train_examples": len(train),
            "val_examples": len(val),
            "test_examples": len(test),
            "training": f"SGD (momentum {cfg.momentum:g}, weight decay {cfg.weight_decay:g}), "
            f"{cfg.steps} steps of {cfg.batch_size} digits, {cfg.schedule} schedule from lr "
            f"{cfg.lr:g}; member i: init and data-order seed {cfg.seed} + i",
            "calibration": "temperature of the averaged probabilities fitted on the validation "
            f"split (exact), metrics on the test split; ECE with {cfg.bins} {cfg.binning} bins",
            "precision": f"training in float32 on {cfg.device}; log-probabilities in "
            f"{cfg.dtype} on {cfg.device}, then float64",
        },
        "widths": per_width,
        "fits": {"n": laws["n"], "width": laws["width"]},
        "memory_split": laws["memory_split"],
        "params": laws["params"],
        "budgets": laws["budgets"],
        "monotonicity": mono,
        "budget_methods": {
            "width": cfg.compare_width,
            "steps_per_member": cfg.steps,
            "independent": [
                {
                    "n": r["n"],
                    "budget": r["n"] * cfg.steps,
                    **{k: v for k, v in r.items() if k != "n"},
                }
                for r in independent
            ],
            "fge": fge_res,
            "swa": swa_res,
        },
        "stage_folders": {
            "ensembles": ens_dirs,
            "fge": fge_dir.name,
            "swa": swa_dir.name,
            "power_laws": laws_dir.name,
        },
    }


def _report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.ensembles_and_width_report import write_report

    return write_report(run_dir, results)


STUDY = register(
    Study(
        name=NAME,
        summary="Deep ensembles of MLPs at several widths on digits: calibrated and uncalibrated "
        "NLL power laws in ensemble size and width, the memory split, FGE and SWA at equal budget",
        config=EnsemblesConfig,
        run=run,
        report=_report,
        quick=QUICK,
        smoke=SMOKE,
    )
)
