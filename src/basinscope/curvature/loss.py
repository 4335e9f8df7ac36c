"""The empirical loss of a model on a dataset: its value, gradient and Hessian-vector products.

.. math::  L(\\theta) = \\frac{1}{N} \\sum_{n=1}^{N} \\ell(f_\\theta(x_n), y_n)
           \\;[+\\; \\tfrac{\\lambda}{2}\\lVert\\theta\\rVert^2]

over every example of the data (or its first ``subset``), each batch's mean weighted by
its size :math:`|b|/N`. One :class:`EmpiricalLoss` serves every analysis that
differentiates the loss: the curvature operators (:mod:`basinscope.curvature.operators`)
take its Hessian-vector products, the sharpness measures
(:mod:`basinscope.analyses.sharpness`) its value and gradient at perturbed parameters.

How the model is run and which loss :math:`\\ell` is, is the **task**
(:class:`~basinscope.engine.task.Task`): a batch is split into the model's inputs and
targets, the model is called as ``model(x)``, ``model(*x)`` or ``model(**x)`` through
:func:`torch.func.functional_call`, the prediction is found in its output (a tensor,
``.logits``, a dict key, ...), and :math:`\\ell` is the task's per-example loss of the
prediction (cross-entropy by default, MSE, a user's callable) or the model's own loss
(``Task(loss="model")``: the output's ``.loss``, one mean per batch). A mean-reduced
``loss_fn(prediction, targets)`` may be given instead of a task, as before tasks existed.

Semantics, recorded in :attr:`EmpiricalLoss.semantics` (with ``task.describe()``): a
private copy of the model (the caller's is never modified) in eval mode (BatchNorm with
its stored statistics, dropout off), unless ``bn_mode="train"`` (BatchNorm with batch
statistics, no running-statistics updates); the weight-decay term is included only when
``weight_decay > 0``. Points are flat vectors over the selected parameters (``params``,
fnmatch patterns, in ``named_parameters()`` order); :meth:`EmpiricalLoss.flatten` and
:meth:`EmpiricalLoss.unflatten` convert to and from ``dict[str, Tensor]``.

Data in memory is moved to the device once; a DataLoader (any re-iterable of batches that
is not a list) is **streamed**: every pass reads it again, one batch on the device at a
time (:class:`~basinscope.engine.batches.StreamingBatches`), and ``subset`` keeps its
first examples without reading the rest. Sums over batches stay on the device; only the
scalars a method returns leave it.

Hessian-vector products (Pearlmutter 1994) by one of three methods: forward-over-reverse
(``jvp`` of ``grad``, :mod:`torch.func`), reverse-over-forward (``grad`` of the directional
derivative :math:`\\nabla L^\\top v` taken by ``jvp``: the gradient :math:`\\nabla L`
itself, which the product does not need, is never formed) or double backward (the gradient
of :math:`\\nabla L^\\top v`, the inner gradient by autograd); all also for many vectors at
once (:meth:`EmpiricalLoss.hvp_batched`). ``benchmarks/bench_hvp.py`` times each against
one gradient.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from basinscope.engine.batches import StreamingBatches, as_batches, streams
from basinscope.engine.fit import check_model_data
from basinscope.engine.task import Task, as_task, batch_size_of, functional_args
from basinscope.engine.task import first_examples as first_of
from basinscope.errors import BasinscopeError

__all__ = [
    "BN_MODES",
    "CURVATURE_DTYPES",
    "FORWARD_MODE_METHODS",
    "HVP_METHODS",
    "EmpiricalLoss",
    "curvature_dtype",
    "first_examples",
    "select_params",
]

#: How products with the Hessian are formed ("auto": the fastest, by a timed trial).
HVP_METHODS = ("auto", "forward-over-reverse", "reverse-over-forward", "double-backward")
#: The methods that take forward-mode derivatives (no BatchNorm with batch statistics).
FORWARD_MODE_METHODS = ("forward-over-reverse", "reverse-over-forward")
#: BatchNorm during the loss: stored statistics (eval) or those of each batch (train).
BN_MODES = ("eval", "train")
#: The precisions curvature is computed in.
CURVATURE_DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: Batches of ``(inputs, targets)``: a list in memory or a stream (a DataLoader's).
Batches = list[tuple[Any, Tensor]] | StreamingBatches


def forward_mode_ready() -> None:
    """Load torch's forward-mode (``jvp``) decompositions once, quietly: torch 2.13 scripts
    them with the deprecated ``torch.jit.script`` on first use, a DeprecationWarning that
    says nothing about the user's code."""
    global _FORWARD_MODE_READY
    if _FORWARD_MODE_READY:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script.*", category=DeprecationWarning
        )
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except ImportError:  # pragma: no cover - a torch without them loads nothing
            pass
    _FORWARD_MODE_READY = True


