"""The empirical loss of a model on a dataset: its value, gradient and Hessian-vector products.

.. math::  L(\\theta) = \\frac{1}{N} \\sum_{n=1}^{N} \\ell(f_\\theta(x_n), y_n)
           \\;[+\\; \\tfrac{\\lambda}{2}\\lVert\\theta\\rVert^2]

over every example of the data (or its first ``subset``), each batch's mean weighted by
its size :math:`|b|/N`. One :class:`EmpiricalLoss` serves every analysis that
differentiates the loss: the curvature operators (:mod:`basinscope.curvature.operators`)
take its Hessian-vector products, the sharpness measures
(:mod:`basinscope.analyses.sharpness`) its value and gradient at perturbed parameters.

Semantics, recorded in :attr:`EmpiricalLoss.semantics`: a private copy of the model (the
caller's is never modified) is called through :func:`torch.func.functional_call` in eval
mode (BatchNorm with its stored statistics, dropout off), unless ``bn_mode="train"``
(BatchNorm with batch statistics, no running-statistics updates); ``loss_fn`` defaults to
the cross-entropy of the logits; the weight-decay term is included only when
``weight_decay > 0``. Points are flat vectors over the selected parameters (``params``,
fnmatch patterns, in ``named_parameters()`` order); :meth:`EmpiricalLoss.flatten` and
:meth:`EmpiricalLoss.unflatten` convert to and from ``dict[str, Tensor]``.

Hessian-vector products (Pearlmutter 1994) by one of two methods: forward-over-reverse
(``jvp`` of ``grad``, :mod:`torch.func`) or double backward (the gradient of
:math:`\\nabla L^\\top v`); both also for many vectors at once (:meth:`EmpiricalLoss.hvp_batched`).
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from basinscope.engine.batches import as_batches
from basinscope.engine.fit import check_model_data
from basinscope.errors import BasinscopeError

__all__ = ["BN_MODES", "HVP_METHODS", "EmpiricalLoss", "first_examples", "select_params"]

#: How products with the Hessian are formed ("auto": the faster, by a timed trial).
HVP_METHODS = ("auto", "forward-over-reverse", "double-backward")
#: BatchNorm during the loss: stored statistics (eval) or those of each batch (train).
BN_MODES = ("eval", "train")

Batches = list[tuple[Tensor, Tensor]]


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


class EmpiricalLoss:
    """The mean loss of a private copy of ``model`` over ``data`` (see the module docstring).

    Args:
        model: The network (copied; the copy is moved to ``device`` and ``dtype``).
        data: A ``TensorData``, an ``(x, y)`` pair, a DataLoader or a list of batches.
        params: fnmatch patterns of the parameters that vary (default: all); the others
            stay fixed at the model's values.
        loss_fn: ``loss_fn(outputs, targets)``, a batch mean (default: cross-entropy).
        batch_size: Examples per forward pass.
        subset: Only the first ``subset`` examples (all of them when there are fewer).
        weight_decay: :math:`\\lambda` of the term :math:`\\tfrac{\\lambda}{2}\\lVert\\theta\\rVert^2`.
        bn_mode: ``"eval"`` (stored statistics) or ``"train"`` (batch statistics).
        dtype, device: Where and in which precision the loss is computed.
    """

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
        device: str | torch.device = "cpu",
    ):
        if bn_mode not in BN_MODES:
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
        self.batches: Batches = batches
        self.num_examples = sum(int(y.shape[0]) for _, y in batches)
        check_model_data(self.model, batches, classification=loss_fn is None)
        self.loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y))
        self.weight_decay = float(weight_decay)
        self.bn_mode = bn_mode
        #: The model's parameters as one flat vector (where products are taken).
        self.theta: Tensor = self.flatten(self.params)
        #: Calls of value(), gradient() and value_and_grad() (a value with its gradient counts once).
        self.num_evaluations = 0

    # -- points ---------------------------------------------------------------------------
    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """A flat vector as a parameter dict (views of ``v``)."""
        out, i = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = v[i : i + size].view(shape)
            i += size
        return out

    def flatten(self, d: Mapping[str, Tensor]) -> Tensor:
        """A parameter dict as one flat vector (in the order of :attr:`names`)."""
        return torch.cat([d[n].reshape(-1) for n in self.names])

    def slices(self) -> list[tuple[int, int, torch.Size]]:
        """``(start, size, shape)`` of each parameter in the flat vector."""
        out, i = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            out.append((i, size, shape))
            i += size
        return out

    @property
    def semantics(self) -> dict[str, Any]:
        """Which loss this is: the mean, its terms, the data size, BatchNorm, precision."""
        return {
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
        }

    # -- value and gradient -----------------------------------------------------------------
    def batch_loss(self, p: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """The mean loss of one batch at the parameters ``p`` (a dict of the selected ones)."""
        out = functional_call(self.model, ({**self.frozen, **p}, self.buffers), (x,))
        return self.loss_fn(out, y)

    def _decay(self, theta: Tensor) -> float:
        return 0.5 * self.weight_decay * float((theta**2).sum()) if self.weight_decay else 0.0

    def value(self, theta: Tensor | None = None, batches: Batches | None = None) -> float:
        """:math:`L(\\theta)` (default: at the model's parameters; over ``batches`` instead
        of the data when given)."""
        theta = self.theta if theta is None else theta
        batches = self.batches if batches is None else batches
        self.num_evaluations += 1
        n = sum(len(y) for _, y in batches)
        p = self.unflatten(theta.detach())
        total = 0.0
        with torch.no_grad():
            for x, y in batches:
                total += float(self.batch_loss(p, x, y)) * len(y) / n
        return total + self._decay(theta)

    def value_and_grad(
        self, theta: Tensor | None = None, batches: Batches | None = None
    ) -> tuple[float, Tensor]:
        """:math:`L(\\theta)` and :math:`\\nabla L(\\theta)` (a flat vector) by one backward
        pass per batch (default: at the model's parameters, over the data)."""
        theta = self.theta if theta is None else theta
        batches = self.batches if batches is None else batches
        self.num_evaluations += 1
        n = sum(len(y) for _, y in batches)
        total, g = 0.0, torch.zeros_like(theta)
        for x, y in batches:
            t = theta.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self.batch_loss(self.unflatten(t), x, y)
                (gb,) = torch.autograd.grad(loss, t)
            total += float(loss.detach()) * len(y) / n
            g += gb * (len(y) / n)
        if self.weight_decay:
            total += self._decay(theta)
            g += self.weight_decay * theta.detach()
        return total, g

    def gradient(self, theta: Tensor | None = None, batches: Batches | None = None) -> Tensor:
        """:math:`\\nabla L(\\theta)` as a flat vector (see :meth:`value_and_grad`)."""
        return self.value_and_grad(theta, batches)[1]

    # -- Hessian-vector products ------------------------------------------------------------
    def hvp(
        self, v: Tensor, method: str = "forward-over-reverse", batches: Batches | None = None
    ) -> Tensor:
        """:math:`\\nabla^2 L\\, v` at the model's parameters (``method``: forward-over-reverse
        or double-backward; over ``batches`` instead of the data when given)."""
        batches = self.batches if batches is None else batches
        n = sum(int(y.shape[0]) for _, y in batches)
        if method == "forward-over-reverse":
            out = self._fwd_rev(v, batches, n)
        elif method == "double-backward":
            out = self._double_backward(v, batches, n)
        else:
            raise BasinscopeError(
                f"unknown HVP method {method!r}: expected forward-over-reverse or double-backward"
            )
        return out + self.weight_decay * v if self.weight_decay else out

    def _fwd_rev(self, v: Tensor, batches: Batches, n: int) -> Tensor:
        vd = self.unflatten(v)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for x, y in batches:
            g = grad(lambda p, x=x, y=y: self.batch_loss(p, x, y))
            _, hv = jvp(g, (self.params,), (vd,))
            out += self.flatten(hv) * (y.shape[0] / n)
        return out

    def _double_backward(self, v: Tensor, batches: Batches, n: int) -> Tensor:
        vd = self.unflatten(v)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for x, y in batches:
            p = {k: t.detach().requires_grad_(True) for k, t in self.params.items()}
            with torch.enable_grad():
                loss = self.batch_loss(p, x, y)
                gs = torch.autograd.grad(loss, list(p.values()), create_graph=True)
                dot = sum((g * vd[k]).sum() for g, k in zip(gs, p))
                hv = torch.autograd.grad(dot, list(p.values()), allow_unused=True)
            hv = [torch.zeros_like(t) if h is None else h for h, t in zip(hv, p.values())]
            out += torch.cat([h.reshape(-1) for h in hv]) * (y.shape[0] / n)
        return out

    def hvp_batched(self, vs: Tensor, method: str) -> Tensor | None:
        """:math:`\\nabla^2 L\\, V` for the columns of ``vs`` (shape ``(n, k)``) at once:
        ``vmap`` over the ``jvp`` (forward-over-reverse), or the second backward pass with
        ``is_grads_batched`` (double backward, the first pass shared by the columns).
        ``None`` when a module has no batching rule (then take one product at a time)."""
        if method == "forward-over-reverse":
            out = torch.zeros_like(vs.T)
            for x, y in self.batches:
                g = grad(lambda p, x=x, y=y: self.batch_loss(p, x, y))

                def one(v, g=g):
                    return self.flatten(jvp(g, (self.params,), (self.unflatten(v),))[1])

                out += vmap(one)(vs.T) * (y.shape[0] / self.num_examples)
            out = out.T
        elif method == "double-backward":
            out = self._double_backward_batched(vs)
            if out is None:
                return None
        else:
            raise BasinscopeError(
                f"unknown HVP method {method!r}: expected forward-over-reverse or double-backward"
            )
        return out + self.weight_decay * vs if self.weight_decay else out

    def _double_backward_batched(self, vs: Tensor) -> Tensor | None:
        k = vs.shape[1]
        out = torch.zeros(self.n, k, dtype=self.dtype, device=self.device)
        rows = [vs[i : i + s].T.reshape(k, *shape) for i, s, shape in self.slices()]
        for x, y in self.batches:
            p = {k_: t.detach().requires_grad_(True) for k_, t in self.params.items()}
            try:
                with torch.enable_grad(), warnings.catch_warnings():
                    warnings.simplefilter("error")  # vmap's slow fallback counts as missing
                    loss = self.batch_loss(p, x, y)
                    gs = torch.autograd.grad(loss, list(p.values()), create_graph=True)
                    hv = torch.autograd.grad(
                        gs, list(p.values()), rows, is_grads_batched=True, allow_unused=True
                    )
            except (RuntimeError, UserWarning):
                return None
            hv = [
                torch.zeros(k, *t.shape, dtype=t.dtype, device=t.device) if h is None else h
                for h, t in zip(hv, p.values())
            ]
            out += torch.cat([h.reshape(k, -1) for h in hv], 1).T * (y.shape[0] / self.num_examples)
        return out


def _take(batches: Batches, n: int) -> Batches:
    if n < 1:
        raise BasinscopeError(f"subset must be at least 1 example, got {n}")
    out, left = [], n
    for x, y in batches:
        if left <= 0:
            break
        out.append((x[:left], y[:left]))
        left -= len(y[:left])
    return out


def first_examples(data: Any, n: int | None) -> Any:
    """The first ``n`` examples of ``data`` (all of them when it has fewer; ``None``: all).

    A dataset with ``subset`` (:class:`~basinscope.data.TensorData`) stays one, an ``(x, y)``
    pair stays a pair; any other form the engine reads becomes a list of batches. This is
    the ``subset`` of the loss, taken before the data is fingerprinted or measured.
    """
    if n is None:
        return data
    if hasattr(data, "subset") and hasattr(data, "__len__"):
        return data.subset(list(range(min(n, len(data)))))
    if isinstance(data, tuple) and len(data) == 2:
        return data[0][:n], data[1][:n]
    return _take(as_batches(data), n)
