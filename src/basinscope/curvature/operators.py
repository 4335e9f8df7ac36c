"""Curvature operators of the full-dataset empirical loss, as matrix-free products.

The loss is the mean over all :math:`N` examples of the dataset (or a fixed subset):

.. math::  L(\\theta) = \\frac{1}{N} \\sum_{n=1}^{N} \\ell(f_\\theta(x_n), y_n)
           \\;[+\\; \\tfrac{\\lambda}{2}\\lVert\\theta\\rVert^2],

so each batch's product is weighted by its size: :math:`Hv = \\sum_b \\frac{|b|}{N} H_b v`.
Three operators (all symmetric, acting on flat vectors over the selected parameters):

``HessianOperator``  :math:`\\nabla^2 L`; forward-over-reverse (``jvp`` of ``grad``) or
                     double backward, the faster chosen per model by a timed trial,
``GGNOperator``      the generalized Gauss-Newton :math:`\\frac1N\\sum J_n^\\top H^{\\ell}_n J_n`
                     (positive semi-definite for convex losses),
``EFOperator``       the empirical Fisher :math:`\\frac1N\\sum g_n g_n^\\top` from per-example
                     gradients.

Loss semantics are explicit and recorded in :attr:`CurvatureOperator.semantics`: the
model is evaluated with BatchNorm in eval mode (stored statistics) and dropout off, unless
``bn_mode="train"`` (batch statistics; double backward only); the weight-decay term is
included only when ``weight_decay > 0``. The caller's model is never modified.
"""

from __future__ import annotations

import copy
import fnmatch
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from basinscope.engine.batches import as_batches
from basinscope.engine.fit import check_model_data
from basinscope.errors import BasinscopeError

__all__ = [
    "HVP_METHODS",
    "CurvatureOperator",
    "EFOperator",
    "GGNOperator",
    "HessianOperator",
    "select_params",
]

HVP_METHODS = ("auto", "forward-over-reverse", "double-backward")


def select_params(model: nn.Module, patterns: Sequence[str] | None = None) -> list[str]:
    """Names of the parameters matching any fnmatch pattern (all trainable ones by default)."""
    names = [n for n, p in model.named_parameters()]
    if not patterns:
        return names
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise BasinscopeError(
            f"no parameter matches {list(patterns)}; the model's parameters are {names[:12]}"
            + (" ..." if len(names) > 12 else "")
        )
    return chosen


