"""The cost of one Hessian-vector product in gradients, per method, with curvlinops as a peer.

What it measures, for the 64-128-10 MLP (``mlp(hidden=(128,))``, 9,610 parameters) and the
built-in LeNet (5,750 parameters) at their seeded initialization, on the digits train split
(1,347 images) in float64, the data in one batch (the operator's ``batch_size`` above the
split's size), everything over the whole split:

* seconds per gradient: a plain ``loss.backward()`` of the model (the reference, "one
  gradient") and ``HessianOperator.gradient()``;
* seconds per HVP, ``op.matvec(v)``, for each method (forward-over-reverse,
  reverse-over-forward, double backward) and for ``method="auto"``;
* seconds per vector of a block product, ``op.matmat(V)`` with ``BLOCK`` columns (``vmap``
  over the product, or double backward's batched second pass);
* the peer: curvlinops' ``HessianLinearOperator`` (``H @ v`` and ``H @ V``) on the same
  model, data and batch, when it imports (it is never a dependency of basinscope:
  ``pip install --no-deps curvlinops-for-pytorch einops einconv linear_operator``);
* ratios to one gradient against the goals (``GOALS``), the FLOPs of each call
  (``torch.utils.flop_counter``) and their rate as a fraction of the machine's float64
  matmul rate (1024 x 1024 products) measured in the same run;
* that every product equals the first method's to ``CHECK_RTOL`` (and curvlinops' too).

Timings are medians over ``REPEATS`` rounds, taken round-robin, each of ``REPS`` calls,
after waiting (up to ``QUIET_WAIT`` s) for other processes to go quiet; each records how
many cores other processes used meanwhile (``/proc/stat``) and a run is *clean* under
``CONTENDED_CORES`` (see ``_timing.py``).

Run:  .venv/bin/python benchmarks/bench_hvp.py [--quick] [--out PATH] [--models mlp lenet]
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from _timing import machine, median_seconds, timed, wait_for_quiet
from basinscope.curvature.operators import HVP_METHODS, HessianOperator
from basinscope.data import load_digits
from basinscope.models import lenet, mlp

# -----------------------------------------------------------------------------------------
# 1. Settings
# -----------------------------------------------------------------------------------------
MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": lambda: mlp(hidden=(128,)),  # 64 -> 128 -> 10, ReLU: 9,610 parameters
    "lenet": lenet,  # conv 6, conv 16, fc 64, fc 10: 5,750 parameters
}
GOALS = {"mlp": 2.0, "lenet": 3.0}  # one HVP costs at most this many gradients (the issue)
SPLIT = "train"  # digits train split: 1,347 images of 1 x 8 x 8
SEED = 0  # model initialization and the vectors
BATCH = 4096  # examples per batch: the whole split in one
DTYPE = torch.float64  # the operators' default precision
BLOCK = 8  # columns of a block product
REPEATS = 5  # timed rounds per method (--quick: 1); medians are reported
REPS = 10  # calls per timed run (--quick: 2)
CHECK_RTOL = 1e-9  # products of every method agree to this (relative to the largest entry)
MATMUL_SIZE, MATMUL_REPS = 1024, 5  # the float64 matmul rate: n x n products
QUIET_WAIT = 10.0  # seconds to wait for other processes to go quiet before each run
CONTENDED_CORES = 0.2  # a timing is "contended" if other processes used more cores than this
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_hvp.json"
METHODS = HVP_METHODS[1:]  # forward-over-reverse, reverse-over-forward, double-backward


# -----------------------------------------------------------------------------------------
# 2. The peer: curvlinops, if it imports
# -----------------------------------------------------------------------------------------
def curvlinops_operator(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    """curvlinops' Hessian of the mean cross-entropy on one batch, or why it is missing."""
    try:
        from curvlinops import HessianLinearOperator
    except Exception as e:  # not installed, or a dependency missing
        return f"curvlinops does not import: {type(e).__name__}: {e}"
    params = [p for p in model.parameters() if p.requires_grad]
    return HessianLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False
    )


# -----------------------------------------------------------------------------------------
# 3. What is timed: each entry is (calls of one timed unit, vectors per call)
# -----------------------------------------------------------------------------------------
def calls(model: nn.Module, data, v: torch.Tensor, vs: torch.Tensor) -> dict[str, Any]:
    """name -> (function, vectors it multiplies; 0 for a gradient), and the operators."""
    ref = model.to(DTYPE)
    x, y = data.x.to(DTYPE), data.y

    def plain_gradient() -> None:
        ref.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x), y).backward()

    ops = {m: HessianOperator(model, data, batch_size=BATCH, method=m) for m in METHODS}
    auto = HessianOperator(model, data, batch_size=BATCH)
    out: dict[str, tuple[Callable[[], Any], int]] = {
        "gradient (loss.backward)": (plain_gradient, 0),
        "gradient (op.gradient)": (ops[METHODS[0]].gradient, 0),
    }
    for m, op in ops.items():
        out[f"hvp {m}"] = (lambda op=op: op.matvec(v), 1)
        out[f"block {m}"] = (lambda op=op: op.matmat(vs), BLOCK)
    out[f"hvp auto ({auto.method})"] = (lambda: auto.matvec(v), 1)
    peer = curvlinops_operator(ref, x, y)
    if not isinstance(peer, str):
        out["hvp curvlinops"] = (lambda: peer @ v, 1)
        out["block curvlinops"] = (lambda: peer @ vs, BLOCK)
    return {"calls": out, "ops": ops, "auto": auto, "peer": peer}