_FORWARD_MODE_READY = False


def curvature_dtype(dtype: Any, what: str = "dtype") -> torch.dtype:
    """``dtype`` (a name or a ``torch.dtype``) as float32 or float64, the precisions of
    curvature and sharpness; mixed precision (bfloat16, float16) is refused with why."""
    name = str(dtype).replace("torch.", "")
    if name in CURVATURE_DTYPES:
        return CURVATURE_DTYPES[name]
    if name in ("bfloat16", "float16", "half"):
        raise BasinscopeError(
            f"unknown {what} {name!r} for curvature and sharpness: {name} is mixed precision "
            "for evaluating points (surfaces, barriers), and gradients, Hessian-vector "
            "products and Lanczos need float32 or float64 (their round-off would swamp the "
            f"curvature): pass {what} float32 or float64"
        )
    raise BasinscopeError(f"unknown {what} {dtype!r}: expected float32 or float64")


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


def check_task_and_loss_fn(task: Any, loss_fn: Any) -> None:
    """Refuse a task together with a ``loss_fn``: the task says which loss it is."""
    if task is not None and loss_fn is not None:
        raise BasinscopeError(
            "pass either task= (how the model is called and which loss, e.g. "
            "Task(loss='mse')) or loss_fn= (a mean-reduced loss_fn(prediction, targets)), "
            "not both: give a task its loss as Task(loss=loss_fn)"
        )


def describe_loss(task: Task, loss_fn: Callable | None) -> dict[str, Any]:
    """How a result records the loss: ``task.describe()``, or a ``loss_fn``'s name."""
    if loss_fn is None:
        return task.describe()
    name = getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__
    mod = getattr(loss_fn, "__module__", None)
    return {
        **task.describe(),
        "loss": f"{mod}:{name}" if mod else name,
        "definition": "loss_fn(prediction, targets), a batch mean weighted by the batch size",
    }


