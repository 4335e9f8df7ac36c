"""Inputs are validated before work starts, and each failure is one line (issue 11).

Labels beyond the model's classes, inputs of another shape, models that return no class
logits, grids too large for memory, model factories and modules that fail, trajectories of
another model, non-finite data, and the counts and seeds of every command.
"""

from __future__ import annotations

import re
import sys
import textwrap

import numpy as np
import pytest

import basinscope.analyses.surface as surface_module
from basinscope.models import build_model, save_weights
from basinscope.training import TrainConfig, train, trajectory_to_safetensors
from user_errors import assert_one_line

GRID = ["--xrange", "-1:1:3", "--yrange", "-1:1:3"]
QUIET = ["--no-progress", "--no-plot", "--strategy", "loop", "--splits", "train"]


def _npz(path, *, classes=10, shape=(1, 8, 8), top=None, fill=None):
    rng = np.random.default_rng(0)
    x = rng.random((20, *shape)).astype(np.float32)
    if fill is not None:
        x[5] = fill
    y = np.arange(20) % classes
    if top is not None:
        y[7] = top
    np.savez(path, x=x, y=y, x_test=x, y_test=y)  # a test split: no held-out one
    return path


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """A folder on sys.path with model and data modules, good and broken."""
    files = {
        "bs_nets": """
            from torch import nn

            def three_classes():
                return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

            class Scalar(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(64, 10)

                def forward(self, x):
                    return self.fc(x.flatten(1)).sum(1)

            def raises(width=2):
                raise ValueError(f"no model of width {width}")

            def split_data(split):
                raise RuntimeError("the data server is down")

            def any_split(split):
                from basinscope.data import load_digits

                return load_digits("train").subset(range(32))
            """,
        "bs_missing_dep": "import surely_not_installed_pkg_xyz\n",
        "bs_syntax": "def f(:\n    pass\n",
        "bs_raises": "raise RuntimeError('configuration file not found')\n",
    }
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in files:
        sys.modules.pop(name, None)


@pytest.fixture
def surface(cli, tmp_path):
    def run(*extra):
        return cli("surface", "--model", "mlp", *GRID, *QUIET, "--out", tmp_path / "out", *extra)

    return run


# -- model against data ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["surface", "--model", "mlp", *GRID, *QUIET],
        ["train", "--model", "mlp", "--steps", "2", "--no-progress"],
        ["hessian", "--model", "mlp", "--subset", "16", "--no-progress"],
        ["sharpness", "--model", "mlp", "--measure", "average", "--no-progress"],
        ["curve", "--model", "mlp", "--steps", "2", "--splits", "train", "--no-progress"],
    ],
    ids=["surface", "train", "hessian", "sharpness", "curve"],
)
def test_label_beyond_the_models_classes(cli, tmp_path, command):
    data = _npz(tmp_path / "d.npz", top=12)
    extra = []
    if command[0] == "curve":
        a = save_weights(build_model("mlp", init_seed=0), tmp_path / "a.safetensors")
        b = save_weights(build_model("mlp", init_seed=1), tmp_path / "b.safetensors")
        extra = ["--weights", a, "--weights", b]
    assert_one_line(
        cli(*command, *extra, "--data", data, "--out", tmp_path / "out"),
        r"has label 12, but the model Sequential \(4,810 parameters\) outputs 10 classes "
        r"\(labels 0\.\.9\)",
        re.escape(
            """Build the model with num_classes=13 (e.g. --model-kwargs '{"num_classes": 13}')"""
        ),
        r"or remap the labels to 0\.\.9\.",
    )
    assert not (tmp_path / "out" / "result.json").exists()


def test_error_metric_alone_is_checked_too(cli, tmp_path):
    """Error and accuracy do not fail on a label 12; they would measure nonsense."""
    a = save_weights(build_model("mlp", init_seed=0), tmp_path / "a.safetensors")
    b = save_weights(build_model("mlp", init_seed=1), tmp_path / "b.safetensors")
    assert_one_line(
        cli(
            "barrier",
            "--model",
            "mlp",
            "--weights",
            a,
            "--weights",
            b,
            "--metric",
            "error",
            "--data",
            _npz(tmp_path / "d.npz", top=12),
            "--no-progress",
            "--out",
            tmp_path / "r",
        ),
        r"split 'train' has label 12, but the model",
    )


def test_inputs_of_another_shape_before_alignment_traces_the_model(cli, tmp_path):
    a = save_weights(build_model("mlp", init_seed=0), tmp_path / "a.safetensors")
    assert_one_line(
        cli(
            "align",
            "--model",
            "mlp",
            "--weights",
            a,
            "--weights",
            a,
            "--num-points",
            "3",
            "--data",
            _npz(tmp_path / "rgb.npz", shape=(3, 5, 5)),
            "--no-progress",
            "--out",
            tmp_path / "o",
        ),
        r"cannot take the inputs of the data: each example has shape \(3, 5, 5\)",
    )


