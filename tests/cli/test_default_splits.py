"""A user's plain x/y file works with every command's defaults: a test split is held out
(--holdout 0.2, seeded), a warning says so and the run folder records it; with --holdout 0
the landscape commands evaluate the splits the data has (train only), with a warning, and
asking for a split the file lacks is refused with the fixes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from basinscope.models import build_model, save_weights

MLP = ["--model", "mlp", "--model-kwargs", '{"hidden": [8]}']
QUIET = ["--no-progress", "--no-plot", "--strategy", "loop"]
WARNING = "has no test split: evaluating train only"
HELD = "has no test split: held out 8 of its 40 examples as test (--holdout 0.2, --holdout-seed 0)"


@pytest.fixture
def xy(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "xy.npz"
    np.savez(p, x=rng.random((40, 1, 8, 8)).astype(np.float32), y=np.arange(40) % 10)
    return p


@pytest.fixture
def weights(tmp_path):
    return [
        save_weights(build_model("mlp", {"hidden": [8]}, init_seed=i), tmp_path / f"m{i}.pt")
        for i in range(2)
    ]


def _run(cli, out, *args, warning=WARNING, quiet=QUIET):
    extra = ["--holdout", "0"] if warning == WARNING else []
    res = cli(*args, *extra, *quiet, "--out", out, "--json")
    assert res.code == 0, res.err
    assert warning in res.err and "Traceback" not in res.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert any(warning in w for w in manifest["warnings"])
    return json.loads(res.out)


def test_a_test_split_is_held_out_by_default_and_recorded(cli, xy, weights, tmp_path):
    surf = _run(cli, tmp_path / "s", "surface", *MLP, "--data", xy, "--xrange", "-1:1:3",
                "--yrange", "-1:1:3", warning=HELD)  # fmt: skip
    assert {"train_loss", "test_loss"} <= set(surf["dataset"]["data_vars"])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["spec"]["holdout"] == 0.2 and manifest["spec"]["holdout_seed"] == 0
    # the commands that read test by default work on the file as it is
    args = ["similarity", *MLP, "--weights", weights[0], "--weights", weights[1], "--data", xy]
    _run(cli, tmp_path / "sim", *args, warning=HELD, quiet=QUIET[:2])


def test_the_held_out_split_is_disjoint_seeded_and_covers_the_data(xy):
    import torch

    from basinscope.inputs import DataOptions

    with pytest.warns(UserWarning, match="held out 8 of its 40"):
        opts = DataOptions(data=str(xy))
        train, test = opts.load("train"), opts.load("test")
        again = DataOptions(data=str(xy)).load("test")
        other = DataOptions(data=str(xy), holdout_seed=1).load("test")
    assert len(train.y) == 32 and len(test.y) == 8
    rows = torch.cat([train.x, test.x]).flatten(1)
    whole = torch.as_tensor(np.load(xy)["x"]).float().flatten(1)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, whole.tolist()))
    assert torch.equal(again.x, test.x) and not torch.equal(other.x, test.x)


def test_surface_and_interpolate_evaluate_the_splits_the_file_has(cli, xy, weights, tmp_path):
    surf = _run(cli, tmp_path / "s", "surface", *MLP, "--data", xy, "--xrange", "-1:1:3",
                "--yrange", "-1:1:3")  # fmt: skip
    line = _run(cli, tmp_path / "i", "interpolate", *MLP, "--weights", weights[0], "--to",
                weights[1], "--data", xy, "--xrange", "0:1:3")  # fmt: skip
    for result in (surf, line):
        variables = set(result["dataset"]["data_vars"])
        assert variables and all(v.startswith("train_") for v in variables), variables


def test_curve_evaluates_the_splits_the_file_has(cli, xy, weights, tmp_path):
    r = _run(cli, tmp_path / "c", "curve", *MLP, "--weights", weights[0], "--weights",
             weights[1], "--data", xy, "--steps", "2", "--points", "3")  # fmt: skip
    variables = set(r["metrics"]["curve"]["data_vars"])
    assert variables and all(v.startswith("train_") for v in variables), variables


def test_the_built_in_data_still_gets_train_and_test(cli, tmp_path):
    res = cli("surface", *MLP, "--xrange", "-1:1:3", "--yrange", "-1:1:3", *QUIET,
              "--out", tmp_path / "d", "--json")  # fmt: skip
    assert res.code == 0 and "warning" not in res.err, res.err
    variables = set(json.loads(res.out)["dataset"]["data_vars"])
    assert {"train_loss", "test_loss"} <= variables


def test_a_single_split_the_file_lacks_is_refused_with_both_fixes(cli, xy, weights, tmp_path):
    args = ["similarity", *MLP, "--weights", weights[0], "--weights", weights[1], "--data", xy]
    args += ["--holdout", "0"]
    res = cli(*args, *QUIET[:2], "--out", tmp_path / "sim")
    assert res.code == 2 and "Traceback" not in res.err, res.err
    assert "has no test arrays" in res.err and "as x_test/y_test" in res.err
    assert "--split train" in res.err
    res = cli(*args, "--split", "train", *QUIET[:2], "--out", tmp_path / "sim2")
    assert res.code == 0, res.err
