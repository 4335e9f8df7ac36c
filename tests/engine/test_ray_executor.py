"""The Ray executor on a real local Ray cluster (2 CPUs, started once for the module).

Every chunked computation gives the local executor's arrays bit for bit (the strategy
pinned), a worker killed with SIGKILL in the middle of a run is replaced and the run
completes with identical arrays, a stage that fails is retried and then reported, and the
errors a user meets say what to do. The driver killed and restarted is in
``tests/cli/test_ray_resume_kill.py``.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest
import torch

import basinscope as bs
from basinscope.analyses import (
    barrier,
    basin_test,
    interpolate,
    module_criticality,
    random_surface,
)
from basinscope.analyses.hessian_map import curvature_map
from basinscope.engine import EvalJob, PointBasis, evaluate_points, make_executor, use_executor
from basinscope.engine.executors import LocalExecutor, current_executor
from basinscope.engine.ray_executor import RayExecutor
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_params
from basinscope.models import lenet, mlp

if os.environ.get("CI"):  # CI installs the dev extra: there a missing ray fails, not skips
    import ray
ray = pytest.importorskip("ray", reason="the ray extra (make test installs it)")

# ~40 s on a quiet 2-core machine: the cluster starts once (~5 s), each test ships tiny jobs
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from ray import cloudpickle

    # the models and callables defined here travel by value: the workers cannot import tests
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        object_store_memory=100 * 2**20,
    )
    yield
    ray.shutdown()


@pytest.fixture
def ex(cluster):
    executor = RayExecutor(workers=2)
    yield executor
    executor.close()  # stops its actors; the module's session stays up


@pytest.fixture(scope="module")
def data(digits_xy):
    x, y = digits_xy
    return {"train": (x[:200], y[:200]), "test": (x[200:300], y[200:300])}


def _pair(seed_a=0, seed_b=1):
    torch.manual_seed(seed_a)
    a = mlp()
    torch.manual_seed(seed_b)
    return a, mlp()


def numbers(result):
    """A result's dict without what says how long or where it ran."""

    def strip(v):
        if isinstance(v, dict):
            return {
                k: strip(x)
                for k, x in v.items()
                if "seconds" not in k
                and k not in ("executor", "workers", "address")
                and not k.startswith("points_per")
            }
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(result.to_dict())


def assert_same(a, b):
    assert set(a.dataset.data_vars) == set(b.dataset.data_vars)
    for name in a.dataset.data_vars:
        assert a.dataset[name].values.tobytes() == b.dataset[name].values.tobytes(), name


@pytest.mark.parametrize("strategy", ["vmap", "loop", "compiled"])
def test_surface_equals_the_local_executor_bit_for_bit(ex, data, strategy):
    model = mlp()
    kw = dict(alphas=np.linspace(-1, 1, 5), betas=np.linspace(-1, 1, 4), chunk_size=3)
    local = random_surface(model, data, strategy=strategy, **kw)
    remote = random_surface(model, data, strategy=strategy, executor=ex, **kw)
    assert_same(local, remote)
    if strategy == "compiled":  # each worker compiles; the driver records the slowest
        assert remote.evaluation["trial"]["compile_seconds"] > 0
    assert local.evaluation["executor"] == "local"
    assert remote.evaluation["executor"] == "ray"
    assert remote.evaluation["workers"] == 2
    assert len(set(ex.pids)) == 2 and os.getpid() not in ex.pids  # two other processes


def test_auto_strategy_is_chosen_once_on_the_driver_and_recorded(ex, data):
    model = lenet()
    remote = random_surface(model, data, alphas=[-1, 0, 1], betas=[0, 1], executor=ex)
    assert remote.evaluation["strategy"] in ("vmap", "loop")
    assert {"vmap_seconds", "loop_seconds"} <= set(remote.evaluation["trial"])
    local = random_surface(
        model, data, alphas=[-1, 0, 1], betas=[0, 1], strategy=remote.evaluation["strategy"]
    )
    assert_same(local, remote)