def test_inputs_of_another_shape(surface, tmp_path):
    assert_one_line(
        surface("--data", _npz(tmp_path / "rgb.npz", shape=(3, 5, 5))),
        r"the model Sequential \(4,810 parameters\) cannot take the inputs of split 'train': "
        r"each example has shape \(3, 5, 5\) \(torch\.float32\), and a batch of 4 fails with "
        r"RuntimeError: mat1 and mat2 shapes cannot be multiplied",
        r"build the model for these inputs \(--model/--model-kwargs, e\.g\. in_channels",
    )


def test_model_with_too_few_classes(surface, user_modules):
    assert_one_line(
        surface("--model", "bs_nets:three_classes"),
        r"split 'train' has label 9, but the model Sequential \(195 parameters\) outputs 3 "
        r"classes \(labels 0\.\.2\)",
        r"num_classes=10",
    )


def test_model_without_class_logits(surface, user_modules):
    assert_one_line(
        surface("--model", "bs_nets:Scalar"),
        r"the model Scalar \(650 parameters\) must return class logits of shape \(batch, "
        r"classes\) .* it returned a tensor of shape \(4,\)",
        r"end with nn\.Linear\(features, num_classes\)",
    )


@pytest.mark.parametrize("fill", [np.nan, np.inf], ids=["nan", "inf"])
def test_nonfinite_inputs(surface, tmp_path, fill):
    assert_one_line(
        surface("--data", _npz(tmp_path / "bad.npz", fill=fill)),
        r"dataset 'bad-train': x holds non-finite values \(NaN or inf\) in 1 of 20 samples, the "
        r"first at index 5",
    )


# -- grids ------------------------------------------------------------------------------


def test_grid_too_large_for_memory(cli, surface, tmp_path):
    err = assert_one_line(
        surface("--xrange", "-1:1:100000", "--yrange", "-1:1:100000"),
        r"a grid of 100,000 x 100,000 = 10,000,000,000 points needs about [0-9.]+ TiB of memory, "
        r"but [0-9.]+ [GMT]iB are available \(a job may use at most 50% of it\)",
        r"use fewer points per axis \(e\.g\. 1000 per axis",
    )
    assert "GiB" in err or "MiB" in err
    assert not (tmp_path / "out").exists()
    assert_one_line(
        cli(
            "hessian",
            "--model",
            "mlp",
            "--map",
            "--xrange",
            "-1:1:100000",
            "--yrange",
            "-1:1:100000",
            "--no-progress",
            "--out",
            tmp_path / "map",
        ),
        r"a grid of 100,000 x 100,000",
    )


def test_grid_memory_rule(monkeypatch):
    import basinscope._memory as memory
    from basinscope.analyses.landscape import check_grid_memory
    from basinscope.errors import BasinscopeError

    monkeypatch.setattr(memory, "available_memory", lambda: 2**30)
    check_grid_memory({"alpha": 1000, "beta": 1000})  # 160 MB of 1 GiB: fine
    with pytest.raises(
        BasinscopeError,
        match=r"a grid of 2,000 x 2,000 = 4,000,000 points needs about 610\.4 MiB of memory, but "
        r"1\.0 GiB are available",
    ):
        check_grid_memory({"alpha": 2000, "beta": 2000})
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    check_grid_memory({"alpha": 10**6, "beta": 10**6})  # unknown: not refused


# -- model and data modules ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, patterns",
    [
        (
            "bs_nets:raises",
            [
                r"model factory 'bs_nets:raises' called with kwargs \{\} raised ValueError: no "
                r"model of width 2\.",
                r"Fix the factory or its --model-kwargs; calling it in Python, raises\(\*\*kwargs\)",
            ],
        ),
        (
            "bs_missing_dep:make",
            [
                r"importing model module 'bs_missing_dep' \(from 'bs_missing_dep:make'\) failed: "
                r"ModuleNotFoundError: No module named 'surely_not_installed_pkg_xyz'",
                r"install the missing package 'surely_not_installed_pkg_xyz' so that `python -c "
                r"'import bs_missing_dep'` works",
            ],
        ),
        (
            "bs_syntax:make",
            [
                r"importing model module 'bs_syntax' .* failed: SyntaxError: invalid syntax in "
                r".*bs_syntax\.py, line 1\.",
                r"Importing the module runs its code; fix the module",
            ],
        ),
        (
            "bs_raises:make",
            [r"failed: RuntimeError: configuration file not found\. Importing the module runs"],
        ),
    ],
    ids=["factory-raises", "ImportError", "SyntaxError", "RuntimeError"],
)
def test_model_factory_and_module_errors(surface, user_modules, spec, patterns):
    assert_one_line(surface("--model", spec), *patterns)


