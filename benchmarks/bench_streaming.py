"""A line of 8 points over a DataLoader of 1x, 4x and 16x the data: memory stays, time scales.

What it measures, for an MLP 784-64-10 on a dataset that makes each example from its index
when it is read (784 standard normal floats and a label from a generator seeded with the
index), so the data itself is never held anywhere, at ``N = BASE_EXAMPLES`` x each of
``SCALES`` (default 20,000 x 1, 4 and 16; 16 x is 1.0 GB of float32 if held in memory),
always with batches of ``BATCH`` examples:

* ``read``: one bare pass over the ``DataLoader``, no model: the floor for any method
  that streams the data;
* ``engine``: the evaluation engine on the ``DataLoader``: ``evaluate_points`` of an
  ``EvalJob`` whose dataset is the loader, which the engine streams batch by batch
  (``engine.batches.StreamingBatches``); strategy pinned to ``STRATEGY``;
* ``line``: ``basinscope.analyses.random_line`` on the same ``DataLoader``, end to end (the
  library call a user makes; same points, strategy pinned);
* ``memory``: the baseline with the data held in memory: the loader read once into a
  list of batches (``as_batches(..., stream=False)``), then the same ``random_line``; its
  time includes that read;
* ``peer``: what the reference loss-landscape code does (Li et al.'s ``plot_surface``,
  loss-landscapes): for each point, ``load_state_dict`` the point's weights into a copy of
  the model and iterate the ``DataLoader`` under ``torch.no_grad()``.

Every method runs in a fresh subprocess per N (``--worker``), so its peak memory is its
own: the worker builds the model and the dataset, runs one untimed warm-up on the first
``WARMUP_EXAMPLES`` examples, reads its RSS (the base), resets the peak there
(``/proc/self/clear_refs``) and reads the peak (``VmHWM``) after the timed runs; it also
reports ``ru_maxrss`` (the whole-life peak, imports included) and, on CUDA, the peak of
torch's allocations. Timings are medians of ``REPEATS`` clean runs: each run first waits
(up to ``QUIET_WAIT`` s) for other processes to go quiet and records how many cores they
used meanwhile (``/proc/stat``); a run is *clean* under ``CONTENDED_CORES``. The script
checks that every method gives the peer loop's loss and accuracy at every point to within
``TOLERANCE`` (after writing the JSON), and reports the fraction of the machine's float32
matmul rate that each method reaches (measured as in ``bench_surface.py``).

Run:  .venv/bin/python benchmarks/bench_streaming.py [--quick] [--scales 1 4 16] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import basinscope
from _timing import is_clean, machine, median_seconds, timed, wait_for_quiet
from basinscope.analyses import landscape as landscape_module
from basinscope.analyses.interpolation import random_line
from basinscope.engine import EvalJob, PointBasis, as_batches, evaluate_points
from basinscope.engine import batches as batches_module
from basinscope.engine import evaluate as engine_module
from basinscope.geometry import get_buffers, get_params
from basinscope.geometry.directions import random_direction
from basinscope.models import mlp
from bench_surface import forward_flops, matmul_rounds

# -----------------------------------------------------------------------------------------
# 1. Settings
# -----------------------------------------------------------------------------------------
BASE_EXAMPLES = 20_000  # N at scale 1 (--quick: 2,000); 784 float32 each: 63 MB at 1x
QUICK_EXAMPLES = 2_000
SCALES = (1, 4, 16)  # N = BASE_EXAMPLES x scale (default of --scales)
FEATURES = 784  # floats per example (a flattened 28 x 28 image)
CLASSES = 10
HIDDEN = (64,)  # mlp(in_features=784, hidden=(64,)): 784 -> 64 -> 10, 50,890 parameters
SEED = 0  # model initialization, the random direction, and the data (examples are
#           drawn from torch.Generator().manual_seed(SEED * 2**32 + index))
POINTS = 8  # points on the line, alpha evenly in ALPHA_RANGE
ALPHA_RANGE = (-1.0, 1.0)  # in units of the filter-normalized direction
BATCH = 1024  # examples per batch, every method and every N
CHUNK = 64  # the engine's points per chunk (its default): the 8 points are one chunk,
#             so the engine reads the data once per evaluation, the peer once per point
STRATEGY = "vmap"  # the engine's strategy, pinned (no timed trial in the measurement)
METHODS = ("read", "engine", "line", "memory", "peer")
STREAMING = ("read", "engine", "line", "peer")  # the methods run under the cap below
PEAK_GROWTH_GOAL = 1.1  # goal: peak RSS at the largest N / at the smallest, streaming
LINEAR_GOAL = 0.1  # goal: seconds per example at the largest N at most 10% above the
#                   smallest N's: time grows no faster than N (fixed costs make it slower
#                   at small N; the least-squares line through all N is reported too, but
#                   its residual at small N is within the ~10% noise between processes)
CAP_MIB = 256  # a streaming worker may map at most this many MiB of address space beyond
#                what it has mapped after its warm-up (RLIMIT_AS); 16 x the data is 957 MiB
REPEATS = 3  # clean timed runs wanted per method and N (--quick: 1); medians are reported
MAX_ROUNDS = 5  # give up on clean runs after this many timed runs (--quick: 1)
WARMUP_EXAMPLES = 2 * BATCH  # the untimed warm-up runs on this many examples
QUIET_WAIT = 20.0  # seconds to wait for other processes to go quiet before each run
CONTENDED_CORES = 0.2  # a timing is "contended" if other processes used more cores than this
TOLERANCE = 1e-5  # max abs difference of loss and accuracy, every method vs the peer loop
MIB = 2**20  # bytes per MiB; ru_maxrss is in KiB on Linux
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_streaming.json"


# -----------------------------------------------------------------------------------------
# 2. Timing and memory
# -----------------------------------------------------------------------------------------
# timed, is_clean, wait_for_quiet and median_seconds: shared by the benchmarks, in
# _timing.py; matmul_rounds and forward_flops: bench_surface.py's, so the limit quoted here
# is measured the same way as there.


def vm_mib() -> dict[str, float]:
    """This process's ``Vm*`` lines of ``/proc/self/status`` in MiB: ``VmRSS`` (resident now),
    ``VmHWM`` (peak resident since the last :func:`reset_peak`), ``VmSize`` (address space)."""
    with open("/proc/self/status") as f:
        kib = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in f) if k[:2] == "Vm"}
    return {k: v / 1024 for k, v in kib.items()}


def maxrss_mib() -> float:
    """``ru_maxrss``: the peak RSS of the whole process life (KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: str) -> None:
    """Start a new peak (Linux: ``VmHWM`` := ``VmRSS``; CUDA: torch's allocation peak)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


# -----------------------------------------------------------------------------------------
# 3. The data: examples made from their index on every read, never stored
# -----------------------------------------------------------------------------------------
class IndexSeededImages(Dataset):
    """``n`` examples of ``FEATURES`` standard normal float32 and a label in ``[0, CLASSES)``.

    Example ``i`` is drawn from a generator seeded with ``seed * 2**32 + i`` each time it
    is read, so it is the same in every pass, in any batch and in any method, and the
    dataset holds nothing but ``n`` (a dataset too large for memory, read from disk or
    made by augmentation, behaves the same way towards the engine).
    """

    def __init__(self, n: int, seed: int = SEED):
        self.n, self.seed = n, seed
        self.reads = 0  # examples made so far: how often a method reads the data

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.n:
            raise IndexError(f"example {i} of {self.n}")
        self.reads += 1
        gen = torch.Generator().manual_seed(self.seed * 2**32 + i)
        x = torch.randn(FEATURES, generator=gen)
        return x, int(torch.randint(CLASSES, (), generator=gen))


def loader(n: int) -> DataLoader:
    return DataLoader(IndexSeededImages(n), batch_size=BATCH, shuffle=False)


def model_and_direction() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The seeded MLP and the filter-normalized direction that ``random_line`` draws."""
    torch.manual_seed(SEED)
    model = mlp(in_features=FEATURES, hidden=HIDDEN, num_classes=CLASSES).eval()
    return model, random_direction(get_params(model), SEED, "filter", "zero")


