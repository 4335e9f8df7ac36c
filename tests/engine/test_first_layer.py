"""The engine's fast paths: the first layer on the basis, vmap's blocks of examples,
class-major metrics and the strategy trial, each against a float64 brute force or the
plain path."""

import numpy as np
import pytest
import torch
from torch import nn

from basinscope.engine import EvalJob, PointBasis, evaluate_points
from basinscope.engine import evaluate as engine
from basinscope.engine.first_layer import FirstLayer, split_first_layer
from basinscope.engine.metrics import BUILTIN_METRICS, batch_values, class_major_sums
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_buffers, get_params, random_directions
from basinscope.models import lenet, mlp
from helpers import MemoryJournal, reference_metrics


class FlattenCall(nn.Module):
    """``torch.flatten`` as a function call, then a Linear layer (not a Sequential)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 12)
        self.out = nn.Linear(12, 10)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(torch.flatten(x, 1))))


class InputTwice(nn.Module):
    """The input feeds two layers: no single first layer to cut after."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 10)
        self.b = nn.Linear(64, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.a(x) + self.b(x)


MODELS = {
    "mlp": lambda: mlp(hidden=(16,)),
    "flatten_call": FlattenCall,
    "lenet_bn": lambda: lenet(batchnorm=True),
}


def _bn_stats(model, x):
    model.train()
    with torch.no_grad():
        model(x[:64])
    return model.eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_split_first_layer_recomposes_the_model(name, digits_xy):
    x, _ = digits_xy
    torch.manual_seed(0)
    model = _bn_stats(MODELS[name]().double(), x.double())
    first, why = split_first_layer(model)
    assert first is not None, why
    u = x[:20].double()
    for step in first.pre:
        u = step(u)
    with torch.no_grad():
        torch.testing.assert_close(first.tail(first.layer(u)), model(x[:20].double()))
    assert not any(k.startswith(f"{first.name}.") for k, _ in first.tail.named_parameters())


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_basis_outputs_combine_to_the_first_layer_at_each_point(dim, digits_xy):
    x, _ = digits_xy
    torch.manual_seed(0)
    model = lenet().double()
    params = get_params(model)
    dirs = random_directions(params, 1, dim, "filter", "include")
    first, _ = split_first_layer(model)
    basis = PointBasis(params, tuple(dirs))
    c = torch.randn(5, dim, dtype=torch.float64)
    outputs = first.basis_outputs(basis, x[:30].double(), torch.float64)
    stacked, _ = basis.stacked(c, torch.float64, "cpu")
    for k in range(5):
        w, b = stacked["conv1.weight"][k], stacked["conv1.bias"][k]
        brute = nn.functional.conv2d(x[:30].double(), w, b, padding=1)
        torch.testing.assert_close(FirstLayer.combine(outputs, c)[k], brute)
        torch.testing.assert_close(FirstLayer.combine_one(outputs, c[k].tolist()), brute)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("bn_policy", ["stored", "recompute"])
def test_basis_path_matches_a_float64_brute_force(name, strategy, bn_policy, digits_xy):
    x, y = digits_xy
    x, y = x[:150], y[:150]
    torch.manual_seed(1)
    model = _bn_stats(MODELS[name](), x)
    params, buffers = get_params(model), get_buffers(model)
    dirs = random_directions(params, 3, 2, "filter", "include")  # biases move too
    coeffs = np.array([[0.0, 0.0], [0.5, -0.3], [-1.0, 0.8], [0.2, 1.0], [0.7, 0.7]])
    bn_x = [x[i : i + 50] for i in range(0, 150, 50)]
    common = dict(
        strategy=strategy,
        bn_policy=bn_policy,
        bn_data=[(b, y[:50]) for b in bn_x],
        bn_batches=3,
        batch_size=64,
        dtype=torch.float64,
    )
    basis = PointBasis(params, tuple(dirs), buffers)
    job = EvalJob(model, basis, {"train": (x, y)}, first_layer="basis", **common)
    res = evaluate_points(job, coeffs, chunk_size=3)
    assert res.trial["first_layer"] == "basis"
    plain = evaluate_points(
        EvalJob(model, basis, {"train": (x, y)}, first_layer="plain", **common),
        coeffs,
        chunk_size=3,
    )
    assert plain.trial["first_layer"] == "plain"
    for i, (a, b) in enumerate(coeffs):
        p = {
            k: params[k].double() + a * dirs[0][k].double() + b * dirs[1][k].double()
            for k in params
        }
        loss, acc = reference_metrics(
            model, p, buffers, x, y, bn_recompute_data=bn_x if bn_policy == "recompute" else None
        )
        assert res.values["train_loss"][i] == pytest.approx(loss, rel=1e-9, abs=1e-12)
        assert res.values["train_accuracy"][i] == pytest.approx(acc, abs=1e-12)
        assert res.values["train_loss"][i] == pytest.approx(plain.values["train_loss"][i], rel=1e-9)


def test_auto_records_the_path_and_why_not(digits_xy):
    x, y = digits_xy
    data = {"train": (x[:64], y[:64])}
    for model, path in [(mlp(), "basis"), (InputTwice(), "plain")]:
        params = get_params(model)
        basis = PointBasis(params, tuple(random_directions(params, 0, 1)), get_buffers(model))
        res = evaluate_points(EvalJob(model, basis, data, strategy="loop"), [[0.0], [1.0]])
        assert res.trial["first_layer"] == path
    assert (
        res.trial["first_layer_reason"] == "the input is used by 2 operations, not one first layer"
    )


def test_basis_refused_where_it_does_not_apply(digits_xy):
    x, y = digits_xy
    model = InputTwice()
    params = get_params(model)
    basis = PointBasis(params, tuple(random_directions(params, 0, 1)))
    job = EvalJob(model, basis, {"train": (x[:64], y[:64])}, first_layer="basis")
    with pytest.raises(BasinscopeError, match="first_layer='basis' needs a model whose input"):
        job.build()
    with pytest.raises(BasinscopeError, match="unknown first_layer 'fast': expected one of auto"):
        EvalJob(model, basis, {"train": (x[:64], y[:64])}, first_layer="fast")


def test_autocast_precision_keeps_the_plain_path(digits_xy):
    x, y = digits_xy
    model = mlp()
    params = get_params(model)
    basis = PointBasis(params, tuple(random_directions(params, 0, 1)))
    job = EvalJob(model, basis, {"train": (x[:64], y[:64])}, dtype=torch.bfloat16)
    ev = job.build()
    assert ev.first is None and "autocast" in ev.trial["first_layer_reason"]


@pytest.mark.parametrize("first_layer", ["basis", "plain"])
def test_vmap_blocks_of_examples_match_whole_batches(first_layer, digits_xy, monkeypatch):
    x, y = digits_xy
    torch.manual_seed(0)
    model = lenet()
    params = get_params(model)
    basis = PointBasis(params, tuple(random_directions(params, 0, 2)), get_buffers(model))
    coeffs = np.random.default_rng(0).uniform(-1, 1, (6, 2))
    kw = dict(strategy="vmap", batch_size=300, dtype=torch.float64, first_layer=first_layer)
    whole = evaluate_points(EvalJob(model, basis, {"train": (x[:300], y[:300])}, **kw), coeffs)
    monkeypatch.setattr(engine, "VMAP_BLOCK_VALUES", 6 * 40 * 384)  # 40 examples a block
    job = EvalJob(model, basis, {"train": (x[:300], y[:300])}, **kw)
    ev = job.build()
    assert ev.widest == 6 * 8 * 8  # conv1's output per example
    inp = ev._batch_inputs(("train", 0), ev.splits["train"][0][0], keep=False)
    assert len(ev._blocks(inp, y[:300], 6)) == 8  # 7 blocks of 40, one of 20
    blocked = evaluate_points(job, coeffs)
    for name, v in whole.values.items():
        np.testing.assert_allclose(blocked.values[name], v, rtol=1e-12, atol=1e-14)


def test_first_layer_cache_is_bitwise_the_computed_outputs(digits_xy, monkeypatch):
    x, y = digits_xy
    model = mlp(hidden=(32,))
    params = get_params(model)
    basis = PointBasis(params, tuple(random_directions(params, 0, 2)))
    coeffs = np.random.default_rng(1).uniform(-1, 1, (20, 2))
    data = {"train": (x[:500], y[:500])}
    kw = dict(strategy="loop", batch_size=128)
    cached = evaluate_points(EvalJob(model, basis, data, **kw), coeffs, chunk_size=5)
    monkeypatch.setattr(engine, "FIRST_LAYER_CACHE_BYTES", 0)
    job = EvalJob(model, basis, data, **kw)
    again = evaluate_points(job, coeffs, chunk_size=5)
    for name, v in cached.values.items():
        np.testing.assert_array_equal(again.values[name], v)


@pytest.mark.parametrize("name", ["loss", "accuracy", "error"])
def test_class_major_sums_equal_the_row_major_metric(name):
    gen = torch.Generator().manual_seed(0)
    outs = torch.randn(4, 37, 10, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (37,), generator=gen)
    m = BUILTIN_METRICS[name]
    fast = class_major_sums(m, outs, y)
    brute = torch.stack([batch_values(m, outs[k], y) for k in range(4)])
    torch.testing.assert_close(fast, brute, rtol=1e-12, atol=1e-12)
    assert class_major_sums(m, outs, y.float()) is None  # not class labels: the generic path


def test_trial_records_every_timing_and_decides_by_the_median(digits_xy):
    x, y = digits_xy
    model = mlp()
    params = get_params(model)
    basis = PointBasis(params, tuple(random_directions(params, 0, 2)))
    ev = EvalJob(model, basis, {"train": (x[:200], y[:200])}).build()
    chosen = ev.choose_strategy(np.zeros((16, 2)))
    rounds = ev.trial["trial_rounds"]
    assert engine.TRIAL_MIN_ROUNDS <= rounds <= engine.TRIAL_ROUNDS
    for s in ("vmap", "loop"):
        runs = ev.trial[f"{s}_runs"]
        assert len(runs) == rounds
        assert ev.trial[f"{s}_seconds"] == pytest.approx(float(np.median(runs)), rel=1e-4)
    assert chosen == min(("vmap", "loop"), key=lambda s: ev.trial[f"{s}_seconds"])
    assert ev.trial["trial_points"] == 16 and ev.trial["trial_examples"] == 200
    assert ev.trial["first_layer"] == "basis"
    assert not ev._first_cache and ev._first_cache_bytes == 0  # the trial's are dropped


class _Clock:
    """A fake ``time`` for the trial: each strategy's run costs what the test says."""

    def __init__(self, costs):
        self.now, self.costs = 0.0, costs
        self.calls = {name: 0 for name in costs}

    def perf_counter(self):
        return self.now

    def run(self, c, splits, name, trial=False):
        self.calls[name] += 1
        cost = self.costs[name]
        self.now += cost(self.calls[name]) if callable(cost) else cost


@pytest.mark.parametrize(
    ("costs", "rounds", "chosen"),
    [
        ({"vmap": 1.0, "loop": 2.0}, 2, "vmap"),  # clearly apart: the minimum of rounds
        ({"vmap": 1.0, "loop": 1.2}, 5, "vmap"),  # close: every round
        # a spike in the faster one's second run: the runs overlap, so the trial goes on,
        # and the medians still choose it
        ({"vmap": lambda i: 5.0 if i == 3 else 1.0, "loop": 2.0}, 5, "vmap"),
    ],
)
def test_the_trial_stops_early_only_when_every_run_is_clearly_apart(
    digits_xy, monkeypatch, costs, rounds, chosen
):
    x, y = digits_xy
    model = mlp()
    ev = EvalJob(model, PointBasis(get_params(model), ()), {"train": (x[:50], y[:50])}).build()
    clock = _Clock(costs)
    monkeypatch.setattr(engine, "time", clock)
    monkeypatch.setattr(ev, "_run", clock.run)
    assert ev.choose_strategy(np.zeros((4, 0))) == chosen
    assert ev.trial["trial_rounds"] == rounds
    assert ev.trial["trial_stop"] == ("apart" if rounds < engine.TRIAL_ROUNDS else "rounds")
    assert len(ev.trial["vmap_runs"]) == len(ev.trial["loop_runs"]) == rounds
    assert clock.calls == {"vmap": rounds + 1, "loop": rounds + 1}  # and one warm-up each


@pytest.mark.parametrize(
    ("total_points", "rounds", "stop"),
    [
        (None, 5, "rounds"),  # the job's size unknown: every round
        (4, 2, "budget"),  # the trial has taken far more than a twentieth of the job
        (10**6, 5, "rounds"),  # a large job: close strategies are worth every round
    ],
)
def test_a_small_jobs_trial_stops_at_its_budget(digits_xy, monkeypatch, total_points, rounds, stop):
    """Two close strategies (1.0 and 1.2 per run, fake clock): the trial stops after the
    minimum of rounds only when it has cost ``TRIAL_BUDGET`` of the job's projected time."""
    x, y = digits_xy
    model = mlp()
    ev = EvalJob(model, PointBasis(get_params(model), ()), {"train": (x[:50], y[:50])}).build()
    clock = _Clock({"vmap": 1.0, "loop": 1.2})
    monkeypatch.setattr(engine, "time", clock)
    monkeypatch.setattr(ev, "_run", clock.run)
    assert ev.choose_strategy(np.zeros((4, 0)), total_points=total_points) == "vmap"
    assert ev.trial["trial_rounds"] == rounds and ev.trial["trial_stop"] == stop


@pytest.mark.parametrize("path", ["plain", "basis"])
def test_a_resumed_run_computes_as_its_journal_recorded(digits_xy, path):
    """A journal from before the first-layer path (no ``first_layer`` in its trial) resumes
    plainly, so its chunks and the new ones round alike; one that took the path keeps it."""
    from basinscope.engine import EvalJob, PointBasis, evaluate_points
    from basinscope.geometry import get_params
    from basinscope.models import mlp

    x, y = digits_xy
    torch.manual_seed(0)
    model = mlp()
    params = get_params(model)
    basis = PointBasis(params, ({k: torch.randn_like(v) for k, v in params.items()},))
    coeffs = np.linspace(-1, 1, 6)[:, None]

    def job(first_layer):
        data = {"train": (x[:200], y[:200])}
        return EvalJob(model, basis, data, strategy="vmap", first_layer=first_layer)

    expected = evaluate_points(job(path), coeffs, chunk_size=2).values
    trial = {} if path == "plain" else {"first_layer": "basis"}
    journal = MemoryJournal({"strategy": "vmap", "trial": trial})
    resumed = evaluate_points(job("auto"), coeffs, chunk_size=2, journal=journal)
    for name, v in expected.items():
        assert resumed.values[name].tobytes() == v.tobytes(), name
    assert journal.recorded["trial"] == trial  # the recorded trial is kept, not re-made


@pytest.mark.parametrize("first_layer", ["plain", "basis"])
@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_the_loop_with_channels_last_weights_matches_the_float64_reference(
    digits_xy, memory_format, first_layer
):
    """LeNet in float64 through the loop, its convolution weights re-strided per point or
    not (and on the basis path the first layer's outputs laid out channels-last or not):
    each point's loss and accuracy are the brute-force reference's."""
    x, y = digits_xy
    x, y = x[:120], y[:120]
    torch.manual_seed(0)
    model = lenet().double()
    params, buffers = get_params(model), get_buffers(model)
    dirs = random_directions(params, 0, 2, "filter", "zero")
    job = EvalJob(
        model,
        PointBasis(params, tuple(dirs)),
        {"train": (x, y)},
        strategy="loop",
        dtype=torch.float64,
        first_layer=first_layer,
        memory_format=memory_format,
    )
    coeffs = np.array([[0.0, 0.0], [0.5, -0.25], [-1.0, 1.0]])
    res = evaluate_points(job, coeffs, chunk_size=2)
    assert res.trial["memory_format"] == memory_format
    assert res.trial["first_layer"] == first_layer
    if first_layer == "basis":  # each point's conv2 input keeps the layout of conv1's outputs
        ev = job.build()
        batch, _ = next(iter(ev.splits["train"]))
        outputs = ev._batch_inputs(("train", 0), batch, keep=False)
        assert outputs.shape[:2] == (3, 120)
        channels_last = outputs[0].is_contiguous(memory_format=torch.channels_last)
        assert channels_last == (memory_format == "channels_last")
    for i, (a, b) in enumerate(coeffs):
        p = {
            k: params[k].double() + a * dirs[0][k].double() + b * dirs[1][k].double()
            for k in params
        }
        loss, acc = reference_metrics(model, p, buffers, x, y)
        assert res.values["train_loss"][i] == pytest.approx(loss, rel=1e-9, abs=1e-12)
        assert res.values["train_accuracy"][i] == pytest.approx(acc, abs=1e-12)


def test_memory_format_auto_is_channels_last_for_convolutions_on_the_cpu(digits_xy):
    x, y = digits_xy
    data = {"train": (x[:64], y[:64])}
    for make, expected in ((lenet, "channels_last"), (mlp, "contiguous")):
        model = make()
        job = EvalJob(model, PointBasis(get_params(model), ()), data, strategy="loop")
        ev = job.build()
        assert ev.trial["memory_format"] == expected and ev.channels_last == (
            expected == "channels_last"
        )
        ev.adopt("loop", {})  # a journal from before the option: computed as stored
        assert not ev.channels_last
    with pytest.raises(BasinscopeError, match="unknown memory_format 'nhwc': expected one of"):
        EvalJob(mlp(), PointBasis(get_params(mlp()), ()), data, memory_format="nhwc")
