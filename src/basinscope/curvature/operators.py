"""Curvature operators of the full-dataset empirical loss, as matrix-free products.

The loss is the mean over all :math:`N` examples of the dataset (or a fixed subset):

.. math::  L(\\theta) = \\frac{1}{N} \\sum_{n=1}^{N} \\ell(f_\\theta(x_n), y_n)
           \\;[+\\; \\tfrac{\\lambda}{2}\\lVert\\theta\\rVert^2],

so each batch's product is weighted by its size: :math:`Hv = \\sum_b \\frac{|b|}{N} H_b v`.
Three operators (all symmetric, acting on flat vectors over the selected parameters):

``HessianOperator``  :math:`\\nabla^2 L`; forward-over-reverse (``jvp`` of ``grad``),
                     reverse-over-forward (``grad`` of ``jvp``) or double backward, the
                     fastest chosen per model by a timed trial,
``GGNOperator``      the generalized Gauss-Newton :math:`\\frac1N\\sum J_n^\\top H^{\\ell}_n J_n`
                     (positive semi-definite for convex losses),
``EFOperator``       the empirical Fisher :math:`\\frac1N\\sum g_n g_n^\\top` from per-example
                     gradients.

Each operator is the curvature of an :class:`~basinscope.curvature.loss.EmpiricalLoss`
(``op.empirical_loss``: the loss's value, gradient and Hessian-vector products, shared
with the sharpness measures), built from the operator's arguments. The model is run
through the loss's **task** (:class:`~basinscope.engine.task.Task`: dict or tuple inputs,
keyword calls, the prediction found in the output, cross-entropy, MSE, a user's loss or
the model's own), on data in memory or streamed from a DataLoader. The GGN and the
empirical Fisher need the loss as a function of the prediction, so they refuse the
model's own loss (``Task(loss="model")``). Loss semantics are explicit and recorded in
:attr:`CurvatureOperator.semantics`: the model is evaluated with BatchNorm in eval mode
(stored statistics) and dropout off, unless ``bn_mode="train"`` (batch statistics; double
backward only); the weight-decay term is included only when ``weight_decay > 0``. The
caller's model is never modified.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vjp, vmap

from basinscope.curvature.loss import (
    FORWARD_MODE_METHODS,
    HVP_METHODS,
    Batches,
    EmpiricalLoss,
    forward_mode_ready,
    select_params,
)
from basinscope.engine.task import Task, batch_size_of
from basinscope.errors import BasinscopeError

__all__ = [
    "HVP_METHODS",
    "CurvatureOperator",
    "EFOperator",
    "GGNOperator",
    "HessianOperator",
    "select_params",
]


class CurvatureOperator:
    """A symmetric matrix-free operator on flat vectors over the selected parameters, the
    curvature of an :class:`~basinscope.curvature.loss.EmpiricalLoss` (built from the
    same arguments; see there)."""

    kind = "operator"

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        params: Sequence[str] | None = None,
        task: Task | str | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        batch_size: int = 1024,
        subset: int | None = None,
        weight_decay: float = 0.0,
        bn_mode: str = "eval",
        dtype: torch.dtype | str = torch.float64,
        device: str | torch.device = "cpu",
    ):
        #: The loss whose curvature this is (value, gradient, Hessian-vector products).
        self.empirical_loss = EmpiricalLoss(
            model,
            data,
            params=params,
            task=task,
            loss_fn=loss_fn,
            batch_size=batch_size,
            subset=subset,
            weight_decay=weight_decay,
            bn_mode=bn_mode,
            dtype=dtype,
            device=device,
        )
        self.num_matvecs = 0
        self.method = "n/a"

    # -- the loss's attributes ----------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self.empirical_loss.model

    @property
    def n(self) -> int:
        return self.empirical_loss.n

    @property
    def dtype(self) -> torch.dtype:
        return self.empirical_loss.dtype

    @property
    def device(self) -> torch.device:
        return self.empirical_loss.device

    @property
    def names(self) -> list[str]:
        return self.empirical_loss.names

    @property
    def params(self) -> dict[str, Tensor]:
        return self.empirical_loss.params

    @property
    def batches(self) -> Batches:
        return self.empirical_loss.batches

    @property
    def task(self) -> Task:
        return self.empirical_loss.task

    @property
    def num_examples(self) -> int:
        return self.empirical_loss.num_examples

    @property
    def weight_decay(self) -> float:
        return self.empirical_loss.weight_decay

    @property
    def bn_mode(self) -> str:
        return self.empirical_loss.bn_mode

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        return self.empirical_loss.unflatten(v)

    def flatten(self, d: Mapping[str, Tensor]) -> Tensor:
        return self.empirical_loss.flatten(d)

    @property
    def semantics(self) -> dict[str, Any]:
        return {"operator": self.kind, **self.empirical_loss.semantics, "method": self.method}

    def loss(self) -> float:
        """The loss at the model's parameters."""
        return self.empirical_loss.value()

    def gradient(self) -> Tensor:
        """The loss's gradient at the model's parameters (a flat vector)."""
        return self.empirical_loss.gradient()

    # -- products -------------------------------------------------------------------------
    def matvec(self, v: Tensor) -> Tensor:
        v = v.to(dtype=self.dtype, device=self.device)
        if v.shape != (self.n,):
            raise ValueError(f"expected a vector of length {self.n}, got shape {tuple(v.shape)}")
        self.num_matvecs += 1
        out = self._matvec(v)
        if self.weight_decay:
            out = out + self.weight_decay * v
        return out

    def matmat(self, vs: Tensor) -> Tensor:
        """Products with the columns of ``vs`` (shape ``(n, k)``)."""
        return torch.stack([self.matvec(vs[:, i]) for i in range(vs.shape[1])], dim=1)

    def _matvec(self, v: Tensor) -> Tensor:
        """The product without the weight-decay term (added by :meth:`matvec`)."""
        raise NotImplementedError

    def dense(self, block: int = 64) -> Tensor:
        """The full matrix, ``block`` columns per :meth:`matmat` (for tests and tiny models)."""
        eye = torch.eye(self.n, dtype=self.dtype, device=self.device)
        return torch.cat([self.matmat(eye[:, i : i + block]) for i in range(0, self.n, block)], 1)


