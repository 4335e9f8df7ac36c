"""The evaluation engine: metrics at many parameter points over a whole dataset.

For every chunk of ``K`` points the engine reads each data batch once and evaluates all
``K`` points on it, either

``vmap``  with :func:`torch.func.functional_call` vectorized over the stacked parameters
          of the chunk (one big matmul per layer: fast for MLPs), or
``loop``  with a tight loop of ``functional_call`` over the points (no model copies, no
          state-dict loads: fast for convolutions, which ``vmap`` turns into grouped
          convolutions that are slow on CPUs), or
``compiled`` the loop with the per-point forward compiled by :func:`torch.compile`
          (inductor; a C++ compiler on a CPU): seconds of compilation per input shape,
          recorded in the trial info as ``compile_seconds``, then a faster forward pass
          where pooling, ReLU and small convolutions bound it (LeNet: about 2x the loop
          per point). Never chosen by ``auto``: it pays only for jobs with enough points.

On either strategy the first Linear/Conv2d layer is, where it applies, evaluated once on
the origin and each direction and combined per point (``first_layer``,
:mod:`basinscope.engine.first_layer`), and ``vmap`` runs a batch in blocks of examples that
stay in the CPU's cache (``VMAP_BLOCK_VALUES``).

``strategy="auto"`` times both on a trial chunk and keeps the faster (medians of
``TRIAL_ROUNDS`` alternating runs); the choice and the timings are recorded in the result (and in a run's manifest, where a resumed run reuses
it). The two strategies agree to rounding, not bit for bit: pin ``strategy`` to compare two
separate runs bitwise. The caller's model is never touched: the engine works
on a private copy. Non-finite values are recorded as they are.
"""

from __future__ import annotations

import copy
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from basinscope.engine.batches import Batches, as_batches
from basinscope.engine.bn import BN_POLICIES, has_batchnorm
from basinscope.engine.executors import Executor, LocalExecutor, current_executor
from basinscope.engine.first_layer import FIRST_LAYER_MODES, FirstLayer, split_first_layer
from basinscope.engine.fit import check_model_data
from basinscope.engine.metrics import (
    BUILTIN_METRICS,
    Metric,
    batch_values,
    class_major_sums,
    class_major_values,
)
from basinscope.engine.points import PointBasis, as_coeff_matrix, chunk_slices, points_dict
from basinscope.engine.precision import autocast, storage_dtype
from basinscope.engine.task import Task, as_task, first_examples, functional_args
from basinscope.errors import BasinscopeError

__all__ = [
    "MEMORY_FORMATS",
    "STRATEGIES",
    "ChunkJournal",
    "EvalJob",
    "EvalResult",
    "Evaluator",
    "LocalExecutor",
    "evaluate_model",
    "evaluate_points",
]

STRATEGIES = ("auto", "vmap", "loop", "compiled")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
TRIAL_POINTS = 16
TRIAL_EXAMPLES = 512
#: Timed runs of each strategy in the trial (alternating, after one warm-up each); the
#: medians decide, so one slow run caused by another process does not. The trial stops
#: after ``TRIAL_MIN_ROUNDS`` when every run of one strategy beat every run of the other by
#: ``TRIAL_CLEAR_MARGIN`` (no later run could change the median's verdict by noise alone),
#: and runs all ``TRIAL_ROUNDS`` when the two are close.
TRIAL_ROUNDS = 5
TRIAL_MIN_ROUNDS = 2
TRIAL_CLEAR_MARGIN = 1.5
#: A job whose points and examples are known (data in memory) also stops its trial after
#: ``TRIAL_MIN_ROUNDS`` once the trial has taken this fraction of the job's projected time
#: (the faster median scaled to all its points and examples): on a small job, more rounds
#: to tell two close strategies apart would cost more than the closer choice could save.
TRIAL_BUDGET = 0.05
#: The first layer's outputs on the basis are kept per batch (data in memory) up to this
#: many bytes; past it they are computed again for every chunk.
FIRST_LAYER_CACHE_BYTES = 256 * 2**20
#: The per-point strategies (``loop``, ``compiled``) evaluate a split held in memory (up to
#: ``POINT_SPLIT_BYTES`` of inputs) in equal batches of as many examples as keep the widest
#: activation within ``POINT_BATCH_VALUES`` values (16 MiB in float32), never fewer than the
#: job's batch size: one forward pass per point where the batch size alone would make
#: several. On the 1,797 digits a compiled LeNet point takes 1.18x as long as 1,024 + 773
#: examples as in one pass of 1,797.
POINT_BATCH_VALUES = 2**22
POINT_SPLIT_BYTES = 256 * 2**20
#: ``vmap`` evaluates a batch in blocks of examples whose widest activation, over all the
#: chunk's points, holds at most this many values (8 MiB in float32): the block stays in
#: the CPU's cache between layers. For the 64-128-10 MLP on digits that is 256 examples
#: per block of 64 points, 2x faster than whole 1,024-example batches.
VMAP_BLOCK_VALUES = 2**21


