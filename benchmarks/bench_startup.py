"""Whole processes: ``basinscope --help``, ``basinscope surface`` with and without figures,
and a naive script that computes the same surface, start-up included.

What it measures, each as a fresh ``python`` process (``python -m basinscope`` with this
checkout's ``src`` on ``PYTHONPATH``), round-robin, ``REPEATS`` times:

* ``help``: ``basinscope --help`` (imports only the command table: no torch, no analysis);
* ``surface``: ``basinscope surface`` of the 64-128-10 MLP (``mlp(hidden=(128,))``, seeded
  weights written once) on the digits (train and test splits, 1,797 images), a
  ``GRID`` x ``GRID`` filter-normalized plane, loss and accuracy, with every figure
  (22 files: contour, filled, heatmap, 3D as PNG and PDF, HTML, VTP, per loss);
* ``surface --no-plot``: the same without figures;
* ``naive``: a plain script (below, written to a temporary file) that a user would write:
  import torch and scikit-learn, load the digits and the weights, draw filter-normalized
  directions, and for each point ``load_state_dict`` and evaluate both splits (full
  batch, ``torch.no_grad``), then save the arrays. No figures.
* with ``--compare-src PATH``, the same ``surface`` commands from another checkout's
  ``src`` (e.g. the main branch before a change), in the same rounds.

Each run records its wall time, the CPU time of the process, and how many cores other
processes used meanwhile (machine busy time less the process's); a run is *clean* when
that stays under ``CONTENDED_CORES``, and medians are over clean runs (all runs if none).

Run:  .venv/bin/python benchmarks/bench_startup.py [--quick] [--out PATH] [--compare-src PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _timing import machine, wait_for_quiet

# -----------------------------------------------------------------------------------------
# 1. Settings
# -----------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
GRID = 21  # points per axis of the plane (-1..1)
HIDDEN = 128  # the MLP's hidden width: 64 -> 128 -> 10
SEED = 0  # weights and directions
REPEATS = 5  # runs per process kind (--quick: 1)
QUIET_WAIT = 10.0  # seconds to wait for other processes to go quiet before each run
CONTENDED_CORES = 0.3  # a run is "contended" if other processes used more cores than this
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bench_startup.json"

NAIVE = """
import sys
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

weights, grid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = load_digits()
x = torch.tensor(d.images[:, None] / 16.0, dtype=torch.float32)
y = torch.tensor(d.target)
x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
model = nn.Sequential()
model.add_module("flatten", nn.Flatten())
model.add_module("fc1", nn.Linear(64, HIDDEN))
model.add_module("relu1", nn.ReLU())
model.add_module("fc2", nn.Linear(HIDDEN, 10))
model.load_state_dict(load_file(weights))
theta = {k: v.clone() for k, v in model.state_dict().items()}
torch.manual_seed(0)
dirs = []
for _ in range(2):  # filter normalization (Li et al. 2018), biases zeroed
    dd = {}
    for k, w in theta.items():
        r = torch.randn_like(w)
        if w.dim() <= 1:
            r.zero_()
        else:
            r *= w.norm(dim=1, keepdim=True) / (r.norm(dim=1, keepdim=True) + 1e-10)
        dd[k] = r
    dirs.append(dd)
coords = np.linspace(-1, 1, grid)
res = np.zeros((4, grid, grid))
with torch.no_grad():
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            model.load_state_dict({k: theta[k] + a * dirs[0][k] + b * dirs[1][k] for k in theta})
            for s, (xs, ys) in enumerate(((x_tr, y_tr), (x_te, y_te))):
                logits = model(xs)
                res[2 * s, i, j] = F.cross_entropy(logits, ys).item()
                res[2 * s + 1, i, j] = (logits.argmax(1) == ys).float().mean().item()
np.save(out, res)
""".replace("HIDDEN", str(HIDDEN))


# -----------------------------------------------------------------------------------------
# 2. Timing a whole process, with a record of how busy the rest of the machine was
# -----------------------------------------------------------------------------------------
def _busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far (``/proc/stat``), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(
                int, f.readline().split()[1:9]
            )
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def run_process(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``argv`` to completion: wall seconds, its CPU seconds, others' cores meanwhile."""
    ru0, busy0, t0 = (
        resource.getrusage(resource.RUSAGE_CHILDREN),
        _busy_seconds(),
        time.perf_counter(),
    )
    res = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    ru1, busy1 = resource.getrusage(resource.RUSAGE_CHILDREN), _busy_seconds()
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    others = None
    if busy0 is not None and busy1 is not None:
        others = round(max(busy1 - busy0 - cpu - 0.02, 0.0) / seconds, 3)  # 2 ticks of slack
    return {"seconds": seconds, "cpu_seconds": cpu, "others_cores": others}