def test_data_module_errors(surface, user_modules):
    assert_one_line(
        surface("--data", "bs_syntax:data"),
        r"importing module 'bs_syntax' \(from 'bs_syntax:data'\) failed: SyntaxError",
    )
    assert_one_line(
        surface("--data", "bs_nets:split_data"),
        r"the data 'bs_nets:split_data' raised RuntimeError while calling "
        r"split_data\(split='train'\): the data server is down\. It is your code: fix it",
    )


def test_model_kwargs_that_exhaust_the_factory(surface):
    assert_one_line(
        surface("--model-kwargs", '{"hidden": [1000000]}'),
        r"hidden_width must be <= 100,000 \(wider layers do not fit in memory\), got 1,000,000",
    )


# -- trajectories and directions -------------------------------------------------------


@pytest.fixture
def lenet_trajectory(tmp_path):
    from basinscope.data import load_digits

    data = load_digits("train").subset(range(64))
    run = train(
        build_model("lenet", init_seed=0),
        data,
        TrainConfig(steps=2, batch_size=32, checkpoint_steps=(0, 1, 2)),
    )
    path = tmp_path / "lenet-trajectory.safetensors"
    trajectory_to_safetensors(run, path)
    return path


@pytest.mark.parametrize("flag", ["--pca", "--trajectory"])
def test_trajectory_of_another_model(surface, lenet_trajectory, monkeypatch, flag):
    """The old symptom was KeyError: 'conv1.weight'; --trajectory is checked before the
    surface is computed."""
    monkeypatch.setattr(surface_module, "compute_landscape", _must_not_run)
    err = assert_one_line(
        surface("--model-kwargs", '{"hidden": [32]}', flag, lenet_trajectory),
        r"the checkpoint at step 0 and the model's parameters do not match: ",
        r"4 unexpected keys \['conv1\.weight', 'conv1\.bias', 'conv2\.weight', 'conv2\.bias'\]",
        r"3 shape mismatches \['fc1\.weight: \(32, 64\) vs \(64, 64\)'",
        r"Was the trajectory saved from another model\? Pass the --model/--model-kwargs it was "
        r"trained with",
    )
    assert ("the PCA trajectory" in err) == (flag == "--pca")


def _must_not_run(*args, **kwargs):
    raise AssertionError("the surface was computed before the trajectory was checked")


# -- counts, seeds and numbers -----------------------------------------------------------


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["interpolate", "--seed", "99999999999999999999"], r"--seed must be <= 9,223,372,036,854"),
        (["interpolate", "--seed", "-1"], r"--seed must be an integer >= 0, got -1; seeds are"),
        (["interpolate", "--shift-seed", "-1"], r"--shift-seed must be an integer >= 0"),
        (["train", "--init-seed", "99999999999999999999"], r"--init-seed must be <= 9,223,372"),
        (["train", "--data-seed", "-3"], r"TrainConfig\.data_seed must be an integer >= 0"),
        (["train", "--steps", "1000000000"], r"TrainConfig\.steps must be <= 100,000,000"),
        (["train", "--lr", "inf"], r"--lr must be a finite number, got inf"),
        (
            ["train", "--steps", "1000000", "--checkpoint-every", "1"],
            r"--checkpoint-every 1 over 1000000 steps gives 1,000,001 checkpoints, more than the "
            r"10,000 allowed .* pass --checkpoint-every 101 or more",
        ),
        (["hessian", "--tol", "nan"], r"--tol must be a finite number, got nan"),
        (
            ["hessian", "--tol", "0"],
            r"--tol must be a positive number, got 0\.0; e\.g\. --tol 1e-6",
        ),
        (["hessian", "--trace-rtol", "0"], r"--trace-rtol must be a positive number, got 0\.0"),
        (["hessian", "--weight-decay", "nan"], r"--weight-decay must be a finite number, got nan"),
        (["hessian", "--top", "5000"], r"--top must be <= 1,000 \(Lanczos keeps a full basis"),
        (["sharpness", "--samples", "1"], r"--samples must be an integer >= 2, got 1 \(a standard"),
        (["sharpness", "--rho", "inf"], r"--rho must be a finite number, got inf"),
        (["sharpness", "--rho", "-1"], r"--rho must be a positive number, got -1\.0; e\.g\. --rho"),
        (["curve", "--order", "100000"], r"--order must be <= 64 \(each control point is a full"),
        (["barrier", "--num-points", "100000000"], r"--num-points must be <= 100,000 points"),
        (["instability", "--children", "100000"], r"--children must be <= 1,000, got 100,000"),
        (
            ["criticality", "--alphas", "0:0:1"],
            r"--alphas 0:0:1 gives 1 value; the valley plot needs a grid of at least 2",
        ),
        (
            ["ensemble", "--cycles", "4", "--cycle-steps", "100000000"],
            r"--cycle-steps must be <= "
            r"25,000,000 \(--cycles x --cycle-steps is at most 10\*\*8 updates\)",
        ),
    ],
)
def test_counts_seeds_and_numbers(cli, tmp_path, args, pattern):
    w = save_weights(build_model("mlp"), tmp_path / "w.safetensors")
    weights = {
        "curve": ["--weights", w, "--weights", w],
        "barrier": ["--weights", w, "--weights", w],
        "ensemble": ["--weights", w],
        "criticality": ["--weights", w, "--init", w],
    }.get(args[0], [])
    res = cli(*args, "--model", "mlp", *weights, "--no-progress", "--out", tmp_path / "o")
    assert_one_line(res, pattern)
    assert not (tmp_path / "o").exists()