def test_use_executor_reaches_analyses_without_an_executor_argument(ex, data):
    """Lines, barriers with a bootstrap (per-example values come back from the actors),
    curvature maps, criticality grids and basin Monte Carlo all run on the current executor."""
    a, b = _pair()
    kw = dict(strategy="vmap", chunk_size=2)
    bkw = dict(bootstrap=30, seed=3, num_points=7, **kw)
    ckw = dict(alphas=[0.5, 1.0], sigmas=[0.1, 0.5], samples=2, split="train", **kw)
    mkw = dict(alphas=[-0.5, 0.5], betas=[0.0, 0.5], chunk_size=1, hvp_method="double-backward")
    tiny = (data["train"][0][:60], data["train"][1][:60])

    def everything():
        return (
            interpolate(a, b, data, alphas=np.linspace(0, 1, 5), **kw),
            barrier(a, b, data["train"], **bkw),
            module_criticality(b, a, data, **ckw),
            basin_test([a, b], data["train"], delta=0.5, samples=6, pairs=3, **kw),
            curvature_map(a, tiny, **mkw),
        )

    local = everything()
    with use_executor(ex):
        assert current_executor() is ex
        remote = everything()
    assert isinstance(current_executor(), LocalExecutor)
    assert_same(local[0], remote[0])
    assert local[1].value == remote[1].value and local[1].ci == remote[1].ci
    assert local[1].ci is not None
    np.testing.assert_array_equal(local[1].values, remote[1].values)
    assert numbers(local[2]) == numbers(remote[2])  # criticality
    assert numbers(local[3]) == numbers(remote[3])  # basin
    assert_same(local[4], remote[4])
    assert np.isfinite(remote[4].dataset["train_lambda_max"].values).all()


def test_a_worker_killed_mid_run_is_replaced_and_the_arrays_are_identical(ex, digits_xy):
    x, y = digits_xy
    model = lenet()
    job = EvalJob(
        model,
        PointBasis(get_params(model), (dict(get_params(model)),)),
        {"train": (x[:600], y[:600])},
        strategy="loop",
    )
    coeffs = np.linspace(-1, 1, 24)[:, None]
    local = evaluate_points(job, coeffs, chunk_size=2)
    killed = []

    def kill_one(index, total):
        if not killed:  # after the first finished chunk: both actors hold unfinished ones
            killed.append(ex.pids[0])
            os.kill(ex.pids[0], signal.SIGKILL)

    remote = evaluate_points(job, coeffs, chunk_size=2, executor=ex, on_chunk=kill_one)
    assert killed and ex.replaced == 1 and ex.retried >= 1
    assert killed[0] not in ex.pids  # the replacement is another process
    for name in local.values:
        assert local.values[name].tobytes() == remote.values[name].tobytes(), name
    assert remote.points_evaluated == len(coeffs)


def test_a_chunk_whose_workers_keep_dying_is_reported(ex, digits_xy):
    x, y = digits_xy
    model = mlp()
    job = EvalJob(model, PointBasis(get_params(model), ()), {"train": (x[:50], y[:50])})
    ex.max_retries = 1

    def kill_all(index, total):
        for pid in ex.pids:
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(BasinscopeError, match=r"chunk \d+ failed 2 times.*Ray worker died"):
        evaluate_points(job, np.zeros((40, 0)), chunk_size=1, executor=ex, on_chunk=kill_all)


