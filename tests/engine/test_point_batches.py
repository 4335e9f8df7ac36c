"""The per-point strategies' batches: a split in memory is joined and cut again into equal
batches of as many examples as the widest activation allows (``POINT_BATCH_VALUES``), never
fewer than the job's batch size; the values are the brute-force reference's."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from basinscope.engine import EvalJob, PointBasis, evaluate_points
from basinscope.engine import evaluate as engine
from basinscope.geometry import get_buffers, get_params, random_directions
from basinscope.models import lenet
from helpers import reference_metrics


def _job(model, data, **kwargs):
    params = get_params(model)
    dirs = random_directions(params, 0, 2, "filter", "zero")
    return EvalJob(model, PointBasis(params, tuple(dirs)), {"train": data}, **kwargs), dirs


@pytest.mark.parametrize("first_layer", ["plain", "basis"])
def test_the_loop_joins_small_batches_and_matches_the_float64_reference(digits_xy, first_layer):
    """130 examples in batches of 32 (4 x 32 + 2): LeNet's widest activation (384 values)
    lets one pass hold them all, and each point's loss and accuracy are the reference's."""
    x, y = digits_xy
    x, y = x[:130], y[:130]
    torch.manual_seed(0)
    model = lenet().double()
    job, dirs = _job(
        model,
        (x, y),
        strategy="loop",
        dtype=torch.float64,
        batch_size=32,
        first_layer=first_layer,
    )
    ev = job.build()
    assert [yb.shape[0] for _, yb in ev.splits["train"]] == [32, 32, 32, 32, 2]
    joined = ev._per_point_batches("train")
    assert [yb.shape[0] for _, yb in joined] == [130]
    assert torch.equal(joined[0][0], x.double()) and torch.equal(joined[0][1], y)
    coeffs = np.array([[0.0, 0.0], [0.5, -0.25], [-1.0, 1.0]])
    res = evaluate_points(job, coeffs, chunk_size=2)
    params, buffers = get_params(model), get_buffers(model)
    for i, (a, b) in enumerate(coeffs):
        p = {k: params[k] + a * dirs[0][k].double() + b * dirs[1][k].double() for k in params}
        loss, acc = reference_metrics(model, p, buffers, x, y)
        assert res.values["train_loss"][i] == pytest.approx(loss, rel=1e-9, abs=1e-12)
        assert res.values["train_accuracy"][i] == pytest.approx(acc, abs=1e-12)


def test_the_batches_are_equal_and_never_smaller_than_the_jobs(digits_xy, monkeypatch):
    x, y = digits_xy
    x, y = x[:130], y[:130]
    job, _ = _job(lenet(), (x, y), strategy="loop", batch_size=16)
    widest = job.build().widest
    assert widest == 6 * 8 * 8  # the first convolution's output
    # room for 50 examples: 130 in 3 equal batches (44 + 43 + 43), the order unchanged
    monkeypatch.setattr(engine, "POINT_BATCH_VALUES", 50 * widest)
    ev = job.build()
    joined = ev._per_point_batches("train")
    assert [yb.shape[0] for _, yb in joined] == [44, 43, 43]
    assert torch.equal(torch.cat([xb for xb, _ in joined]), x)
    # room for fewer examples than a batch holds: the job's batches stay
    monkeypatch.setattr(engine, "POINT_BATCH_VALUES", 4 * widest)
    ev = job.build()
    assert ev._per_point_batches("train") is ev.splits["train"]


def test_a_streamed_or_large_split_keeps_its_batches(digits_xy, monkeypatch):
    x, y = digits_xy
    x, y = x[:130], y[:130]
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    ev = _job(lenet(), loader, strategy="loop")[0].build()
    assert ev._per_point_batches("train") is ev.splits["train"]  # streamed: read as it comes
    monkeypatch.setattr(engine, "POINT_SPLIT_BYTES", x.numel() * x.element_size() - 1)
    ev = _job(lenet(), (x, y), strategy="loop", batch_size=32)[0].build()
    assert ev._per_point_batches("train") is ev.splits["train"]  # no second copy of the data


def test_joined_and_job_batches_give_the_same_values(digits_xy, monkeypatch):
    """The loop on joined batches against the job's batches: the same sums in another
    order (float32 rounding apart)."""
    x, y = digits_xy
    x, y = x[:300], y[:300]
    job, _ = _job(lenet(), (x, y), strategy="loop", batch_size=64)
    coeffs = np.array([[0.0, 0.0], [0.3, 0.1], [-0.4, 0.8]])
    joined = evaluate_points(job, coeffs)
    monkeypatch.setattr(engine, "POINT_BATCH_VALUES", 1)
    as_given = evaluate_points(job, coeffs)
    for name, v in joined.values.items():
        np.testing.assert_allclose(v, as_given.values[name], rtol=1e-6, atol=1e-7)


def test_the_batch_size_help_states_the_engines_budget():
    import math

    from basinscope.spec import BATCH_SIZE_HELP

    exponent = int(math.log2(engine.POINT_BATCH_VALUES))
    assert 2**exponent == engine.POINT_BATCH_VALUES
    assert f"2^{exponent} values" in BATCH_SIZE_HELP
    assert f"{engine.POINT_BATCH_VALUES * 4 // 2**20} MiB in float32" in BATCH_SIZE_HELP


class _NeedsTwoExamples(torch.nn.Module):
    """A model that cannot run on one example, so its activations cannot be sized."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        if x.shape[0] < 2:
            raise ValueError("needs at least two examples")
        return self.fc(x.flatten(1))


def test_a_model_that_cannot_be_sized_keeps_the_jobs_batches(digits_xy):
    x, y = digits_xy
    job, _ = _job(_NeedsTwoExamples(), (x[:130], y[:130]), strategy="loop", batch_size=32)
    ev = job.build()
    assert ev.widest == 0
    assert ev._per_point_batches("train") is ev.splits["train"]
    res = evaluate_points(job, np.zeros((2, 2)))
    assert np.isfinite(res.values["train_loss"]).all()
