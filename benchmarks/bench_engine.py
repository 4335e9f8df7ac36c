"""The engine against its peers on a 21x21 filter-normalized surface, in process and as whole processes.

What it measures (issue 13, "Engine speed"), in one run, round-robin:

* **MLP 64-128-10 on all 1,797 digits**: the engine (``random_surface``, strategy ``auto``,
  the default batch 1,024 and chunk 64) against the ``loss-landscapes`` package
  (``random_plane``, filter normalization, one forward pass on all 1,797 images per point)
  and against a naive per-point loop (``load_state_dict`` + a ``DataLoader`` of batch 128,
  as ``bench_surface.py``). Also as **whole processes**: ``basinscope surface ...`` on the
  command line (start-up, run folder and JSON included; once with ``--no-plot`` and once
  with its default figures) against a plain script that imports torch and
  ``loss_landscapes``, loads the same weights and data and computes the same plane.
* **LeNet on all 1,797 digits** (and, with ``--mnist``, LeNet-28 on the 5,000 MNIST
  images): the engine against the naive per-point loop, with the defaults and with
  ``strategy="compiled"`` (the loop through ``torch.compile``). A timed compiled run builds
  a new evaluator, which traces again but finds inductor's kernels cached by the warm-up. What
  a user pays the first time, ``first_compile_seconds``, is measured apart: a fresh process
  with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR`` a new folder) compiles the same
  model for the same batch shapes, inductor's import included. The compiled time "with the
  first compilation" is the timed median minus its runs' compile time plus that.
* The machine's float32 matmul rate, and the fraction of it the engine reaches "inside the
  engine": the nominal forward FLOPs of the Linear and Conv2d layers x examples x points /
  the engine's seconds (``evaluation["seconds"]``: strategy trial and chunks). The engine
  evaluates the first layer once per direction instead of once per point (its output is
  linear in the coefficients), so it performs fewer FLOPs than it is credited with; the
  JSON also gives the fraction for the FLOPs it actually performs.
* That the engine gives the naive loop's loss and accuracy to 1e-5 at every point.

Timing follows ``bench_surface.py``: one untimed warm-up of each method, round-robin runs,
each after waiting for a quiet machine; medians over *clean* runs (others used at most
``CONTENDED_CORES`` cores), and every raw timing in the JSON.

Run:  .venv/bin/python benchmarks/bench_engine.py [--quick] [--mnist] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
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
from basinscope.data import load_digits, load_mnist5k
from basinscope.engine import evaluate as engine_module
from basinscope.geometry import get_params, random_directions
from basinscope.models import lenet, mlp, save_weights
from bench_surface import forward_flops, matmul_rounds, naive_surface

# -----------------------------------------------------------------------------------------
# 1. Settings
# -----------------------------------------------------------------------------------------
GRID = 21  # points per axis: 21 x 21 = 441 (--quick: 7 x 7)
QUICK_GRID = 7
RANGE = (-1.0, 1.0)  # alpha and beta, in units of the filter-normalized directions
SEED = 0  # model initialization and the engine's directions (seeds 0 and 1)
TRAIN_STEPS = 300  # full-batch Adam steps before the surface (a surface around a minimum)
TRAIN_LR = 1e-2
MLP_HIDDEN = (128,)  # 64 -> 128 -> 10 (9,610 parameters)
NAIVE_BATCH = 128  # the naive loop's DataLoader batch size
ENGINE_BATCH = 1024  # engine defaults: examples per batch, points per chunk
ENGINE_CHUNK = 64
REPEATS = 3  # clean timed runs per method (--quick: 1)
MAX_ROUNDS = 4  # at most this many rounds to get them (--quick: 2)
PROCESS_REPEATS = 3  # whole-process runs per command (--quick: 1); medians, no cleanliness wait
QUIET_WAIT = 30.0  # seconds to wait for a quiet machine before each in-process run
CONTENDED_CORES = 0.2  # a run is clean if other processes used at most this many cores
TOLERANCE = 1e-5  # max abs difference of loss and accuracy, engine vs naive loop
GOALS = {  # issue 13: speedup over the peer, and fraction of the matmul rate in the engine
    "mlp": {"peer": "loss_landscapes", "speedup": 30.0, "efficiency": 0.30},
    "lenet": {"peer": "naive", "speedup": 5.0, "efficiency": 0.15},
    "lenet_mnist": {"peer": "naive", "speedup": 5.0, "efficiency": 0.15},
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_engine.json"
ROOT = Path(__file__).resolve().parent.parent


# -----------------------------------------------------------------------------------------
# 2. Models and data
# -----------------------------------------------------------------------------------------
def trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """``model`` after ``TRAIN_STEPS`` full-batch Adam steps (seeded before the call)."""
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    for _ in range(TRAIN_STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def setups(names: list[str]) -> dict[str, tuple[nn.Module, Any]]:
    digits = load_digits("all")
    out = {}
    torch.manual_seed(SEED)  # each model's weights as when all three are trained in order
    mlp_model = trained(mlp(hidden=MLP_HIDDEN), digits.x, digits.y)
    if "mlp" in names:
        out["mlp"] = (mlp_model, digits)
    lenet_model = trained(lenet(), digits.x, digits.y)
    if "lenet" in names:
        out["lenet"] = (lenet_model, digits)
    if "lenet_mnist" in names:
        m5k = load_mnist5k("all")
        out["lenet_mnist"] = (trained(lenet(image_size=28), m5k.x, m5k.y), m5k)
    return out


# -----------------------------------------------------------------------------------------
# 3. The methods, in process
# -----------------------------------------------------------------------------------------
def engine_surface(model: nn.Module, data, axis: np.ndarray, strategy: str = "auto"):
    return random_surface(
        model,
        data,
        seed=SEED,
        alphas=axis,
        betas=axis,
        batch_size=ENGINE_BATCH,
        chunk_size=ENGINE_CHUNK,
        strategy=strategy,
    )


def loss_landscapes_surface(model: nn.Module, data, steps: int) -> np.ndarray:
    """``loss_landscapes.random_plane`` as its README shows it: loss only, all data at once."""
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    metric = Loss(nn.CrossEntropyLoss(), data.x, data.y)
    return loss_landscapes.random_plane(
        model, metric, distance=RANGE[1] - RANGE[0], steps=steps, normalization="filter",
        deepcopy_model=True,
    )  # fmt: skip


# -----------------------------------------------------------------------------------------
# 4. Whole processes: the CLI against a plain loss-landscapes script
# -----------------------------------------------------------------------------------------
PEER_SCRIPT = """
import sys
import numpy as np, torch, loss_landscapes
from loss_landscapes.metrics import Loss
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch import nn
d = load_digits()
x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
y = torch.tensor(d.target, dtype=torch.int64)
model = nn.Sequential()
model.add_module("flatten", nn.Flatten()); model.add_module("fc1", nn.Linear(64, {h}))
model.add_module("relu1", nn.ReLU()); model.add_module("fc2", nn.Linear({h}, 10))
model.load_state_dict(load_file(sys.argv[1]))
surface = loss_landscapes.random_plane(
    model, Loss(nn.CrossEntropyLoss(), x, y), distance={dist}, steps={steps},
    normalization="filter", deepcopy_model=True)
