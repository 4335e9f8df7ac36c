"""The GPU check: every command's GPU path against the CPU, and a ResNet-56 surface, timed.

What it does, in order, on one accelerator (``--device cuda``, the default):

1. **Every command's GPU path on a small model.** The library function behind each CLI
   command (surface, interpolate, barrier, basin, criticality, rewind, hessian, curvature
   map, sharpness, similarity, distance, mistakes, align, ensemble, instability, curve,
   train, finetune) runs twice with the same seeds and inputs: on the CPU (the reference)
   and on the device. Every number of the two results (``Result.to_dict()``, plus trained
   weights where the check trains) is compared with the check's stated tolerance:
   ``|device - cpu| <= atol + rtol * |cpu|`` elementwise. float32 evaluations use
   rtol 1e-4 / atol 1e-5; the curvature functions run in float64 (Lanczos: rtol 1e-5 /
   atol 1e-8; sharpness and CKA: 1e-6 / 1e-8); anything that trains takes a few SGD
   steps, which amplify float32 rounding, so 1e-3 / 1e-4; bfloat16 autocast is compared
   with the CPU's float32 at 0.1 / 0.02. Timings,
   device names and the engine's strategy choice are not compared (``IGNORED_KEYS``).
   TF32 is switched off for this part (``torch.backends.cudnn.allow_tf32`` and
   ``torch.backends.cuda.matmul.allow_tf32``), so float32 means float32. Each check is
   wrapped: one failure is recorded (with its error text) and the others still run.
2. **A 51x51 filter-normalized surface of a ResNet-56 on CIFAR-10-sized data**: 50,000
   synthetic 3x32x32 images (seeded ``torch.randn``, random labels, made on the device, since
   no CIFAR ships here), ``random_surface`` with ``strategy="auto"``, BatchNorm
   ``bn_policy="stored"`` (Li et al.'s code evaluates in ``net.eval()`` mode, i.e. with the
   stored statistics), timed end to end (``torch.cuda.synchronize`` on both sides) in
   float32 (with torch's TF32 defaults, which a user gets) and in bfloat16 autocast. It
   reports GPU-seconds per point, the ratio to Li et al.'s ~5.5 GPU-s per point (2018;
   ResNet-56 on CIFAR-10), the minutes for the 2,601 points against the 5-minute goal, and
   the fraction of the device's matmul rate (bf16, TF32 and strict fp32 products measured
   in this run) that the forward FLOPs of the Conv2d/Linear layers reach. A pilot grid is
   timed first; when the full grid is projected to take longer than ``SURFACE_BUDGET``
   seconds, the largest square grid that fits is run instead, the JSON says so
   (``partial``) and the full grid's minutes are extrapolated from its seconds per point.

``--quick`` shrinks everything (a ResNet-8 of width 4, 256 images of 3x16x16, a 3x3 grid,
128 digits, tiny training runs) so that ``--quick --device cpu`` is a dry run of the whole
script on a CPU (30-90 s on a busy 2-core machine, mostly CPU bfloat16); the CPU-vs-CPU
comparison then checks that every function is deterministic given its seeds.

Run (on a machine with a GPU; the device tool copies back what lands under ``$OUT``):

    OUT=/some/dir .venv/bin/python benchmarks/gpu_check.py              # at most ~8 min
    .venv/bin/python benchmarks/gpu_check.py --quick --device cpu       # dry run, 30-90 s

The JSON goes to ``$OUT/gpu_check.json`` when ``OUT`` is set, else to
``benchmarks/results/gpu_check.json``; ``--out PATH`` overrides both. The script exits
non-zero after writing the JSON if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import basinscope
from basinscope import analyses as A
from basinscope.analyses.hessian_map import curvature_map
from basinscope.data import TensorData, load_digits
from basinscope.models import mlp, resnet
from basinscope.spec import STRATEGIES
from basinscope.training import TrainConfig, finetune, train
from bench_surface import forward_flops  # FLOPs of Conv2d/Linear, as the surface benchmark

# -----------------------------------------------------------------------------------------
# 1. Settings
# -----------------------------------------------------------------------------------------
SEED = 0
# part 1: the small models, on the digits train split (1 x 8 x 8 images, 10 classes)
SMALL_EXAMPLES = 512  # digits examples used by every check (--quick: 128)
MLP_HIDDEN = (32,)  # the small MLP: 64 -> 32 -> 10
RESNET_SMALL = {"depth": 8, "width": 8}  # a small BatchNorm ResNet, for the BN paths
PRETRAIN_STEPS = 30  # full-batch Adam steps before the checks (--quick: 10)
PRETRAIN_LR = 1e-2
STEPS = 6  # SGD steps of each check that trains (train, finetune, curve, ensemble, ...)
GRID_SMALL = 5  # small surfaces: 5 x 5 (--quick: 3 x 3)
TRACE_RTOL = 0.01  # Hutch++ trace: stop at this relative standard error (--quick: 0.2)
CURVATURE_GRID = 3  # curvature map: 3 x 3 points (--quick: 2 x 2)
CURVATURE_TOL = 1e-6  # Lanczos residual tolerance per point of the curvature map
CURVATURE_MAX_ITER = 100  # Lanczos steps per point of the curvature map (--quick: 10)
# tolerances (rtol, atol): |device - cpu| <= atol + rtol * |cpu|, elementwise
TOL_FLOAT32 = (1e-4, 1e-5)  # float32 evaluations (losses, accuracies, barriers, distances)
TOL_FLOAT64 = (1e-6, 1e-8)  # float64 sharpness (ascent steps) and CKA
# float64 Lanczos (eigenvalues, Hutch++ trace, SLQ density; full reorthogonalization): a
# residual tolerance of 1e-6 bounds a converged eigenvalue's error by ~1e-6 relative on
# either device, so the two may differ by a little more
TOL_LANCZOS = (1e-5, 1e-8)
TOL_TRAINED = (1e-3, 1e-4)  # a few SGD steps in float32 amplify rounding differences
TOL_BF16 = (0.1, 0.02)  # bfloat16 autocast (8 significant bits) against float32 on the CPU
# Keys not compared: timings, device names, the engine's strategy choice and its trial.
IGNORED_KEYS = frozenset(
    {
        "seconds",
        "points_per_second",
        "trial",
        "strategy",
        "device",
        "date",
        "elapsed",
        "elapsed_seconds",
        "wall_seconds",
        "timings",
        "hvp_method",
        "method_chosen",
        "created",
        "chunk_seconds",
        # Lanczos and trace iteration counts: a converged estimate may take one step more
        # or less on another device; the values themselves are compared
        "iterations",
        "num_matvecs",
        "lanczos_matvecs",
    }
)

# parts 2 and 3: the matmul rates, and the ResNet-56 surface on CIFAR-10-sized synthetic data
RESNET = {"depth": 56, "width": 16, "in_channels": 3, "image_size": 32}  # 855,770 params
IMAGES = 50_000  # synthetic 3 x 32 x 32 images (CIFAR-10's training set size)
GRID = 51  # 51 x 51 = 2,601 points, alpha and beta in [-1, 1]
RANGE = (-1.0, 1.0)
NORMALIZATION = "filter"  # Li et al. 2018; biases get a zero direction (bias_policy "zero")
BN_POLICY = "stored"  # as Li et al.'s evaluation (net.eval()): the stored BN statistics
DTYPES = ("bfloat16", "float32")  # bfloat16 autocast first: it is the headline number
BATCH_SIZE = 1024  # engine batch (examples) and chunk (points): the engine's defaults
CHUNK_SIZE = 64
SURFACE_STRATEGY = "auto"  # the engine strategy of the surface (--surface-strategy)
PILOT_GRID = 8  # 8 x 8 = 64 points (one chunk) timed first, to project the full grid
# seconds allowed per dtype (one device command may run 600 s); over it, the largest grid
# that fits is run and the full grid's minutes are extrapolated from it
SURFACE_BUDGET = {"bfloat16": 210.0, "float32": 120.0}
LI_SECONDS_PER_POINT = 5.5  # Li et al. 2018, ResNet-56 on CIFAR-10: ~5.5 GPU-s per point
GOAL_MINUTES = 5.0  # the goal: the 51 x 51 surface in under 5 minutes on one H100-class GPU
MATMUL_N = 8192  # (N x N) @ (N x N) products for the device's matmul rate (--quick: 512)
MATMUL_REPS = 20
# --quick: a dry run of everything, small enough for a CPU
QUICK = {
    "SMALL_EXAMPLES": 128,
    "PRETRAIN_STEPS": 10,
    "STEPS": 3,
    "GRID_SMALL": 3,
    "TRACE_RTOL": 0.2,
    "CURVATURE_GRID": 2,
    "CURVATURE_MAX_ITER": 10,
    "RESNET": {"depth": 8, "width": 4, "in_channels": 3, "image_size": 16},
    "IMAGES": 256,
    "GRID": 3,
    "PILOT_GRID": 2,
    "SURFACE_BUDGET": {"bfloat16": 60.0, "float32": 60.0},
    "MATMUL_N": 512,
    "MATMUL_REPS": 5,
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -----------------------------------------------------------------------------------------
# 2. Comparing two results: every number, with a tolerance
# -----------------------------------------------------------------------------------------
def flatten(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Every numeric leaf of a result's dict (or of a tensor dict) as ``path -> array``."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, torch.Tensor):
        return {prefix: obj.detach().double().cpu().numpy()}
    if isinstance(obj, dict):
        out: dict[str, np.ndarray] = {}
        for k, v in obj.items():
            if str(k) not in IGNORED_KEYS:
                out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, (list, tuple)):
        try:  # a numeric (nested) list: one array
            arr = np.asarray(_numbers(obj), dtype=float)
            return {prefix: arr} if arr.dtype.kind == "f" else {}
        except (TypeError, ValueError):
            out = {}
            for i, v in enumerate(obj):
                out.update(flatten(v, f"{prefix}[{i}]"))
            return out
    if isinstance(obj, bool) or obj is None:
        return {}
    if isinstance(obj, (int, float, np.number)):
        return {prefix: np.asarray(float(obj))}
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return {prefix: np.asarray(float(obj))}
    return {}  # strings: names, definitions, devices


def _numbers(obj: Any) -> Any:
    """``obj`` with the JSON encodings of non-finite floats turned back into floats."""
    if isinstance(obj, (list, tuple)):
        return [_numbers(v) for v in obj]
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return float(obj)
    if isinstance(obj, (bool, str, dict)) or obj is None:
        raise TypeError("not a number")
    return obj


def compare(ref: Any, got: Any, rtol: float, atol: float) -> dict[str, Any]:
    """Largest differences of ``got`` (device) from ``ref`` (CPU), and whether all are within
    ``atol + rtol * |ref|``."""
    a, b = flatten(ref), flatten(got)
    missing = sorted(set(a) ^ set(b))
    worst: dict[str, Any] = {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "worst": None}
    bad = []
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if x.shape != y.shape:
            bad.append(f"{key}: shape {x.shape} vs {y.shape}")
            continue
        both_nan = np.isnan(x) & np.isnan(y)
        same_inf = np.isinf(x) & (x == y)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, x / tiny
            diff = np.where(both_nan | same_inf, 0.0, np.abs(x - y))
            diff = np.nan_to_num(diff, nan=np.inf)
            if diff.size == 0:
                continue
            rel = diff / np.maximum(np.abs(x), 1e-30)
        if diff.max() > worst["max_abs_diff"]:
            worst.update(max_abs_diff=float(diff.max()), worst=key)
        worst["max_rel_diff"] = max(worst["max_rel_diff"], float(np.where(diff > 0, rel, 0).max()))
        if (diff > atol + rtol * np.abs(np.nan_to_num(x))).any():
            bad.append(f"{key}: max |diff| {diff.max():.3g}")
    return {
        **worst,
        "compared_values": int(sum(v.size for v in a.values())),
        "compared_keys": len(set(a) & set(b)),
        "only_one_side": missing[:10],
        "outside_tolerance": bad[:10],
        "ok": not bad and not missing,
    }


# -----------------------------------------------------------------------------------------
# 3. The small models and data of part 1 (built once, on the CPU, from seeds)
# -----------------------------------------------------------------------------------------
def pretrained(factory: Callable[[], nn.Module], seed: int, data: TensorData) -> nn.Module:
    """``factory()`` (seeded init) after ``PRETRAIN_STEPS`` full-batch Adam steps, eval mode."""
    torch.manual_seed(seed)
    model = factory()
    opt = torch.optim.Adam(model.parameters(), lr=PRETRAIN_LR)
    for _ in range(PRETRAIN_STEPS):
        opt.zero_grad()
        F.cross_entropy(model(data.x), data.y).backward()
        opt.step()
    return model.eval()


def small_setup() -> dict[str, Any]:
    data = load_digits("train").subset(range(SMALL_EXAMPLES))
    small_mlp = lambda: mlp(hidden=MLP_HIDDEN)  # noqa: E731
    small_resnet = lambda: resnet(**RESNET_SMALL)  # noqa: E731
    torch.manual_seed(SEED)
    return {
        "data": data,
        "mlp_init": small_mlp().eval(),
        "mlp_a": pretrained(small_mlp, SEED, data),
        "mlp_b": pretrained(small_mlp, SEED + 1, data),
        "resnet_a": pretrained(small_resnet, SEED, data),
        "resnet_b": pretrained(small_resnet, SEED + 1, data),
    }


# -----------------------------------------------------------------------------------------
# 4. The checks: one function per command, called as check(setup, device) -> result
# -----------------------------------------------------------------------------------------
def _axis(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n)


def _fresh(s: dict[str, Any], name: str) -> nn.Module:
    """A copy, so that no check sees another check's (or the other device's) changes."""
    return copy.deepcopy(s[name])


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if v.is_floating_point()}


def check_surface(s, dev):
    g = _axis(GRID_SMALL)
    return A.random_surface(_fresh(s, "mlp_a"), s["data"], alphas=g, betas=g, device=dev)


def check_surface_bn_recompute(s, dev):
    g = _axis(3)
    m = _fresh(s, "resnet_a")
    return A.random_surface(
        m, s["data"], alphas=g, betas=g, bn_policy="recompute", bn_data=s["data"], device=dev
    )


def check_surface_bf16(s, dev):  # bfloat16 autocast, compared with the CPU's float32
    g = _axis(GRID_SMALL)
    dtype = "float32" if s["reference"] else "bfloat16"
    m = _fresh(s, "resnet_a")
    return A.random_surface(m, s["data"], alphas=g, betas=g, dtype=dtype, device=dev)


def check_surface_compiled(s, dev):  # the loop through torch.compile (Triton on a GPU)
    g = _axis(3)
    m = _fresh(s, "resnet_a")
    return A.random_surface(m, s["data"], alphas=g, betas=g, strategy="compiled", device=dev)


def check_interpolate(s, dev):
    a, b = _fresh(s, "mlp_a"), _fresh(s, "mlp_b")
    return A.interpolate(a, b, s["data"], alphas=np.linspace(0, 1, 11), device=dev)


def check_random_line(s, dev):
    return A.random_line(_fresh(s, "mlp_a"), s["data"], alphas=_axis(11), device=dev)


def check_barrier(s, dev):
    a, b = _fresh(s, "mlp_a"), _fresh(s, "mlp_b")
    return A.barrier(a, b, s["data"], metric="loss", num_points=11, bootstrap=20, device=dev)


def check_barrier_bn_recompute(s, dev):
    a, b = _fresh(s, "resnet_a"), _fresh(s, "resnet_b")
    return A.barrier(
        a,
        b,
        s["data"],
        num_points=5,
        refine=False,
        bn_policy="recompute",
        bn_data=s["data"],
        device=dev,
    )


def check_basin(s, dev):
    models = [_fresh(s, "mlp_a"), _fresh(s, "mlp_b")]
    return A.basin_test(models, s["data"], delta=0.5, samples=8, pairs=8, device=dev)


def check_criticality(s, dev):
    return A.module_criticality(
        _fresh(s, "mlp_a"),
        _fresh(s, "mlp_init"),
        s["data"],
        alphas=np.linspace(0, 1, 5),
        sigmas=np.linspace(0.1, 1, 3),
        samples=2,
        device=dev,
    )


def check_rewind(s, dev):
    return A.rewind(_fresh(s, "mlp_a"), _fresh(s, "mlp_init"), s["data"], device=dev)


def check_hessian(s, dev):  # top/bottom eigenvalues (Lanczos), trace (Hutch++), density (SLQ)
    return A.hessian_analysis(
        _fresh(s, "mlp_a"), s["data"], k_top=3, k_bottom=1, trace_rtol=TRACE_RTOL,
        density=True, density_runs=2, density_steps=30, dtype="float64", device=dev,
    )  # fmt: skip


def check_curvature_map(s, dev):
    g = _axis(CURVATURE_GRID)
    m = _fresh(s, "mlp_a")
    return curvature_map(
        m, s["data"], alphas=g, betas=g, max_iter=CURVATURE_MAX_ITER, tol=CURVATURE_TOL, device=dev
    )


def check_sharpness(s, dev):  # every measure, float64
    return {
        measure: A.sharpness(_fresh(s, "mlp_a"), s["data"], measure, dtype="float64", device=dev)
        for measure in A.SHARPNESS_MEASURES
    }


def check_similarity(s, dev):
    a, b = _fresh(s, "mlp_a"), _fresh(s, "mlp_b")
    return A.cka_matrix(a, b, s["data"], device=dev, dtype="float64")


def check_distance(s, dev):
    a, b = _fresh(s, "mlp_a").to(dev), _fresh(s, "mlp_b").to(dev)
    return A.parameter_distance(a, b)


def check_mistakes(s, dev):
    return A.mistake_analysis(_fresh(s, "mlp_a"), _fresh(s, "mlp_b"), s["data"], device=dev)


def check_align(s, dev):
    a, b = _fresh(s, "mlp_a"), _fresh(s, "mlp_b")
    return A.align(a, b, s["data"], num_points=5, device=dev)


def check_ensemble(s, dev):
    return A.ensemble(
        _fresh(s, "mlp_a"), s["data"], method="fge", cycles=2, cycle_steps=STEPS,
        num_points=5, device=dev,
    )  # fmt: skip


def check_instability(s, dev):
    config = TrainConfig(steps=2 * STEPS, batch_size=64, lr=0.05)
    return A.instability(
        _fresh(s, "mlp_init"), s["data"], k=STEPS, total_steps=2 * STEPS, config=config,
        num_points=5, device=dev,
    )  # fmt: skip


def check_curve(s, dev):
    a, b = _fresh(s, "mlp_a"), _fresh(s, "mlp_b")
    return A.train_curve(a, b, s["data"], steps=STEPS, batch_size=64, device=dev)


def check_train(s, dev):
    r = train(_fresh(s, "mlp_init"), s["data"], TrainConfig(steps=STEPS, batch_size=64), device=dev)
    return {"result": r, "weights": _weights(r.model)}


def check_finetune(s, dev):
    config = TrainConfig(steps=STEPS, batch_size=64)
    r = finetune(_fresh(s, "mlp_a"), s["data"], strategy="lp-ft", config=config, lp_steps=STEPS,
                 device=dev)  # fmt: skip
    return {"result": r, "weights": _weights(r.model)}


# name -> (function, (rtol, atol)); the names follow the CLI commands
CHECKS: dict[str, tuple[Callable[[dict[str, Any], str], Any], tuple[float, float]]] = {
    "surface": (check_surface, TOL_FLOAT32),
    "surface[bn=recompute]": (check_surface_bn_recompute, TOL_FLOAT32),
    "surface[bfloat16]": (check_surface_bf16, TOL_BF16),
    "surface[compiled]": (check_surface_compiled, TOL_FLOAT32),
    "interpolate": (check_interpolate, TOL_FLOAT32),
    "interpolate[random line]": (check_random_line, TOL_FLOAT32),
    "barrier": (check_barrier, TOL_FLOAT32),
    "barrier[bn=recompute]": (check_barrier_bn_recompute, TOL_FLOAT32),
    "basin": (check_basin, TOL_FLOAT32),
    "criticality": (check_criticality, TOL_FLOAT32),
    "rewind": (check_rewind, TOL_FLOAT32),
    "hessian": (check_hessian, TOL_LANCZOS),
    "hessian[curvature map]": (check_curvature_map, TOL_LANCZOS),
    "sharpness": (check_sharpness, TOL_FLOAT64),
    "similarity": (check_similarity, TOL_FLOAT64),
    "distance": (check_distance, TOL_FLOAT32),
    "distance[mistakes]": (check_mistakes, TOL_FLOAT32),
    "align": (check_align, TOL_FLOAT32),
    "ensemble": (check_ensemble, TOL_TRAINED),
    "instability": (check_instability, TOL_TRAINED),
    "curve": (check_curve, TOL_TRAINED),
    "train": (check_train, TOL_TRAINED),
    "finetune": (check_finetune, TOL_TRAINED),
}


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """TF32 off while the device runs part 1: float32 then means float32 on Ampere+."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def run_checks(device: str, only: list[str] | None) -> dict[str, Any]:
    setup = small_setup()
    out = {}
    for name, (fn, (rtol, atol)) in CHECKS.items():
        if only and name not in only:
            continue
        entry: dict[str, Any] = {"rtol": rtol, "atol": atol}
        try:
            t0 = time.perf_counter()
            ref = fn({**setup, "reference": True}, "cpu")
            entry["cpu_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            with strict_float32():
                got = fn({**setup, "reference": False}, device)
                sync(device)
            entry["device_seconds"] = time.perf_counter() - t0
            entry.update(compare(ref, got, rtol, atol))
            entry["error"] = None
        except Exception as e:  # one failure must not stop the other checks
            entry.update(ok=False, error=f"{type(e).__name__}: {e}")
            entry["traceback"] = traceback.format_exc(limit=6)
        out[name] = entry
        flag = "ok" if entry["ok"] else "FAIL"
        print(
            f"  {name:<26} {flag:<4} {entry.get('max_abs_diff', math.nan):>10.2e} "
            f"{entry.get('max_rel_diff', math.nan):>9.2e} {rtol:>7.0e} {atol:>7.0e}"
            + (f"  {entry['error']}" if entry.get("error") else "")
            + (f"  {entry['outside_tolerance'][:2]}" if entry.get("outside_tolerance") else "")
            + (
                f"  only one side: {entry['only_one_side'][:3]}"
                if entry.get("only_one_side")
                else ""
            ),
            flush=True,
        )
    return out


# -----------------------------------------------------------------------------------------
# 5. The device's matmul rate: the limit to quote efficiency against
# -----------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def matmul_tflops(device: str, dtype: torch.dtype, tf32: bool = False) -> float:
    """TFLOP/s of ``MATMUL_REPS`` (N x N) @ (N x N) products in ``dtype``, best of 3 rounds.

    float32 products run with TF32 off unless ``tf32`` (then on: the rate cuDNN's TF32
    convolutions are bounded by)."""
    gen = torch.Generator(device=device).manual_seed(SEED)
    a = torch.randn(MATMUL_N, MATMUL_N, device=device, dtype=dtype, generator=gen)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device, dtype=dtype, generator=gen)
    c = torch.empty_like(a)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        torch.mm(a, b, out=c)  # warm-up
        sync(device)
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(MATMUL_REPS):
                torch.mm(a, b, out=c)
            sync(device)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * MATMUL_N**3 * MATMUL_REPS / best / 1e12


