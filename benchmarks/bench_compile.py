"""Would ``torch.compile`` pay for the per-point forward of the engine's loop strategy?

Issue 13 lists "an optional ``torch.compile`` of the per-point forward, with its compile time
reported" as a lever to keep only where measured faster. This measures the lever before it
is built into the engine: one point's evaluation is ``functional_call`` of the model with
that point's parameters on every example, then the mean cross-entropy, as the loop strategy
does it. Three ways, timed round-robin after one untimed warm-up each (no gradients):

* ``eager``: the weights as stored (NCHW strides);
* ``channels_last``: the 4-D weights re-strided with ``clone(memory_format=channels_last)``
  (the engine's CPU default since the channels-last change);
* ``compiled``: ``torch.compile(..., dynamic=False)`` of the eager function (inductor's C++
  code on a CPU), its compilation timed separately.

Models: the LeNet on all 1,797 8x8 digits (pooling and ReLU bound, where channels-last
did not help) and the LeNet-28 on the 5,000 MNIST images. Reported per model: the median
seconds per point over clean runs, the ratios to eager, the compile time, the number of
points from which compiling pays (``compile_s / (channels_last_s - compiled_s)``; a 21x21
surface has 441 points, a 51x51 one 2,601) and the largest difference of the losses.

Run:  .venv/bin/python benchmarks/bench_compile.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call

from _timing import machine, median_seconds, timed, wait_for_quiet
from basinscope.data import load_digits, load_mnist5k
from basinscope.models import lenet

QUIET_WAIT = 5.0  # seconds to wait for a quiet machine before each round
CONTENDED_CORES = 0.5  # a run is clean when other processes used at most this many cores
THREADS = 2


def _data(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    if name == "lenet":
        tr, te = load_digits("train"), load_digits("test")
        return torch.cat([tr.x, te.x]), torch.cat([tr.y, te.y]), lenet().eval()
    m = load_mnist5k("all")
    return m.x, m.y, lenet(image_size=28).eval()


def bench(name: str, rounds: int) -> dict:
    x, y, model = _data(name)
    params = {k: v.detach() for k, v in model.named_parameters()}
    last = {
        k: v.clone(memory_format=torch.channels_last) if v.dim() == 4 else v
        for k, v in params.items()
    }

    def point(p):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    with torch.no_grad():
        t0 = time.perf_counter()
        compiled = torch.compile(point, dynamic=False)
        compiled(params)  # compiles
        compile_s = time.perf_counter() - t0
        ways = {
            "eager": lambda: point(params),
            "channels_last": lambda: point(last),
            "compiled": lambda: compiled(params),
        }
        values = {k: float(fn()) for k, fn in ways.items()}  # warm-up, untimed
        runs: dict[str, list] = {k: [] for k in ways}
        for _ in range(rounds):
            wait_for_quiet(QUIET_WAIT, CONTENDED_CORES)
            for k, fn in ways.items():
                _, r = timed(fn)
                runs[k].append(r)
    med = {}
    for k, rs in runs.items():
        med[k], clean = median_seconds(rs, CONTENDED_CORES)
        med[k + "_clean_runs"] = clean
    gain = med["channels_last"] - med["compiled"]
    return {
        "examples": int(x.shape[0]),
        "image": list(x.shape[1:]),
        "seconds_per_point": {k: med[k] for k in ways},
        "clean_runs": {k: med[k + "_clean_runs"] for k in ways},
        "vs_eager": {k: med["eager"] / med[k] for k in ways},
        "compile_seconds": compile_s,
        "pays_from_points": compile_s / gain if gain > 0 else None,
        "max_abs_loss_diff": max(abs(v - values["eager"]) for v in values.values()),
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds instead of 15, digits only")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "bench_compile.json"
    )
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    rounds = 5 if args.quick else 15
    names = ("lenet",) if args.quick else ("lenet", "lenet_mnist")
    results = {n: bench(n, rounds) for n in names}
    out = {
        "benchmark": "bench_compile",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(torch=torch.__version__, threads=THREADS),
        "rounds": rounds,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"per-point forward on the CPU, torch {torch.__version__}, {THREADS} threads")
    print(
        f"{'model':12} {'eager ms':>9} {'ch-last ms':>10} {'compiled ms':>11} {'vs eager':>9} {'compile s':>9} {'pays from':>10}"
    )
    for n, r in results.items():
        s = r["seconds_per_point"]
        pays = r["pays_from_points"]
        print(
            f"{n:12} {s['eager'] * 1e3:9.2f} {s['channels_last'] * 1e3:10.2f} "
            f"{s['compiled'] * 1e3:11.2f} {r['vs_eager']['compiled']:8.2f}x "
            f"{r['compile_seconds']:9.1f} {f'{pays:.0f} points' if pays else 'never':>10}"
        )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
