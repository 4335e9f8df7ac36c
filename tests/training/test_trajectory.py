"""Trajectory files: safetensors round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import safe_open, save_file

from basinscope.errors import BasinscopeError
from basinscope.training import TrainConfig, load_trajectory, train, trajectory_to_safetensors


def test_round_trip_bit_identical(tmp_path, digits_images, models) -> None:
    x, y = digits_images
    config = TrainConfig(steps=20, checkpoint_steps=(0, 10, 20))
    r = train(models.cnn(), (x[:200], y[:200]), config)
    path = tmp_path / "traj.safetensors"
    trajectory_to_safetensors(r, path)
    loaded = load_trajectory(path)
    assert list(loaded) == [0, 10, 20]
    for step, params in r.checkpoints.items():
        assert list(loaded[step]) == list(params)  # named_parameters() order kept
        assert all(torch.equal(loaded[step][k], v) for k, v in params.items())
        assert all(loaded[step][k].dtype == v.dtype for k, v in params.items())
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert "step=000010/conv1.weight" in set(f.keys())
    assert json.loads(meta["steps"]) == [0, 10, 20]
    assert TrainConfig.from_dict(json.loads(meta["config"])) == config


def test_plain_dict_and_wide_steps(tmp_path) -> None:
    traj = {1_234_567: {"w": torch.randn(3, 2)}, 5: {"w": torch.randn(3, 2)}}
    path = tmp_path / "t.safetensors"
    trajectory_to_safetensors(traj, path, metadata={"note": "hi"})
    loaded = load_trajectory(path)
    assert list(loaded) == [5, 1_234_567]
    assert torch.equal(loaded[1_234_567]["w"], traj[1_234_567]["w"])


def test_errors(tmp_path) -> None:
    with pytest.raises(BasinscopeError, match="no checkpoints"):
        trajectory_to_safetensors({}, tmp_path / "x.safetensors")
    with pytest.raises(BasinscopeError, match="different parameter names"):
        trajectory_to_safetensors(
            {0: {"a": torch.zeros(1)}, 1: {"b": torch.zeros(1)}}, tmp_path / "x.safetensors"
        )
    other = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(1)}, str(other))
    with pytest.raises(BasinscopeError, match="not a basinscope trajectory"):
        load_trajectory(other)
    with pytest.raises(BasinscopeError, match="cannot read trajectory"):
        load_trajectory(tmp_path / "missing.safetensors")