class HessianOperator(CurvatureOperator):
    """Hessian-vector products of the full-dataset loss (see the module docstring), by
    :meth:`EmpiricalLoss.hvp <basinscope.curvature.loss.EmpiricalLoss.hvp>`."""

    kind = "hessian"

    def __init__(self, model: nn.Module, data: Any, *, method: str = "auto", **kwargs: Any):
        super().__init__(model, data, **kwargs)
        if method not in HVP_METHODS:
            raise BasinscopeError(
                f"unknown HVP method {method!r}: expected one of {', '.join(HVP_METHODS)}"
            )
        if self.bn_mode == "train" and method in FORWARD_MODE_METHODS:
            raise BasinscopeError(
                f"{method} HVPs do not support BatchNorm with batch statistics (bn_mode='train'); "
                "use method='double-backward' or bn_mode='eval'"
            )
        self.trial: dict[str, float] = {}
        if method == "auto":
            method = "double-backward" if self.bn_mode == "train" else self._choose()
        self.method = method

    def _choose(self, rounds: int = 3) -> str:
        """Time every method on the first batch: one warm-up product each, then ``rounds``
        rounds that take the methods in turn (so a slow moment of a shared machine slows
        one product of every method, not every product of one), and keep each method's
        fastest product; the fastest method wins."""
        loss = self.empirical_loss
        v = torch.ones(self.n, dtype=self.dtype, device=self.device)
        first = loss.batches[:1]
        works = []
        for name in HVP_METHODS[1:]:
            try:
                loss.hvp(v, name, batches=first)
                works.append(name)
            except Exception:  # e.g. a module without a forward-mode rule
                continue
        if not works:
            raise RuntimeError("neither HVP method works for this model")
        for _ in range(rounds):
            for name in works:
                t0 = time.perf_counter()
                loss.hvp(v, name, batches=first)
                took = time.perf_counter() - t0
                self.trial[name] = min(took, self.trial.get(name, took))
        return min(self.trial, key=self.trial.get)

    def matvec(self, v: Tensor) -> Tensor:
        v = v.to(dtype=self.dtype, device=self.device)
        if v.shape != (self.n,):
            raise ValueError(f"expected a vector of length {self.n}, got shape {tuple(v.shape)}")
        self.num_matvecs += 1
        return self.empirical_loss.hvp(v, self.method)  # the weight-decay term included

    def matmat(self, vs: Tensor) -> Tensor:
        """Batched HVPs (:meth:`EmpiricalLoss.hvp_batched
        <basinscope.curvature.loss.EmpiricalLoss.hvp_batched>`), else one at a time."""
        if vs.shape[1] == 1:
            return super().matmat(vs)
        vs = vs.to(dtype=self.dtype, device=self.device)
        out = self.empirical_loss.hvp_batched(vs, self.method)
        if out is None:  # a module without a batching rule: one product at a time
            return super().matmat(vs)
        self.num_matvecs += vs.shape[1]
        return out


def _needs_prediction_loss(op: CurvatureOperator, what: str) -> None:
    if not op.empirical_loss.has_prediction_loss:
        raise BasinscopeError(
            f"the {what} needs the loss of each example as a function of the model's "
            "prediction, but loss 'model' is the model's own loss, computed inside the model "
            "(one mean per batch): use --loss cross_entropy (Task(loss='cross_entropy')), "
            "mse or a callable fn(prediction, targets), or the hessian operator"
        )


