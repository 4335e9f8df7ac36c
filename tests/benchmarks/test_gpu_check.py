"""benchmarks/gpu_check.py: its comparison of device and CPU results, and a quick CPU dry run.

The script is meant for a machine with a GPU; here it runs with ``--quick --device cpu``,
which exercises every check, the matmul rate and the surface timing end to end (the CPU
plays both sides, so every check also tests that the function is deterministic given its
seeds).
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its neighbours (bench_surface)
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(BENCHMARKS))


RESULT = {
    "kind": "landscape",
    "values": [[1.0, 2.0], [3.0, 4.0]],
    "value": 0.5,
    "name": "model_a",  # strings are not compared
    "evaluation": {"seconds": 1.0, "strategy": "vmap", "points": 4},
    "nested": [{"a": 1.0, "b": "nan"}],
}


def _changed(path: list, value) -> dict:
    out = copy.deepcopy(RESULT)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_compare_identical_results_agree(gpu_check):
    r = gpu_check.compare(RESULT, copy.deepcopy(RESULT), 1e-4, 1e-5)
    assert r["ok"] and r["max_abs_diff"] == 0.0 and r["worst"] is None
    assert r["compared_values"] == 4 + 1 + 1 + 2  # the evaluation's seconds are ignored


def test_compare_flags_a_difference_beyond_tolerance(gpu_check):
    got = _changed(["values", 1], [3.0, 4.01])
    r = gpu_check.compare(RESULT, got, 1e-4, 1e-5)
    assert not r["ok"]
    assert r["worst"] == "values"
    assert r["max_abs_diff"] == pytest.approx(0.01)
    assert r["max_rel_diff"] == pytest.approx(0.0025)
    assert r["outside_tolerance"] == ["values: max |diff| 0.01"]
    # the same difference within a looser tolerance passes
    assert gpu_check.compare(RESULT, got, 1e-2, 0.0)["ok"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["nested", 0, "b"], 1.0),  # NaN on the CPU, a number on the device
        (["nested", 0, "a"], "nan"),  # a number on the CPU, NaN on the device
        (["value"], "inf"),
        (["values"], [1.0, 2.0, 3.0, 4.0]),  # another shape
    ],
)
def test_compare_flags_nan_inf_and_shape(gpu_check, path, value):
    assert not gpu_check.compare(RESULT, _changed(path, value), 1e-4, 1e-5)["ok"]


def test_compare_flags_a_number_on_one_side_only(gpu_check):
    got = copy.deepcopy(RESULT)
    del got["value"]
    r = gpu_check.compare(RESULT, got, 1e-4, 1e-5)
    assert not r["ok"] and r["only_one_side"] == ["value"]


def test_compare_ignores_timings_and_strings(gpu_check):
    got = _changed(["evaluation"], {"seconds": 9.0, "strategy": "loop", "points": 4})
    got["name"] = "model_b"
    assert gpu_check.compare(RESULT, got, 0.0, 0.0)["ok"]


def test_compare_reads_every_value_of_a_real_result(gpu_check, small_data):
    from basinscope.analyses import random_surface
    from basinscope.models import mlp

    torch.manual_seed(0)
    model = mlp(hidden=(8,)).eval()
    g = np.linspace(-1, 1, 3)
    land = random_surface(model, small_data, alphas=g, betas=g)
    loss = gpu_check.flatten(land)["dataset.data_vars.train_loss.data"]
    np.testing.assert_array_equal(loss, land.dataset["train_loss"].values)
    # a device that got one loss wrong by 1e-3 fails the float32 tolerance
    bumped = land.dataset.copy(deep=True)
    bumped["train_loss"].values[1, 2] += 1e-3
    r = gpu_check.compare(land, {**land.to_dict(), "dataset": bumped.to_dict()}, 1e-4, 1e-5)
    assert not r["ok"] and r["worst"] == "dataset.data_vars.train_loss.data"
    assert r["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)


def test_one_failing_check_does_not_stop_the_others(gpu_check, small_data, monkeypatch):
    from basinscope.models import mlp

    torch.manual_seed(0)
    model = mlp(hidden=(8,)).eval()

    def boom(s, dev):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def drift(s, dev):  # a device that is 10% off
        return {"loss": 1.0 if s["reference"] else 1.1}

    checks = {
        "boom": (boom, (1e-4, 1e-5)),
        "drift": (drift, (1e-4, 1e-5)),
        "surface": gpu_check.CHECKS["surface"],
    }
    monkeypatch.setattr(gpu_check, "CHECKS", checks)
    monkeypatch.setattr(gpu_check, "GRID_SMALL", 3)
    monkeypatch.setattr(gpu_check, "small_setup", lambda: {"data": small_data, "mlp_a": model})
    out = gpu_check.run_checks("cpu", None)
    assert not out["boom"]["ok"]
    assert (
        out["boom"]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    )
    assert not out["drift"]["ok"] and out["drift"]["error"] is None
    assert out["drift"]["max_abs_diff"] == pytest.approx(0.1)
    assert out["surface"]["ok"] and out["surface"]["compared_values"] >= 2 * 9


@pytest.mark.slow
def test_quick_cpu_run_passes_every_check(tmp_path):
    """The whole script, shrunk: every check ok, both surfaces timed, JSON under $OUT."""
    env = {**os.environ, "OUT": str(tmp_path)}
    script = BENCHMARKS / "gpu_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["complete"] and report["all_ok"] and report["failed"] == []
    checks = report["checks"]
    assert {"surface", "barrier", "hessian", "sharpness", "train", "finetune"} <= set(checks)
    for name, c in checks.items():
        assert c["ok"], (name, c)
        assert c["error"] is None and c["compared_values"] > 0, name
    for dtype in ("bfloat16", "float32"):
        s = report["surface"][dtype]
        assert s["error"] is None and s["grid"] == [3, 3] and not s["partial"]
        assert s["gpu_seconds_per_point"] > 0 and math.isfinite(s["loss_at_center"])
        assert 0 < s["fraction_of_matmul_limit"]
    assert "1. every command on cpu" in proc.stdout and "GPU-s/pt" in proc.stdout