class Broken(torch.nn.Module):
    """Fine for the driver's checks, then fails on the workers' chunks."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        if os.getpid() != self.driver:
            raise ValueError("this model fails on a worker")
        return self.net(x)


def test_an_error_in_the_computation_is_raised_as_it_was_not_retried(ex, data):
    model = Broken()
    model.driver = os.getpid()
    with pytest.raises(ValueError, match="this model fails on a worker"):
        random_surface(model, data, alphas=[0, 1], betas=[0, 1], strategy="loop", executor=ex)
    assert ex.retried == 0


def _fails_first(marker):
    def call():
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise OSError("a transient failure")
        return "ok"

    return call


def _user_error():
    raise BasinscopeError("bad settings: fix them")


def _always_fails():
    raise RuntimeError("always")


def test_tasks_run_in_parallel_keep_their_order_and_retry_then_report(ex, tmp_path):
    results = ex.run_tasks([lambda i=i: (i, os.getpid()) for i in range(4)])
    assert [i for i, _ in results] == [0, 1, 2, 3]
    assert os.getpid() not in {pid for _, pid in results}  # they ran in Ray's workers
    assert ex.run_tasks([_fails_first(str(tmp_path / "m")), lambda: 2]) == ["ok", 2]
    assert ex.retried == 1
    with pytest.raises(BasinscopeError, match="bad settings: fix them"):
        ex.run_tasks([_user_error])
    assert ex.retried == 1  # a user error is not retried
    with pytest.raises(BasinscopeError, match=r"stage B failed 3 times.*RuntimeError: always"):
        ex.run_tasks([lambda: 1, _always_fails], names=["stage A", "stage B"])
    assert LocalExecutor().run_tasks([lambda: 1, lambda: 2]) == [1, 2]


def test_more_workers_than_the_cluster_holds_are_capped_with_a_warning(cluster, data):
    ex = RayExecutor(
        workers=5, placement_wait=1.0
    )  # the module's cluster has 2 CPUs: 3 actors could never start
    try:
        with pytest.warns(
            RuntimeWarning, match="--workers 5, but the Ray cluster holds only 2 more"
        ):
            random_surface(mlp(), data, alphas=[0, 1], betas=[0, 1], chunk_size=1, executor=ex)
        assert len(ex.pids) == 2
        assert ex.run_tasks([lambda: 1, lambda: 2, lambda: 3]) == [1, 2, 3]  # actors released
    finally:
        ex.close()
    busy = RayExecutor(workers=2)  # another executor's idle actors hold both CPUs
    try:
        random_surface(mlp(), data, alphas=[0, 1], betas=[0, 1], chunk_size=1, executor=busy)
        with pytest.raises(BasinscopeError, match="has 0 CPUs free, and each worker needs 1 CPUs"):
            random_surface(
                mlp(), data, alphas=[0, 1], betas=[0, 1], executor=RayExecutor(workers=1)
            )
    finally:
        busy.close()
    gpu = RayExecutor(workers=1, placement_wait=0.5)
    with pytest.raises(
        BasinscopeError, match="the Ray cluster has 0 GPUs free, and each worker needs 1 GPU"
    ):
        gpu._slots(ray, gpu=True)


def test_make_executor_and_its_errors():
    assert isinstance(make_executor("local"), LocalExecutor)
    ex = make_executor("ray", workers=3)
    assert isinstance(ex, RayExecutor) and ex.workers == 3
    with pytest.raises(
        BasinscopeError, match=r"unknown executor 'dask': expected one of local, ray"
    ):
        make_executor("dask")
    with pytest.raises(
        BasinscopeError, match="--address and --workers are options of --executor ray"
    ):
        make_executor("local", workers=2)
    with pytest.raises(BasinscopeError, match="--workers must be at least 1, got 0"):
        make_executor("ray", workers=0)


def test_without_ray_installed_the_error_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(
        BasinscopeError, match=r'needs the ray package.*pip install "basinscope\[ray\]"'
    ):
        RayExecutor(workers=1).connect()
    with pytest.raises(
        BasinscopeError, match=r'needs the ray package.*pip install "basinscope\[ray\]"'
    ):
        make_executor("ray")


def test_the_command_line_runs_on_ray_and_records_it(cluster, cli, tmp_path):
    out = tmp_path / "s"
    r = cli(
        "surface", "--model", "mlp", "--xrange", "-1:1:3", "--yrange", "-1:1:3",
        "--strategy", "vmap", "--executor", "ray", "--workers", "2",
        "--no-plot", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert r.code == 0, r.err
    local = bs.load(out)
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["executor"]["executor"] == "ray" and manifest["executor"]["workers"] == 2
    assert local.evaluation["executor"] == "ray"
    bad = cli("surface", "--model", "mlp", "--workers", "2", "--out", str(tmp_path / "b"))
    assert bad.code != 0 and "--address and --workers are options of --executor ray" in bad.err
    assert "Traceback" not in bad.err


def _alone(path):
    """True when no other task held ``path``'s lock while this one ran."""

    def call():
        import fcntl
        import time

        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            time.sleep(0.3)  # a window for an overlapping task to find the lock taken
            fcntl.flock(f, fcntl.LOCK_UN)
        return True

    return call


def test_tasks_reserve_the_cpus_they_compute_with(ex, tmp_path):
    """Two tasks of 2 CPUs each on the 2-CPU cluster never run at once (no shared cores);
    more CPUs than the cluster has are capped, so a task can still start."""
    lock = str(tmp_path / "lock")
    assert ex.run_tasks([_alone(lock), _alone(lock), _alone(lock)], cpus=2) == [True] * 3
    assert ex.run_tasks([lambda: 1], cpus=64) == [1]