class EmpiricalLoss:
    """The mean loss of a private copy of ``model`` over ``data`` (see the module docstring).

    Args:
        model: The network (copied; the copy is moved to ``device`` and ``dtype``).
        data: A ``TensorData``, an ``(x, y)`` pair, a dict of tensors, a list of batches
            or a DataLoader (streamed).
        params: fnmatch patterns of the parameters that vary (default: all); the others
            stay fixed at the model's values.
        task: How a batch is split, the model called and the loss measured
            (:class:`~basinscope.engine.task.Task`, or ``module:attr``; default:
            ``(x, y)`` batches, ``model(x)``, cross-entropy of the logits).
        loss_fn: Instead of a task's loss: ``loss_fn(prediction, targets)``, a batch mean.
        batch_size: Examples per forward pass (of data in memory).
        subset: Only the first ``subset`` examples (all of them when there are fewer).
        weight_decay: :math:`\\lambda` of the term :math:`\\tfrac{\\lambda}{2}\\lVert\\theta\\rVert^2`.
        bn_mode: ``"eval"`` (stored statistics) or ``"train"`` (batch statistics).
        dtype, device: Where and in which precision the loss is computed (float32 or
            float64; mixed precision is refused).
    """

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
        check_task_and_loss_fn(task, loss_fn)
        if bn_mode not in BN_MODES:
            raise BasinscopeError(
                f"unknown bn_mode {bn_mode!r}: expected 'eval' (stored statistics) or 'train' (batch statistics)"
            )
        if subset is not None and subset < 1:
            raise BasinscopeError(f"subset must be at least 1 example, got {subset}")
        dtype = curvature_dtype(dtype)
        self.task = as_task(task)
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
        batches = as_batches(
            data, batch_size=batch_size, device=self.device, dtype=dtype, task=self.task
        )
        if subset is not None:
            batches = _take(batches, subset)
        self.batches: Batches = batches
        self._num_examples: int | None = None
        check_model_data(
            self.model,
            batches,
            classification=loss_fn is None and self.task.loss == "cross_entropy",
            task=self.task,
        )
        self.loss_fn = loss_fn
        self.weight_decay = float(weight_decay)
        self.bn_mode = bn_mode
        #: The model's parameters as one flat vector (where products are taken).
        self.theta: Tensor = self.flatten(self.params)
        #: Calls of value(), gradient() and value_and_grad() (a value with its gradient counts once).
        self.num_evaluations = 0

    @property
    def num_examples(self) -> int:
        """The number of examples of the loss (a streamed dataset is counted once)."""
        if self._num_examples is None:
            from basinscope.engine.batches import num_examples

            self._num_examples = num_examples(self.batches)
        return self._num_examples

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
        """Which loss this is: the mean, its terms, the task, the data size, BatchNorm,
        precision and device."""
        return {
            "loss": "mean over examples"
            + (
                f" + weight_decay/2 * ||theta||^2 (weight_decay={self.weight_decay})"
                if self.weight_decay
                else ""
            ),
            "task": describe_loss(self.task, self.loss_fn),
            "num_examples": self.num_examples,
            "bn_mode": self.bn_mode,
            "dropout": "off",
            "parameters": len(self.names),
            "dimension": self.n,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }

    # -- the model and the loss of one batch --------------------------------------------------
    def output(self, p: Mapping[str, Tensor], x: Any) -> Any:
        """The task's head of the model's output at the parameters ``p`` (a dict of the
        selected ones): the prediction, or ``(prediction, own loss)`` for loss "model"."""
        args, kwargs = functional_args(x)
        out = functional_call(self.model, ({**self.frozen, **p}, self.buffers), args, kwargs)
        if self.loss_fn is not None:
            return self.task.prediction(out)
        return self.task.head(out)

    def prediction(self, p: Mapping[str, Tensor], x: Any) -> Tensor:
        """The model's prediction (logits) at the parameters ``p``."""
        out = self.output(p, x)
        return out[0] if isinstance(out, tuple) else out

    @property
    def has_prediction_loss(self) -> bool:
        """Whether the loss is a function of the prediction (not the model's own loss)."""
        return self.loss_fn is not None or not self.task.model_loss

    def prediction_loss(self, pred: Tensor, y: Tensor) -> Tensor:
        """The mean loss of a batch as a function of its prediction (what the GGN
        differentiates twice and the empirical Fisher per example)."""
        if y.is_floating_point() and y.dtype != pred.dtype:
            y = y.to(pred.dtype)  # regression targets in the loss's precision
        if self.loss_fn is not None:
            return self.loss_fn(pred, y)
        if self.task.model_loss:
            raise BasinscopeError(
                "the model's own loss (loss 'model') is computed inside the model: there is "
                "no loss of its prediction to differentiate; use --loss cross_entropy "
                "(Task(loss='cross_entropy')), mse or a callable"
            )
        return self.task.loss_metric().fn(pred, y).mean()

    def batch_loss(self, p: Mapping[str, Tensor], x: Any, y: Tensor) -> Tensor:
        """The mean loss of one batch at the parameters ``p`` (a dict of the selected ones)."""
        out = self.output(p, x)
        if self.loss_fn is None and self.task.model_loss:
            return out[1]
        return self.prediction_loss(out, y)

    def _decay(self, theta: Tensor) -> float:
        return 0.5 * self.weight_decay * float((theta**2).sum()) if self.weight_decay else 0.0

    # -- value and gradient -----------------------------------------------------------------
    def value(self, theta: Tensor | None = None, batches: Batches | None = None) -> float:
        """:math:`L(\\theta)` (default: at the model's parameters; over ``batches`` instead
        of the data when given)."""
        theta = self.theta if theta is None else theta
        batches = self.batches if batches is None else batches
        self.num_evaluations += 1
        p = self.unflatten(theta.detach())
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        n = 0
        with torch.no_grad():
            for x, y in batches:
                total += self.batch_loss(p, x, y).double() * len(y)
                n += len(y)
        return float(total) / _nonempty(n) + self._decay(theta)

    def value_and_grad(
        self, theta: Tensor | None = None, batches: Batches | None = None
    ) -> tuple[float, Tensor]:
        """:math:`L(\\theta)` and :math:`\\nabla L(\\theta)` (a flat vector) by one backward
        pass per batch (default: at the model's parameters, over the data)."""
        theta = self.theta if theta is None else theta
        batches = self.batches if batches is None else batches
        self.num_evaluations += 1
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        g = torch.zeros_like(theta)
        n = 0
        for x, y in batches:
            t = theta.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self.batch_loss(self.unflatten(t), x, y)
                (gb,) = torch.autograd.grad(loss, t)
            total += loss.detach().double() * len(y)
            g += gb * len(y)
            n += len(y)
        value = float(total) / _nonempty(n)
        g /= n
        if self.weight_decay:
            value += self._decay(theta)
            g += self.weight_decay * theta.detach()
        return value, g

    def gradient(self, theta: Tensor | None = None, batches: Batches | None = None) -> Tensor:
        """:math:`\\nabla L(\\theta)` as a flat vector (see :meth:`value_and_grad`)."""
        return self.value_and_grad(theta, batches)[1]

    # -- Hessian-vector products ------------------------------------------------------------
    def hvp(
        self, v: Tensor, method: str = "forward-over-reverse", batches: Batches | None = None
    ) -> Tensor:
        """:math:`\\nabla^2 L\\, v` at the model's parameters (``method``: one of
        :data:`HVP_METHODS` but "auto"; over ``batches`` instead of the data when given)."""
        batches = self.batches if batches is None else batches
        if method == "double-backward":
            out = self._double_backward(v, batches)
        else:
            one = self._product(method)
            vd = self.unflatten(v)
            out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
            n = 0
            for x, y in batches:
                out += self.flatten(one(vd, x, y)) * len(y)
                n += len(y)
            out /= _nonempty(n)
        return out + self.weight_decay * v if self.weight_decay else out

    def _product(self, method: str) -> Callable[[dict[str, Tensor], Any, Tensor], dict]:
        """The Hessian-vector product of one batch's mean loss by a ``torch.func`` method:
        ``one(v, x, y)`` with ``v`` a parameter dict (``vmap`` can batch it over ``v``)."""
        forward_mode_ready()
        params = self.params
        if method == "forward-over-reverse":

            def one(v, x, y):
                g = grad(lambda p: self.batch_loss(p, x, y))
                return jvp(g, (params,), (v,))[1]

        elif method == "reverse-over-forward":

            def one(v, x, y):
                def directional(p):  # nabla L(p)^T v, by one forward-mode pass
                    return jvp(lambda q: self.batch_loss(q, x, y), (p,), (v,))[1]

                return grad(directional)(params)

        else:
            raise BasinscopeError(
                f"unknown HVP method {method!r}: expected one of {', '.join(HVP_METHODS[1:])}"
            )
        return one

    def _double_backward(self, v: Tensor, batches: Batches) -> Tensor:
        vd = self.unflatten(v)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        n = 0
        for x, y in batches:
            p = {k: t.detach().requires_grad_(True) for k, t in self.params.items()}
            with torch.enable_grad():
                loss = self.batch_loss(p, x, y)
                gs = torch.autograd.grad(loss, list(p.values()), create_graph=True)
                # the gradient's vector-Jacobian product with v: no graph for g . v
                # (10% of an MLP's product); a gradient that no parameter changes adds 0
                pairs = [(g, vd[k]) for g, k in zip(gs, p) if g.requires_grad]
                hv = (
                    torch.autograd.grad(
                        [g for g, _ in pairs],
                        list(p.values()),
                        [u for _, u in pairs],
                        allow_unused=True,
                    )
                    if pairs
                    else [None] * len(p)
                )
            hv = [torch.zeros_like(t) if h is None else h for h, t in zip(hv, p.values())]
            out += torch.cat([h.reshape(-1) for h in hv]) * y.shape[0]
            n += y.shape[0]
        return out / _nonempty(n)

    def hvp_batched(self, vs: Tensor, method: str) -> Tensor | None:
        """:math:`\\nabla^2 L\\, V` for the columns of ``vs`` (shape ``(n, k)``) at once:
        ``vmap`` over the product of a ``torch.func`` method (forward-over-reverse,
        reverse-over-forward), or the second backward pass with ``is_grads_batched``
        (double backward, the first pass shared by the columns). ``None`` when a module
        has no batching rule (then take one product at a time)."""
        if method == "double-backward":
            out = self._double_backward_batched(vs)
            if out is None:
                return None
        else:
            one = self._product(method)
            k = vs.shape[1]
            rows = {
                name: vs[i : i + s].T.reshape(k, *shape)
                for name, (i, s, shape) in zip(self.names, self.slices())
            }
            out = torch.zeros(k, self.n, dtype=self.dtype, device=self.device)
            n = 0
            for x, y in self.batches:
                hv = vmap(one, in_dims=(0, None, None))(rows, x, y)
                out += torch.cat([hv[name].reshape(k, -1) for name in self.names], 1) * len(y)
                n += len(y)
            out = (out / _nonempty(n)).T
        return out + self.weight_decay * vs if self.weight_decay else out

    def _double_backward_batched(self, vs: Tensor) -> Tensor | None:
        k = vs.shape[1]
        out = torch.zeros(self.n, k, dtype=self.dtype, device=self.device)
        rows = [vs[i : i + s].T.reshape(k, *shape) for i, s, shape in self.slices()]
        n = 0
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
            out += torch.cat([h.reshape(k, -1) for h in hv], 1).T * y.shape[0]
            n += y.shape[0]
        return out / _nonempty(n)


