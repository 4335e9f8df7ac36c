"""TrainConfig: validation, JSON round trip."""

from __future__ import annotations

import json

import pytest

from basinscope.errors import BasinscopeError
from basinscope.training import TrainConfig


def test_defaults() -> None:
    c = TrainConfig()
    assert (c.steps, c.batch_size, c.optimizer, c.lr, c.schedule) == (
        500,
        64,
        "sgd",
        0.05,
        "constant",
    )
    assert c.betas == (0.9, 0.999) and c.checkpoint_steps == () and c.bn_mode == "train"


def test_json_round_trip() -> None:
    c = TrainConfig(
        steps=100,
        optimizer="adam",
        schedule="cyclic",
        cycle_steps=20,
        milestones=(10, 20),
        checkpoint_steps=(0, 50, 100),
        frozen=("0.*",),
        grad_clip=1.0,
    )
    d = c.to_dict()
    assert d["checkpoint_steps"] == [0, 50, 100] and d["betas"] == [0.9, 0.999]
    back = TrainConfig.from_dict(json.loads(json.dumps(d)))
    assert back == c
    assert isinstance(back.checkpoint_steps, tuple) and isinstance(back.frozen, tuple)


def test_lists_become_tuples_and_config_is_hashable() -> None:
    c = TrainConfig(steps=10, checkpoint_steps=[0, 10], frozen=["fc*"])  # type: ignore[arg-type]
    assert c.checkpoint_steps == (0, 10) and c.frozen == ("fc*",)
    hash(c)


def test_from_dict_unknown_key() -> None:
    with pytest.raises(BasinscopeError, match="unknown TrainConfig keys \\['stepz'\\]"):
        TrainConfig.from_dict({"stepz": 3})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"optimizer": "rmsprop"}, "valid optimizers are 'sgd', 'adam'"),
        ({"steps": 10, "checkpoint_steps": (0, 11)}, r"\[0, 10\], got \[11\]"),
        ({"checkpoint_steps": (-1,)}, "checkpoint_steps"),
        ({"frozen": ("a",), "trainable": ("b",)}, "at most one of"),
        ({"frozen": "conv*"}, "write \\('conv\\*',\\)"),
        ({"schedule": "poly"}, "valid schedules are"),
        ({"schedule": "cyclic"}, "cycle_steps"),
        ({"bn_mode": "frozen"}, "valid modes are 'train', 'eval'"),
        ({"nesterov": True, "optimizer": "adam"}, "nesterov"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"eval_every": -1}, "eval_every"),
        ({"betas": (0.9,)}, "betas"),
    ],
)
def test_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(BasinscopeError, match=match):
        TrainConfig(**kwargs)