# -----------------------------------------------------------------------------------------
# 6. The ResNet-56 surface
# -----------------------------------------------------------------------------------------
def synthetic_cifar(device: str) -> TensorData:
    """``IMAGES`` seeded standard-normal 3 x 32 x 32 images and random labels, on ``device``."""
    gen = torch.Generator(device=device).manual_seed(SEED)
    size = RESNET["image_size"]
    x = torch.randn(IMAGES, RESNET["in_channels"], size, size, device=device, generator=gen)
    y = torch.randint(0, 10, (IMAGES,), device=device, generator=gen)
    return TensorData(x, y, name="synthetic-cifar10")


def timed_surface(model: nn.Module, data: TensorData, grid: int, dtype: str, device: str):
    """``random_surface`` on a ``grid x grid`` plane, and its seconds end to end."""
    axis = np.linspace(*RANGE, grid)
    sync(device)
    t0 = time.perf_counter()
    land = A.random_surface(
        model, data, seed=SEED, normalization=NORMALIZATION, alphas=axis, betas=axis,
        strategy=SURFACE_STRATEGY, bn_policy=BN_POLICY, dtype=dtype, device=device,
        batch_size=BATCH_SIZE, chunk_size=CHUNK_SIZE,
    )  # fmt: skip
    sync(device)
    return land, time.perf_counter() - t0