def _nonempty(n: int) -> int:
    if n == 0:
        raise BasinscopeError(
            "the dataset is empty: there is no loss to compute; check the data source and split"
        )
    return n


# -- the first examples of any data ----------------------------------------------------------
def _leading(batch: Any) -> int | None:
    """The number of examples of a raw batch: the length of its first tensor."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    if isinstance(batch, Mapping):
        items: Iterable = batch.values()
    elif isinstance(batch, (tuple, list)):
        items = batch
    else:
        return None
    for v in items:
        k = _leading(v)
        if k is not None:
            return k
    return None


def _head(batch: Any, k: int) -> Any:
    """The first ``k`` examples of a raw batch (every tensor in it sliced)."""
    if isinstance(batch, Tensor):
        return batch[:k] if batch.ndim else batch
    if isinstance(batch, Mapping):
        return {key: _head(v, k) for key, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_head(v, k) for v in batch)
    if isinstance(batch, list):
        return [_head(v, k) for v in batch]
    return batch


class FirstExamples:
    """The first ``n`` examples of a re-iterable of batches (a DataLoader), read lazily.

    Every pass reads the source again and stops after ``n`` examples (the last batch cut),
    so a subset of a streamed dataset is itself streamed: nothing past the ``n``-th example
    is read, and nothing is kept in memory. Batches may be ``(inputs, targets)`` pairs or
    dicts; every tensor in a batch is cut alike.
    """

    def __init__(self, source: Iterable, n: int):
        self.source, self.n = source, int(n)
        self._len: int | None = None

    def __iter__(self):
        left, count = self.n, 0
        for batch in self.source:
            size = _leading(batch)
            if size is None:
                raise BasinscopeError(
                    f"cannot take the first {self.n} examples of a batch of type "
                    f"{type(batch).__name__}: each batch should hold tensors (inputs, targets)"
                )
            yield batch if size <= left else _head(batch, left)
            left -= min(size, left)
            count += 1
            if left <= 0:  # before the source reads another batch
                break
        self._len = count

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self)
        return self._len


def _take(batches: Batches, n: int) -> Batches:
    """The first ``n`` examples of materialized or streamed ``(inputs, targets)`` batches."""
    if n < 1:
        raise BasinscopeError(f"subset must be at least 1 example, got {n}")
    if isinstance(batches, StreamingBatches):
        return StreamingBatches(
            FirstExamples(batches, n), device=batches.device, dtype=batches.dtype
        )
    out, left = [], n
    for x, y in batches:
        if left <= 0:
            break
        k = min(left, batch_size_of(x))
        out.append((first_of(x, k), y[:k]))
        left -= k
    return out


def first_examples(data: Any, n: int | None) -> Any:
    """The first ``n`` examples of ``data`` (all of them when it has fewer; ``None``: all).

    A dataset with ``subset`` (:class:`~basinscope.data.TensorData`) stays one, an ``(x, y)``
    pair stays a pair, a dict of tensors a dict; a list of batches becomes the list of its
    first batches (the last one cut), each in its own form (tuple or dict), and a DataLoader
    (any re-iterable that is not a list) a :class:`FirstExamples` of it, streamed like it.
    This is the ``subset`` of the loss, taken before the data is fingerprinted or measured.
    """
    if n is None:
        return data
    if n < 1:
        raise BasinscopeError(f"subset must be at least 1 example, got {n}")
    if hasattr(data, "subset") and hasattr(data, "__len__"):
        return data.subset(list(range(min(n, len(data)))))
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[0][:n], data[1][:n]
    if isinstance(data, Mapping) and data and all(isinstance(v, Tensor) for v in data.values()):
        return {k: v[:n] for k, v in data.items()}
    if streams(data):
        return FirstExamples(data, n)
    if isinstance(data, Iterable):
        return list(FirstExamples(data, n))
    return _take(as_batches(data), n)
