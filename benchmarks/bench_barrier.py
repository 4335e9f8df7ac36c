"""A 25-point barrier between two ResNets with BatchNorm re-estimated at every point.

What it measures, for two ``resnet(depth=8, width=16)`` trained briefly from different
seeds on the digits train split (1,347 images), on the same split:

* the per-point loop that released barrier code runs: for every alpha, deep-copy the
  model, ``load_state_dict`` the interpolated state (parameters and BatchNorm buffers),
  reset the running statistics with ``momentum=None`` (a cumulative average), forward the
  first ``BN_BATCHES`` batches of ``BN_BATCH`` training images in train mode, switch to
  eval mode and loop over a ``DataLoader`` (batch ``NAIVE_BATCH``) for loss and error;
* ``basinscope.analyses.barrier.barrier(..., bn_policy="recompute", refine=False)`` on the
  same 25 alphas, timed end to end (strategy trial included), for the loss and for the
  error, with the engine's ``"auto"`` strategy and with ``"vmap"`` and ``"loop"`` forced;
* that the engine's curves equal the loop's to ``TOLERANCE`` (loss and error at every
  alpha) and so do the three barrier definitions computed from them;
* for context, one run of the defaults (``refine=True``: two rounds of 9 points around the
  worst alpha) with a 1,000-resample bootstrap interval, per metric; the loop re-evaluates
  the refined worst alpha, which must agree to ``TOLERANCE`` as well.

Timings are medians over ``REPEATS`` clean runs taken round-robin after one untimed
warm-up of each method; each run first waits (up to ``QUIET_WAIT`` s) for other processes
to go quiet and records how many cores they used meanwhile (``/proc/stat``); a run is
*clean* under ``CONTENDED_CORES``.

Run:  .venv/bin/python benchmarks/bench_barrier.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import statistics
import time
import warnings
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
from basinscope.analyses.barrier import BARRIER_DEFINITIONS, barrier, barrier_from_curve
from basinscope.data import load_digits
from basinscope.models import resnet
from basinscope.training import TrainConfig, train

# -----------------------------------------------------------------------------------------
# 1. Settings
# -----------------------------------------------------------------------------------------
DEPTH, WIDTH = 8, 16  # resnet(depth=8, width=16): one BasicBlock per stage, BatchNorm
SEEDS = (0, 1)  # initialization and data order of model A and model B
SPLIT = "train"  # digits train split: 1,347 images of 1 x 8 x 8; training, BN and barrier
TRAIN = TrainConfig(steps=300, batch_size=64, lr=0.05)  # SGD, momentum 0.9 (--quick: 60)
QUICK_TRAIN_STEPS = 60
NUM_POINTS = 25  # alphas: np.linspace(0, 1, 25) (--quick: 9)
QUICK_POINTS = 9
BN_BATCHES = 10  # BatchNorm statistics re-estimated from the first 10 batches ...
BN_BATCH = 128  # ... of 128 training images (the engine's bn batch size)
NAIVE_BATCH = 128  # examples per batch of the per-point loop's DataLoader
ENGINE_BATCH = 1024  # the engine's default batch size
STRATEGIES = ("auto", "vmap", "loop")
REPEATS = 3  # clean timed runs wanted per method (--quick: 1); medians are reported
MAX_ROUNDS = 6  # give up on clean runs after this many rounds (--quick: 1)
BOOTSTRAP = 1000  # resamples of the context run's confidence interval
QUIET_WAIT = 20.0  # seconds to wait for other processes to go quiet before each run
CONTENDED_CORES = 0.2  # a timing is "contended" if other processes used more cores than this
TOLERANCE = 1e-5  # max abs difference of loss, error and barriers, engine vs loop
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_barrier.json"

# vmap has no batching rule for one op of adaptive pooling; torch says so on every call
warnings.filterwarnings("ignore", message="There is a performance drop")


# -----------------------------------------------------------------------------------------
# 2. Timing, with a record of how busy the rest of the machine was
# -----------------------------------------------------------------------------------------
# timed, is_clean, wait_for_quiet and median_seconds: shared by the benchmarks, in
# _timing.py; the settings QUIET_WAIT and CONTENDED_CORES above are passed to them.


# -----------------------------------------------------------------------------------------
# 3. Models
# -----------------------------------------------------------------------------------------
def trained(seed: int, data, steps: int) -> nn.Module:
    """``resnet(DEPTH, WIDTH)`` initialized with ``seed``, trained ``steps`` SGD steps."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(TRAIN, steps=steps, data_seed=seed)
    return train(resnet(depth=DEPTH, width=WIDTH), data, cfg).model.eval()