np.save(sys.argv[2], surface)
"""


def process_commands(weights: Path, grid: int, work: Path) -> dict[str, list[str]]:
    axis = f"{RANGE[0]}:{RANGE[1]}:{grid}"
    peer = work / "peer.py"
    peer.write_text(
        PEER_SCRIPT.format(h=MLP_HIDDEN[0], dist=RANGE[1] - RANGE[0], steps=grid).lstrip()
    )
    cli = [
        str(Path(sys.executable).parent / "basinscope"), "surface",
        "--model", "basinscope.models:mlp", "--model-kwargs", json.dumps({"hidden": list(MLP_HIDDEN)}),
        "--weights", str(weights), "--data", "digits", "--splits", "all",
        "--xrange", axis, "--yrange", axis, "--no-progress", "--json",
    ]  # fmt: skip
    return {
        "cli_no_plot": [*cli, "--no-plot"],
        "cli": cli,
        "loss_landscapes_script": [sys.executable, str(peer), str(weights), str(work / "s.npy")],
    }


COLD_COMPILE_SCRIPT = """
import sys, numpy as np, torch
from basinscope.analyses.surface import random_surface
from basinscope.data import load_digits, load_mnist5k
from basinscope.models import lenet
torch.set_num_threads({threads})
data, model = (load_digits("all"), lenet()) if sys.argv[1] == "lenet" else (
    load_mnist5k("all"), lenet(image_size=28))