@dataclass(frozen=True)
class EvalJob:
    """Everything a worker needs to evaluate chunks of points (the unit shipped to executors)."""

    model: nn.Module
    basis: PointBasis
    datasets: Mapping[str, Any]
    metrics: Sequence[str | Metric | Callable] = ("loss", "accuracy")
    #: examples per forward pass, a bound on memory (``loop`` and ``compiled`` join the
    #: batches of data in memory up to ``POINT_BATCH_VALUES``: ``_per_point_batches``)
    batch_size: int = 1024
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    bn_policy: str = "stored"
    bn_data: Any = None
    bn_batches: int = 10
    bn_batch_size: int = 128
    strategy: str = "auto"
    #: ``per_example(coeffs, values)`` receives each chunk's per-example values (``{name:
    #: (K, N) float64}``) before they are averaged: the seam for statistics over examples
    #: (a barrier's bootstrap). The chunk's means are then those values' means.
    per_example: Callable[[np.ndarray, dict[str, np.ndarray]], None] | None = None
    #: How the model is run on a batch and what "loss" means (:class:`~basinscope.engine.task.Task`).
    task: Task = field(default_factory=Task)
    #: ``"basis"``: evaluate the first Linear/Conv2d layer once per direction and batch and
    #: combine per point (:mod:`basinscope.engine.first_layer`); ``"plain"``: the whole
    #: model per point; ``"auto"``: ``"basis"`` wherever it applies. The path taken, and
    #: why ``auto`` did not take it, are recorded in the trial info.
    first_layer: str = "auto"
    #: The loop strategy's convolution weights: ``"channels_last"`` (re-strided per point,
    #: ~1.9x faster oneDNN convolutions for LeNet-28 on a CPU), ``"contiguous"`` (as stored),
    #: or ``"auto"``: channels-last for a model with 2-D convolutions on the CPU. Recorded in
    #: the trial info (``memory_format``); results differ from ``"contiguous"`` by rounding.
    memory_format: str = "auto"

    def __post_init__(self) -> None:
        if self.bn_policy not in BN_POLICIES:
            raise BasinscopeError(
                f"unknown BatchNorm policy {self.bn_policy!r}: expected one of {', '.join(BN_POLICIES)}"
            )
        if self.strategy not in STRATEGIES:
            raise BasinscopeError(
                f"unknown strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}"
            )
        if self.memory_format not in MEMORY_FORMATS:
            raise BasinscopeError(
                f"unknown memory_format {self.memory_format!r}: expected one of "
                f"{', '.join(MEMORY_FORMATS)}"
            )
        if self.first_layer not in FIRST_LAYER_MODES:
            raise BasinscopeError(
                f"unknown first_layer {self.first_layer!r}: expected one of "
                f"{', '.join(FIRST_LAYER_MODES)}"
            )
        if self.bn_policy == "recompute" and has_batchnorm(self.model) and self.bn_data is None:
            raise BasinscopeError(
                "bn_policy='recompute' needs bn_data: the training data to re-estimate statistics from"
            )
        if not self.datasets:
            raise BasinscopeError(
                "no datasets given: pass at least one split, e.g. {'train': data}"
            )

    def build(self) -> Evaluator:
        return Evaluator(self)