# -----------------------------------------------------------------------------------------
# 4. The per-point loop: copy, load, re-estimate BatchNorm, evaluate, for every alpha
# -----------------------------------------------------------------------------------------
def loop_curves(
    model_a: nn.Module, model_b: nn.Module, data, alphas: np.ndarray
) -> dict[str, np.ndarray]:
    """Loss and error at each alpha, as released barrier code computes them."""
    sa, sb = model_a.state_dict(), model_b.state_dict()
    loader = DataLoader(TensorDataset(data.x, data.y), batch_size=NAIVE_BATCH, shuffle=False)
    bn_x = [data.x[i : i + BN_BATCH] for i in range(0, BN_BATCHES * BN_BATCH, BN_BATCH)]
    out = {"loss": np.empty(len(alphas)), "error": np.empty(len(alphas))}
    for i, a in enumerate(alphas):
        net = copy.deepcopy(model_a)
        net.load_state_dict(
            {k: (1 - a) * v + a * sb[k] if v.is_floating_point() else v for k, v in sa.items()}
        )
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        net.train()
        with torch.no_grad():
            for x in bn_x:
                net(x)
        net.eval()
        loss_sum, wrong, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                logits = net(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                wrong += (logits.argmax(dim=1) != y).sum().item()
                n += len(y)
        out["loss"][i], out["error"][i] = loss_sum / n, wrong / n
    return out


# -----------------------------------------------------------------------------------------
# 5. The engine
# -----------------------------------------------------------------------------------------
def engine_barrier(model_a, model_b, data, alphas, metric: str, strategy: str, **kw):
    return barrier(
        model_a,
        model_b,
        data,
        metric=metric,
        alphas=alphas,
        refine=kw.pop("refine", False),
        bn_policy="recompute",
        bn_data=data,
        bn_batches=BN_BATCHES,
        strategy=strategy,
        batch_size=ENGINE_BATCH,
        **kw,
    )


def barriers_of(alphas: np.ndarray, values: np.ndarray) -> dict[str, float]:
    return {d: barrier_from_curve(alphas, values, d)[0] for d in BARRIER_DEFINITIONS}


# -----------------------------------------------------------------------------------------
# 6. Main: train, warm up, time round-robin, compare, print, write JSON
# -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="9 points, one round: a smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    args = parser.parse_args()
    points, steps, repeats, max_rounds = (
        (QUICK_POINTS, QUICK_TRAIN_STEPS, 1, 1)
        if args.quick
        else (NUM_POINTS, TRAIN.steps, REPEATS, MAX_ROUNDS)
    )
    data = load_digits(SPLIT)
    alphas = np.linspace(0.0, 1.0, points)
    t0 = time.perf_counter()
    model_a, model_b = (trained(s, data, steps) for s in SEEDS)
    train_seconds = time.perf_counter() - t0

    # methods: the loop (loss and error in one pass); the engine, one barrier per metric
    methods: dict[str, Callable[[np.ndarray], Any]] = {
        "loop": lambda al: loop_curves(model_a, model_b, data, al)
    }
    for s in STRATEGIES:
        methods[f"engine_{s}_loss"] = lambda al, s=s: engine_barrier(
            model_a, model_b, data, al, "loss", s
        )
    methods["engine_auto_error"] = lambda al: engine_barrier(
        model_a, model_b, data, al, "error", "auto"
    )

    # warm-up: first-call costs (oneDNN kernels, lazy imports) are paid by no timed run
    for fn in methods.values():
        fn(np.linspace(0.0, 1.0, 3))

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    outputs: dict[str, Any] = {}
    for _ in range(max_rounds):
        todo = [
            m for m, r in runs.items() if sum(is_clean(x, CONTENDED_CORES) for x in r) < repeats
        ]
        if not todo:
            break
        for m in todo:
            waited = wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
            outputs[m], t = timed(lambda m=m: methods[m](alphas))
            if m != "loop":
                ev = outputs[m].evaluation
                t["strategy"] = ev["strategy"]
                t["chunk_seconds"] = ev["chunk_seconds"]  # the points only: no trial, set-up
                t["trial"] = ev["trial"]
            runs[m].append({**t, "waited": waited})

    # equality: curves and barriers, engine against the loop
    loop = outputs["loop"]
    curves = {m: r.values for m, r in outputs.items() if m != "loop"}
    diffs: dict[str, dict[str, float]] = {}
    for m, v in curves.items():
        metric = outputs[m].metric
        assert np.array_equal(outputs[m].alphas, alphas)
        b_engine, b_loop = barriers_of(alphas, v), barriers_of(alphas, loop[metric])
        diffs[m] = {
            "curve": float(np.abs(v - loop[metric]).max()),
            **{d: abs(b_engine[d] - b_loop[d]) for d in BARRIER_DEFINITIONS},
        }
    worst = max(x for d in diffs.values() for x in d.values())
    assert worst <= TOLERANCE, f"engine and loop differ by {worst:.3g}: {diffs}"

    # context: the defaults (refinement) with a bootstrap interval, loss and error; the
    # refined worst point is checked against the loop too
    context = {}
    for metric in ("loss", "error"):
        r = engine_barrier(
            model_a, model_b, data, alphas, metric, "auto", refine=True, bootstrap=BOOTSTRAP
        )
        at_worst = loop_curves(model_a, model_b, data, np.array([r.worst_alpha]))[metric][0]
        assert abs(at_worst - r.f_worst) <= TOLERANCE, (metric, at_worst, r.f_worst)
        context[metric] = {
            k: v
            for k, v in r.to_dict().items()
            if k not in ("alphas", "values", "evaluation", "definition_formula")
        } | {
            "points_evaluated": len(r.alphas),
            "strategy": r.evaluation["strategy"],
            "loop_f_worst": at_worst,
        }

    loop_s, loop_clean = median_seconds(runs["loop"], CONTENDED_CORES)
    timing: dict[str, Any] = {
        "loop": {"seconds": loop_s, "clean_runs": loop_clean, "runs": runs["loop"]}
    }
    for m in methods:
        if m == "loop":
            continue
        sec, clean = median_seconds(runs[m], CONTENDED_CORES)
        use = [r for r in runs[m] if is_clean(r, CONTENDED_CORES)] or runs[m]
        timing[m] = {
            "seconds": sec,
            "speedup": loop_s / sec,
            "chunk_seconds": statistics.median(r["chunk_seconds"] for r in use),
            "clean_runs": clean,
            "strategy": runs[m][-1]["strategy"],
            "runs": runs[m],
        }

    print(
        f"\nbasinscope barrier benchmark: {points}-point barrier between two resnet(depth="
        f"{DEPTH}, width={WIDTH}) on digits {SPLIT} ({len(data)} images), BatchNorm "
        f"re-estimated at every alpha from {BN_BATCHES} x {BN_BATCH} images, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, medians of {repeats} runs\n"
    )
    header = f"{'method':<20} {'strategy':>8} {'seconds':>8} {'speedup':>8} {'max|diff|':>9}"
    print(header)
    print("-" * len(header))
    print(f"{'loop (loss+error)':<20} {'-':>8} {loop_s:>8.3f} {'1.0x':>8} {'-':>9}")
    for m, t in timing.items():
        if m == "loop":
            continue
        print(
            f"{m:<20} {t['strategy']:>8} {t['seconds']:>8.3f} {t['speedup']:>7.1f}x "
            f"{max(diffs[m].values()):>9.1e}"
        )
    print("\nwhere the engine's time goes (medians, seconds):")
    for m, t in timing.items():
        if m != "loop":
            print(
                f"  {m:<18} end to end {t['seconds']:.3f} = points {t['chunk_seconds']:.3f} "
                f"+ strategy trial and set-up {t['seconds'] - t['chunk_seconds']:.3f}"
            )
    print("\nbarriers on the grid (engine auto; the loop agrees to the max|diff| above):")
    for metric in ("loss", "error"):
        b = barriers_of(alphas, curves[f"engine_auto_{metric}"])
        print(
            f"  {metric:<5} f(0)={loop[metric][0]:.4f} f(1)={loop[metric][-1]:.4f}  "
            + "  ".join(f"{d} {v:.4f}" for d, v in b.items())
        )
    print("with the defaults (refine=True, bootstrap 95% interval):")
    for metric, c in context.items():
        print(
            f"  {metric:<5} linear {c['value']:.4f} at alpha {c['worst_alpha']:.4f} "
            f"({c['points_evaluated']} points), CI [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}], "
            f"{c['seconds']:.2f} s; loop at that alpha {c['loop_f_worst']:.4f}"
        )
    unreliable = [m for m, t in timing.items() if t["clean_runs"] == 0]
    if unreliable:
        print(f"WARNING: no clean run (timings contended): {', '.join(unreliable)}")

    report = {
        "benchmark": "bench_barrier",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "basinscope": basinscope.__version__,
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "settings": {
            "model": f"resnet(depth={DEPTH}, width={WIDTH})",
            "parameters": sum(p.numel() for p in model_a.parameters()),
            "seeds": list(SEEDS),
            "data": f"digits-{SPLIT}",
            "examples": len(data),
            "train": {**TRAIN.to_dict(), "steps": steps},
            "train_seconds": train_seconds,
            "alphas": alphas.tolist(),
            "bn_policy": "recompute",
            "bn_batches": BN_BATCHES,
            "bn_batch_size": BN_BATCH,
            "naive_batch_size": NAIVE_BATCH,
            "engine_batch_size": ENGINE_BATCH,
            "repeats": repeats,
            "max_rounds": max_rounds,
            "quiet_wait_seconds": QUIET_WAIT,
            "contended_cores": CONTENDED_CORES,
            "tolerance": TOLERANCE,
            "quick": args.quick,
            "speedup": "loop seconds (loss and error in one pass) / engine seconds (one "
            "barrier() call, end to end, strategy trial included)",
        },
        "timing": timing,
        "curves": {
            "loop": {k: v.tolist() for k, v in loop.items()},
            **{m: v.tolist() for m, v in curves.items()},
        },
        "barriers": {
            metric: {
                "loop": barriers_of(alphas, loop[metric]),
                "engine_auto": barriers_of(alphas, curves[f"engine_auto_{metric}"]),
            }
            for metric in ("loss", "error")
        },
        "max_abs_diff": diffs,
        "defaults_with_bootstrap": context,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
