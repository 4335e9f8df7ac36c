"""The record of a training run (TrainRun) and the settings of `basinscope train` (TrainSpec)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from basinscope.errors import BasinscopeError
from basinscope.training import TrainConfig, TrainRun, TrainSpec, history_dataset, train


def test_a_train_run_is_saved_and_loaded_as_the_same_result(tmp_path, digits, models):
    from basinscope.store import load, save

    x, y = digits
    config = TrainConfig(steps=4, batch_size=16, checkpoint_steps=(0, 2, 4), eval_every=2)
    res = train(models.mlp(0), (x[:64], y[:64]), config, eval_data=(x[64:96], y[64:96]))
    run = TrainRun.of(res, tmp_path / "r", final={"train_loss": 1.5})
    assert run.kind == "train" and run.checkpoint_steps == (0, 2, 4)
    assert run.weights == tmp_path / "r" / "model.safetensors"
    assert run.trajectory == tmp_path / "r" / "trajectory.safetensors"
    assert "sgd" in run.definition and "4 steps" in run.definition
    h = run.history
    assert list(h["step"].values) == [1.0, 2.0, 3.0, 4.0]
    assert h["loss"].values.tolist() == res.history["loss"]
    assert list(h["eval_step"].values) == [0.0, 2.0, 4.0]
    assert h["eval_loss"].values.tolist() == res.history["eval_loss"]
    save(run, tmp_path / "r")
    back = load(tmp_path / "r")
    assert isinstance(back, TrainRun) and back.config == config
    assert json.dumps(back.to_dict()) == json.dumps(run.to_dict())


def test_history_without_evaluation():
    h = history_dataset({"step": [1.0, 2.0], "loss": [2.0, 1.0], "lr": [0.1, 0.1]})
    assert set(h.data_vars) == {"loss", "lr"} and list(h.dims) == ["step"]
    np.testing.assert_array_equal(h["loss"].values, [2.0, 1.0])


def test_train_spec_checkpoints_and_checks():
    spec = TrainSpec(steps=10, checkpoint_every=4, checkpoint_steps=(3,))
    assert spec.config().checkpoint_steps == (0, 3, 4, 8, 10)
    assert TrainSpec(steps=5).config().checkpoint_steps == (0, 5)
    with pytest.raises(BasinscopeError, match=r"checkpoint_every 1 over 1000000 steps gives"):
        TrainSpec(steps=1_000_000, checkpoint_every=1)
    with pytest.raises(BasinscopeError, match=r"init_seed must be an integer >= 0, got -1"):
        TrainSpec(init_seed=-1)
    with pytest.raises(BasinscopeError, match=r"unknown optimizer 'bogus'"):
        TrainSpec(optimizer="bogus")  # TrainConfig's checks, on construction
    with pytest.raises(BasinscopeError, match=r"checkpoint_steps must lie in \[0, steps\]"):
        TrainSpec(steps=5, checkpoint_steps=(9,))