def surface_in(dtype: str, model, data, flops: int, limit: float, device: str) -> dict[str, Any]:
    """One dtype: a pilot grid (also the warm-up), then the full grid or, when the pilot
    projects it over ``SURFACE_BUDGET[dtype]`` seconds, the largest square grid that fits."""
    budget = SURFACE_BUDGET[dtype]
    _, pilot_s = timed_surface(model, data, PILOT_GRID, dtype, device)
    grid = GRID
    if pilot_s / PILOT_GRID**2 * GRID**2 > budget:
        grid = max(PILOT_GRID, int(math.sqrt(budget / (pilot_s / PILOT_GRID**2))))
    land, seconds = timed_surface(model, data, grid, dtype, device)
    points = grid * grid
    spp = seconds / points
    full_minutes = spp * GRID**2 / 60  # measured when grid == GRID, else extrapolated
    tflops = flops * IMAGES * points / seconds / 1e12
    loss = land.dataset["train_loss"].values
    return {
        "grid": [grid, grid],
        "partial": grid != GRID,
        "budget_seconds": budget,
        "pilot_grid": [PILOT_GRID, PILOT_GRID],
        "pilot_seconds": pilot_s,
        "seconds": seconds,
        "points": points,
        "gpu_seconds_per_point": spp,
        "speedup_over_li_et_al": LI_SECONDS_PER_POINT / spp,
        "full_grid_minutes": full_minutes,
        "full_grid_minutes_extrapolated": grid != GRID,
        "goal_minutes": GOAL_MINUTES,
        "goal_met": full_minutes <= GOAL_MINUTES,
        "strategy": land.evaluation["strategy"],
        "engine_trial": land.evaluation["trial"],
        "tflops": tflops,
        "matmul_limit_tflops": limit,
        "fraction_of_matmul_limit": tflops / limit,
        "loss_at_center": float(loss[grid // 2, grid // 2]),
        "loss_range": [float(np.nanmin(loss)), float(np.nanmax(loss))],
        "error": None,
    }


def run_surface(device: str, peak: dict[str, float], report: dict[str, Any], save) -> None:
    torch.manual_seed(SEED)
    model = resnet(**RESNET).eval()
    data = synthetic_cifar(device)
    flops = forward_flops(model, data.x[:1].cpu())
    out = report["surface"] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops_per_example": flops,
        "examples": IMAGES,
    }
    print(f"  {out['parameters']:,} parameters, {flops / 1e6:.1f} MFLOP per example forward")
    print(
        f"  {'dtype':<9} {'grid':<14} {'seconds':>8} {'GPU-s/pt':>9} {'vs Li':>7} "
        f"{'min/' + str(GRID) + 'x' + str(GRID):>10} {'goal':>5} {'of matmul':>17}  strategy"
    )
    for dtype in DTYPES:
        # float32 convolutions use TF32 when cuDNN allows it (torch's default): quote them
        # against the TF32 matmul rate then
        tf32 = dtype == "float32" and torch.backends.cudnn.allow_tf32
        limit = peak["tf32" if tf32 else dtype]
        try:
            r = out[dtype] = surface_in(dtype, model, data, flops, limit, device)
        except Exception as e:  # the other dtype still runs
            out[dtype] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"  {dtype:<9} FAILED: {out[dtype]['error']}", flush=True)
            save()
            continue
        grid = f"{GRID}x{GRID}" if not r["partial"] else f"{r['grid'][0]}x{r['grid'][0]} partial"
        minutes = f"{r['full_grid_minutes']:.2f}{'*' if r['partial'] else ''}"
        print(
            f"  {dtype:<9} {grid:<14} {r['seconds']:>8.1f} {r['gpu_seconds_per_point']:>9.4f} "
            f"{r['speedup_over_li_et_al']:>6.0f}x {minutes:>10} {'ok' if r['goal_met'] else 'NO':>5} "
            f"{r['fraction_of_matmul_limit']:>6.1%} of {limit:>5.3g} TF  {r['strategy']}",
            flush=True,
        )
        save()
    if any(out[d].get("partial") for d in DTYPES):
        print("  * extrapolated from the partial grid's seconds per point")