# -----------------------------------------------------------------------------------------
# 4. The methods: each returns (points, [loss, accuracy]) (read: the examples it saw)
# -----------------------------------------------------------------------------------------
ALPHAS = np.linspace(*ALPHA_RANGE, POINTS)


def read(model: nn.Module, direction, data: DataLoader, device: str) -> np.ndarray:
    """One pass over the loader, each batch moved to the device: the floor of streaming."""
    n = 0
    for x, y in data:
        x, y = x.to(device), y.to(device)
        n += len(y)
    return np.array([[n, 0.0]])


def engine(model: nn.Module, direction, data: DataLoader, device: str) -> np.ndarray:
    """``evaluate_points`` of an ``EvalJob`` over the loader: the engine streams it."""
    basis = PointBasis(get_params(model), (direction,), get_buffers(model))
    job = EvalJob(model, basis, {"train": data}, batch_size=BATCH, strategy=STRATEGY, device=device)
    res = evaluate_points(job, ALPHAS[:, None], chunk_size=CHUNK)
    return np.stack([res.values["train_loss"], res.values["train_accuracy"]], 1)


def _line(model: nn.Module, data: Any, device: str) -> np.ndarray:
    land = random_line(
        model,
        data,
        seed=SEED,
        alphas=ALPHAS,
        strategy=STRATEGY,
        batch_size=BATCH,
        chunk_size=CHUNK,
        device=device,
    )
    return np.stack([land.dataset[f"train_{m}"].values for m in ("loss", "accuracy")], 1)


