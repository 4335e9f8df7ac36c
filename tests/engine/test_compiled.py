"""The ``compiled`` strategy: the loop's per-point forward through ``torch.compile``.

Checked against the float64 brute force (both first-layer paths, BatchNorm stored and
re-estimated, batches of two sizes, the per-example hook), for its recorded compile time,
for resuming as its journal recorded, for a process that compiles many models, and for its
error when compiling fails."""

import logging
import os
import re
import shutil

import numpy as np
import pytest
import torch

from basinscope.engine import EvalJob, PointBasis, evaluate_points
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_buffers, get_params, random_directions
from basinscope.models import lenet, mlp
from helpers import MemoryJournal, reference_metrics

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="torch.compile (inductor) needs a C++ compiler on a CPU",
)

COEFFS = np.array([[0.0, 0.0], [0.5, -0.3], [-1.0, 0.8], [0.2, 1.0], [0.7, 0.7]])


def _bn_stats(model, x):
    model.train()
    with torch.no_grad():
        model(x[:64])
    return model.eval()


@pytest.mark.parametrize(
    ("first_layer", "bn_policy"), [("basis", "recompute"), ("plain", "stored")]
)
def test_compiled_matches_a_float64_brute_force(digits_xy, first_layer, bn_policy):
    """LeNet with BatchNorm in float64, 150 examples in batches of 64, 64 and 22 (one
    compilation serves both sizes): every point's loss and accuracy, and the per-example
    values the hook receives, are the reference's."""
    x, y = digits_xy
    x, y = x[:150], y[:150]
    torch.manual_seed(1)
    model = _bn_stats(lenet(batchnorm=True), x)
    params, buffers = get_params(model), get_buffers(model)
    dirs = random_directions(params, 3, 2, "filter", "include")
    bn_x = [x[i : i + 50] for i in range(0, 150, 50)]
    seen = []
    job = EvalJob(
        model,
        PointBasis(params, tuple(dirs), buffers),
        {"train": (x, y)},
        strategy="compiled",
        first_layer=first_layer,
        bn_policy=bn_policy,
        bn_data=[(b, y[:50]) for b in bn_x],
        bn_batches=3,
        batch_size=64,
        dtype=torch.float64,
        metrics=("loss", "error"),
        per_example=lambda coeffs, values: seen.append(values),
    )
    res = evaluate_points(job, COEFFS, chunk_size=3)
    assert res.strategy == "compiled"
    assert res.trial["first_layer"] == first_layer
    assert res.trial["compile_seconds"] > 0 and res.trial["compiled_shapes"] == 2
    per_example = np.concatenate([v["train_loss"] for v in seen])
    assert per_example.shape == (5, 150)
    for i, (a, b) in enumerate(COEFFS):
        p = {
            k: params[k].double() + a * dirs[0][k].double() + b * dirs[1][k].double()
            for k in params
        }
        recompute = bn_x if bn_policy == "recompute" else None
        loss, acc = reference_metrics(model, p, buffers, x, y, bn_recompute_data=recompute)
        assert res.values["train_loss"][i] == pytest.approx(loss, rel=1e-9, abs=1e-12)
        assert res.values["train_error"][i] == pytest.approx(1 - acc, abs=1e-12)
        assert per_example[i].mean() == pytest.approx(loss, rel=1e-9, abs=1e-12)


class _Stop(Exception):
    pass


def test_an_interrupted_compiled_run_resumes_compiled_and_bit_for_bit(digits_xy):
    """The journal records ``compiled``; a run resumed with ``strategy="auto"`` adopts it
    (no trial), and its values are those of an uninterrupted compiled run."""
    x, y = digits_xy
    torch.manual_seed(0)
    model = lenet()
    params = get_params(model)
    basis = PointBasis(params, tuple(random_directions(params, 0, 2, "filter", "zero")))
    data = {"train": (x[:100], y[:100])}
    whole = evaluate_points(EvalJob(model, basis, data, strategy="compiled"), COEFFS, chunk_size=2)

    def stop_after_first(i, total):
        if i == 0:
            raise _Stop

    journal = MemoryJournal(None)
    with pytest.raises(_Stop):
        evaluate_points(
            EvalJob(model, basis, data, strategy="compiled"),
            COEFFS,
            chunk_size=2,
            journal=journal,
            on_chunk=stop_after_first,
        )
    assert journal.recorded["strategy"] == "compiled" and set(journal.chunks) == {0}
    resumed = evaluate_points(
        EvalJob(model, basis, data, strategy="auto"), COEFFS, chunk_size=2, journal=journal
    )
    assert resumed.strategy == "compiled" and "loop_seconds" not in resumed.trial
    assert resumed.points_evaluated == 3  # chunks 1 and 2 only
    for name, v in whole.values.items():
        got = np.concatenate([journal.chunks[i][name] for i in range(3)])
        assert got.tobytes() == v.tobytes(), name


def test_a_process_compiles_more_models_than_dynamos_cache_holds(digits_xy, caplog):
    """Each evaluator compiles into a code object of its own: the tenth model in one process
    is still compiled, not silently run as eager code past dynamo's recompile limit."""
    x, y = digits_xy
    data = {"train": (x[:32], y[:32])}
    limit = torch._dynamo.config.recompile_limit
    caplog.set_level(logging.WARNING)
    for seed in range(limit + 2):
        torch.manual_seed(seed)
        model = mlp(hidden=(8,))
        params = get_params(model)
        job = EvalJob(model, PointBasis(params, ()), data, strategy="compiled")
        res = evaluate_points(job, np.zeros((1, 0)))
        assert res.trial["compiled_shapes"] == 1
    assert "recompile_limit" not in caplog.text


def test_a_failed_compilation_says_how_to_go_on(digits_xy, monkeypatch):
    """Without a working compiler (simulated), the error names the cause and the way out."""
    x, y = digits_xy

    def no_compiler(fn, **kwargs):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", no_compiler)
    model = mlp()
    job = EvalJob(model, PointBasis(get_params(model), ()), {"train": (x[:32], y[:32])})
    job = EvalJob(**{**job.__dict__, "strategy": "compiled"})
    with pytest.raises(BasinscopeError) as err:
        evaluate_points(job, np.zeros((2, 0)))
    msg = str(err.value)
    assert "strategy 'compiled' could not compile" in msg
    assert "InvalidCxxCompiler: No working C++ compiler found" in msg
    assert "--strategy loop" in msg and "C++ compiler" in msg


def test_the_command_line_takes_the_strategy_and_says_what_compiling_cost(cli, tmp_path):
    res = cli(
        "surface",
        "--model",
        "lenet",
        "--xrange",
        "-1:1:2",
        "--yrange",
        "-1:1:2",
        "--splits",
        "train",
        "--metrics",
        "loss",
        "--strategy",
        "compiled",
        "--no-plot",
        "--no-progress",
        "--out",
        tmp_path / "run",
    )
    assert res.code == 0, res.err
    assert re.search(r"surface: 4 points, strategy compiled \(compiled in \d+\.\d s\)", res.err)
    help_ = cli("surface", "--help")
    assert "compiled" in help_.out and "torch.compile" in help_.out