def test_binary_config_file(cli, tmp_path):
    bad = tmp_path / "settings.toml"
    bad.write_bytes(b"\x80\xbaweights")
    assert_one_line(
        cli("study", "rotated-digits", "--show-config", "--config", bad),
        r"--config .*settings\.toml: not valid TOML \(UnicodeDecodeError: .*\); write settings "
        r"as key = value lines",
    )


@pytest.mark.parametrize("split", ["../x", "a/b", "x y", ".hidden"])
def test_split_names_that_would_reach_paths(cli, surface, user_modules, tmp_path, split):
    """A data function accepts any split name, but the name becomes a file and variable name."""
    pattern = (
        rf"split name {re.escape(repr(split))} cannot be used: it becomes part of file and "
        r"variable names, so it may hold only letters, digits, '_', '-' and '\.'"
    )
    assert_one_line(surface("--data", "bs_nets:any_split", "--splits", f"train,{split}"), pattern)
    a = save_weights(build_model("mlp", init_seed=0), tmp_path / "a.safetensors")
    assert_one_line(
        cli(
            "curve",
            "--model",
            "mlp",
            "--weights",
            a,
            "--weights",
            a,
            "--data",
            "bs_nets:any_split",
            "--splits",
            split,
            "--out",
            tmp_path / "c",
        ),
        pattern,
    )


def test_split_names_are_checked_by_the_library_too(tmp_path):
    from basinscope.analyses import random_line
    from basinscope.data import load_digits
    from basinscope.errors import BasinscopeError

    data = load_digits("test").subset(range(16))
    with pytest.raises(BasinscopeError, match=r"split name '\.\./evil' cannot be used"):
        random_line(
            build_model("mlp"),
            {"../evil": data},
            alphas=np.linspace(0, 1, 3),
            run_dir=tmp_path / "run",
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "meta",
    [{"basinscope": "{not json"}, {"basinscope": '{"n_directions": 1}'}],
    ids=["bad-json", "wrong-count"],
)
def test_damaged_directions_file(surface, tmp_path, meta):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "dirs.safetensors"
    save_file({"d0/fc1.weight": torch.zeros(2), "d1/fc1.weight": torch.zeros(2)}, path, meta)
    assert_one_line(
        surface("--directions", path),
        r"dirs\.safetensors' is a damaged directions file \(",
        r"Recreate it, e\.g\. with `basinscope surface`",
    )


def test_damaged_trajectory_metadata(surface, tmp_path):
    import torch
    from safetensors.torch import save_file

    from basinscope.training.trajectory import FORMAT

    path = tmp_path / "traj.safetensors"
    save_file({"x": torch.zeros(1)}, path, {"format": FORMAT, "steps": "[0, 1"})
    assert_one_line(
        surface("--pca", path),
        r"traj\.safetensors has broken trajectory metadata \(JSONDecodeError: .*\): it needs "
        r"'steps' and 'names' as JSON lists",
    )


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--model", "mlp", "--steps", "2", "--weight-decay", "1e308"],
        ["curve", "--model", "mlp", "--steps", "2", "--points", "3", "--weight-decay", "1e308"],
        ["train", "--model", "mlp", "--steps", "2", "--lr", "1e308"],
    ],
    ids=["train-weight-decay", "curve-weight-decay", "train-lr"],
)
def test_an_update_that_overflows(cli, tmp_path, command):
    """Finite but absurd settings overflow float32 parameters: a setting, not a bug."""
    w = save_weights(build_model("mlp"), tmp_path / "w.safetensors")
    weights = ["--weights", w, "--weights", w] if command[0] == "curve" else []
    assert_one_line(
        cli(*command, *weights, "--no-progress", "--out", tmp_path / "o"),
        r"the optimizer update overflowed the parameters at step 1 \(lr=.*, weight_decay=.*; "
        r"value cannot be converted to type float without overflow\); lower the learning rate "
        r"or the weight decay\.",
    )