def check(setup: dict[str, Any], v: torch.Tensor, vs: torch.Tensor) -> dict[str, float]:
    """Largest relative difference of each product from the first method's."""
    first = setup["ops"][METHODS[0]]
    hv, hvs = first.matvec(v), first.matmat(vs)
    scale = float(hvs.abs().max())
    diffs = {}
    for name, (fn, k) in setup["calls"].items():
        if k:
            diffs[name] = float((fn() - (hvs if k > 1 else hv)).abs().max()) / scale
    return diffs


def flops(fn: Callable[[], Any]) -> int | None:
    """FLOPs of one call (matmuls and convolutions, as torch's flop counter counts them)."""
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
        return int(counter.get_total_flops())
    except Exception:  # a transform the counter does not follow
        return None


def matmul_gflops(repeats: int) -> float:
    """The machine's float64 matmul rate, in GFLOP/s (best of ``repeats``)."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=DTYPE)
    a @ a
    best = min(timed(lambda: a @ a)[1]["seconds"] for _ in range(repeats))
    return 2 * MATMUL_SIZE**3 / best / 1e9


# -----------------------------------------------------------------------------------------
# 4. One model
# -----------------------------------------------------------------------------------------
def bench_model(name: str, data, repeats: int, reps: int) -> dict[str, Any]:
    torch.manual_seed(SEED)
    model = MODELS[name]()
    g = torch.Generator().manual_seed(SEED)
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, dtype=DTYPE, generator=g)
    vs = torch.randn(n, BLOCK, dtype=DTYPE, generator=g)
    setup = calls(model, data, v, vs)
    diffs = check(setup, v, vs)  # also the warm-up: first-call costs in no timed run
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in setup["calls"]}
    for _ in range(repeats):
        for what, (fn, _k) in setup["calls"].items():
            waited = wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
            _, t = timed(lambda fn=fn: [fn() for _ in range(reps)])
            runs[what].append({**t, "seconds": t["seconds"] / reps, "waited": waited})
    grad_s, _ = median_seconds(runs["gradient (loss.backward)"], CONTENDED_CORES)
    rows = {}
    for what, (fn, k) in setup["calls"].items():
        sec, clean = median_seconds(runs[what], CONTENDED_CORES)
        per_vector = sec / max(k, 1)
        f = flops(fn)
        rows[what] = {
            "seconds_per_call": sec,
            "vectors": k,
            "seconds_per_vector": per_vector if k else None,
            "gradients_per_vector": per_vector / grad_s,
            "goal_met": per_vector / grad_s <= GOALS[name] if k else None,
            "flops_per_call": f,
            "gflops_per_second": f / sec / 1e9 if f else None,
            "max_relative_difference": diffs.get(what),
            "clean_runs": clean,
            "runs": runs[what],
        }
    peer = setup["peer"]
    return {
        "parameters": n,
        "examples": len(data),
        "goal_gradients_per_hvp": GOALS[name],
        "auto_choice": setup["auto"].method,
        "auto_trial_seconds": setup["auto"].trial,
        "curvlinops": peer if isinstance(peer, str) else "imported",
        "check_passed": all(d <= CHECK_RTOL for d in diffs.values()),
        "rows": rows,
    }


# -----------------------------------------------------------------------------------------
# 5. Main: run, print the table, write JSON
# -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed round of 2 calls")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="models to run"
    )
    args = parser.parse_args()
    repeats, reps = (1, 2) if args.quick else (REPEATS, REPS)

    data = load_digits(SPLIT)
    peak = matmul_gflops(MATMUL_REPS)
    results = {name: bench_model(name, data, repeats, reps) for name in args.models}

    print(
        f"\nbasinscope HVP benchmark: digits {SPLIT} ({len(data)} images, one batch), float64, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {repeats} "
        f"runs of {reps} calls; float64 matmul {peak:.1f} GFLOP/s"
    )
    header = (
        f"{'model':<6} {'call':<34} {'ms/call':>8} {'ms/vector':>9} {'x grad':>7} "
        f"{'goal':>5} {'GFLOP/s':>8} {'of peak':>7} {'clean':>5} {'rel diff':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        for what, row in r["rows"].items():
            k = row["vectors"]
            goal = "" if row["goal_met"] is None else ("ok" if row["goal_met"] else "NO")
            rate = row["gflops_per_second"]
            diff = row["max_relative_difference"]
            print(
                f"{name:<6} {what:<34} {row['seconds_per_call'] * 1e3:>8.2f} "
                f"{(row['seconds_per_vector'] or 0) * 1e3 if k else float('nan'):>9.2f} "
                f"{row['gradients_per_vector']:>7.2f} {goal:>5} "
                f"{rate if rate else float('nan'):>8.2f} "
                f"{(rate / peak if rate else float('nan')):>7.1%} {row['clean_runs']:>5} "
                f"{diff if diff is not None else float('nan'):>8.1e}"
            )
        print(
            f"{name:<6} goal: one HVP <= {r['goal_gradients_per_hvp']:g} gradients; auto chose "
            f"{r['auto_choice']}; products agree: {r['check_passed']}; curvlinops: "
            f"{r['curvlinops']}"
        )

    report = {
        "benchmark": "bench_hvp",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": machine(float64_matmul_gflops=peak),
        "settings": {
            "data": f"digits-{SPLIT}",
            "examples": len(data),
            "seed": SEED,
            "batch_size": BATCH,
            "dtype": str(DTYPE).replace("torch.", ""),
            "block": BLOCK,
            "repeats": repeats,
            "reps": reps,
            "check_rtol": CHECK_RTOL,
            "goals": GOALS,
            "gradient": "loss.backward() of the float64 model over the split (one batch)",
            "quiet_wait_seconds": QUIET_WAIT,
            "contended_cores": CONTENDED_CORES,
            "quick": args.quick,
        },
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not all(r["check_passed"] for r in results.values()):
        raise SystemExit("the products of the methods disagree: see max_relative_difference")


if __name__ == "__main__":
    main()
