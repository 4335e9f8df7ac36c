"""The Ray executor against the local one on this machine, and the driver's limit.

What it measures, in one run, on LeNet surfaces over the 1,347 digits training images
(the strategy pinned to ``loop``, so every executor does the same work and gives the same
bits, which the script checks):

1. **local**: :func:`basinscope.engine.evaluate_points` in this process, with 1 torch thread
   and with 2;
2. **ray, warm**: the same chunks on a :class:`~basinscope.engine.ray_executor.RayExecutor`
   with 1 and with 2 workers (one thread each) whose actors are already up: the steady state
   of a long run; the first run of each executor (actors starting and building the job) is
   timed separately;
3. **overhead per chunk**: ``(ray 1 worker - local 1 thread) / chunks``, at a cost per
   chunk of a few milliseconds (``TINY``: an 8-point line of the MLP on 64 examples) and
   at the surface's cost per chunk;
4. **the driver's limit** (the simulation for N nodes): many actors (``SIM_ACTORS``, more
   than this machine's cores: Ray is told it has that many CPUs) evaluate near-empty
   chunks while the driver writes every chunk to a run's journal. The chunks per second
   the driver sustains bound a cluster: with chunks that take ``t`` seconds on one GPU,
   the driver keeps at most ``t x rate`` GPUs busy.

    .venv/bin/python benchmarks/bench_ray.py            # ~3 min
    .venv/bin/python benchmarks/bench_ray.py --quick    # ~1 min

JSON goes to ``benchmarks/results/bench_ray.json``. Ray's workers are other processes, so
the "others' cores" record of ``_timing`` does not apply to the Ray timings; each timing
records instead how busy the machine was just before it started.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, timed, wait_for_quiet
from basinscope.data import load_digits
from basinscope.engine import EvalJob, PointBasis, evaluate_points
from basinscope.engine.ray_executor import RayExecutor
from basinscope.geometry import get_params, random_directions
from basinscope.models import lenet, mlp

# -- settings ------------------------------------------------------------------------------
GRID = 15  # the surface: GRID x GRID points (--quick: 9)
CHUNK = 8  # points per chunk of the surface
TINY_POINTS, TINY_CHUNK, TINY_EXAMPLES = 64, 1, 64  # near-free chunks: the overhead shows
REPEATS = 3  # timed runs per method, interleaved (--quick: 1); medians are reported
SIM_ACTORS = 16  # actors of the driver-limit simulation (Ray is told it has this many CPUs)
SIM_CHUNKS = 400  # near-empty chunks the simulation's driver hands out and journals
QUIET_WAIT, CONTENDED_CORES = 20.0, 0.2  # wait up to 20 s for <= 0.2 busy cores per run
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_ray.json"


def surface_job(data) -> tuple[EvalJob, np.ndarray]:
    torch.manual_seed(0)
    model = lenet()
    params = get_params(model)
    dirs = random_directions(params, 0, 2, "filter", "zero")
    job = EvalJob(model, PointBasis(params, tuple(dirs)), {"train": data}, strategy="loop")
    axis = np.linspace(-1, 1, GRID)
    return job, np.array([(a, b) for a in axis for b in axis])


def tiny_job(data) -> tuple[EvalJob, np.ndarray]:
    torch.manual_seed(0)
    model = mlp()
    params = get_params(model)
    (d,) = random_directions(params, 1, 1, "filter", "zero")
    x, y = data
    job = EvalJob(
        model,
        PointBasis(params, (d,)),
        {"train": (x[:TINY_EXAMPLES], y[:TINY_EXAMPLES])},
        strategy="loop",
    )
    return job, np.linspace(-1, 1, TINY_POINTS)[:, None]


def run_local(job, coeffs, chunk, threads) -> dict[str, np.ndarray]:
    torch.set_num_threads(threads)
    try:
        return evaluate_points(job, coeffs, chunk_size=chunk).values
    finally:
        torch.set_num_threads(2)


def run_ray(executor, job, coeffs, chunk) -> dict[str, np.ndarray]:
    return evaluate_points(job, coeffs, chunk_size=chunk, executor=executor).values


def bench_case(executors, job, coeffs, chunk) -> dict[str, Any]:
    """Local (1 and 2 threads) and Ray (1 and 2 workers) on one job, interleaved."""
    n_chunks = -(-len(coeffs) // chunk)
    case: dict[str, Any] = {"points": len(coeffs), "chunks": n_chunks}
    first = {}
    for w, ex in executors.items():  # the first run: actors start and build the job
        _, t = timed(lambda ex=ex: run_ray(ex, job, coeffs, chunk))
        first[f"ray_{w}"] = t["seconds"]
    case["ray_first_run_seconds"] = first
    methods = {
        "local_1_thread": lambda: run_local(job, coeffs, chunk, 1),
        "local_2_threads": lambda: run_local(job, coeffs, chunk, 2),
        "ray_1_worker": lambda: run_ray(executors[1], job, coeffs, chunk),
        "ray_2_workers": lambda: run_ray(executors[2], job, coeffs, chunk),
    }
    runs: dict[str, list] = {m: [] for m in methods}
    outs: dict[str, Any] = {}
    for _ in range(REPEATS):  # round-robin: load spikes hit every method alike
        for m, fn in methods.items():
            before = wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
            outs[m], t = timed(fn)
            runs[m].append({**t, "others_cores_before": before})
    medians = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    ref = outs["local_2_threads"]
    equal = {m: all(ref[k].tobytes() == o[k].tobytes() for k in ref) for m, o in outs.items()}
    case.update(seconds=medians, runs=runs, bit_for_bit=equal)
    case["overhead_ms_per_chunk"] = (
        1000 * (medians["ray_1_worker"] - medians["local_1_thread"]) / n_chunks
    )
    case["speedup_2_workers_vs_local_2_threads"] = (
        medians["local_2_threads"] / medians["ray_2_workers"]
    )
    case["speedup_2_workers_vs_1_worker"] = medians["ray_1_worker"] / medians["ray_2_workers"]
    return case


def driver_limit(ray, tmp: Path) -> dict[str, Any]:
    """SIM_ACTORS actors, SIM_CHUNKS near-empty chunks, every one written to a journal."""
    from basinscope.store import RunStore

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    x, y = torch.zeros(1, 2), torch.zeros(1, dtype=torch.int64)
    job = EvalJob(model, PointBasis(get_params(model), ()), {"train": (x, y)}, strategy="loop")
    coeffs = np.zeros((SIM_CHUNKS, 0))
    ex = RayExecutor(workers=SIM_ACTORS)
    try:
        run_ray(ex, job, coeffs[:SIM_ACTORS], 1)  # start the actors
        store = RunStore.open(tmp / "journal-run", "bench", {"n": SIM_CHUNKS}, {})
        journal = store.journal(SIM_CHUNKS, 1)
        _, t = timed(
            lambda: evaluate_points(job, coeffs, chunk_size=1, executor=ex, journal=journal)
        )
        _, t_nojournal = timed(lambda: run_ray(ex, job, coeffs, 1))
    finally:
        ex.close()
    return {
        "actors": SIM_ACTORS,
        "chunks": SIM_CHUNKS,
        "seconds_with_journal": t["seconds"],
        "seconds_without_journal": t_nojournal["seconds"],
        "chunks_per_second_with_journal": SIM_CHUNKS / t["seconds"],
        "chunks_per_second_without_journal": SIM_CHUNKS / t_nojournal["seconds"],
    }


def main() -> None:
    global GRID, REPEATS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 9x9 surface, one timed run each")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if args.quick:
        GRID, REPEATS = 9, 1
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    digits = load_digits()
    data = (digits.x[:1347], digits.y[:1347])
    jobs = {"surface": (*surface_job(data), CHUNK), "tiny": (*tiny_job(data), TINY_CHUNK)}
    report: dict[str, Any] = {
        "machine": machine(torch=torch.__version__, ray=ray.__version__),
        "settings": {
            "grid": GRID,
            "chunk": CHUNK,
            "tiny": [TINY_POINTS, TINY_CHUNK, TINY_EXAMPLES],
            "repeats": REPEATS,
        },
        "cases": {},
    }
    # 3 logical CPUs: the 1-worker and the 2-worker executors keep their actors between the
    # interleaved runs (an idle actor uses no core; at most 2 compute at once, on 2 cores)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        executors = {w: RayExecutor(workers=w) for w in (1, 2)}
        for name, (job, coeffs, chunk) in jobs.items():
            report["cases"][name] = case = bench_case(executors, job, coeffs, chunk)
            sec = case["seconds"]
            print(
                f"{name:8s} {case['chunks']:4d} chunks | local 1t {sec['local_1_thread']:.2f} s, "
                f"2t {sec['local_2_threads']:.2f} s | ray 1w {sec['ray_1_worker']:.2f} s, "
                f"2w {sec['ray_2_workers']:.2f} s | overhead "
                f"{case['overhead_ms_per_chunk']:.1f} ms/chunk | 2 workers vs local 2 threads "
                f"{case['speedup_2_workers_vs_local_2_threads']:.2f}x, vs 1 worker "
                f"{case['speedup_2_workers_vs_1_worker']:.2f}x | bit for bit "
                f"{all(case['bit_for_bit'].values())}"
            )
        for ex in executors.values():
            ex.close()
    finally:
        ray.shutdown()
    ray.init(
        num_cpus=SIM_ACTORS, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sim = driver_limit(ray, Path(tmp))
    finally:
        ray.shutdown()
    report["driver_limit"] = sim
    print(
        f"driver   {SIM_ACTORS} actors, {SIM_CHUNKS} empty chunks: "
        f"{sim['chunks_per_second_with_journal']:.0f} chunks/s journaled, "
        f"{sim['chunks_per_second_without_journal']:.0f} chunks/s without a journal"
    )
    report["bit_for_bit"] = all(all(c["bit_for_bit"].values()) for c in report["cases"].values())
    report["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    if not report["bit_for_bit"]:
        sys.exit("the executors' arrays differ")


if __name__ == "__main__":
    main()
