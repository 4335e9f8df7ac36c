"""The engine against a brute-force float64 per-point loop for every built-in model."""

import numpy as np
import pytest
import torch

from basinscope.engine import EvalJob, PointBasis, evaluate_points
from basinscope.geometry import get_buffers, get_params, random_directions
from basinscope.models import build_model
from helpers import reference_metrics

ZOO = [
    ("mlp", {}),
    ("mlp", {"batchnorm": True}),
    ("lenet", {}),
    ("lenet", {"batchnorm": True}),
    ("resnet", {"depth": 8, "width": 4, "batchnorm": False}),
    ("resnet", {"depth": 8, "width": 4, "batchnorm": True}),
    ("resnet", {"depth": 8, "width": 4, "batchnorm": True, "skip": False}),
]


def _with_bn_stats(model, x):
    model.train()
    with torch.no_grad():
        model(x[:64] * 0.8)
        model(x[64:128] + 0.1)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    ZOO,
    ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in ZOO],
)
@pytest.mark.parametrize("bn_policy", ["stored", "recompute"])
def test_builtin_models_match_float64_reference(name, kwargs, bn_policy, digits_xy):
    x, y = digits_xy
    x, y = x[:120], y[:120]
    model = _with_bn_stats(build_model(name, kwargs, init_seed=0), x)
    params, buffers = get_params(model), get_buffers(model)
    dirs = random_directions(params, 0)
    coeffs = np.array([[0.0, 0.0], [0.4, -0.7], [-0.9, 0.3]])
    bn_x = [x[:60], x[60:]]
    job = EvalJob(
        model,
        PointBasis(params, tuple(dirs), buffers),
        {"train": (x, y)},
        bn_policy=bn_policy,
        bn_data=[(b, y[:60]) for b in bn_x],
        bn_batches=2,
        dtype=torch.float64,
        batch_size=50,
    )
    res = evaluate_points(job, coeffs, chunk_size=2)
    for i, (a, b) in enumerate(coeffs):
        p = {
            k: params[k].double() + a * dirs[0][k].double() + b * dirs[1][k].double()
            for k in params
        }
        loss, acc = reference_metrics(
            model, p, buffers, x, y, bn_recompute_data=bn_x if bn_policy == "recompute" else None
        )
        assert res.values["train_loss"][i] == pytest.approx(loss, rel=1e-9), (res.strategy, i)
        assert res.values["train_accuracy"][i] == pytest.approx(acc, abs=1e-12)