axis = np.linspace(-1, 1, 3)
land = random_surface(model, data, alphas=axis, betas=axis, batch_size={batch},
                      chunk_size={chunk}, strategy="compiled")
print(land.evaluation["trial"]["compile_seconds"])
"""


def process_compile_seconds(name: str) -> tuple[float, float]:
    """What a process pays to compile ``name``'s per-point forward: the first time (a fresh
    process, an empty inductor cache, inductor's import included), and in a second fresh
    process that finds the first one's cache."""
    script = COLD_COMPILE_SCRIPT.format(
        threads=torch.get_num_threads(), batch=ENGINE_BATCH, chunk=ENGINE_CHUNK
    )
    seconds = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TORCHINDUCTOR_CACHE_DIR": cache}
        for _ in range(2):
            wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
            proc = subprocess.run(
                [sys.executable, "-c", script, name], capture_output=True, text=True, env=env
            )
            if proc.returncode != 0:
                raise RuntimeError(f"compiling {name} failed:\n{proc.stderr[-2000:]}")
            seconds.append(float(proc.stdout.strip().splitlines()[-1]))
    return seconds[0], seconds[1]


def run_process(cmd: list[str], work: Path, index: int) -> dict[str, Any]:
    """One whole process, a fresh run folder each time; wall seconds and others' cores."""
    if "--json" in cmd:
        cmd = [*cmd, "--out", str(work / f"run-{index}")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc, t = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, env=env))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return t


def bench_processes(weights: Path, grid: int, repeats: int, work: Path) -> dict[str, Any]:
    cmds = process_commands(weights, grid, work)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cmds}
    index = 0
    for _ in range(repeats):
        for name, cmd in cmds.items():
            wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
            index += 1
            runs[name].append(run_process(cmd, work, index))
    out: dict[str, Any] = {}
    for name, r in runs.items():
        sec, clean = median_seconds(r, CONTENDED_CORES)
        out[name] = {"seconds": sec, "clean_runs": clean, "runs": r}
    peer = out["loss_landscapes_script"]["seconds"]
    for name in ("cli_no_plot", "cli"):
        out[name]["speedup_vs_loss_landscapes_script"] = peer / out[name]["seconds"]
    out["commands"] = {k: " ".join(v) for k, v in cmds.items()}
    return out


