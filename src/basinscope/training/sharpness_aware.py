"""Sharpness-aware gradients and penalties toward an anchor, for the trainer.

Each function works on the trained parameters ``params`` (a list) whose ``.grad`` holds
the minibatch gradient :math:`g = \\nabla L(w)` of the first (unperturbed) pass, and
leaves in ``.grad`` the gradient the optimizer steps with from :math:`w`
(definitions in :class:`~basinscope.training.TrainConfig`):

``sam``    :math:`\\nabla L(w + \\epsilon)`, :math:`\\epsilon = \\rho g / \\lVert g\\rVert`,
``asam``   :math:`\\nabla L(w + \\epsilon)`, :math:`\\epsilon = \\rho T_w^2 g / \\lVert T_w g
           \\rVert`, :math:`T_w = \\operatorname{diag}(|w| + \\eta)`,
``cflat``  SAM's gradient :math:`+ \\lambda\\rho\\,\\nabla\\lVert\\nabla L\\rVert(w +
           \\epsilon_1)` with :math:`\\epsilon_1 = \\rho h / \\lVert h\\rVert`,
           :math:`h = \\nabla\\lVert\\nabla L\\rVert(w)`: the gradient of the first-order
           flatness :math:`\\rho\\max_{\\lVert\\epsilon\\rVert\\le\\rho}\\lVert\\nabla L(w +
           \\epsilon)\\rVert` at its one-step maximiser (GAM, Zhang et al. 2023; C-Flat, Bian
           et al. 2024). Gradients of the gradient norm are Hessian-vector products by
           double backward.

The perturbed passes run with the BatchNorm momenta at 0, so the running statistics are
those of the first pass (the SAM authors' practice); batch statistics are used in every pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["penalty_term", "sharpness_aware_gradient"]


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm momenta at 0 for the block: batch statistics are used, running ones kept."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
        for m in bns
    ]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, tracked) in zip(bns, saved):
            m.momentum = mom
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _norm(vs: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum((v.double() ** 2).sum() for v in vs))


@torch.no_grad()
def _shift(params: Sequence[Tensor], eps: Sequence[Tensor], sign: float) -> None:
    for p, e in zip(params, eps):
        p.add_(e, alpha=sign)


def _grad_norm_gradient(loss_fn: Callable[[], Tensor], params: Sequence[Tensor]) -> list[Tensor]:
    """:math:`\\nabla\\lVert\\nabla L\\rVert` at the current parameters (double backward)."""
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    gn = torch.sqrt(sum((g**2).sum() for g in grads))
    return [h.detach() for h in torch.autograd.grad(gn, params)]


def sharpness_aware_gradient(
    kind: str,
    model: nn.Module,
    params: Sequence[nn.Parameter],
    loss_fn: Callable[[], Tensor],
    *,
    rho: float,
    eta: float = 0.01,
    lam: float = 0.2,
) -> None:
    """Replace ``p.grad`` of every ``params`` by the ``kind`` gradient (module docstring);
    ``loss_fn()`` recomputes the minibatch's loss at the current parameters."""
    g = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    if kind == "asam":
        t = [p.detach().abs() + eta for p in params]
        tg = [ti * gi for ti, gi in zip(t, g)]
        scale = rho / (_norm(tg) + 1e-12)
        eps = [(ti * ti * gi * scale).to(gi.dtype) for ti, gi in zip(t, g)]
    else:
        scale = rho / (_norm(g) + 1e-12)
        eps = [(gi * scale).to(gi.dtype) for gi in g]
    with frozen_bn_statistics(model):
        _shift(params, eps, 1.0)
        try:
            for p in params:
                p.grad = None
            loss_fn().backward()
            sam = [
                p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for p in params
            ]
        finally:
            _shift(params, eps, -1.0)
        if kind == "cflat":
            h = _grad_norm_gradient(loss_fn, params)
            e1 = [(hi * (rho / (_norm(h) + 1e-12))).to(hi.dtype) for hi in h]
            _shift(params, e1, 1.0)
            try:
                h1 = _grad_norm_gradient(loss_fn, params)
            finally:
                _shift(params, e1, -1.0)
            sam = [s + lam * rho * hi for s, hi in zip(sam, h1)]
    for p, s in zip(params, sam):
        p.grad = s


def penalty_term(
    kind: str,
    named: Mapping[str, nn.Parameter],
    anchor: Mapping[str, Tensor],
    importance: Mapping[str, Tensor] | None,
    strength: float,
) -> Tensor | None:
    """:math:`\\frac{\\alpha}{2}\\sum (w - w^0)^2` (``l2sp``) or
    :math:`\\frac{\\alpha}{2}\\sum F (w - w^0)^2` (``ewc``) over the ``named`` parameters."""
    if kind == "none" or strength == 0:
        return None
    total = None
    for k, p in named.items():
        d = p - anchor[k].to(device=p.device, dtype=p.dtype)
        term = (
            (d * d) if kind == "l2sp" else importance[k].to(device=p.device, dtype=p.dtype) * d * d
        )  # type: ignore[index]
        s = term.sum()
        total = s if total is None else total + s
    return None if total is None else 0.5 * strength * total