def run_parts_2_and_3(device: str, report: dict[str, Any], save: Callable[[], None]) -> None:
    """The device's matmul rates, then the ResNet-56 surface in each dtype."""
    print(f"\n2. matmul rate of {device} ({MATMUL_N}x{MATMUL_N}, TFLOP/s)")
    peak = {
        "float32": matmul_tflops(device, torch.float32),
        "tf32": matmul_tflops(device, torch.float32, tf32=True),
        "bfloat16": matmul_tflops(device, torch.bfloat16),
    }
    print("  " + ", ".join(f"{k} {v:.3g}" for k, v in peak.items()))
    report["matmul_tflops"] = peak
    save()
    print(
        f"\n3. {GRID}x{GRID} {NORMALIZATION}-normalized surface of a ResNet-"
        f"{RESNET['depth']} on {IMAGES:,} synthetic {RESNET['in_channels']}x"
        f"{RESNET['image_size']}x{RESNET['image_size']} images, bn {BN_POLICY}"
    )
    run_surface(device, peak, report, save)


# -----------------------------------------------------------------------------------------
# 7. Main: run, print, write JSON (after every part, so a run cut short keeps what it did)
# -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device to check (default cuda)")
    parser.add_argument("--quick", action="store_true", help="a tiny dry run (CPU: seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    parser.add_argument("--only", nargs="*", default=None, help="run only these checks")
    parser.add_argument("--no-surface", action="store_true", help="skip the ResNet-56 surface")
    parser.add_argument(
        "--surface-strategy",
        default=SURFACE_STRATEGY,
        choices=STRATEGIES,
        help="the engine strategy of the ResNet-56 surface (default auto; compiled: the "
        "per-point forward through torch.compile, its compile time in the pilot)",
    )
    args = parser.parse_args()
    globals()["SURFACE_STRATEGY"] = args.surface_strategy
    if args.quick:
        globals().update(QUICK)
    out_path = args.out
    if out_path is None and os.environ.get("OUT"):
        out_path = Path(os.environ["OUT"]) / "gpu_check.json"
    out_path = out_path or RESULTS_DIR / "gpu_check.json"
    device = args.device
    torch.empty(0, device=device)  # fails early, and clearly, without the device

    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "gpu_check",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "basinscope": basinscope.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "complete": False,
        "settings": {
            "small_examples": SMALL_EXAMPLES,
            "mlp_hidden": list(MLP_HIDDEN),
            "resnet_small": RESNET_SMALL,
            "pretrain_steps": PRETRAIN_STEPS,
            "steps": STEPS,
            "tolerances": "|device - cpu| <= atol + rtol * |cpu|, every number of the result",
            "ignored_keys": sorted(IGNORED_KEYS),
            "tf32_in_checks": False,
            "tf32_in_surface": {
                "matmul": torch.backends.cuda.matmul.allow_tf32,
                "cudnn": torch.backends.cudnn.allow_tf32,
            },
            "resnet": RESNET,
            "images": IMAGES,
            "grid": [GRID, GRID],
            "range": list(RANGE),
            "normalization": NORMALIZATION,
            "bn_policy": BN_POLICY,
            "bn_policy_why": "Li et al.'s evaluation runs the net in eval() mode: stored stats",
            "batch_size": BATCH_SIZE,
            "chunk_size": CHUNK_SIZE,
            "surface_strategy": SURFACE_STRATEGY,
            "surface_budget_seconds": SURFACE_BUDGET,
            "li_et_al_seconds_per_point": LI_SECONDS_PER_POINT,
            "goal_minutes": GOAL_MINUTES,
            "matmul_n": MATMUL_N,
            "flops": "forward FLOPs of the Conv2d and Linear layers x examples x points "
            "/ seconds; fraction = that / the matmul rate of the same precision",
        },
    }

    def save() -> None:
        report["total_seconds"] = time.perf_counter() - t_start
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(f"\n1. every command on {device} against the CPU ({SMALL_EXAMPLES} digits examples)")
    print(f"  {'check':<26} {'ok':<4} {'max|diff|':>10} {'max rel':>9} {'rtol':>7} {'atol':>7}")
    report["checks"] = run_checks(device, args.only)
    save()

    if not args.no_surface:
        try:
            run_parts_2_and_3(device, report, save)
        except Exception as e:  # e.g. out of memory making the data: keep part 1's results
            report["surface_error"] = f"{type(e).__name__}: {e}"
            report["surface_traceback"] = traceback.format_exc()
            print(f"  FAILED: {report['surface_error']}", flush=True)

    failed = [n for n, c in report["checks"].items() if not c["ok"]]
    failed += [f"surface[{d}]" for d in DTYPES if report.get("surface", {}).get(d, {}).get("error")]
    failed += ["surface"] if report.get("surface_error") else []
    report["failed"] = failed
    report["all_ok"] = not failed
    report["complete"] = True
    save()
    print(f"\n{len(report['checks'])} checks, failed: {', '.join(failed) or 'none'}")
    print(f"total {report['total_seconds']:.1f} s; wrote {out_path}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
