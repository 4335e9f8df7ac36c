"""``basinscope calibrate`` through the real entry point.

Two tiny MLPs (hidden width 16) trained for 20 steps on 300 digits from different seeds;
the digits again as a ``.npz`` with a validation split (half of the test images), fitted
with --val-split val; without --val-split, test-time cross-validation on --split. The --json output equals the library's
result; every user error by its message (exit 2, ``error:`` on stderr, no traceback).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from basinscope.cli.main import main

KWARGS = '{"hidden": [16]}'
BASE = ("calibrate", "--model", "mlp", "--model-kwargs", KWARGS, "--no-progress")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> list[Path]:
    from basinscope.data import load_digits
    from basinscope.models import build_model, save_weights
    from basinscope.training import TrainConfig, train

    folder = tmp_path_factory.mktemp("weights")
    data = load_digits("train").subset(list(range(300)))
    paths = []
    for seed in range(2):
        net = build_model("mlp", {"hidden": [16]}, init_seed=seed)
        trained = train(net, data, TrainConfig(steps=20, batch_size=32, lr=0.1, data_seed=seed))
        paths.append(save_weights(trained.model, folder / f"m{seed}.safetensors"))
    return paths


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    """The digits with train, val (225 of the test images) and test (the other 225)."""
    from basinscope.data import load_digits

    train, test = load_digits("train"), load_digits("test")
    xt, yt = test.x.numpy(), test.y.numpy()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(
        path,
        x_train=train.x.numpy(),
        y_train=train.y.numpy(),
        x_val=xt[::2],
        y_val=yt[::2],
        x_test=xt[1::2],
        y_test=yt[1::2],
    )
    return path


def run(capsys, *args):
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def assert_error(capsys, args, *patterns):
    code, io = run(capsys, *args)
    assert code == 2, (code, io.err)
    assert "Traceback" not in io.err, io.err
    assert io.err.startswith("error: "), io.err
    assert io.out == ""
    for p in patterns:
        assert re.search(p, io.err), f"{p!r} not in {io.err!r}"
    return io.err


def library(paths, val, test, **kw):
    from basinscope.analyses.calibration import calibrate
    from basinscope.inputs import load_model

    nets = [load_model("mlp", KWARGS, p) for p in paths]
    return json.loads(json.dumps(calibrate(nets, val, test, **kw).to_dict()))


def test_one_model_json_is_the_library_result_and_the_run_folder(capsys, weights, npz, tmp_path):
    from basinscope.data import resolve_data
    from basinscope.store import load

    out = tmp_path / "run"
    args = ("--weights", weights[0], "--data", npz, "--val-split", "val")
    code, io = run(capsys, *BASE, *args, "--out", out, "--json")
    assert code == 0, io.err
    assert "warning" not in io.err, io.err
    printed = json.loads(io.out)
    val, test = resolve_data(str(npz), "val"), resolve_data(str(npz), "test")
    names = {"labels": ("m0",), "split": "test", "val_split": "val"}
    assert printed == library(weights[:1], val, test, **names)
    assert printed["protocol"] == "validation split"
    assert printed["kind"] == "calibration" and len(printed["members"]) == 1
    assert printed["n_val"] == 225 and printed["n_test"] == 225
    assert printed["members_calibrated"] == {}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["warnings"] == []
    assert manifest["command"]["val_split"] == "val" and manifest["command"]["split"] == "test"
    assert set(manifest["fingerprints"]["data"]) == {"val", "test"}
    assert json.loads((out / "result.json").read_text()) == printed
    assert json.loads(json.dumps(load(out).to_dict())) == printed
    assert (out / "figures" / "calibration.png").stat().st_size > 1000


def test_an_ensemble_of_two_on_the_digits_fitted_on_train_warns(capsys, weights, tmp_path):
    from basinscope.data import load_digits

    out = tmp_path / "run"
    args = ("--weights", weights[0], "--weights", weights[1], "--val-split", "train")
    code, io = run(capsys, *BASE, *args, "--bins", "10", "--out", out, "--json", "--no-plot")
    assert code == 0, io.err
    assert "warning: --val-split train: the temperature is fitted on the training data" in io.err
    printed = json.loads(io.out)
    names = {"labels": ("m0", "m1"), "split": "test", "val_split": "train"}
    ref = library(weights, load_digits("train"), load_digits("test"), bins=10, **names)
    assert printed == ref
    assert len(printed["members"]) == 2 and set(printed["members_calibrated"]) >= {"nll", "ece"}
    assert printed["n_val"] == 1347 and printed["n_test"] == 450
    assert len(printed["reliability_after"]["count"]) == 10
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["warnings"][0].startswith("--val-split train: the temperature is fitted")
    # the summary a terminal shows
    code, io = run(capsys, *BASE, *args, "--bins", "10", "--out", out, "--no-plot")
    assert code == 0, io.err
    assert "temperature of the ensemble average:" in io.err and "members cal." in io.err


def test_the_same_split_for_tau_and_the_metrics_warns(capsys, weights, tmp_path):
    args = ("--weights", weights[0], "--val-split", "test", "--split", "test")
    code, io = run(capsys, *BASE, *args, "--out", tmp_path / "run", "--json", "--no-plot")
    assert code == 0, io.err
    assert re.search(
        r"warning: --val-split and --split are both 'test': the temperature is fitted on the "
        r"data it is evaluated on, so the calibrated metrics are optimistic",
        io.err,
    )
    assert json.loads(io.out)["n_val"] == json.loads(io.out)["n_test"] == 450


def test_without_weights(capsys, tmp_path):
    assert_error(
        capsys,
        [*BASE, "--out", tmp_path / "run"],
        re.escape("calibration needs the model to calibrate: pass --weights model.safetensors"),
        re.escape("--weights once per member for an ensemble"),
    )


def test_without_a_validation_split_tau_is_cross_validated(capsys, weights, tmp_path):
    from basinscope.data import load_digits

    out = tmp_path / "run"
    args = ("--weights", weights[0], "--repeats", "3", "--out", out, "--json", "--no-plot")
    code, io = run(capsys, *BASE, *args)
    assert code == 0, io.err
    assert "warning" not in io.err
    printed = json.loads(io.out)
    names = {"labels": ("m0",), "split": "test", "val_split": "(cross-validation)"}
    assert printed == library(weights[:1], None, load_digits("test"), repeats=3, **names)
    assert printed["protocol"].startswith("test-time cross-validation (3 random halvings)")
    assert len(printed["temperatures"]) == 6


def test_data_without_the_named_validation_split(capsys, weights, tmp_path):
    out = tmp_path / "run"
    assert_error(
        capsys,
        [*BASE, "--weights", weights[0], "--val-split", "val", "--out", out],
        re.escape("digits has no split 'val' to fit the temperature on (its splits: train, test"),
        re.escape("leave --val-split out (test-time cross-validation on --split)"),
        re.escape("a .npz with x_val/y_val"),
    )
    assert not out.exists()
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros((20, 64), np.float32), y=np.arange(20) % 10)
    assert_error(
        capsys,
        [*BASE, "--weights", weights[0], "--data", plain, "--val-split", "val", "--out", out],
        re.escape("--val-split val (the split the temperature is fitted on): "),
        r"has no val arrays",
        r"x_val/y_val",
    )


def test_a_regression_task_is_refused(capsys, weights, tmp_path):
    assert_error(
        capsys,
        [*BASE, "--weights", weights[0], "--loss", "mse", "--out", tmp_path / "run"],
        re.escape("calibration scales a classifier's probabilities: --loss mse is a regression"),
    )
    reg = tmp_path / "reg.npz"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 64)).astype(np.float32)
    np.savez(reg, x_train=x, y_train=x[:, 0], x_val=x, y_val=x[:, 0], x_test=x, y_test=x[:, 0])
    assert_error(
        capsys,
        [
            *BASE,
            "--weights",
            weights[0],
            "--data",
            reg,
            "--val-split",
            "val",
            "--out",
            tmp_path / "run2",
        ],
        re.escape("calibration scales a classifier's probabilities: the val split of "),
        re.escape("has regression targets (float32 y of shape (40,)); calibrate a classifier"),
    )


@pytest.mark.parametrize(
    ("extra", "patterns"),
    [
        (["--device", "bogus"], [r"--device 'bogus' is not available here"]),
        (["--binning", "quantile"], [r"unknown --binning 'quantile': expected one of equal_width"]),
        (["--bins", "0"], [r"--bins"]),
        (["--split", "../x"], [r"split name '\.\./x' cannot be used"]),
    ],
)
def test_bad_settings(capsys, weights, tmp_path, extra, patterns):
    args = [*BASE, "--weights", weights[0], "--val-split", "train", "--out", tmp_path / "r"]
    assert_error(capsys, [*args, *extra], *patterns)