def median(runs: list[dict[str, Any]]) -> tuple[float, int]:
    clean = [r["seconds"] for r in runs if (r["others_cores"] or 0.0) <= CONTENDED_CORES]
    return statistics.median(clean or [r["seconds"] for r in runs]), len(clean)


# -----------------------------------------------------------------------------------------
# 3. The processes
# -----------------------------------------------------------------------------------------
def processes(work: Path, compare_src: Path | None) -> dict[str, tuple[list[str], dict]]:
    """name -> (argv, environment); each run writes into a fresh folder under ``work``."""
    py = sys.executable
    grid = f"-1:1:{GRID}"
    surface = [
        "surface",
        "--model",
        "mlp",
        "--model-kwargs",
        json.dumps({"hidden": [HIDDEN]}),
        "--weights",
        str(work / "mlp.safetensors"),
        "--xrange",
        grid,
        "--yrange",
        grid,
        "--seed",
        str(SEED),
        "--no-progress",
    ]

    def env(src: Path) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(src)}

    out = {
        "help": ([py, "-m", "basinscope", "--help"], env(SRC)),
        "surface": ([py, "-m", "basinscope", *surface], env(SRC)),
        "surface --no-plot": ([py, "-m", "basinscope", *surface, "--no-plot"], env(SRC)),
        "naive": (
            [py, str(work / "naive.py"), str(work / "mlp.safetensors"), str(GRID), "naive.npy"],
            env(SRC),
        ),
    }
    if compare_src is not None:
        out["surface (compare-src)"] = ([py, "-m", "basinscope", *surface], env(compare_src))
        out["surface --no-plot (compare-src)"] = (
            [py, "-m", "basinscope", *surface, "--no-plot"],
            env(compare_src),
        )
    return out


def prepare(work: Path) -> None:
    """The seeded weights and the naive script."""
    sys.path.insert(0, str(SRC))
    import torch

    from basinscope.models import mlp, save_weights

    torch.manual_seed(SEED)
    save_weights(mlp(hidden=(HIDDEN,)), work / "mlp.safetensors")
    (work / "naive.py").write_text(NAIVE)


# -----------------------------------------------------------------------------------------
# 4. Main: run round-robin, print the table, write JSON
# -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per process")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    parser.add_argument("--compare-src", type=Path, default=None, help="another checkout's src")
    args = parser.parse_args()
    repeats = 1 if args.quick else REPEATS

    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        work = Path(tmp)
        prepare(work)
        procs = processes(work, args.compare_src)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in procs}
        for r in range(repeats + 1):  # round 0 warms the file cache and is not kept
            for name, (argv, env) in procs.items():
                cwd = work / f"{name.replace(' ', '_')}-{r}"
                cwd.mkdir()
                waited = wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
                t = run_process(
                    [*argv, "--out", str(cwd / "run")] if "surface" in name else argv, env, cwd
                )
                if r:
                    runs[name].append({**t, "waited": waited})
        figures = len(list((work / "surface-1" / "run" / "figures").glob("*")))

    rows = {}
    for name, rs in runs.items():
        sec, clean = median(rs)
        rows[name] = {
            "median_seconds": sec,
            "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in rs),
            "clean_runs": clean,
            "runs": rs,
        }
    naive = rows["naive"]["median_seconds"]
    print(
        f"\nbasinscope start-up benchmark: whole processes, {GRID}x{GRID} surface of the "
        f"64-{HIDDEN}-10 MLP on the digits (train + test), medians of {repeats} runs"
    )
    header = f"{'process':<34} {'seconds':>8} {'cpu s':>7} {'/ naive':>8} {'clean':>6}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        row["ratio_to_naive"] = row["median_seconds"] / naive
        print(
            f"{name:<34} {row['median_seconds']:>8.2f} {row['median_cpu_seconds']:>7.2f} "
            f"{row['ratio_to_naive']:>7.2f}x {row['clean_runs']:>6}"
        )
    print(f"figures written by `surface`: {figures}")

    report = {
        "benchmark": "bench_startup",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "grid": GRID,
            "hidden": HIDDEN,
            "seed": SEED,
            "repeats": repeats,
            "quiet_wait_seconds": QUIET_WAIT,
            "contended_cores": CONTENDED_CORES,
            "compare_src": str(args.compare_src) if args.compare_src else None,
            "quick": args.quick,
        },
        "figures": figures,
        "processes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
