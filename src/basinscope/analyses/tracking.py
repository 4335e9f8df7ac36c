"""Quantities of the loss landscape tracked during training, at chosen steps.

:class:`Tracker` is a training callback (``train(..., callbacks=[tracker])``) that records,
after the updates in ``steps`` (definitions in :data:`TRACK_DEFINITIONS`):

``weight_norm``   :math:`\\lVert\\theta_l\\rVert_2` per module (the parameters it owns) and
                  :math:`\\lVert\\theta\\rVert_2` in total,
``effective_lr``  :math:`\\eta / \\lVert w_l \\rVert^2` of every scale-invariant layer (a
                  Linear or Conv layer whose output goes straight into a BatchNorm, so its
                  function does not change when :math:`w_l` is scaled; under SGD the
                  angular step is set by this ratio: van Laarhoven 2017, Li & Arora 2020),
``loss``          mean loss and error on the training and the test data,
``hessian``       the top Hessian eigenvalue of the training loss on its first
                  ``examples`` examples (float64, BatchNorm in eval mode), by Lanczos
                  warm-started from the previous step's eigenvector,
``sharpness``     a scale-invariant sharpness on the same examples:
                  ``filter_normalized`` (Li et al. 2018, the mean over random
                  filter-normalized directions of the largest loss increase) or ``adaptive``
                  (Kwon et al. 2021, worst case in the ball scaled by :math:`|w|`),
``noise_scale``   the simple gradient noise scale :math:`B_\\text{simple} =
                  \\operatorname{tr}\\Sigma / \\lVert G\\rVert^2` (McCandlish et al. 2018) from
                  the per-example gradients :math:`g_n` of the same examples:
                  :math:`G = \\bar g`, :math:`\\operatorname{tr}\\Sigma = \\frac{1}{N-1}\\sum_n
                  \\lVert g_n - G\\rVert^2`.

:meth:`Tracker.result` returns a :class:`Tracking` whose ``dataset`` has one row per
tracked step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from basinscope.errors import BasinscopeError
from basinscope.result import Result, fmt

__all__ = [
    "SHARPNESS_KINDS",
    "TRACK_DEFINITIONS",
    "TRACK_MEASURES",
    "Tracker",
    "Tracking",
    "scale_invariant_layers",
]

TRACK_MEASURES = ("weight_norm", "effective_lr", "loss", "hessian", "sharpness", "noise_scale")
SHARPNESS_KINDS = ("filter_normalized", "adaptive")
TRACK_DEFINITIONS = {
    "weight_norm": "||theta_l||_2 per module (its own parameters) and ||theta||_2 in total",
    "effective_lr": "lr / ||w_l||^2 of each layer whose output feeds a BatchNorm directly "
    "(scale-invariant; w_l: its weight and bias together)",
    "loss": "mean loss and error (1 - accuracy) of the task on the train and test data",
    "hessian": "lambda_max of the Hessian of the mean training loss on the first `examples` "
    "examples (float64, BatchNorm eval), Lanczos warm-started from the previous step",
    "sharpness": "filter_normalized: mean over random filter-normalized directions of "
    "max_alpha L(theta + alpha d) - L(theta); adaptive: worst case in the |w|-scaled ball",
    "noise_scale": "B_simple = tr(Sigma) / ||G||^2, G the mean per-example gradient, "
    "tr(Sigma) = sum_n ||g_n - G||^2 / (N - 1), on the first `examples` examples",
}


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else "(root)"


def scale_invariant_layers(model: nn.Module) -> list[str]:
    """Names of the Linear/Conv modules whose output goes straight into a BatchNorm.

    Found on the ``torch.fx`` graph when the model traces (a BatchNorm call whose input is
    the layer's call); otherwise (or when the graph finds none) on the module order: a
    layer registered immediately before a BatchNorm with as many features as it has
    outputs."""
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    bns = nn.modules.batchnorm._BatchNorm
    mods = dict(model.named_modules())
    found: list[str] = []
    try:
        from torch import fx

        graph = fx.symbolic_trace(model).graph
        for node in graph.nodes:
            if node.op == "call_module" and isinstance(mods.get(node.target), bns):
                src = node.args[0] if node.args else None
                if (
                    isinstance(src, fx.Node)
                    and src.op == "call_module"
                    and isinstance(mods.get(src.target), layers)
                    and len(src.users) == 1
                ):
                    found.append(str(src.target))
    except Exception:  # a model fx cannot trace: the module order below
        found = []
    if found:
        return sorted(set(found), key=list(mods).index)
    names = list(mods)
    for a, b in itertools.pairwise(names):
        ma, mb = mods[a], mods[b]
        if isinstance(ma, layers) and isinstance(mb, bns):
            out = ma.out_features if isinstance(ma, nn.Linear) else ma.out_channels
            if out == mb.num_features:
                found.append(a)
    return found


@dataclass(frozen=True)
class Tracking(Result, kind="tracking"):
    """Landscape quantities along a training run: ``dataset`` (dim ``step``; per-module
    ``weight_norm`` with dim ``module``, ``effective_lr`` with dim ``layer``) and the
    definition of each measure that was tracked."""

    dataset: xr.Dataset
    measures: tuple[str, ...]
    definition: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[str]:
        """The first and the last tracked value of each variable."""
        d = self.dataset
        lines = [f"tracked at {d.sizes.get('step', 0)} steps: {', '.join(self.measures)}"]
        for name, v in d.data_vars.items():
            if v.dims == ("step",) and d.sizes.get("step", 0):
                lines.append(f"  {name}: {fmt(float(v[0]))} -> {fmt(float(v[-1]))}")
        return lines


class Tracker:
    """A training callback that records :data:`TRACK_MEASURES` at ``steps`` (see the module
    docstring). ``train_data`` is needed for loss, hessian, sharpness and noise_scale,
    ``test_data`` adds the test loss and error, ``eval_data`` (``{name: data}``) the loss and
    error of other sets (``<name>_loss``, ``<name>_error``). Step 0 (the model before the
    first update) is recorded through the trainer's ``start`` call. ``examples`` first training examples serve the
    Hessian, the sharpness and the noise scale; ``sharpness`` names the scale-invariant
    measure (``sharpness_kwargs`` go to it: ``alpha``, ``num_directions``, ``rho``, ...).
    """

    def __init__(
        self,
        steps: Sequence[int],
        *,
        train_data: Any = None,
        test_data: Any = None,
        eval_data: Mapping[str, Any] | None = None,
        measures: Sequence[str] = TRACK_MEASURES,
        task: Any = None,
        examples: int = 256,
        batch_size: int = 1024,
        hessian_tol: float = 1e-3,
        hessian_max_iter: int = 40,
        sharpness: str = "filter_normalized",
        sharpness_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        unknown = [m for m in measures if m not in TRACK_MEASURES]
        if unknown:
            raise BasinscopeError(
                f"unknown tracked measures {unknown}: expected some of {', '.join(TRACK_MEASURES)}"
            )
        if sharpness not in SHARPNESS_KINDS:
            raise BasinscopeError(
                f"unknown sharpness {sharpness!r}: expected one of {', '.join(SHARPNESS_KINDS)} "
                "(both are invariant to rescaling the layers)"
            )
        needs = [m for m in measures if m in ("loss", "hessian", "sharpness", "noise_scale")]
        if needs and train_data is None:
            raise BasinscopeError(
                f"tracking {', '.join(needs)} needs train_data (the data the loss is measured on)"
            )
        if any(int(s) < 0 for s in steps):
            raise BasinscopeError(
                f"tracked steps must be at least 0 (0: the model before the first update), "
                f"got {sorted(steps)}"
            )
        clash = {"train", "test"} & set(eval_data or {})
        if clash:
            raise BasinscopeError(
                f"eval_data names {sorted(clash)} are taken by train_data/test_data: name them "
                "otherwise"
            )
        self.steps = sorted({int(s) for s in steps})
        self.measures = tuple(measures)
        self.train_data, self.test_data = train_data, test_data
        self.eval_data = dict(eval_data or {})
        self.task = task
        self.examples = int(examples)
        self.batch_size = int(batch_size)
        self.hessian_tol, self.hessian_max_iter = hessian_tol, hessian_max_iter
        self.sharpness = sharpness
        self.sharpness_kwargs = dict(sharpness_kwargs or {})
        self.seed = seed
        self.rows: list[dict[str, Any]] = []
        self._v0: Tensor | None = None
        self._subset: Any = None

    def _first(self) -> Any:
        if self._subset is None:
            from basinscope.curvature.loss import first_examples

            self._subset = first_examples(self.train_data, self.examples)
        return self._subset

    def start(self, model: nn.Module) -> None:
        """Called by the trainer before the first update: records step 0 when tracked (its
        learning rate is unknown here: NaN, so effective_lr is NaN at step 0)."""
        if 0 in self.steps:
            self.rows.append(self.measure(0, model, math.nan))

    def __call__(self, step: int, model: nn.Module, info: Mapping[str, Any] | None = None) -> None:
        if step not in self.steps or step == 0:
            return
        self.rows.append(self.measure(step, model, float((info or {}).get("lr", math.nan))))

    # -- the measures ---------------------------------------------------------------------
    def measure(self, step: int, model: nn.Module, lr: float) -> dict[str, Any]:
        """Every tracked quantity of ``model`` now (``lr``: the step's learning rate)."""
        row: dict[str, Any] = {"step": step, "lr": lr}
        if "weight_norm" in self.measures:
            sq: dict[str, float] = {}
            for name, p in model.named_parameters():
                sq[_owner(name)] = sq.get(_owner(name), 0.0) + float(
                    p.detach().double().pow(2).sum()
                )
            row["module_norm"] = {m: math.sqrt(v) for m, v in sq.items()}
            row["weight_norm"] = math.sqrt(sum(sq.values()))
        if "effective_lr" in self.measures:
            mods = dict(model.named_modules())
            row["effective_lr"] = {
                layer: lr
                / sum(float(p.detach().double().pow(2).sum()) for p in mods[layer].parameters())
                for layer in scale_invariant_layers(model)
            }
        if "loss" in self.measures:
            row.update(self._losses(model))
        if "hessian" in self.measures:
            row["lambda_max"] = self._lambda_max(model)
        if "sharpness" in self.measures:
            row["sharpness"] = self._sharpness(model)
        if "noise_scale" in self.measures:
            row["noise_scale"] = self._noise_scale(model)
        return row

    def _losses(self, model: nn.Module) -> dict[str, float]:
        from basinscope.engine import evaluate_model

        splits = {"train": self.train_data}
        if self.test_data is not None:
            splits["test"] = self.test_data
        splits.update(self.eval_data)
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        vals = evaluate_model(
            model,
            splits,
            batch_size=self.batch_size,
            task=self.task,
            dtype=dtype,
            device=str(next((p.device for p in model.parameters()), "cpu")),
        )
        out = {}
        for s in splits:
            out[f"{s}_loss"] = vals[f"{s}_loss"]
            if f"{s}_accuracy" in vals:
                out[f"{s}_error"] = 1.0 - vals[f"{s}_accuracy"]
        return out

    def _lambda_max(self, model: nn.Module) -> float:
        from basinscope.curvature import HessianOperator, lanczos_eigenpairs

        op = HessianOperator(
            model, self._first(), task=self.task, method="double-backward", dtype=torch.float64
        )
        v0 = self._v0 if self._v0 is not None and self._v0.shape[0] == op.n else None
        pairs = lanczos_eigenpairs(
            op,
            1,
            "largest",
            tol=self.hessian_tol,
            max_iter=self.hessian_max_iter,
            seed=self.seed,
            v0=v0,
        )
        if pairs.eigenvectors is not None:
            self._v0 = pairs.eigenvectors[:, 0].detach().clone()
        return float(pairs.eigenvalues[0])

    def _sharpness(self, model: nn.Module) -> float:
        from basinscope.analyses.sharpness import adaptive_sharpness, filter_normalized_sharpness

        fn = (
            filter_normalized_sharpness
            if self.sharpness == "filter_normalized"
            else adaptive_sharpness
        )
        first = next(model.parameters(), None)
        where = {} if first is None else {"device": str(first.device)}
        if first is not None and first.dtype in (torch.float32, torch.float64):
            where["dtype"] = first.dtype  # the model's own precision and device by default
        kw = {"seed": self.seed, **where, **self.sharpness_kwargs}
        return float(fn(model, self._first(), task=self.task, strategy="loop", **kw).value)

    def _noise_scale(self, model: nn.Module) -> float:
        from basinscope.curvature import EFOperator

        op = EFOperator(model, self._first(), task=self.task, dtype=torch.float64)
        grads = torch.cat([op.per_example_gradients(x, y) for x, y in op.empirical_loss.batches])
        n = grads.shape[0]
        if n < 2:
            return math.nan
        g = grads.mean(0)
        tr = float((grads - g).pow(2).sum()) / (n - 1)
        return tr / float(g.pow(2).sum())

    # -- the result -------------------------------------------------------------------------
    def result(self) -> Tracking:
        """The recorded rows as a :class:`Tracking`."""
        steps = [r["step"] for r in self.rows]
        data: dict[str, Any] = {}
        scalars = sorted(
            {k for r in self.rows for k, v in r.items() if k != "step" and not isinstance(v, dict)}
        )
        for k in scalars:
            data[k] = ("step", np.array([r.get(k, math.nan) for r in self.rows], dtype=np.float64))
        coords: dict[str, Any] = {"step": steps}
        for key, dim in (("module_norm", "module"), ("effective_lr", "layer")):
            names = sorted({n for r in self.rows for n in r.get(key, {})})
            if names:
                data[key] = (
                    ("step", dim),
                    np.array([[r.get(key, {}).get(n, math.nan) for n in names] for r in self.rows]),
                )
                coords[dim] = names
        return Tracking(
            dataset=xr.Dataset(data, coords=coords),
            measures=self.measures,
            definition={m: TRACK_DEFINITIONS[m] for m in self.measures},
            settings={
                "examples": self.examples,
                "sharpness": self.sharpness,
                "sharpness_kwargs": {k: v for k, v in self.sharpness_kwargs.items()},
                "hessian_tol": self.hessian_tol,
                "hessian_max_iter": self.hessian_max_iter,
                "seed": self.seed,
            },
        )
