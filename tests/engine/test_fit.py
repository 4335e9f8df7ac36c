"""check_model_data: the first-batch check of model against data, in every data form."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from basinscope.data import TensorData
from basinscope.engine import (
    EvalJob,
    PointBasis,
    Task,
    as_batches,
    check_model_data,
    evaluate_points,
)
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_params
from basinscope.models import build_model


def _data(n=12, classes=10, shape=(1, 8, 8), top=None):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    if top is not None:
        y[-1] = top  # the last example: not in the first batch
    return TensorData(torch.rand(n, *shape, generator=g), y, name="toy")


@pytest.fixture
def mlp():
    return build_model("mlp", {"hidden": [8]}, init_seed=0)


@pytest.mark.parametrize(
    "form",
    [
        lambda d: d,
        lambda d: (d.x, d.y),
        lambda d: as_batches(d, batch_size=5),
        lambda d: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(d.x, d.y), 20),
    ],
    ids=["TensorData", "pair", "batches", "DataLoader"],
)
def test_a_fitting_model_returns_its_classes(mlp, form):
    assert check_model_data(mlp, form(_data())) == 10


def test_label_beyond_the_classes_anywhere_in_the_data(mlp):
    """Every label at hand is checked, not only the first batch's."""
    with pytest.raises(
        BasinscopeError,
        match=re.escape(
            "toy data has label 12, but the model Sequential (610 parameters) outputs 10 classes "
            "(labels 0..9). Build the model with num_classes=13 (e.g. --model-kwargs "
            """'{"num_classes": 13}') or remap the labels to 0..9."""
        ),
    ):
        check_model_data(mlp, as_batches(_data(top=12), batch_size=4), what="toy data")


def test_label_beyond_the_classes_in_a_loader_first_batch(mlp):
    d = _data(top=None)
    y = d.y.clone()
    y[0] = 11
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(d.x, y), 4)
    with pytest.raises(BasinscopeError, match=r"has label 11, but .* outputs 10 classes"):
        check_model_data(mlp, loader)


def test_inputs_of_the_wrong_shape(mlp):
    with pytest.raises(BasinscopeError) as info:
        check_model_data(mlp, _data(shape=(3, 5, 5)), what="split 'train'")
    msg = str(info.value)
    assert msg.startswith("the model Sequential (610 parameters) cannot take the inputs of split")
    assert "each example has shape (3, 5, 5) (torch.float32)" in msg
    assert "fails with RuntimeError: mat1 and mat2 shapes cannot be multiplied" in msg
    assert "build the model for these inputs (--model/--model-kwargs" in msg


class _Vector(nn.Module):
    def __init__(self, out="vector"):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.out = out

    def forward(self, x):
        z = self.fc(x.flatten(1))
        if self.out == "vector":
            return z.sum(1)
        return {"logits": z} if self.out == "dict" else {"scores": z}


def test_outputs_that_are_not_logits():
    with pytest.raises(
        BasinscopeError,
        match=r"must return class logits of shape \(batch, classes\) .* it returned a tensor of "
        r"shape \(4,\)\. Make forward\(\) return one logit per class",
    ):
        check_model_data(_Vector("vector"), _data())


def test_logits_are_found_in_an_output_object_or_named_by_the_task():
    assert check_model_data(_Vector("dict"), _data()) == 10  # {"logits": z}, as Hugging Face
    with pytest.raises(
        BasinscopeError,
        match=r"cannot find the prediction in the model's output \(a dict with keys \['scores'\]\): "
        r"return a tensor, an object with .logits, or name it with --output-key",
    ):
        check_model_data(_Vector("scores"), _data())
    assert check_model_data(_Vector("scores"), _data(), task=Task(output="scores")) == 10


def test_without_classification_only_the_forward_pass_is_checked():
    """A custom loss may take any targets and outputs: only the inputs must fit."""
    assert check_model_data(_Vector("dict"), _data(top=99), classification=False) is None
    with pytest.raises(BasinscopeError, match="cannot take the inputs"):
        check_model_data(_Vector(), _data(shape=(2, 8, 8)), classification=False)


def test_the_model_is_left_as_it_was():
    net = build_model("mlp", {"hidden": [8], "batchnorm": True}, init_seed=0).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    check_model_data(net, _data())
    assert all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    net.eval()
    check_model_data(net, _data())
    assert not any(m.training for m in net.modules())


def test_the_engine_checks_before_evaluating(mlp):
    """EvalJob's worker refuses the labels before any point is evaluated."""
    params = get_params(mlp)
    basis = PointBasis(origin=params, basis=({k: torch.zeros_like(v) for k, v in params.items()},))
    job = EvalJob(mlp, basis, {"train": _data(top=10)}, strategy="loop")
    with pytest.raises(BasinscopeError, match=r"split 'train' has label 10, but .* 10 classes"):
        evaluate_points(job, np.zeros((3, 1)))
    # a user metric alone does not need class logits
    job = EvalJob(mlp, basis, {"train": _data(top=10)}, metrics=[lambda o, y: o.mean()])
    assert evaluate_points(job, np.zeros((2, 1))).values["train_<lambda>"].shape == (2,)


def test_nonfinite_inputs_are_refused_when_the_data_is_made():
    x = torch.rand(5, 1, 8, 8)
    x[3, 0, 2, 2] = float("nan")
    with pytest.raises(
        BasinscopeError,
        match=r"dataset 'bad': x holds non-finite values \(NaN or inf\) in 1 of 5 samples, "
        r"the first at index 3\. .*np\.nan_to_num",
    ):
        TensorData(x, torch.arange(5), name="bad")