class GGNOperator(CurvatureOperator):
    """Generalized Gauss-Newton products :math:`\\frac1N\\sum_n J_n^\\top H^\\ell_n J_n v`.

    :math:`J_n` is the Jacobian of the task's prediction (the logits) in the parameters,
    :math:`H^\\ell_n` the Hessian of the loss in the prediction, applied exactly by
    differentiating the loss twice in the prediction (so any loss of the prediction
    works: cross-entropy, MSE, a user's callable; not the model's own loss).
    """

    kind = "ggn"

    def __init__(self, model: nn.Module, data: Any, **kwargs: Any):
        super().__init__(model, data, **kwargs)
        _needs_prediction_loss(self, "GGN (J^T H J, H the Hessian of the loss in the prediction)")

    def _matvec(self, v: Tensor) -> Tensor:
        forward_mode_ready()
        L = self.empirical_loss
        vd = L.unflatten(v)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        n = 0
        for x, y in L.batches:

            def f(p, x=x):
                return L.prediction(p, x)

            pred, jv = jvp(f, (L.params,), (vd,))
            _, hjv = jvp(grad(lambda o, y=y: L.prediction_loss(o, y)), (pred,), (jv,))
            _, pull = vjp(f, L.params)
            (jthjv,) = pull(hjv)
            out += L.flatten(jthjv) * y.shape[0]
            n += y.shape[0]
        return out / n


def _one(t: Any) -> Any:
    """Inputs of one example (under ``vmap``) as a batch of one."""
    if isinstance(t, dict):
        return {k: v.unsqueeze(0) for k, v in t.items()}
    if isinstance(t, tuple):
        return tuple(v.unsqueeze(0) for v in t)
    return t.unsqueeze(0)


def _example(x: Any, i: int) -> Any:
    """Inputs of example ``i`` of a batch, as a batch of one."""
    if isinstance(x, dict):
        return {k: v[i : i + 1] for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(v[i : i + 1] for v in x)
    return x[i : i + 1]


class EFOperator(CurvatureOperator):
    """Empirical Fisher :math:`\\frac1N \\sum_n g_n g_n^\\top v` with per-example gradients
    :math:`g_n = \\nabla_\\theta \\ell(f_\\theta(x_n), y_n)` (the loss of a batch of one).

    The per-example gradients are vectorized with ``vmap`` over the examples (over every
    tensor of dict or tuple inputs); a model that ``vmap`` cannot batch (data-dependent
    control flow, a module without a batching rule) gets them one example at a time,
    recorded as ``semantics["per_example"]``.
    """

    kind = "empirical_fisher"

    def __init__(self, model: nn.Module, data: Any, **kwargs: Any):
        super().__init__(model, data, **kwargs)
        _needs_prediction_loss(
            self, "empirical Fisher (per-example gradients of the loss of the prediction)"
        )
        #: How per-example gradients are formed: "vmap", or "loop" once vmap failed.
        self.per_example = "vmap"

    @property
    def semantics(self) -> dict[str, Any]:
        return {**super().semantics, "per_example": self.per_example}

    def _grads_vmap(self, x: Any, y: Tensor) -> Tensor:
        L = self.empirical_loss

        def one(xi, yi):
            return L.flatten(
                grad(lambda p: L.prediction_loss(L.prediction(p, _one(xi)), yi[None]))(L.params)
            )

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # vmap's slow fallback counts as failing
            return vmap(one)(x, y)  # (B, n)

    def _grads_loop(self, x: Any, y: Tensor) -> Tensor:
        L = self.empirical_loss
        rows = []
        for i in range(batch_size_of(x)):
            xi, yi = _example(x, i), y[i : i + 1]
            g = grad(lambda p, xi=xi, yi=yi: L.prediction_loss(L.prediction(p, xi), yi))
            rows.append(L.flatten(g(L.params)))
        return torch.stack(rows)

    def per_example_gradients(self, x: Any, y: Tensor) -> Tensor:
        """The per-example gradients ``(B, n)`` of a batch's loss at targets ``y``: by
        ``vmap``, else (from the first failure on) one example at a time."""
        if self.per_example == "vmap":
            try:
                return self._grads_vmap(x, y)
            except Exception:  # no batching rule, data-dependent control flow, ...
                self.per_example = "loop"
        return self._grads_loop(x, y)

    def _matvec(self, v: Tensor) -> Tensor:
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        n = 0
        for x, y in self.empirical_loss.batches:
            g = self.per_example_gradients(x, y)
            out += g.T @ (g @ v)
            n += y.shape[0]
        return out / n