def line(model: nn.Module, direction, data: DataLoader, device: str) -> np.ndarray:
    """``random_line`` on the loader, end to end."""
    return _line(model, data, device)


def memory(model: nn.Module, direction, data: DataLoader, device: str) -> np.ndarray:
    """The data read into memory once (a list of batches), then ``random_line`` on it."""
    return _line(model, as_batches(data, batch_size=BATCH, device=device, stream=False), device)


def peer(model: nn.Module, direction, data: DataLoader, device: str) -> np.ndarray:
    """The reference code's loop: per point, load the weights and iterate the loader."""
    net = copy.deepcopy(model).to(device)
    center = {k: v.to(device, copy=True) for k, v in net.state_dict().items()}
    d = {k: v.to(device) for k, v in direction.items()}
    out = np.empty((POINTS, 2))
    for i, a in enumerate(ALPHAS):
        net.load_state_dict({k: center[k] + float(a) * d[k] for k in center})
        net.eval()
        loss_sum, correct, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in data:
                x, y = x.to(device), y.to(device)
                logits = net(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(dim=1) == y).sum().item()
                n += len(y)
        out[i] = loss_sum / n, correct / n
    return out


RUNNERS = {"read": read, "engine": engine, "line": line, "memory": memory, "peer": peer}


# -----------------------------------------------------------------------------------------
# 5. The worker: one method, one N, in a fresh process; prints one JSON line
# -----------------------------------------------------------------------------------------
def cap_address_space(extra_mib: float) -> float:
    """Let this process map at most ``extra_mib`` MiB more than it has mapped now
    (``RLIMIT_AS``): an allocation beyond that fails. Returns the limit in MiB."""
    limit = vm_mib()["VmSize"] + extra_mib
    resource.setrlimit(resource.RLIMIT_AS, (int(limit * MIB), resource.RLIM_INFINITY))
    return limit


def worker(method: str, n: int, device: str, repeats: int, max_rounds: int, cap: float) -> None:
    model, direction = model_and_direction()
    run = RUNNERS[method]
    run(model, direction, loader(WARMUP_EXAMPLES), device)  # first-call costs, lazy imports
    base_rss = vm_mib()["VmRSS"]
    base_maxrss = maxrss_mib()  # importing torch peaks above what the methods add at 1x
    reset_peak(device)
    limit = cap_address_space(cap) if cap else None
    data = loader(n)
    runs: list[dict[str, Any]] = []
    values, error = None, None
    while sum(is_clean(r, CONTENDED_CORES) for r in runs) < repeats and len(runs) < max_rounds:
        waited = wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
        data.dataset.reads = 0
        try:
            values, t = timed(lambda: run(model, direction, data, device))
        except (MemoryError, RuntimeError) as e:  # over the cap: torch raises RuntimeError
            error = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
            break
        runs.append({**t, "waited": waited, "examples_read": data.dataset.reads})
    peak = vm_mib()["VmHWM"]
    cuda_peak = torch.cuda.max_memory_allocated(device) / MIB if device.startswith("cuda") else None
    print(
        json.dumps(
            {
                "method": method,
                "n": n,
                "runs": runs,
                "error": error,
                "base_rss_mib": base_rss,
                "peak_rss_mib": peak,
                "address_space_limit_mib": limit,
                "ru_maxrss_after_warmup_mib": base_maxrss,
                "ru_maxrss_end_mib": maxrss_mib(),
                "cuda_peak_allocated_mib": cuda_peak,
                "values": None if values is None else values.tolist(),
            }
        )
    )