class Evaluator:
    """A worker's state: private model copy, data batches and basis on the device."""

    def __init__(self, job: EvalJob):
        self.job = job
        self.device = torch.device(job.device)
        # bfloat16/float16: float32 storage, forward passes under autocast (precision.py)
        self.dtype, self.autocast = storage_dtype(job.dtype)
        model = copy.deepcopy(job.model).to(device=self.device, dtype=self.dtype)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.task = task = as_task(job.task)
        self.splits = {
            name: as_batches(
                data, batch_size=job.batch_size, device=self.device, dtype=self.dtype, task=task
            )
            for name, data in job.datasets.items()
        }
        _, targets = next(iter(next(iter(self.splits.values()))))
        self.metrics = task.resolve_metrics(job.metrics, targets)
        self.own_loss = [m.name == "loss" and task.model_loss for m in self.metrics]
        # one forward pass per split before any work: inputs, logits and labels fit the model
        classification = any(m is BUILTIN_METRICS.get(m.name) for m in self.metrics)
        for name, batches in self.splits.items():
            check_model_data(
                model, batches, what=f"split {name!r}", classification=classification, task=task
            )
        self.recompute_bn = job.bn_policy == "recompute" and has_batchnorm(model)
        self.bn_modules = [
            m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        self.bn_batches: Batches = []
        if self.recompute_bn:
            bn_all = as_batches(
                job.bn_data,
                batch_size=job.bn_batch_size,
                device=self.device,
                dtype=self.dtype,
                task=task,
            )
            self.bn_batches = list(bn_all[: job.bn_batches])
        self.buffers = {k: v.detach().to(self.device) for k, v in job.basis.buffers.items()}
        if not self.buffers:
            self.buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
        else:
            self.buffers = {
                k: (v.to(self.dtype) if v.is_floating_point() else v)
                for k, v in self.buffers.items()
            }
        self.strategy = job.strategy if job.strategy != "auto" else None
        self.trial: dict[str, Any] = {}
        self.first = self._plan_first_layer()
        convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
        self.channels_last = job.memory_format == "channels_last" or (
            job.memory_format == "auto" and convs and self.device.type == "cpu"
        )
        self.trial["memory_format"] = "channels_last" if self.channels_last else "contiguous"
        self.widest = _widest_activation(model, self.splits, self.task)
        self._first_cache: dict[tuple[str, int], Tensor] = {}
        self._first_cache_bytes = 0
        self._point_splits: dict[str, Batches] = {}
        self._compiled: dict[str, Callable[..., Any]] = {}
        self._compiled_shapes: set[tuple[Any, ...]] = set()

    def _plan_first_layer(self) -> FirstLayer | None:
        """The model cut after its first layer when the basis path is taken (recorded in
        ``trial["first_layer"]``, with the reason when ``auto`` does not take it)."""
        mode = self.job.first_layer
        first, why = None, ""
        if mode != "plain":
            x0, _ = next(iter(next(iter(self.splits.values()))))
            if self.autocast is not None:
                why = "the precision is autocast (bfloat16/float16): the combination would round in it"
            elif not isinstance(x0, Tensor) or self.task.call == "keywords":
                why = "the model is not called on one input tensor"
            elif self.model._forward_hooks or self.model._forward_pre_hooks:
                why = "the model has forward hooks, which run on whole forward passes only"
            else:
                first, why = split_first_layer(self.model)
        if first is None and mode == "basis":
            raise BasinscopeError(
                f"first_layer='basis' needs a model whose input goes into one Linear or "
                f"Conv2d layer, but {why}: use first_layer='auto' or 'plain'"
            )
        self.trial["first_layer"] = "plain" if first is None else "basis"
        if first is None and mode == "auto":
            self.trial["first_layer_reason"] = why
        if first is None:
            return None
        self.tail_params = {n for n, _ in first.tail.named_parameters()}
        self.tail_buffers = {n for n, _ in first.tail.named_buffers()}
        return first

    def adopt(self, strategy: str, trial: Mapping[str, Any]) -> None:
        """Compute as ``trial`` records (a resumed run's journal, or the driver's choice
        on a Ray worker): its strategy, and the first-layer path only where it was taken.
        A journal written before the first-layer path existed has no ``first_layer``
        entry: its chunks were computed plainly, so the rest are too (no mixed rounding)."""
        self.strategy = strategy
        self.trial = dict(trial)
        if self.trial.get("first_layer", "plain") != "basis":
            self.first = None
        self.channels_last = self.trial.get("memory_format", "contiguous") == "channels_last"

    @property
    def names(self) -> list[str]:
        return [f"{s}_{m.name}" for s in self.splits for m in self.metrics]

    # -- strategy -----------------------------------------------------------------
    def choose_strategy(self, trial_coeffs: np.ndarray, total_points: int | None = None) -> str:
        """Time ``vmap`` and ``loop`` on a small trial and keep the faster.

        The trial is at most ``TRIAL_POINTS`` points of the first chunk (and at most an
        eighth of the job's ``total_points``, so a small job is not dominated by it) on at most
        ``TRIAL_EXAMPLES`` examples of the first batch (BatchNorm statistics, when
        re-estimated, from one batch), on the same first-layer path as the chunks (the
        examples' first-layer outputs computed once, in the warm-up, so the timed runs
        compare the strategies' own work, as in the chunks): one untimed warm-up of each
        strategy, then up to ``TRIAL_ROUNDS`` alternating timed runs of each
        (``TRIAL_MIN_ROUNDS`` when one is clearly faster; ``trial["trial_rounds"]``).
        The medians decide, and every timing is recorded in ``trial`` (``<strategy>_seconds``
        the median, ``<strategy>_runs`` all of them).
        """
        if self.strategy is not None:
            return self.strategy
        k = TRIAL_POINTS if total_points is None else min(TRIAL_POINTS, max(2, total_points // 8))
        c = torch.as_tensor(trial_coeffs, dtype=torch.float64)[:k]
        first = next(iter(self.splits))
        x0, y0 = next(iter(self.splits[first]))
        batches = [(first_examples(x0, TRIAL_EXAMPLES), y0[:TRIAL_EXAMPLES])]
        runs: dict[str, list[float]] = {}
        examples = [sum(y.shape[0] for _, y in b) for b in self.splits.values() if _in_memory(b)]
        scale = None  # the job's points and examples over the trial's
        if total_points is not None and len(examples) == len(self.splits):
            scale = total_points / c.shape[0] * sum(examples) / y0[:TRIAL_EXAMPLES].shape[0]
        all_bn = self.bn_batches
        self.bn_batches = all_bn[
            :1
        ]  # statistics from one batch are enough to time the forward passes
        try:
            with autocast(self.device, self.autocast):
                self._time_strategies(c, {first: batches}, runs, scale)
        finally:
            self.bn_batches = all_bn
            for key in [key for key in self._first_cache if key[0] == (first, "trial")]:
                t = self._first_cache.pop(key)
                self._first_cache_bytes -= t.numel() * t.element_size()
        if not runs:
            raise RuntimeError(f"neither evaluation strategy works for this model: {self.trial}")
        timings = {name: float(np.median(r)) for name, r in runs.items()}
        self.strategy = min(timings, key=timings.get)
        self.trial.update({f"{k}_seconds": v for k, v in timings.items()})
        self.trial.update({f"{k}_runs": list(r) for k, r in runs.items()})
        self.trial["trial_points"] = int(c.shape[0])
        self.trial["trial_examples"] = int(y0[:TRIAL_EXAMPLES].shape[0])
        return self.strategy

    def _time_strategies(
        self,
        c: Tensor,
        splits: Mapping[str, Batches],
        runs: dict[str, list[float]],
        scale: float | None,
    ) -> None:
        working = []
        t_start = time.perf_counter()
        for name in ("vmap", "loop"):
            try:
                self._run(c, splits, name, trial=True)  # warm-up
                working.append(name)
            except Exception as e:  # vmap can fail on exotic modules; the loop always works
                self.trial[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
        self.trial["trial_stop"] = "rounds"
        for done in range(1, TRIAL_ROUNDS + 1):  # alternating: a load spike hits both
            for name in working:
                t0 = time.perf_counter()
                self._run(c, splits, name, trial=True)
                runs.setdefault(name, []).append(time.perf_counter() - t0)
            self.trial["trial_rounds"] = done
            if done < TRIAL_MIN_ROUNDS or done == TRIAL_ROUNDS:
                continue
            if _clearly_apart(runs.values(), TRIAL_CLEAR_MARGIN):
                self.trial["trial_stop"] = "apart"
                break
            fastest = min(float(np.median(r)) for r in runs.values())
            if (
                scale is not None
                and time.perf_counter() - t_start >= TRIAL_BUDGET * fastest * scale
            ):
                self.trial["trial_stop"] = "budget"
                break

    # -- evaluation -----------------------------------------------------------------
    def evaluate_chunk(self, coeffs: np.ndarray) -> dict[str, np.ndarray]:
        """Metric values (float64 arrays of length K) for a chunk of K coefficient rows."""
        if self.strategy is None:
            self.choose_strategy(coeffs)
        c = torch.as_tensor(np.asarray(coeffs), dtype=torch.float64)
        if self.job.per_example is None:
            with autocast(self.device, self.autocast):
                return self._run(c, self.splits, self.strategy)
        with autocast(self.device, self.autocast):
            per = self.per_example_values(c)
        self.job.per_example(np.asarray(coeffs, dtype=np.float64), per)
        return {name: v.sum(axis=1) / v.shape[1] for name, v in per.items()}

    @torch.no_grad()
    def per_example_values(self, c: Tensor) -> dict[str, np.ndarray]:
        """``{split_metric: (K, N) float64}``: each metric of each example at each point (the
        metrics must be per-example ones, like loss and error)."""
        params, moving = self._stacked(c, self.strategy)
        k = c.shape[0]
        bufs = (
            self._recompute_stats(params, moving, k, self.strategy) if self.recompute_bn else moving
        )
        if any(self.own_loss):
            raise BasinscopeError(
                "per-example values (a barrier's bootstrap) need a per-example loss, and loss "
                "'model' is one mean per batch: use --loss cross_entropy (or a callable), or "
                "no bootstrap"
            )
        out: dict[str, np.ndarray] = {}
        for split, batches in self.splits.items():
            cols: dict[str, list[Tensor]] = {m.name: [] for m in self.metrics}
            for index, (x, y) in enumerate(batches):
                inp = self._batch_inputs((split, index), x, _in_memory(batches))
                if self.strategy == "vmap":
                    outs = self._forward_vmap(params, bufs, inp, c)
                    outs = outs[0] if isinstance(outs, tuple) else outs  # the prediction
                    flat = outs.reshape(k * outs.shape[1], *outs.shape[2:])
                    yy = y.unsqueeze(0).expand(k, *y.shape).reshape(k * y.shape[0], *y.shape[1:])
                    for m in self.metrics:
                        v = class_major_values(m, outs, y)
                        v = m.fn(flat, yy).reshape(k, -1) if v is None else v
                        cols[m.name].append(v.double())
                else:
                    vals: dict[str, list[Tensor]] = {m.name: [] for m in self.metrics}
                    rows = c.tolist()
                    compiled = self.strategy == "compiled"
                    for i in range(k):
                        o = self._forward_one(params, bufs, i, inp, rows[i], compiled)
                        o = o[0] if isinstance(o, tuple) else o
                        for m in self.metrics:
                            v = class_major_values(m, o.unsqueeze(0), y) if o.ndim == 2 else None
                            vals[m.name].append((m.fn(o, y) if v is None else v[0]).double())
                    for m in self.metrics:
                        cols[m.name].append(torch.stack(vals[m.name]))
            for m in self.metrics:
                out[f"{split}_{m.name}"] = torch.cat(cols[m.name], dim=1).cpu().numpy()
        return out

    @torch.no_grad()
    def _run(
        self, c: Tensor, splits: Mapping[str, Batches], strategy: str, trial: bool = False
    ) -> dict[str, np.ndarray]:
        """Every metric of every split at the chunk's points ``c`` with ``strategy``.
        ``trial``: ``splits`` are the strategy trial's examples (cut from a split's first
        batch), whose first-layer outputs are kept apart from the split's own."""
        params, moving = self._stacked(c, strategy)
        k = c.shape[0]
        rows = c.tolist()
        if self.recompute_bn:
            bufs = self._recompute_stats(params, moving, k, strategy)
        else:
            bufs = moving
        out: dict[str, np.ndarray] = {}
        for split, batches in splits.items():
            keep = trial or _in_memory(self.splits.get(split))
            key: Any = (split, "trial") if trial else split
            if strategy != "vmap" and not trial:
                key, batches = (split, "point"), self._per_point_batches(split)
            # sums stay on the device: one transfer per split and chunk, not per batch
            sums = torch.zeros(len(self.metrics), k, dtype=torch.float64, device=self.device)
            n = 0
            for index, (x, y) in enumerate(batches):
                n += y.shape[0]
                inp = self._batch_inputs((key, index), x, keep)
                if strategy == "vmap":
                    for xb, yb in self._blocks(inp, y, k):
                        outs = self._forward_vmap(params, bufs, xb, c)
                        pred, own = outs if isinstance(outs, tuple) else (outs, None)
                        for j, m in enumerate(self.metrics):
                            if self.own_loss[j]:
                                sums[j] += own.double() * yb.shape[0]
                            else:
                                sums[j] += self._metric_stacked(m, pred, yb)
                elif strategy == "compiled":  # the metrics' sums are compiled too
                    for i in range(k):
                        p, b = self._point_state(params, bufs, i)
                        args = (p, b, inp, self._point_tensor(rows[i]), y)
                        sums[:, i] += self._call_compiled(self._point_sums, args)
                else:
                    for i in range(k):
                        o = self._forward_one(params, bufs, i, inp, rows[i])
                        pred, own = o if isinstance(o, tuple) else (o, None)
                        for j, m in enumerate(self.metrics):
                            if self.own_loss[j]:
                                sums[j, i] += own.double() * y.shape[0]
                            else:
                                sums[j, i] += self._metric_one(m, pred, y)
            sums = sums.cpu()
            for j, m in enumerate(self.metrics):
                out[f"{split}_{m.name}"] = (sums[j] / n).numpy()
        return out

    def _per_point_batches(self, split: str) -> Batches:
        """The split's batches for the per-point strategies: a split in memory, one tensor
        of inputs per batch, up to ``POINT_SPLIT_BYTES``, joined and cut again into equal
        batches of up to ``POINT_BATCH_VALUES // widest`` examples (kept; the order of the
        examples is unchanged); any other split, or any split of a model whose activations
        could not be sized on one example, as it is."""
        if split in self._point_splits:
            return self._point_splits[split]
        batches = self.splits[split]
        out = batches
        if (
            _in_memory(batches)
            and len(batches) > 1
            and self.widest > 0  # the activations' size is known
            and all(isinstance(x, Tensor) and isinstance(y, Tensor) for x, y in batches)
            and sum(x.numel() * x.element_size() for x, _ in batches) <= POINT_SPLIT_BYTES
        ):
            n = sum(y.shape[0] for _, y in batches)
            size = max(max(y.shape[0] for _, y in batches), POINT_BATCH_VALUES // self.widest)
            parts = -(-n // size)
            if parts < len(batches):
                x = torch.cat([x for x, _ in batches])
                y = torch.cat([y for _, y in batches])
                out = list(zip(x.tensor_split(parts), y.tensor_split(parts), strict=True))
        self._point_splits[split] = out
        return out

    def _batch_inputs(self, key: tuple[Any, int], x, keep: bool):
        """What the per-point forward passes read for a batch: its inputs, or on the basis
        path the first layer's outputs on the basis, kept under ``key`` (a split, or its
        per-point batches or trial examples, and the batch's index) when ``keep`` (data in
        memory), up to ``FIRST_LAYER_CACHE_BYTES``."""
        if self.first is None:
            return x
        if key in self._first_cache:
            return self._first_cache[key]
        outputs = self.first.basis_outputs(self.job.basis, x, self.dtype)
        if self.channels_last and outputs.dim() == 5:  # each (N, C, H, W) slice channels-last
            outputs = outputs.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        size = outputs.numel() * outputs.element_size()
        if keep and self._first_cache_bytes + size <= FIRST_LAYER_CACHE_BYTES:
            self._first_cache[key] = outputs
            self._first_cache_bytes += size
        return outputs

    def _blocks(self, inp, y: Tensor, k: int) -> list[tuple[Any, Tensor]]:
        """The batch in blocks of examples for ``vmap`` (``VMAP_BLOCK_VALUES``); the whole
        batch when the model reads its own loss (one mean per call) or the inputs are not
        one tensor."""
        n = y.shape[0]
        size = max(16, VMAP_BLOCK_VALUES // max(1, k * self.widest))
        if size >= n or any(self.own_loss) or not isinstance(inp, Tensor):
            return [(inp, y)]
        if self.first is not None:  # the first layer's outputs: (dim + 1, N, ...)
            return [(inp[:, s : s + size], y[s : s + size]) for s in range(0, n, size)]
        return [(inp[s : s + size], y[s : s + size]) for s in range(0, n, size)]

    def _call(self, p, b, x):
        args, kwargs = functional_args(x)
        return self.task.head(functional_call(self.model, (p, b), args, kwargs))

    def _call_tail(self, p, b, h: Tensor):
        p = {k: v for k, v in p.items() if k in self.tail_params}
        b = {k: v for k, v in b.items() if k in self.tail_buffers}
        return self.task.head(functional_call(self.first.tail, (p, b), (h,)))

    def _stacked(self, c: Tensor, strategy: str):
        """The chunk's stacked parameters and moving buffers. For the loop with channels-last
        chosen, each stacked convolution weight ``(K, O, I, kh, kw)`` is laid out once per
        chunk so that every point's slice has channels-last strides (what
        ``w.clone(memory_format=torch.channels_last)`` gives; ``contiguous`` would keep NCHW
        strides on a weight with one input channel, and oneDNN would take its slow path)."""
        params, moving = self.job.basis.stacked(c, self.dtype, self.device)
        if self.channels_last and strategy in ("loop", "compiled"):
            params = {k: _channels_last_stack(v) if v.dim() == 5 else v for k, v in params.items()}
        return params, moving

    def _point_state(self, params, bufs, i: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Point ``i``'s parameters and buffers (its own moving ones, else the model's)."""
        return points_dict(params, i), points_dict(bufs, i) if bufs is not None else self.buffers

    def _forward_one(self, params, bufs, i: int, x, coeffs: list[float], compiled: bool = False):
        p, b = self._point_state(params, bufs, i)
        if compiled:  # the combination is compiled too: fused with what follows it
            return self._call_compiled(self._call_point, (p, b, x, self._point_tensor(coeffs)))
        if self.first is not None:  # x: the first layer's outputs on the basis
            return self._call_tail(p, b, FirstLayer.combine_one(x, coeffs))
        return self._call(p, b, x)

    def _call_point(self, p, b, x, c: Tensor | None):
        """The forward pass of one point; on the basis path ``x`` holds the first layer's
        outputs on the basis and ``c`` the point's coefficients (``dim`` values)."""
        if c is None:
            return self._call(p, b, x)
        h = x[0]
        for d in range(c.shape[0]):
            h = h + c[d] * x[1 + d]
        return self._call_tail(p, b, h)

    def _point_tensor(self, coeffs: list[float]) -> Tensor | None:
        """A point's coefficients as the compiled functions take them (basis path only)."""
        return torch.tensor(coeffs, dtype=self.dtype) if self.first is not None else None

    def _point_sums(self, p, b, x, c: Tensor | None, y: Tensor) -> Tensor:
        """The ``(metrics,)`` float64 sums over a batch of one point's metrics, as
        :meth:`_run` accumulates them: compiled with the forward pass, so the loss and
        arg-max are fused with the last layer instead of running as separate calls."""
        o = self._call_point(p, b, x, c)
        pred, own = o if isinstance(o, tuple) else (o, None)
        return torch.stack(
            [
                own.double() * y.shape[0] if self.own_loss[j] else batch_values(m, pred, y)
                for j, m in enumerate(self.metrics)
            ]
        )

    def _call_compiled(self, fn: Callable[..., Any], args: tuple[Any, ...]):
        """``fn(p, b, x, c, ...)`` (the per-point forward, or it with the metrics' sums)
        through :func:`torch.compile`. Each new input shape (a split's last, smaller batch)
        compiles once more; the seconds those first calls take are added to
        ``trial["compile_seconds"]``, and a failure to compile is an error that says how to
        go on without it."""
        key = fn.__name__
        x, c, rest = args[2], args[3], args[4:]
        shape = (key, _shapes(x), *(_shapes(r) for r in rest))
        if shape in self._compiled_shapes:
            return self._compiled[key](*args)
        t0 = time.perf_counter()  # importing inductor is part of the cost
        try:
            with warnings.catch_warnings():  # torch's own deprecations, met while importing
                warnings.simplefilter("ignore", DeprecationWarning)
                if key not in self._compiled:
                    self._compiled[key] = torch.compile(_own_copy(fn), dynamic=False)
                for t in _tensors(x):  # one compilation for every batch size
                    if t.ndim > (c is not None):
                        torch._dynamo.maybe_mark_dynamic(t, 0 if c is None else 1)
                for t in _tensors(rest):
                    if t.ndim:
                        torch._dynamo.maybe_mark_dynamic(t, 0)
                out = self._compiled[key](*args)
        except Exception as e:
            text = " ".join(str(e).split())[:300]
            raise BasinscopeError(
                f"strategy 'compiled' could not compile the per-point forward pass with "
                f"torch.compile ({type(e).__name__}: {text}); use strategy 'loop' "
                "(--strategy loop), which computes the same values without compiling, or "
                "install what the error names (on a CPU inductor needs a C++ compiler, g++ "
                "or the one in $CXX)"
            ) from None
        self._compiled_shapes.add(shape)
        self.trial["compile_seconds"] = self.trial.get("compile_seconds", 0.0) + (
            time.perf_counter() - t0
        )
        self.trial["compiled_shapes"] = len(self._compiled_shapes)
        return out

    def _forward_vmap(self, params, bufs, x, c: Tensor):
        if self.first is not None:  # x: the first layer's outputs on the basis
            h = FirstLayer.combine(x, c.to(device=x.device))
            if bufs is None:
                return vmap(lambda p, h: self._call_tail(p, self.buffers, h))(params, h)
            return vmap(lambda p, b, h: self._call_tail(p, b, h))(params, bufs, h)
        if bufs is None:
            return vmap(lambda p: self._call(p, self.buffers, x))(params)
        return vmap(lambda p, b: self._call(p, b, x))(params, bufs)

    @staticmethod
    def _metric_one(m: Metric, pred: Tensor, y: Tensor) -> Tensor:
        fast = class_major_sums(m, pred.unsqueeze(0), y) if pred.ndim == 2 else None
        return fast[0] if fast is not None else batch_values(m, pred, y)

    @staticmethod
    def _metric_stacked(m: Metric, outs: Tensor, y: Tensor) -> Tensor:
        fast = class_major_sums(m, outs, y)
        if fast is not None:
            return fast
        k, b = outs.shape[0], outs.shape[1]
        if m.per_example:
            yy = y.unsqueeze(0).expand(k, *y.shape).reshape(k * b, *y.shape[1:])
            v = m.fn(outs.reshape(k * b, *outs.shape[2:]), yy).reshape(k, b)
            return v.sum(dim=1, dtype=torch.float64)
        return torch.stack([m.fn(outs[i], y).double() * b for i in range(k)])

    def _recompute_stats(self, params, moving, k: int, strategy: str) -> dict[str, Tensor]:
        """Per-point BatchNorm statistics: cumulative average over the BN batches."""
        base = (
            moving
            if moving is not None
            else {name: v.expand(k, *v.shape).clone() for name, v in self.buffers.items()}
        )
        bufs = {name: v.clone() for name, v in base.items()}
        for name, v in bufs.items():
            if name.endswith("running_mean") or name.endswith("num_batches_tracked"):
                v.zero_()
            elif name.endswith("running_var"):
                v.fill_(1)
        for m in self.bn_modules:
            m.train()
        try:
            for t, (x, _) in enumerate(self.bn_batches, start=1):
                for m in self.bn_modules:
                    m.momentum = 1.0 / t  # cumulative average, as momentum=None
                if strategy == "vmap":
                    vmap(lambda p, b, x=x: self._call(p, b, x))(params, bufs)
                else:
                    for i in range(k):
                        self._call(points_dict(params, i), points_dict(bufs, i), x)
        finally:
            for m in self.bn_modules:
                m.eval()
        return bufs


def _widest_activation(model: nn.Module, splits: Mapping[str, Any], task: Task) -> int:
    """The most values any module outputs for one example (one forward pass on the
    first example of the first split), which sizes ``vmap``'s blocks of examples and the
    per-point strategies' batches; 0 when the model cannot run on one example."""
    x0, _ = next(iter(next(iter(splits.values()))))
    widest = 1

    def hook(_module, _inputs, output) -> None:
        nonlocal widest
        if isinstance(output, Tensor) and output.ndim >= 1 and output.shape[0] == 1:
            widest = max(widest, output.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            args, kwargs = functional_args(first_examples(x0, 1))
            model(*args, **kwargs)
    except Exception:  # sizing is an optimization: a model that needs more than one
        widest = 0  # example (BatchNorm in train mode, ...) keeps the job's batches
    finally:
        for h in handles:
            h.remove()
    return widest


def _own_copy(method: Any) -> Any:
    """``method`` bound to a copy of its function with a code object of its own.
    :func:`torch.compile` keeps its compilations on the code object, at most
    ``torch._dynamo.config.recompile_limit`` (8) of them, so evaluators that shared one
    would, from the ninth model in a process (a study's surfaces), fall back to eager code;
    each evaluator's copy holds its own and is freed with it."""
    fn = method.__func__
    own = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    return types.MethodType(own, method.__self__)


def _clearly_apart(runs: Any, margin: float) -> bool:
    """Two strategies' timings, where every run of the faster took less than every run of
    the slower divided by ``margin``."""
    timings = list(runs)
    if len(timings) != 2:
        return len(timings) < 2  # one strategy works: nothing to decide
    fast, slow = sorted(timings, key=max)
    return max(fast) * margin < min(slow)


def _in_memory(batches: Any) -> bool:
    """A split whose batches are held in memory (a list), not streamed from a loader."""
    return isinstance(batches, list)


def _tensors(x: Any) -> list[Tensor]:
    """The tensors of a batch's inputs (a tensor, or a dict, tuple or list of them)."""
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    return []


def _shapes(x: Any) -> tuple[tuple[int, ...], ...]:
    """The shapes of a batch's tensors (what a new compilation depends on)."""
    return tuple(tuple(t.shape) for t in _tensors(x))


def _channels_last_stack(v: Tensor) -> Tensor:
    """``v`` (``(K, O, I, kh, kw)``) copied so that each ``v[i]`` has the strides of
    ``v[i].clone(memory_format=torch.channels_last)``, size-1 dimensions included."""
    _, o, i, kh, kw = v.shape
    out = torch.empty_strided(
        v.shape, (o * i * kh * kw, i * kh * kw, 1, kw * i, i), dtype=v.dtype, device=v.device
    )
    return out.copy_(v)


class ChunkJournal(Protocol):
    """Where finished chunks go (a run store); lets an interrupted evaluation resume."""

    def done_chunks(self) -> set[int]: ...
    def write_chunk(self, index: int, rows: slice, values: Mapping[str, np.ndarray]) -> None: ...
    def read_values(self) -> dict[str, np.ndarray]: ...
    def recorded_strategy(self) -> dict[str, Any] | None: ...
    def record_strategy(self, info: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class EvalResult:
    """Metric values at every point, with how they were computed."""

    values: dict[str, np.ndarray]
    coeffs: np.ndarray
    strategy: str
    trial: dict[str, Any]
    chunk_size: int
    seconds: float
    points_evaluated: int
    nonfinite: dict[str, int] = field(default_factory=dict)

    @property
    def points_per_second(self) -> float:
        return self.points_evaluated / self.seconds if self.seconds > 0 else float("nan")


def evaluate_points(
    job: EvalJob,
    coeffs,
    *,
    chunk_size: int = 64,
    executor: Executor | None = None,
    journal: ChunkJournal | None = None,
    progress: bool = False,
    on_chunk: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Evaluate ``job``'s metrics at every row of ``coeffs`` (shape ``(P, dim)``).

    With a ``journal`` (a run store), finished chunks are written as they complete and
    chunks already in the journal are skipped, so an interrupted run resumes at the first
    unfinished chunk; the strategy recorded by the first run is reused so the numbers are
    bit-for-bit those of an uninterrupted run.

    ``executor`` (default: the current one, :func:`~basinscope.engine.executors.use_executor`)
    runs the chunks: in this process, or on Ray actors
    (:class:`~basinscope.engine.ray_executor.RayExecutor`); the strategy is chosen here, on
    the driver, before any chunk is handed out.
    """
    c = as_coeff_matrix(coeffs, job.basis.dim)
    slices = chunk_slices(len(c), chunk_size)
    evaluator = job.build()
    recorded = journal.recorded_strategy() if journal is not None else None
    if recorded:
        evaluator.adopt(recorded["strategy"], recorded.get("trial", {}))
    else:
        evaluator.choose_strategy(c[slices[0]], total_points=len(c))
        if journal is not None:
            journal.record_strategy({"strategy": evaluator.strategy, "trial": evaluator.trial})
    done = journal.done_chunks() if journal is not None else set()
    values = {name: np.full(len(c), np.nan) for name in evaluator.names}
    if journal is not None and done:
        for name, arr in journal.read_values().items():
            values[name] = np.array(arr, dtype=np.float64)
    todo = [(i, c[s]) for i, s in enumerate(slices) if i not in done]
    bar = _progress(len(slices), len(done), progress)
    executor = executor or current_executor()
    t0 = time.perf_counter()
    evaluated = 0
    try:
        for i, chunk_values in executor.run(evaluator, todo):
            s = slices[i]
            for name, v in chunk_values.items():
                values[name][s] = v
            if journal is not None:
                journal.write_chunk(i, s, chunk_values)
            evaluated += s.stop - s.start
            if bar is not None:
                bar.update(1)
            if on_chunk is not None:
                on_chunk(i, len(slices))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    nonfinite = {
        k: int((~np.isfinite(v)).sum()) for k, v in values.items() if (~np.isfinite(v)).any()
    }
    return EvalResult(
        values=values,
        coeffs=c,
        strategy=evaluator.strategy,
        trial=evaluator.trial,
        chunk_size=chunk_size,
        seconds=seconds,
        points_evaluated=evaluated,
        nonfinite=nonfinite,
    )


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from basinscope._progress import progress_bar

    return progress_bar(total=total, initial=initial, desc="chunks", unit="chunk")


def evaluate_model(
    model: nn.Module,
    data: Any,
    *,
    metrics: Sequence[str | Metric | Callable] = ("loss", "accuracy"),
    bn_policy: str = "stored",
    bn_data: Any = None,
    batch_size: int = 1024,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    task: Task | None = None,
) -> dict[str, float]:
    """Metrics of one model on one dataset or a ``{split: data}`` mapping (a single point)."""
    from basinscope.geometry import get_buffers, get_params

    splits = (
        dict(data)
        if isinstance(data, Mapping)
        and not hasattr(data, "x")
        and all(isinstance(k, str) for k in data)
        and not ({"x", "y"} & set(data))
        and not any(isinstance(v, Tensor) for v in data.values())  # a dict dataset
        else {"train": data}
    )
    job = EvalJob(
        model,
        PointBasis(get_params(model), (), get_buffers(model)),
        splits,
        metrics=metrics,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        bn_policy=bn_policy,
        bn_data=bn_data,
        strategy="loop",
        task=as_task(task),
    )
    values = job.build().evaluate_chunk(np.zeros((1, 0)))
    return {k: float(v[0]) for k, v in values.items()}
