"""Curvature test references: tiny models, dense float64 Hessian/GGN/EF, explicit matrices."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def tiny_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 16, 10),
    )
    bn = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2 * 64, 10),
    )
    bn.train()
    with torch.no_grad():
        bn(torch.randn(32, 1, 8, 8))  # non-trivial running statistics
    bn.eval()
    return {
        "mlp": nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10)),
        "cnn": cnn,
        "bn_eval": bn,
    }


def flat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names=None):
    """(loss of a flat float64 parameter vector, the current flat vector)."""
    m = copy.deepcopy(model).double().eval()  # never mutate the caller's model
    params = dict(m.named_parameters())
    names = names or list(params)
    shapes = [params[n].shape for n in names]
    frozen = {k: v.detach() for k, v in params.items() if k not in names}
    buffers = dict(m.named_buffers())

    def loss(flat):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            ps[n] = flat[i : i + s.numel()].view(s)
            i += s.numel()
        return F.cross_entropy(functional_call(m, ({**frozen, **ps}, buffers), (x.double(),)), y)

    p0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    return loss, p0


def dense_hessian(model, x, y, names=None) -> torch.Tensor:
    """``torch.func.hessian`` (forward-over-reverse Jacobians) of the flat float64 loss."""
    loss, p0 = flat_loss(model, x, y, names)
    with warnings.catch_warnings():
        # torch 2.13 calls the deprecated torch.jit.script inside functorch's jacfwd
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script.*", category=DeprecationWarning
        )
        return torch.func.hessian(loss)(p0)


class MatrixOperator:
    """An explicit symmetric matrix behind the operator interface."""

    def __init__(self, a):
        self.a = torch.as_tensor(a, dtype=torch.float64)
        self.n = self.a.shape[0]
        self.num_matvecs = 0
        self.semantics = {"operator": "matrix", "dimension": self.n}

    def matvec(self, v):
        self.num_matvecs += 1
        return self.a @ v

    def matmat(self, vs):
        self.num_matvecs += vs.shape[1]
        return self.a @ vs

    def dense(self):
        return self.a.clone()


def spectrum_matrix(eigs, seed=0):
    """``Q diag(eigs) Q^T`` with a random orthogonal ``Q``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), dtype=torch.float64, generator=g))
    return (q * torch.as_tensor(eigs, dtype=torch.float64)) @ q.T