# -----------------------------------------------------------------------------------------
# 6. Main: the matmul rate, every (N, method) in a fresh worker, ratios, table, JSON
# -----------------------------------------------------------------------------------------
def _sha(module: Any) -> str:
    return hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 examples at 1x, one run")
    parser.add_argument("--scales", type=int, nargs="+", default=list(SCALES), help="N / base")
    parser.add_argument("--base", type=int, help=f"examples at scale 1 ({BASE_EXAMPLES:,})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=REPEATS, help=argparse.SUPPRESS)
    parser.add_argument("--max-rounds", type=int, default=MAX_ROUNDS, help=argparse.SUPPRESS)
    parser.add_argument("--cap-mib", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.device, args.repeats, args.max_rounds, args.cap_mib)
        return
    base = args.base or (QUICK_EXAMPLES if args.quick else BASE_EXAMPLES)
    repeats, max_rounds = (1, 1) if args.quick else (REPEATS, MAX_ROUNDS)
    scales = sorted(set(args.scales))
    if len(scales) < 2:
        parser.error(f"--scales needs at least two sizes to compare, got {scales}")

    def run_worker(method: str, n: int, repeats: int, max_rounds: int, cap: float) -> dict:
        cmd = [sys.executable, __file__, "--worker", method, "--n", str(n)]
        cmd += ["--device", args.device, "--repeats", str(repeats)]
        cmd += ["--max-rounds", str(max_rounds), "--cap-mib", str(cap)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"worker {method} at N={n} failed:\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    matmul = matmul_rounds()
    results: dict[int, dict[str, Any]] = {}
    for scale in scales:
        n = base * scale
        results[scale] = {}
        for method in METHODS:
            cap = CAP_MIB if method in STREAMING else 0.0
            r = run_worker(method, n, repeats, max_rounds, cap)
            if r["error"]:
                sys.exit(f"{method} at N={n} failed under the {cap:.0f} MiB cap: {r['error']}")
            r["seconds"], r["clean_runs"] = median_seconds(r["runs"], CONTENDED_CORES)
            r["peak_minus_base_mib"] = r["peak_rss_mib"] - r["base_rss_mib"]
            r["passes"] = r["runs"][-1]["examples_read"] / n  # examples made / N
            results[scale][method] = r
            print(
                f"  N={n:>9,} {method:<7} {r['seconds']:8.3f} s  peak {r['peak_rss_mib']:7.0f} "
                f"MiB ({r['peak_minus_base_mib']:+.0f})  clean runs {r['clean_runs']}",
                flush=True,
            )
    # the in-memory baseline under the streaming methods' cap, at the largest N: it fails
    capped = run_worker("memory", base * scales[-1], 1, 1, CAP_MIB)
    capped_line = f"memory under the {CAP_MIB} MiB cap at N={base * scales[-1]:,}: " + (
        f"fails ({capped['error']})" if capped["error"] else "ran"
    )
    print(capped_line, flush=True)
    matmul += matmul_rounds()  # a second look after the workers: was the machine steady?
    clean_rates = [r["gflops"] for r in matmul if is_clean(r, CONTENDED_CORES)]
    peak_gflops = statistics.median(clean_rates or [r["gflops"] for r in matmul])

    # rates, the fraction of the matmul rate, and agreement with the peer loop
    model, _ = model_and_direction()
    flops = forward_flops(model, torch.zeros(1, FEATURES))
    diffs: dict[str, dict[str, float]] = {}
    for scale, rs in results.items():
        n = base * scale
        ref = np.array(rs["peer"]["values"])
        diffs[str(scale)] = {}
        for method, r in rs.items():
            sec = r["seconds"]
            r["examples"] = n
            r["examples_per_second"] = n / sec
            r["data_bytes"] = n * (FEATURES * 4 + 8)  # float32 inputs, int64 labels
            if method == "read":
                continue
            r["point_examples_per_second"] = POINTS * n / sec
            r["gflops"] = flops * POINTS * n / sec / 1e9
            r["efficiency"] = r["gflops"] / peak_gflops
            r["seconds_over_read"] = sec / rs["read"]["seconds"]
            if method != "peer":
                diffs[str(scale)][method] = float(np.abs(np.array(r["values"]) - ref).max())
    worst = max((d for ds in diffs.values() for d in ds.values()), default=0.0)

    # ratios against the smallest N, and against the peer loop in the same run
    first, last = scales[0], scales[-1]
    ratios: dict[str, Any] = {"scales": [first, last], "data": last / first}
    for method in METHODS:
        a, b = results[first][method], results[last][method]
        ratios[method] = {
            "peak_rss": b["peak_rss_mib"] / a["peak_rss_mib"],
            "peak_minus_base": b["peak_minus_base_mib"] / max(a["peak_minus_base_mib"], 1.0),
            "seconds": b["seconds"] / a["seconds"],
            "seconds_per_example": (b["seconds"] / b["examples"]) / (a["seconds"] / a["examples"]),
        }
    ratios["peer_over_engine_seconds"] = {
        str(s): rs["peer"]["seconds"] / rs["engine"]["seconds"] for s, rs in results.items()
    }
    ratios["peer_over_line_seconds"] = {
        str(s): rs["peer"]["seconds"] / rs["line"]["seconds"] for s, rs in results.items()
    }
    # time against N: a least-squares line, seconds = fixed + per_example * N
    for method in METHODS:
        ns = np.array([results[s][method]["examples"] for s in scales], dtype=np.float64)
        ts = np.array([results[s][method]["seconds"] for s in scales])
        per_example, fixed = np.polyfit(ns, ts, 1)
        ratios[method]["linear_fit"] = {
            "fixed_seconds": float(fixed),
            "seconds_per_million_examples": float(per_example * 1e6),
            "max_relative_residual": float(np.max(np.abs(fixed + per_example * ns - ts) / ts)),
        }
    # the goals: peak memory does not grow with N, time grows linearly with N
    goals = {
        "memory_bounded": {
            m: ratios[m]["peak_rss"] <= PEAK_GROWTH_GOAL for m in ("engine", "line")
        },
        "time_linear": {
            m: ratios[m]["seconds_per_example"] <= 1 + LINEAR_GOAL for m in ("engine", "line")
        },
    }

    print(
        f"\nbasinscope streaming benchmark: {POINTS} points on a filter-normalized line of "
        f"mlp {FEATURES}-{'-'.join(map(str, HIDDEN))}-{CLASSES} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters), batches of {BATCH}, "
        f"data made from the index on every read, {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, medians of {repeats} clean runs, each method "
        "and N in a fresh process"
    )
    print(f"float32 matmul: {peak_gflops:.0f} GFLOP/s (median of {len(clean_rates)} clean)\n")
    header = (
        f"{'N':>9} {'data MiB':>8} {'method':<7} {'passes':>6} {'seconds':>8} {'ex/s':>9} "
        f"{'peak MiB':>8} {'+base MiB':>9} {'ru_maxrss':>9} {'of matmul':>9} {'max|diff|':>9}"
    )
    print(header)
    print("-" * len(header))
    for scale, rs in results.items():
        for method, r in rs.items():
            eff = f"{r['efficiency']:.1%}" if "efficiency" in r else ""
            diff = diffs[str(scale)].get(method)
            print(
                f"{r['examples']:>9,} {r['data_bytes'] / MIB:>8.0f} {method:<7} "
                f"{r['passes']:>6.2f} {r['seconds']:>8.3f} {r['examples_per_second']:>9.0f} "
                f"{r['peak_rss_mib']:>8.0f} {r['peak_minus_base_mib']:>+9.0f} "
                f"{r['ru_maxrss_end_mib']:>9.0f} {eff:>9} "
                f"{'' if diff is None else f'{diff:.1e}':>9}"
            )
    print(f"\n{last}x / {first}x the data:")
    for method in METHODS:
        q = ratios[method]
        print(
            f"  {method:<7} peak RSS {q['peak_rss']:5.2f}x, peak - base "
            f"{q['peak_minus_base']:6.2f}x, seconds {q['seconds']:5.2f}x (per example "
            f"{q['seconds_per_example']:.2f}x); seconds = {q['linear_fit']['fixed_seconds']:.3f}"
            f" + {q['linear_fit']['seconds_per_million_examples']:.2f} x N / 1e6 to within "
            f"{q['linear_fit']['max_relative_residual']:.1%}"
        )
    for m in ("engine", "line", "memory"):
        print(
            f"{m} / one bare read of the data, seconds: "
            + ", ".join(f"{s}x {rs[m]['seconds_over_read']:.2f}x" for s, rs in results.items())
        )
    for m in ("engine", "line"):
        print(
            f"peer loop / {m}, seconds: "
            + ", ".join(f"{s}x {v:.1f}x" for s, v in ratios[f"peer_over_{m}_seconds"].items())
        )
    print(
        f"goals (engine, line): peak RSS grows at most {PEAK_GROWTH_GOAL}x: "
        f"{goals['memory_bounded']}; seconds per example grow at most {1 + LINEAR_GOAL}x: "
        f"{goals['time_linear']}"
    )
    print(capped_line)
    print("passes: examples the dataset made during one run / N")
    unreliable = [
        f"{m} {s}x" for s, rs in results.items() for m, r in rs.items() if not r["clean_runs"]
    ]
    if unreliable:
        print(f"WARNING: no clean run (timings contended): {', '.join(unreliable)}")

    report = {
        "benchmark": "bench_streaming",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "basinscope": basinscope.__version__,
        # tie the numbers to the exact source they measured
        "source_sha256": {
            "engine/evaluate.py": _sha(engine_module),
            "engine/batches.py": _sha(batches_module),
            "analyses/landscape.py": _sha(landscape_module),
        },
        "threads": torch.get_num_threads(),
        "machine": machine(
            memory_total_mib=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MIB
        ),
        "settings": {
            "model": f"mlp(in_features={FEATURES}, hidden={HIDDEN}, num_classes={CLASSES})",
            "parameters": sum(p.numel() for p in model.parameters()),
            "flops_per_example": flops,
            "data": "IndexSeededImages: example i = randn(784) and randint(10) from "
            f"torch.Generator().manual_seed({SEED} * 2**32 + i), made on every read",
            "base_examples": base,
            "scales": scales,
            "points": POINTS,
            "alpha_range": list(ALPHA_RANGE),
            "seed": SEED,
            "batch_size": BATCH,
            "chunk_size": CHUNK,
            "strategy": STRATEGY,
            "device": args.device,
            "repeats": repeats,
            "max_rounds": max_rounds,
            "warmup_examples": WARMUP_EXAMPLES,
            "quiet_wait_seconds": QUIET_WAIT,
            "contended_cores": CONTENDED_CORES,
            "tolerance": TOLERANCE,
            "quick": args.quick,
            "memory": "base: VmRSS after imports, model and one warm-up run on "
            f"{WARMUP_EXAMPLES} examples; peak: VmHWM after the timed runs, reset (clear_refs "
            "5) at the base; ru_maxrss (whole process life, imports included) for reference; "
            "MiB",
            "gflops": "forward FLOPs of the Linear layers x examples x points / seconds; "
            "efficiency = gflops / matmul gflops",
        },
        "matmul": {"gflops": peak_gflops, "rounds": matmul},
        "results": {str(s): rs for s, rs in results.items()},
        "ratios": ratios,
        "goals": {
            "peak_rss_growth_at_most": PEAK_GROWTH_GOAL,
            "seconds_per_example_growth_at_most": 1 + LINEAR_GOAL,
            **goals,
        },
        "memory_under_cap": capped,
        "max_abs_diff_vs_peer": diffs,
        "equal_within_tolerance": worst <= TOLERANCE,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    assert worst <= TOLERANCE, f"methods differ from the peer loop by {worst:.3g}: {diffs}"


if __name__ == "__main__":
    main()
