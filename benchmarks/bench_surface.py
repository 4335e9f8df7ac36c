"""A 21x21 filter-normalized loss surface: basinscope's engine against a naive per-point loop.

What it measures, for the built-in MLP and LeNet on the digits train split (1,347 images):

* the naive loop that existing tools (loss-landscapes, Li et al.'s code) run: for every grid
  point, build the point's weights, ``load_state_dict`` them into a copy of the model and
  re-iterate a ``DataLoader`` (batch 128) under ``torch.no_grad()``;
* ``basinscope.analyses.random_surface`` with ``strategy="auto"`` timed end to end
  (directions, strategy trial and all), and with ``"vmap"`` and ``"loop"`` forced;
* that every engine strategy gives the naive loop's loss and accuracy to 1e-5;
* the machine's float32 matmul rate, and the fraction of it each method reaches
  (forward-pass FLOPs of the Linear and Conv2d layers / time).

Both models are first trained briefly (full-batch Adam), so the surface is the one a user
would plot: around a minimum, with losses from ~0.001 at the center up to ~100 at the edges.

Methods are timed round-robin (naive, auto, vmap, loop) after one untimed warm-up of each,
and medians are reported. Another process on a 2-core machine slows a 2-thread PyTorch run
down by up to 10x, so every timing records how many cores other processes used meanwhile
(from ``/proc/stat``); a run is *clean* when that stays under ``CONTENDED_CORES``. Each
run waits (up to ``QUIET_WAIT`` s) for a quiet machine, rounds go on until every method
has ``REPEATS`` clean runs (at most ``MAX_ROUNDS``), medians are over the clean runs, and
the JSON keeps every raw timing and flags a method with no clean run.

Run:  .venv/bin/python benchmarks/bench_surface.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import basinscope
from _timing import is_clean, machine, median_seconds, timed, wait_for_quiet
from basinscope.analyses.surface import random_surface
from basinscope.data import load_digits
from basinscope.engine import evaluate as engine_module
from basinscope.geometry import get_params, random_directions
from basinscope.models import lenet, mlp

# -----------------------------------------------------------------------------------------
# 1. Settings
# -----------------------------------------------------------------------------------------
GRID = 21  # points per axis: 21 x 21 = 441 points (--quick: 7 x 7 = 49)
QUICK_GRID = 7
RANGE = (-1.0, 1.0)  # alpha and beta, in units of the filter-normalized directions
SEED = 0  # model initialization, and directions `SEED` and `SEED + 1`
NORMALIZATION = "filter"  # Li et al. 2018; biases get a zero direction ("zero" policy)
MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp,  # mlp() default: 64 -> 64 -> 10, ReLU (4,810 parameters)
    "lenet": lenet,  # lenet() default: conv 6, conv 16, fc 64, fc 10 (5,750 parameters)
}
SPLIT = "train"  # digits train split: 1,347 images of 1 x 8 x 8
TRAIN_STEPS = 300  # full-batch Adam steps before the surface is computed (0: random init)
TRAIN_LR = 1e-2
NAIVE_BATCH = 128  # examples per batch of the naive loop's DataLoader
NAIVE_EVERY = 1  # time the naive loop on every k-th grid point (1: all of them)
ENGINE_BATCH = 1024  # engine batch size (examples) and chunk size (points): the defaults
ENGINE_CHUNK = 64
STRATEGIES = ("auto", "vmap", "loop")
REPEATS = 3  # clean timed runs wanted per method (--quick: 1); medians are reported
MAX_ROUNDS = 8  # give up on clean runs after this many rounds (--quick: 2)
QUIET_WAIT = 30.0  # seconds to wait for other processes to go quiet before each run
TOLERANCE = 1e-5  # max abs difference of loss and accuracy, engine vs naive
GOALS = {"mlp": 5.0, "lenet": 2.0}  # required speedup, engine (auto) over naive
MATMUL_N = 1024  # float32 (N x N) @ (N x N) for the machine's matmul rate
MATMUL_REPS = 20  # products per round (2 * N^3 FLOPs each; ~0.13 s a round here)
MATMUL_ROUNDS = 5  # rounds before and again after the models
CONTENDED_CORES = 0.2  # a timing is "contended" if other processes used more cores than this
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_surface.json"


# -----------------------------------------------------------------------------------------
# 2. Timing, with a record of how busy the rest of the machine was
# -----------------------------------------------------------------------------------------
# timed, is_clean, wait_for_quiet and median_seconds: shared by the benchmarks, in
# _timing.py; the settings QUIET_WAIT and CONTENDED_CORES above are passed to them.


# -----------------------------------------------------------------------------------------
# 3. Models and data
# -----------------------------------------------------------------------------------------
def trained(factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """The model from ``factory`` (seeded init) after ``TRAIN_STEPS`` full-batch Adam steps."""
    torch.manual_seed(SEED)
    model = factory()
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    for _ in range(TRAIN_STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass per example, counting Linear and Conv2d layers only.

    Linear: 2 * in * out; Conv2d: 2 * C_out * (C_in / groups) * kh * kw * H_out * W_out
    (multiply-adds counted as 2; biases, activations, pooling and the loss left out).
    """
    total = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features * output[..., 0].numel()
        else:
            kh, kw = module.kernel_size
            total += 2 * (module.in_channels // module.groups) * kh * kw * output.numel()

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return total


# -----------------------------------------------------------------------------------------
# 4. The naive baseline: copy weights into the model, re-iterate a DataLoader, per point
# -----------------------------------------------------------------------------------------
def naive_surface(
    model: nn.Module,
    center: dict[str, torch.Tensor],
    d1: dict[str, torch.Tensor],
    d2: dict[str, torch.Tensor],
    loader: DataLoader,
    points: list[tuple[float, float]],
) -> np.ndarray:
    """(loss, accuracy) at each ``(alpha, beta)`` of ``points``, as existing tools compute it."""
    net = copy.deepcopy(model)
    out = np.empty((len(points), 2))
    for i, (a, b) in enumerate(points):
        net.load_state_dict({k: center[k] + a * d1[k] + b * d2[k] for k in center})
        net.eval()
        loss_sum, correct, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                logits = net(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(dim=1) == y).sum().item()
                n += len(y)
        out[i] = loss_sum / n, correct / n
    return out


# -----------------------------------------------------------------------------------------
# 5. The engine
# -----------------------------------------------------------------------------------------
def engine_surface(model: nn.Module, data, axis: np.ndarray, strategy: str):
    return random_surface(
        model,
        data,
        seed=SEED,
        normalization=NORMALIZATION,
        alphas=axis,
        betas=axis,
        strategy=strategy,
        batch_size=ENGINE_BATCH,
        chunk_size=ENGINE_CHUNK,
    )


# -----------------------------------------------------------------------------------------
# 6. The machine's matmul rate: the limit to quote efficiency against
# -----------------------------------------------------------------------------------------
def matmul_rounds() -> list[dict[str, Any]]:
    """GFLOP/s of ``MATMUL_REPS`` float32 (N x N) @ (N x N) products, per round."""
    gen = torch.Generator().manual_seed(SEED)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    c = torch.empty(MATMUL_N, MATMUL_N)
    torch.mm(a, b, out=c)  # warm-up

    def products() -> None:
        for _ in range(MATMUL_REPS):
            torch.mm(a, b, out=c)

    rounds = []
    for _ in range(MATMUL_ROUNDS):
        wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
        _, t = timed(products)
        rounds.append({"gflops": 2 * MATMUL_N**3 * MATMUL_REPS / t["seconds"] / 1e9, **t})
    return rounds


# -----------------------------------------------------------------------------------------
# 7. One model: warm up, time round-robin, check equality
# -----------------------------------------------------------------------------------------
def bench_model(name: str, data, grid: int, repeats: int, max_rounds: int) -> dict[str, Any]:
    model = trained(MODELS[name], data.x, data.y)
    center = get_params(model)
    d1, d2 = random_directions(center, SEED, 2, NORMALIZATION, "zero")  # the engine's directions
    loader = DataLoader(TensorDataset(data.x, data.y), batch_size=NAIVE_BATCH, shuffle=False)
    axis = np.linspace(*RANGE, grid)
    grid_points = [(float(a), float(b)) for a in axis for b in axis]  # row-major, as the engine
    naive_idx = list(range(0, len(grid_points), NAIVE_EVERY))
    naive_points = [grid_points[i] for i in naive_idx]

    # warm-up: first-call costs (oneDNN kernels, lazy imports) are paid by no timed run
    small = np.linspace(*RANGE, 3)
    naive_surface(model, center, d1, d2, loader, [(float(a), 0.0) for a in small])
    for s in STRATEGIES:
        engine_surface(model, data, small, s)

    # timed rounds: naive, auto, vmap, loop, until each has `repeats` clean runs
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in ("naive", *STRATEGIES)}
    values: dict[str, np.ndarray] = {}  # (points, [loss, accuracy]) from the latest run
    for _ in range(max_rounds):
        todo = [
            m for m, r in runs.items() if sum(is_clean(x, CONTENDED_CORES) for x in r) < repeats
        ]
        if not todo:
            break
        for method in todo:
            waited = wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
            if method == "naive":
                values["naive"], t = timed(
                    lambda: naive_surface(model, center, d1, d2, loader, naive_points)
                )
                runs["naive"].append({**t, "waited": waited})
                continue
            land, t = timed(lambda s=method: engine_surface(model, data, axis, s))
            ev = land.evaluation
            runs[method].append(
                {
                    **t,
                    "waited": waited,
                    "strategy": ev["strategy"],
                    "chunks_seconds": ev["points"] / ev["points_per_second"],  # trial excluded
                    "trial": ev["trial"],
                }
            )
            values[method] = np.stack(
                [land.dataset[f"train_{m}"].values.reshape(-1) for m in ("loss", "accuracy")], 1
            )

    # equality: every strategy against the naive loop at the naive loop's points
    diffs = {
        s: {
            m: float(np.abs(values[s][naive_idx, j] - values["naive"][:, j]).max())
            for j, m in enumerate(("loss", "accuracy"))
        }
        for s in STRATEGIES
    }
    worst = max(v for d in diffs.values() for v in d.values())  # checked in main, after the JSON

    # speed: medians over clean runs; FLOPs from the Linear and Conv2d layers
    flops = forward_flops(model, data.x)
    per_point = flops * len(data)
    n_points = len(grid_points)
    naive_s, naive_clean = median_seconds(runs["naive"], CONTENDED_CORES)
    naive_pps = len(naive_points) / naive_s
    engine: dict[str, Any] = {}
    for s in STRATEGIES:
        sec, clean = median_seconds(runs[s], CONTENDED_CORES)
        engine[s] = {
            "seconds": sec,
            "points_per_second": n_points / sec,
            "speedup": n_points / sec / naive_pps,
            "gflops": per_point * n_points / sec / 1e9,
            "clean_runs": clean,
            "runs": runs[s],
        }
    speedup = engine["auto"]["speedup"]
    return {
        "parameters": sum(v.numel() for v in center.values()),
        "flops_per_example": flops,
        "examples": len(data),
        "grid_points": n_points,
        "loss_at_center": float(values["auto"][n_points // 2, 0]),
        "loss_range": [float(values["auto"][:, 0].min()), float(values["auto"][:, 0].max())],
        "naive": {
            "points_timed": len(naive_points),
            "every": NAIVE_EVERY,
            "extrapolated": NAIVE_EVERY > 1,
            "seconds": naive_s,
            "points_per_second": naive_pps,
            "gflops": per_point * naive_pps / 1e9,
            "clean_runs": naive_clean,
            "runs": runs["naive"],
        },
        "engine": engine,
        "speedup": speedup,
        "goal": GOALS[name],
        "goal_met": speedup >= GOALS[name],
        "compared_points": len(naive_points),
        "max_abs_diff": diffs,
        "tolerance": TOLERANCE,
        "equal_within_tolerance": worst <= TOLERANCE,
    }


# -----------------------------------------------------------------------------------------
# 8. Main: run, print the tables, write JSON
# -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="7x7 grid, one round: a smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    args = parser.parse_args()
    grid, repeats, max_rounds = (QUICK_GRID, 1, 2) if args.quick else (GRID, REPEATS, MAX_ROUNDS)

    data = load_digits(SPLIT)
    matmul = matmul_rounds()
    results = {name: bench_model(name, data, grid, repeats, max_rounds) for name in MODELS}
    matmul += matmul_rounds()  # a second look after the models: was the machine steady?
    clean_rates = [r["gflops"] for r in matmul if is_clean(r, CONTENDED_CORES)]
    peak = statistics.median(clean_rates or [r["gflops"] for r in matmul])
    for r in results.values():
        r["naive"]["efficiency"] = r["naive"]["gflops"] / peak
        for e in r["engine"].values():
            e["efficiency"] = e["gflops"] / peak

    print(
        f"\nbasinscope surface benchmark: {grid}x{grid} {NORMALIZATION}-normalized surface, "
        f"digits {SPLIT} ({len(data)} images), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, medians of {repeats} clean runs"
    )
    print(
        f"float32 matmul {MATMUL_N}x{MATMUL_N}: {peak:.0f} GFLOP/s (median of "
        f"{len(clean_rates)} clean rounds; range {min(r['gflops'] for r in matmul):.0f}-"
        f"{max(r['gflops'] for r in matmul):.0f})\n"
    )
    header = (
        f"{'model':<6} {'naive pt/s':>10} {'auto pt/s':>16} {'vmap pt/s':>10} "
        f"{'loop pt/s':>10} {'speedup':>8} {'goal':>9} {'max|dloss|':>10} {'max|dacc|':>9} "
        f"{'GFLOP/s':>8} {'of matmul':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        e = r["engine"]
        chosen = "/".join(
            sorted({x["strategy"] for x in e["auto"]["runs"] if is_clean(x, CONTENDED_CORES)})
        )
        dloss = max(d["loss"] for d in r["max_abs_diff"].values())
        dacc = max(d["accuracy"] for d in r["max_abs_diff"].values())
        goal = f">={r['goal']:.0f}x {'ok' if r['goal_met'] else 'NO'}"
        auto = f"{e['auto']['points_per_second']:.0f} ({chosen})"
        print(
            f"{name:<6} {r['naive']['points_per_second']:>10.0f} {auto:>16} "
            f"{e['vmap']['points_per_second']:>10.0f} {e['loop']['points_per_second']:>10.0f} "
            f"{r['speedup']:>7.1f}x {goal:>9} {dloss:>10.1e} {dacc:>9.1e} "
            f"{e['auto']['gflops']:>8.1f} {e['auto']['efficiency']:>8.1%}"
        )
    print("\nwhere auto's time goes (clean runs, medians, seconds):")
    for name, r in results.items():
        clean = [x for x in r["engine"]["auto"]["runs"] if is_clean(x, CONTENDED_CORES)]
        clean = clean or r["engine"]["auto"]["runs"]
        total = statistics.median(x["seconds"] for x in clean)
        chunks = statistics.median(x["chunks_seconds"] for x in clean)
        print(
            f"  {name:<6} end to end {total:.3f} = chunks {chunks:.3f} + strategy trial and "
            f"set-up {total - chunks:.3f}   (naive {r['naive']['seconds']:.3f})"
        )
    timings = [
        (f"{name}/{m}", v)
        for name, r in results.items()
        for m, v in [("naive", r["naive"]), *r["engine"].items()]
    ]
    dropped = sum(len(v["runs"]) - v["clean_runs"] for _, v in timings)
    if dropped:
        print(f"{dropped} runs left out: other processes used > {CONTENDED_CORES} cores")
    unreliable = [k for k, v in timings if v["clean_runs"] == 0]
    if unreliable:
        print(f"WARNING: no clean run (numbers unreliable): {', '.join(unreliable)}")

    report = {
        "benchmark": "bench_surface",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "basinscope": basinscope.__version__,
        # the engine changes often: tie the numbers to the exact source they measured
        "engine_source_sha256": hashlib.sha256(
            Path(engine_module.__file__).read_bytes()
        ).hexdigest()[:16],
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "settings": {
            "grid": [grid, grid],
            "range": list(RANGE),
            "seed": SEED,
            "normalization": NORMALIZATION,
            "bias_policy": "zero",
            "data": f"digits-{SPLIT}",
            "examples": len(data),
            "train_steps": TRAIN_STEPS,
            "train_lr": TRAIN_LR,
            "naive_batch_size": NAIVE_BATCH,
            "naive_every": NAIVE_EVERY,
            "engine_batch_size": ENGINE_BATCH,
            "engine_chunk_size": ENGINE_CHUNK,
            "repeats": repeats,
            "max_rounds": max_rounds,
            "quiet_wait_seconds": QUIET_WAIT,
            "contended_cores": CONTENDED_CORES,
            "tolerance": TOLERANCE,
            "quick": args.quick,
            "speedup": "engine points/s (random_surface end to end, strategy trial "
            "included) / naive points/s",
            "gflops": "forward FLOPs of the Linear and Conv2d layers x examples x points "
            "/ seconds; efficiency = gflops / matmul gflops",
        },
        "matmul": {
            "n": MATMUL_N,
            "products_per_round": MATMUL_REPS,
            "gflops": peak,
            "rounds": matmul,
        },
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    unequal = {n: r["max_abs_diff"] for n, r in results.items() if not r["equal_within_tolerance"]}
    assert not unequal, f"engine and naive loop differ by more than {TOLERANCE}: {unequal}"


if __name__ == "__main__":
    main()