# -----------------------------------------------------------------------------------------
# 5. One model in process: warm up, time round-robin, check equality
# -----------------------------------------------------------------------------------------
def performed_flops(model: nn.Module, x: torch.Tensor, points: int, dim: int = 2) -> float:
    """FLOPs the engine performs per example for ``points`` points when the first layer is
    evaluated on the origin and ``dim`` directions only (the first Linear/Conv2d layer)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    total = forward_flops(model, x)
    first = layers[0]
    first_only = nn.Sequential(nn.Flatten()) if isinstance(first, nn.Linear) else nn.Sequential()
    first_only.append(first)
    first_flops = forward_flops(first_only, x)
    return (total - first_flops) * points + first_flops * (dim + 1)


def bench_model(
    name: str, model: nn.Module, data, grid: int, repeats: int, max_rounds: int
) -> dict[str, Any]:
    center = get_params(model)
    d1, d2 = random_directions(center, SEED, 2, "filter", "zero")  # the engine's directions
    loader = DataLoader(TensorDataset(data.x, data.y), batch_size=NAIVE_BATCH, shuffle=False)
    axis = np.linspace(*RANGE, grid)
    points = [(float(a), float(b)) for a in axis for b in axis]
    peers = ["loss_landscapes"] if name == "mlp" else ["compiled"]
    methods = ["engine", "naive", *peers]

    def run(method: str):
        if method == "engine":
            return engine_surface(model, data, axis)
        if method == "compiled":
            return engine_surface(model, data, axis, strategy="compiled")
        if method == "naive":
            return naive_surface(model, center, d1, d2, loader, points)
        return loss_landscapes_surface(model, data, grid)

    small = np.linspace(*RANGE, 3)  # warm-up: first-call costs are paid by no timed run
    engine_surface(model, data, small)
    naive_surface(model, center, d1, d2, loader, points[:3])
    if "loss_landscapes" in methods:
        loss_landscapes_surface(model, data, 3)
    first_compile = None
    if "compiled" in methods:
        engine_surface(model, data, small, strategy="compiled")  # the timed runs' shapes
        first_compile, cached_compile = process_compile_seconds(name)

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    outputs: dict[str, Any] = {}
    for _ in range(max_rounds):
        todo = [m for m in methods if sum(is_clean(r, CONTENDED_CORES) for r in runs[m]) < repeats]
        if not todo:
            break
        for m in todo:
            waited = wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
            outputs[m], t = timed(lambda m=m: run(m))
            extra = {}
            if m in ("engine", "compiled"):
                ev = outputs[m].evaluation
                extra = {"engine_seconds": ev["seconds"], "strategy": ev["strategy"]}
                extra["trial"] = ev["trial"]
            runs[m].append({**t, "waited": waited, **extra})

    def values(land) -> np.ndarray:
        return np.stack(
            [land.dataset[f"train_{k}"].values.reshape(-1) for k in ("loss", "accuracy")], 1
        )

    engine_values = values(outputs["engine"])
    land = outputs["engine"]
    diff = np.abs(engine_values - outputs["naive"]).max(axis=0)
    if "compiled" in methods:
        diff = np.maximum(diff, np.abs(values(outputs["compiled"]) - outputs["naive"]).max(0))
    flops = forward_flops(model, data.x)
    nominal = flops * len(data) * len(points)
    performed = performed_flops(model, data.x, len(points)) * len(data)
    result: dict[str, Any] = {
        "parameters": sum(v.numel() for v in center.values()),
        "examples": len(data),
        "grid_points": len(points),
        "flops_per_example": flops,
        "nominal_flops": nominal,
        "performed_flops": performed,
        "max_abs_diff": {"loss": float(diff[0]), "accuracy": float(diff[1])},
        "equal_within_tolerance": bool(diff.max() <= TOLERANCE),
        "loss_range": [float(engine_values[:, 0].min()), float(engine_values[:, 0].max())],
        "first_layer": land.evaluation["trial"].get("first_layer"),
        "methods": {},
    }
    for m in methods:
        sec, clean = median_seconds(runs[m], CONTENDED_CORES)
        result["methods"][m] = {"seconds": sec, "clean_runs": clean, "runs": runs[m]}
    for m in ("engine", "compiled"):
        if m not in methods:
            continue
        eng = result["methods"][m]
        clean_eng = [r for r in runs[m] if is_clean(r, CONTENDED_CORES)] or runs[m]
        eng["engine_seconds"] = statistics.median(r["engine_seconds"] for r in clean_eng)
        eng["strategies"] = sorted({r["strategy"] for r in runs[m]})
    eng = result["methods"]["engine"]
    for m in methods:
        if m not in ("engine", "compiled"):
            result[f"speedup_vs_{m}"] = result["methods"][m]["seconds"] / eng["seconds"]
    if "compiled" in methods:
        comp = result["methods"]["compiled"]
        clean = [r for r in runs["compiled"] if is_clean(r, CONTENDED_CORES)] or runs["compiled"]
        again = statistics.median(r["trial"]["compile_seconds"] for r in clean)
        comp["first_compile_seconds"] = first_compile
        comp["cached_process_compile_seconds"] = cached_compile
        comp["compile_seconds_in_timed_runs"] = again
        comp["seconds_with_first_compile"] = comp["seconds"] - again + first_compile
        comp["engine_seconds_with_first_compile"] = comp["engine_seconds"] - again + first_compile
        naive = result["methods"]["naive"]["seconds"]
        result["compiled_speedup_vs_naive"] = naive / comp["seconds"]
        result["compiled_speedup_vs_naive_with_first_compile"] = (
            naive / comp["seconds_with_first_compile"]
        )
        result["compiled_speedup_vs_naive_with_cached_compile"] = naive / (
            comp["seconds"] - again + cached_compile
        )
    return result


# -----------------------------------------------------------------------------------------
# 6. Main: run, print, write JSON
# -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="7x7 grid, one round: a smoke run")
    parser.add_argument("--mnist", action="store_true", help="also LeNet-28 on MNIST-5k")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(GOALS),
        help="only these models (the whole processes run with mlp); default: mlp and lenet, "
        "and lenet_mnist with --mnist",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    args = parser.parse_args()
    grid, repeats, max_rounds, proc_repeats = (
        (QUICK_GRID, 1, 2, 1) if args.quick else (GRID, REPEATS, MAX_ROUNDS, PROCESS_REPEATS)
    )

    matmul = matmul_rounds()
    names = args.models or ["mlp", "lenet"] + (["lenet_mnist"] if args.mnist else [])
    models = setups(names)
    results = {}
    for name, (model, data) in models.items():
        results[name] = bench_model(name, model, data, grid, repeats, max_rounds)
        print(f"{name}: done ({results[name]['methods']['engine']['seconds']:.3f} s)", flush=True)
    processes: dict[str, Any] = {}
    if "mlp" in models:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            weights = save_weights(models["mlp"][0], work / "mlp.safetensors")
            processes = bench_processes(weights, grid, proc_repeats, work)
    matmul += matmul_rounds()
    clean_rates = [r["gflops"] for r in matmul if is_clean(r, CONTENDED_CORES)]
    peak = statistics.median(clean_rates or [r["gflops"] for r in matmul])

    for name, r in results.items():
        eng = r["methods"]["engine"]
        r["engine_gflops_nominal"] = r["nominal_flops"] / eng["engine_seconds"] / 1e9
        r["efficiency"] = r["engine_gflops_nominal"] / peak
        r["efficiency_performed"] = r["performed_flops"] / eng["engine_seconds"] / 1e9 / peak
        comp = r["methods"].get("compiled")
        if comp:
            r["compiled_efficiency_with_first_compile"] = (
                r["nominal_flops"] / comp["engine_seconds_with_first_compile"] / 1e9 / peak
            )
        goal = GOALS[name]
        peer_speedup = (
            processes["cli_no_plot"]["speedup_vs_loss_landscapes_script"]
            if name == "mlp"
            else r["speedup_vs_naive"]
        )
        r["goal"] = {
            **goal,
            "speedup_measured": peer_speedup,
            "speedup_met": peer_speedup >= goal["speedup"],
            "efficiency_met": r["efficiency"] >= goal["efficiency"],
        }
        if comp:  # the same goals with --strategy compiled, first compilation included
            speed = r["compiled_speedup_vs_naive_with_first_compile"]
            eff = r["compiled_efficiency_with_first_compile"]
            r["goal"]["compiled"] = {
                "speedup_measured": speed,
                "speedup_met": speed >= goal["speedup"],
                "efficiency": eff,
                "efficiency_met": eff >= goal["efficiency"],
            }

    print(
        f"\nbasinscope engine benchmark: {grid}x{grid} filter-normalized surfaces, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; matmul {peak:.0f} GFLOP/s"
    )
    header = (
        f"{'model':<12} {'engine s':>9} {'(in eng.)':>9} {'naive s':>8} {'l-l s':>7} "
        f"{'vs naive':>8} {'vs l-l':>7} {'of matmul':>9} {'max|dloss|':>10} {'strategy':>9}"
    )
    print(header + "\n" + "-" * len(header))
    for name, r in results.items():
        m = r["methods"]
        ll = m.get("loss_landscapes", {}).get("seconds")
        vs_ll = f"{r['speedup_vs_loss_landscapes']:.1f}x" if ll else "-"
        print(
            f"{name:<12} {m['engine']['seconds']:>9.3f} {m['engine']['engine_seconds']:>9.3f} "
            f"{m['naive']['seconds']:>8.2f} {(f'{ll:.2f}' if ll else '-'):>7} "
            f"{r['speedup_vs_naive']:>7.1f}x "
            f"{vs_ll:>7} "
            f"{r['efficiency']:>8.1%} {r['max_abs_diff']['loss']:>10.1e} "
            f"{'/'.join(m['engine']['strategies']):>9}"
        )
        if "compiled" in m:
            c = m["compiled"]
            print(
                f"{'  compiled':<12} {c['seconds']:>9.3f} {c['engine_seconds']:>9.3f} "
                f"{'':>8} {'-':>7} {r['compiled_speedup_vs_naive']:>7.1f}x {'-':>7} "
                f"{r['nominal_flops'] / c['engine_seconds'] / 1e9 / peak:>8.1%} "
                f"{'':>10} {'compiled':>9}"
            )
            print(
                f"{'  +1st comp.':<12} {c['seconds_with_first_compile']:>9.3f} "
                f"{c['engine_seconds_with_first_compile']:>9.3f} {'':>8} {'-':>7} "
                f"{r['compiled_speedup_vs_naive_with_first_compile']:>7.1f}x {'-':>7} "
                f"{r['compiled_efficiency_with_first_compile']:>8.1%}   "
                f"(compilation {c['first_compile_seconds']:.1f} s; "
                f"{c['cached_process_compile_seconds']:.1f} s with inductor's cache: "
                f"{r['compiled_speedup_vs_naive_with_cached_compile']:.1f}x)"
            )
    p = processes
    if p:
        print(
            f"\nwhole processes (MLP, medians of {proc_repeats}): CLI --no-plot "
            f"{p['cli_no_plot']['seconds']:.2f} s, CLI with figures {p['cli']['seconds']:.2f} s, "
            f"loss-landscapes script {p['loss_landscapes_script']['seconds']:.2f} s -> "
            f"{p['cli_no_plot']['speedup_vs_loss_landscapes_script']:.2f}x / "
            f"{p['cli']['speedup_vs_loss_landscapes_script']:.2f}x"
        )
    print("\ngoals (issue 13):")
    for name, r in results.items():
        g = r["goal"]
        print(
            f"  {name:<12} >= {g['speedup']:.0f}x {g['peer']}: {g['speedup_measured']:.1f}x "
            f"{'met' if g['speedup_met'] else 'NOT met'}; >= {g['efficiency']:.0%} of matmul: "
            f"{r['efficiency']:.1%} {'met' if g['efficiency_met'] else 'NOT met'}"
        )
        if "compiled" in g:
            c = g["compiled"]
            print(
                f"  {'':<12} with --strategy compiled (first compilation included): "
                f"{c['speedup_measured']:.1f}x {'met' if c['speedup_met'] else 'NOT met'}; "
                f"{c['efficiency']:.1%} {'met' if c['efficiency_met'] else 'NOT met'}"
            )

    report = {
        "benchmark": "bench_engine",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "basinscope": basinscope.__version__,
        "engine_source_sha256": hashlib.sha256(
            Path(engine_module.__file__).read_bytes()
        ).hexdigest()[:16],
        "threads": torch.get_num_threads(),
        "machine": machine(loadavg_at_end=os.getloadavg()),
        "settings": {
            "grid": [grid, grid],
            "range": list(RANGE),
            "seed": SEED,
            "train_steps": TRAIN_STEPS,
            "mlp_hidden": list(MLP_HIDDEN),
            "naive_batch_size": NAIVE_BATCH,
            "engine_batch_size": ENGINE_BATCH,
            "engine_chunk_size": ENGINE_CHUNK,
            "repeats": repeats,
            "process_repeats": proc_repeats,
            "contended_cores": CONTENDED_CORES,
            "quick": args.quick,
            "efficiency": "nominal forward FLOPs (Linear, Conv2d) x examples x points / engine "
            "seconds / matmul rate; efficiency_performed counts the first layer dim + 1 times",
        },
        "matmul": {"gflops": peak, "rounds": matmul},
        "models": results,
        "processes": processes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")
    unequal = {n: r["max_abs_diff"] for n, r in results.items() if not r["equal_within_tolerance"]}
    assert not unequal, f"engine and naive loop differ by more than {TOLERANCE}: {unequal}"


if __name__ == "__main__":
    main()