class CurvatureOperator:
    """A symmetric matrix-free operator on flat vectors over the selected parameters."""

    kind = "operator"

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        params: Sequence[str] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        batch_size: int = 1024,
        subset: int | None = None,
        weight_decay: float = 0.0,
        bn_mode: str = "eval",
        dtype: torch.dtype = torch.float64,
        device: str = "cpu",
    ):
        if bn_mode not in ("eval", "train"):
            raise BasinscopeError(
                f"unknown bn_mode {bn_mode!r}: expected 'eval' (stored statistics) or 'train' (batch statistics)"
            )
        self.model = copy.deepcopy(model).to(device=device, dtype=dtype)
        self.model.eval()
        if bn_mode == "train":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    m.track_running_stats = False  # batch statistics, no running-stat updates
        self.names = select_params(self.model, params)
        all_params = dict(self.model.named_parameters())
        self.params = {n: all_params[n].detach() for n in self.names}
        self.frozen = {n: p.detach() for n, p in all_params.items() if n not in self.params}
        self.buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        self.shapes = [p.shape for p in self.params.values()]
        self.sizes = [p.numel() for p in self.params.values()]
        self.n = sum(self.sizes)
        self.dtype, self.device = dtype, torch.device(device)
        batches = as_batches(data, batch_size=batch_size, device=self.device, dtype=dtype)
        if subset is not None:
            batches = _take(batches, subset)
        self.batches = batches
        self.num_examples = sum(int(y.shape[0]) for _, y in batches)
        check_model_data(self.model, batches, classification=loss_fn is None)
        self.loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y))
        self.weight_decay = float(weight_decay)
        self.bn_mode = bn_mode
        self.num_matvecs = 0
        self.method = "n/a"

    # -- flat <-> dict ------------------------------------------------------------------
    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = v[i : i + size].view(shape)
            i += size
        return out

    def flatten(self, d: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([d[n].reshape(-1) for n in self.names])

    @property
    def semantics(self) -> dict[str, Any]:
        return {
            "operator": self.kind,
            "loss": "mean over examples"
            + (
                f" + weight_decay/2 * ||theta||^2 (weight_decay={self.weight_decay})"
                if self.weight_decay
                else ""
            ),
            "num_examples": self.num_examples,
            "bn_mode": self.bn_mode,
            "dropout": "off",
            "parameters": len(self.names),
            "dimension": self.n,
            "dtype": str(self.dtype).replace("torch.", ""),
            "method": self.method,
        }

    def _batch_loss(self, p: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(self.model, ({**self.frozen, **p}, self.buffers), (x,))
        return self.loss_fn(out, y)

    def loss(self) -> float:
        with torch.no_grad():
            total = (
                sum(self._batch_loss(self.params, x, y) * y.shape[0] for x, y in self.batches)
                / self.num_examples
            )
            if self.weight_decay:
                total = total + 0.5 * self.weight_decay * sum(
                    (p**2).sum() for p in self.params.values()
                )
        return float(total)

    def gradient(self) -> Tensor:
        g = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for x, y in self.batches:
            gd = grad(lambda p, x=x, y=y: self._batch_loss(p, x, y))(self.params)
            g += self.flatten(gd) * (y.shape[0] / self.num_examples)
        if self.weight_decay:
            g += self.weight_decay * self.flatten(self.params)
        return g

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
        raise NotImplementedError

    def dense(self, block: int = 64) -> Tensor:
        """The full matrix, ``block`` columns per :meth:`matmat` (for tests and tiny models)."""
        eye = torch.eye(self.n, dtype=self.dtype, device=self.device)
        return torch.cat([self.matmat(eye[:, i : i + block]) for i in range(0, self.n, block)], 1)


class HessianOperator(CurvatureOperator):
    """Hessian-vector products of the full-dataset loss (see the module docstring)."""

    kind = "hessian"

    def __init__(self, model: nn.Module, data: Any, *, method: str = "auto", **kwargs: Any):
        super().__init__(model, data, **kwargs)
        if method not in HVP_METHODS:
            raise BasinscopeError(
                f"unknown HVP method {method!r}: expected one of {', '.join(HVP_METHODS)}"
            )
        if self.bn_mode == "train" and method == "forward-over-reverse":
            raise BasinscopeError(
                "forward-over-reverse HVPs do not support BatchNorm with batch statistics (bn_mode='train'); "
                "use method='double-backward' or bn_mode='eval'"
            )
        self.trial: dict[str, float] = {}
        if method == "auto":
            method = "double-backward" if self.bn_mode == "train" else self._choose()
        self.method = method

    def _fwd_rev(self, v: Tensor) -> Tensor:
        vd = self.unflatten(v)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for x, y in self.batches:
            g = grad(lambda p, x=x, y=y: self._batch_loss(p, x, y))
            _, hv = jvp(g, (self.params,), (vd,))
            out += self.flatten(hv) * (y.shape[0] / self.num_examples)
        return out

    def _double_backward(self, v: Tensor) -> Tensor:
        vd = self.unflatten(v)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for x, y in self.batches:
            p = {k: t.detach().requires_grad_(True) for k, t in self.params.items()}
            with torch.enable_grad():
                loss = self._batch_loss(p, x, y)
                gs = torch.autograd.grad(loss, list(p.values()), create_graph=True)
                dot = sum((g * vd[k]).sum() for g, k in zip(gs, p))
                hv = torch.autograd.grad(dot, list(p.values()), allow_unused=True)
            hv = [torch.zeros_like(t) if h is None else h for h, t in zip(hv, p.values())]
            out += torch.cat([h.reshape(-1) for h in hv]) * (y.shape[0] / self.num_examples)
        return out

    def _choose(self) -> str:
        v = torch.ones(self.n, dtype=self.dtype, device=self.device)
        first = self.batches
        self.batches = first[:1]
        try:
            for name, fn in (
                ("forward-over-reverse", self._fwd_rev),
                ("double-backward", self._double_backward),
            ):
                try:
                    fn(v)
                    t0 = time.perf_counter()
                    fn(v)
                    self.trial[name] = time.perf_counter() - t0
                except Exception:  # e.g. a module without a forward-mode rule
                    continue
        finally:
            self.batches = first
        if not self.trial:
            raise RuntimeError("neither HVP method works for this model")
        return min(self.trial, key=self.trial.get)

    def _matvec(self, v: Tensor) -> Tensor:
        return (
            self._fwd_rev(v) if self.method == "forward-over-reverse" else self._double_backward(v)
        )

    def matmat(self, vs: Tensor) -> Tensor:
        """Batched HVPs: ``vmap`` over the columns (forward-over-reverse ``jvp``, or the second
        backward pass of double backward with ``is_grads_batched``), else a loop."""
        if vs.shape[1] == 1:
            return super().matmat(vs)
        vs = vs.to(dtype=self.dtype, device=self.device)
        if self.method == "double-backward":
            out = self._double_backward_batched(vs)
            if out is None:  # a module without a batching rule: one product at a time
                return super().matmat(vs)
            self.num_matvecs += vs.shape[1]
            return out + self.weight_decay * vs if self.weight_decay else out
        if self.method != "forward-over-reverse":
            return super().matmat(vs)
        self.num_matvecs += vs.shape[1]
        out = torch.zeros_like(vs.T)
        for x, y in self.batches:
            g = grad(lambda p, x=x, y=y: self._batch_loss(p, x, y))

            def hvp(v, g=g):
                return self.flatten(jvp(g, (self.params,), (self.unflatten(v),))[1])

            out += vmap(hvp)(vs.T) * (y.shape[0] / self.num_examples)
        out = out.T
        return out + self.weight_decay * vs if self.weight_decay else out

    def _double_backward_batched(self, vs: Tensor) -> Tensor | None:
        """``H @ vs`` by double backward, the first backward pass shared by the columns."""
        k = vs.shape[1]
        out = torch.zeros(self.n, k, dtype=self.dtype, device=self.device)
        rows = [vs[i : i + s].T.reshape(k, *shape) for i, s, shape in self._slices()]
        for x, y in self.batches:
            p = {k_: t.detach().requires_grad_(True) for k_, t in self.params.items()}
            try:
                with torch.enable_grad(), warnings.catch_warnings():
                    warnings.simplefilter("error")  # vmap's slow fallback counts as missing
                    loss = self._batch_loss(p, x, y)
                    gs = torch.autograd.grad(loss, list(p.values()), create_graph=True)
                    hv = torch.autograd.grad(
                        gs, list(p.values()), rows, is_grads_batched=True, allow_unused=True
                    )
            except (RuntimeError, UserWarning):
                return None
            hv = [
                torch.zeros(k, *t.shape, dtype=t.dtype) if h is None else h
                for h, t in zip(hv, p.values())
            ]
            out += torch.cat([h.reshape(k, -1) for h in hv], 1).T * (y.shape[0] / self.num_examples)
        return out

    def _slices(self) -> list[tuple[int, int, torch.Size]]:
        out, i = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            out.append((i, size, shape))
            i += size
        return out


class GGNOperator(CurvatureOperator):
    """Generalized Gauss-Newton products :math:`\\frac1N\\sum_n J_n^\\top H^\\ell_n J_n v`.

    The loss Hessian with respect to the outputs, :math:`H^\\ell_n`, is applied exactly by
    differentiating the loss twice in the output (so any loss works, not only cross-entropy).
    """

    kind = "ggn"

    def _matvec(self, v: Tensor) -> Tensor:
        vd = self.unflatten(v)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for x, y in self.batches:

            def f(p, x=x):
                return functional_call(self.model, ({**self.frozen, **p}, self.buffers), (x,))

            logits, jv = jvp(f, (self.params,), (vd,))
            _, hjv = jvp(grad(lambda o, y=y: self.loss_fn(o, y)), (logits,), (jv,))
            _, pull = vjp(f, self.params)
            (jthjv,) = pull(hjv)
            out += self.flatten(jthjv) * (y.shape[0] / self.num_examples)
        return out


class EFOperator(CurvatureOperator):
    """Empirical Fisher :math:`\\frac1N \\sum_n g_n g_n^\\top v` with per-example gradients
    :math:`g_n = \\nabla_\\theta \\ell(f_\\theta(x_n), y_n)` (batch-size-1 loss)."""

    kind = "empirical_fisher"

    def _matvec(self, v: Tensor) -> Tensor:
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for x, y in self.batches:

            def one(xi, yi):
                return self.flatten(
                    grad(lambda p: self._batch_loss(p, xi[None], yi[None]))(self.params)
                )

            g = vmap(one)(x, y)  # (B, n)
            out += g.T @ (g @ v) / self.num_examples
        return out


def _take(batches, n: int):
    if n < 1:
        raise BasinscopeError(f"subset must be at least 1 example, got {n}")
    out, left = [], n
    for x, y in batches:
        if left <= 0:
            break
        out.append((x[:left], y[:left]))
        left -= len(y[:left])
    return out
