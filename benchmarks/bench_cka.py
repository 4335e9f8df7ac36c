"""Linear CKA of all layer pairs of two LeNets: streaming sums against N x N Gram matrices.

What it measures, for two ``lenet()`` trained briefly from different seeds on the digits
train split, on the digits train+test images (1,797; ``--n`` tiles them to scale N):

* ``cka_matrix(..., method="linear")``: basinscope's streaming linear CKA
  (``StreamingLinearCKA``): float64 sums of X^T X, Y^T Y and X^T Y per layer and layer pair,
  accumulated batch by batch, so memory does not depend on N;
* the materialized baseline that most CKA packages run, written out here: capture every
  layer's activations of both models with forward hooks (float64), build the N x N linear
  Gram matrix K = X X^T of every layer, centre it (H K H) and compute
  CKA = <Kc, Lc>_F / (||Kc||_F ||Lc||_F) for every pair;
* that the two matrices agree to ``TOLERANCE`` (checked after the JSON is written).

Each method runs in a fresh subprocess (``--worker``), so its peak memory is its own: the
worker reads its RSS after imports, model and data load (the base), resets the peak there
(``/proc/self/clear_refs``: importing torch and scikit-learn peaks above what is kept) and
reads the peak (``VmHWM``) at the end; it reports both, their difference and
``ru_maxrss`` (the whole-life peak) after load and at the end. Timings are medians over
``REPEATS`` clean runs after one untimed warm-up on the first ``WARMUP_EXAMPLES`` examples;
each run first waits (up to ``QUIET_WAIT`` s) for other processes to go quiet and records
how many cores they used meanwhile (``/proc/stat``); a run is *clean* under
``CONTENDED_CORES``.

Run:  .venv/bin/python benchmarks/bench_cka.py [--n 1797 7188] [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import basinscope
from _timing import is_clean, machine, median_seconds, timed, wait_for_quiet
from basinscope.analyses.similarity import _default_layers, cka_matrix
from basinscope.data import load_digits
from basinscope.models import lenet
from basinscope.training import TrainConfig, train

# -----------------------------------------------------------------------------------------
# 1. Settings
# -----------------------------------------------------------------------------------------
SEEDS = (0, 1)  # initialization and data order of model A and model B
TRAIN_SPLIT = "train"  # digits train split (1,347 images) for the brief training
TRAIN = TrainConfig(steps=100, batch_size=64, lr=0.05)  # SGD, momentum 0.9
CKA_SPLIT = "all"  # digits train+test: 1,797 images of 1 x 8 x 8
NS = (1797, 4 * 1797)  # examples per row (default of --n); the images tiled, then cut
BATCH = 256  # examples per forward pass, both methods
METHODS = ("streaming", "gram")
REPEATS = 3  # clean timed runs wanted per method and N; medians are reported
MAX_ROUNDS = 6  # give up on clean runs after this many timed runs
WARMUP_EXAMPLES = 256  # the untimed warm-up runs on this many examples (sets no peak)
QUIET_WAIT = 20.0  # seconds to wait for other processes to go quiet before each run
CONTENDED_CORES = 0.2  # a timing is "contended" if other processes used more cores than this
TOLERANCE = 1e-10  # max abs difference of the two CKA matrices
MIB = 2**20  # bytes per MiB; ru_maxrss is in KiB on Linux
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_cka.json"


# -----------------------------------------------------------------------------------------
# 2. Timing, with a record of how busy the rest of the machine was
# -----------------------------------------------------------------------------------------
# timed, is_clean, wait_for_quiet and median_seconds: shared by the benchmarks, in
# _timing.py; the settings QUIET_WAIT and CONTENDED_CORES above are passed to them.


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS since the last :func:`reset_peak`) of this process in MiB."""
    with open("/proc/self/status") as f:
        kib = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in f) if k[:2] == "Vm"}
    return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024


def maxrss_mib() -> float:
    """``ru_maxrss``: the peak RSS of the whole process life (KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start a new peak (Linux: ``VmHWM`` := ``VmRSS``), so the method's own peak is seen."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# -----------------------------------------------------------------------------------------
# 3. The two methods
# -----------------------------------------------------------------------------------------
def streaming_cka(model_a: nn.Module, model_b: nn.Module, x: Tensor) -> np.ndarray:
    """basinscope: ``cka_matrix(method="linear")``, streaming float64 sums."""
    data = (x, torch.zeros(len(x), dtype=torch.long))  # labels are not used
    return cka_matrix(model_a, model_b, data, method="linear", batch_size=BATCH).matrix


def _activations(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Every default layer's outputs on all of ``x``, flattened, float64, kept in memory."""
    names = _default_layers(model)
    modules = dict(model.named_modules())
    store: dict[str, list[Tensor]] = {n: [] for n in names}

    def hook(name: str) -> Callable[..., None]:
        return lambda _m, _i, out: store[name].append(out.reshape(len(out), -1).double())

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for i in range(0, len(x), BATCH):
                model(x[i : i + BATCH])
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(store[n]) for n in names]


def _centred_gram(acts: Tensor) -> Tensor:
    """H (X X^T) H, N x N float64; centred in place (no further N x N temporaries)."""
    k = acts @ acts.T
    k -= k.mean(0, keepdim=True)
    k -= k.mean(1, keepdim=True)
    return k


def gram_cka(model_a: nn.Module, model_b: nn.Module, x: Tensor) -> np.ndarray:
    """The materialized baseline: all activations, all centred Grams, then every pair."""
    grams_a = [_centred_gram(a) for a in _activations(model_a, x)]
    grams_b = [_centred_gram(b) for b in _activations(model_b, x)]
    norms_a = [float(torch.linalg.vector_norm(k)) for k in grams_a]
    norms_b = [float(torch.linalg.vector_norm(ell)) for ell in grams_b]
    out = np.empty((len(grams_a), len(grams_b)))
    for i, k in enumerate(grams_a):
        for j, ell in enumerate(grams_b):
            out[i, j] = float(torch.dot(k.view(-1), ell.view(-1))) / (norms_a[i] * norms_b[j])
    return out


RUNNERS = {"streaming": streaming_cka, "gram": gram_cka}


# -----------------------------------------------------------------------------------------
# 4. Data and models
# -----------------------------------------------------------------------------------------
def cka_images(n: int) -> Tensor:
    """The digits train+test images, tiled and cut to ``n`` examples."""
    x = load_digits(CKA_SPLIT).x
    return x.repeat(math.ceil(n / len(x)), 1, 1, 1)[:n].contiguous()


def trained(seed: int, steps: int) -> nn.Module:
    """``lenet()`` initialized with ``seed``, trained ``steps`` SGD steps."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(TRAIN, steps=steps, data_seed=seed)
    return train(lenet(), load_digits(TRAIN_SPLIT), cfg).model.eval()


# -----------------------------------------------------------------------------------------
# 5. The worker: one method, one N, in a fresh process; prints one JSON line
# -----------------------------------------------------------------------------------------
def worker(method: str, n: int, states: Path) -> None:
    models = []
    for s in SEEDS:
        m = lenet()
        m.load_state_dict(torch.load(states / f"lenet_{s}.pt", weights_only=True))
        models.append(m.eval())
    x = cka_images(n)
    run = RUNNERS[method]
    base_rss, _ = rss_mib()
    base_maxrss = maxrss_mib()  # import spikes (torch, scikit-learn) can exceed the method
    reset_peak()
    run(*models, x[:WARMUP_EXAMPLES])  # first-call costs (oneDNN kernels, lazy imports)
    runs: list[dict[str, Any]] = []
    matrix = None
    while sum(is_clean(r, CONTENDED_CORES) for r in runs) < REPEATS and len(runs) < MAX_ROUNDS:
        waited = wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
        matrix, t = timed(lambda: run(*models, x))
        runs.append({**t, "waited": waited})
    _, peak = rss_mib()
    end_maxrss = maxrss_mib()
    print(
        json.dumps(
            {
                "method": method,
                "n": n,
                "runs": runs,
                "base_rss_mib": base_rss,
                "peak_rss_mib": peak,
                "ru_maxrss_after_load_mib": base_maxrss,
                "ru_maxrss_end_mib": end_maxrss,
                "matrix": matrix.tolist(),
            }
        )
    )


# -----------------------------------------------------------------------------------------
# 6. Main: train, run every (N, method) in a fresh worker, compare, print, write JSON
# -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=list(NS), help="examples per row")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--states", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.n[0], args.states)
        return

    t0 = time.perf_counter()
    models = [trained(s, TRAIN.steps) for s in SEEDS]
    train_seconds = time.perf_counter() - t0
    layers = _default_layers(models[0])
    dims = [a.shape[1] for a in _activations(models[0], cka_images(2))]
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s, m in zip(SEEDS, models):
            torch.save(m.state_dict(), Path(tmp) / f"lenet_{s}.pt")
        for n in args.n:
            results[n] = {}
            for method in METHODS:
                cmd = [sys.executable, __file__, "--worker", method, "--n", str(n)]
                proc = subprocess.run(
                    [*cmd, "--states", tmp], capture_output=True, text=True, check=True
                )
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["seconds"], r["clean_runs"] = median_seconds(r["runs"], CONTENDED_CORES)
                r["peak_minus_base_mib"] = r["peak_rss_mib"] - r["base_rss_mib"]
                results[n][method] = r

    # what each method must hold, analytically: Grams of all layers vs the streaming sums
    gram_mib = {n: 2 * len(layers) * n * n * 8 / MIB for n in args.n}
    sums_mib = (2 * sum(p * p + p for p in dims) + sum(p * q for p in dims for q in dims)) * 8
    sums_mib /= MIB
    diffs = {
        n: float(np.abs(np.array(r["gram"]["matrix"]) - np.array(r["streaming"]["matrix"])).max())
        for n, r in results.items()
    }

    print(
        f"\nbasinscope CKA benchmark: linear CKA of all {len(layers)}x{len(layers)} layer pairs "
        f"({', '.join(layers)}; widths {dims}) of two lenet() on digits {CKA_SPLIT}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, medians of {REPEATS} runs, "
        "each method in a fresh process\n"
    )
    header = (
        f"{'N':>6} {'method':<10} {'seconds':>8} {'base MiB':>9} {'peak MiB':>9} "
        f"{'peak-base':>9} {'held MiB':>9} {'max|diff|':>9}"
    )
    print(header)
    print("-" * len(header))
    for n, r in results.items():
        for method in METHODS:
            t = r[method]
            held = gram_mib[n] if method == "gram" else sums_mib
            print(
                f"{n:>6} {method:<10} {t['seconds']:>8.3f} {t['base_rss_mib']:>9.0f} "
                f"{t['peak_rss_mib']:>9.0f} {t['peak_minus_base_mib']:>9.0f} {held:>9.1f} "
                f"{diffs[n] if method == 'gram' else 0.0:>9.1e}"
            )
    print(
        "\nheld MiB: the centred Grams of all layers of both models (gram) or the float64 "
        "sums (streaming)"
    )
    unreliable = [
        f"{m} N={n}" for n, r in results.items() for m, t in r.items() if not t["clean_runs"]
    ]
    if unreliable:
        print(f"WARNING: no clean run (timings contended): {', '.join(unreliable)}")

    report = {
        "benchmark": "bench_cka",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "basinscope": basinscope.__version__,
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "settings": {
            "model": "lenet()",
            "parameters": sum(p.numel() for p in models[0].parameters()),
            "seeds": list(SEEDS),
            "train": {**TRAIN.to_dict(), "split": f"digits-{TRAIN_SPLIT}"},
            "train_seconds": train_seconds,
            "data": f"digits-{CKA_SPLIT}, tiled and cut to N",
            "ns": args.n,
            "layers": layers,
            "layer_widths": dims,
            "batch_size": BATCH,
            "repeats": REPEATS,
            "max_rounds": MAX_ROUNDS,
            "warmup_examples": WARMUP_EXAMPLES,
            "quiet_wait_seconds": QUIET_WAIT,
            "contended_cores": CONTENDED_CORES,
            "tolerance": TOLERANCE,
            "memory": "base: VmRSS after imports, models and data; peak: VmHWM at the end, "
            "reset (clear_refs 5) after the base; ru_maxrss (whole process life) after load "
            "and at the end for reference; MiB",
        },
        "held_mib": {"gram": gram_mib, "streaming": sums_mib},
        "results": {str(n): r for n, r in results.items()},
        "max_abs_diff": {str(n): d for n, d in diffs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    worst = max(diffs.values())
    assert worst <= TOLERANCE, f"streaming and Gram CKA differ by {worst:.3g}: {diffs}"


if __name__ == "__main__":
    main()
