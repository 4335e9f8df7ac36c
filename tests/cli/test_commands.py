"""The commands' happy paths, through the real entry point, on tiny settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from basinscope.models import build_model, save_weights
from basinscope.store import load

TRAIN = ["train", "--model", "mlp", "--steps", "20", "--checkpoint-every", "5", "--no-progress"]
GRID = ["--xrange", "-1:1:3", "--yrange", "-1:1:3"]


def ok(res):
    """The command succeeded without a traceback; returns it."""
    assert res.code == 0, (res.code, res.err)
    assert "Traceback" not in res.err, res.err
    return res


def one_json(res) -> dict:
    """stdout is exactly one JSON object, on one line."""
    ok(res)
    lines = res.out.splitlines()
    assert len(lines) == 1, res.out
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


def results(run: str | Path) -> xr.Dataset:
    return load(run).dataset


def coords(d: dict) -> dict:
    """The grid axes of a landscape's --json."""
    return {c: v["data"] for c, v in d["dataset"]["coords"].items()}


def metrics(d: dict) -> dict:
    """The metric arrays of a landscape's --json, by variable."""
    return {v: x["data"] for v, x in d["dataset"]["data_vars"].items()}


def attrs(d: dict) -> dict:
    return d["dataset"]["attrs"]


def stored(run: Path, d: dict) -> None:
    """The run folder holds what --json printed: result.json and the loaded result."""
    assert json.loads((run / "result.json").read_text()) == d
    assert json.loads(json.dumps(load(run).to_dict())) == d


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_cli):
    """Two trained MLPs (A: init seed 0, B: init seed 1) and a fresh one (C), with their JSON."""
    base = tmp_path_factory.mktemp("trained")
    a = one_json(run_cli(*TRAIN, "--init-seed", "0", "--out", base / "a", "--json"))
    b = one_json(run_cli(*TRAIN, "--init-seed", "1", "--out", base / "b", "--json"))
    c = save_weights(build_model("mlp", init_seed=2), base / "c.safetensors")
    return {"base": base, "a": base / "a", "b": base / "b", "c": c, "json_a": a, "json_b": b}


# -- train ----------------------------------------------------------------------------


def test_train_writes_weights_trajectory_and_json(trained):
    run, summary = trained["a"], trained["json_a"]
    for name in ("model.safetensors", "trajectory.safetensors", "result.json", "manifest.json"):
        assert (run / name).is_file(), name
    assert (run / "figures" / "train.png").is_file()
    assert summary["kind"] == "train"
    assert {"run_dir", "final", "checkpoint_steps", "history"} <= set(summary)
    assert summary["history"]["data_vars"]["loss"]["data"][0] > 0
    assert summary["spec"]["checkpoint_every"] == 5 and summary["config"]["steps"] == 20
    stored(run, summary)
    assert Path(summary["run_dir"]) == run
    assert summary["checkpoint_steps"] == [0, 5, 10, 15, 20]
    final = summary["final"]
    assert set(final) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert all(np.isfinite(v) for v in final.values())
    # 20 SGD steps from a random start do lower the loss
    assert final["train_loss"] < summary["initial"]["train_loss"]
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"

    from basinscope.training import load_trajectory

    assert sorted(load_trajectory(run / "trajectory.safetensors")) == [0, 5, 10, 15, 20]


def test_train_with_other_seeds_gives_other_weights(trained):
    assert trained["json_a"]["final"] != trained["json_b"]["final"]


def test_train_again_reuses_the_run(trained, run_cli):
    run = trained["a"]
    mtime = (run / "model.safetensors").stat().st_mtime_ns
    again = one_json(run_cli(*TRAIN, "--init-seed", "0", "--out", run, "--json"))
    first = trained["json_a"]
    for key in ("run_dir", "weights", "trajectory", "checkpoint_steps", "final", "initial"):
        assert again[key] == first[key], key
    if "reused" in first:
        assert (first["reused"], again["reused"]) == (False, True)
    assert (run / "model.safetensors").stat().st_mtime_ns == mtime
    # without --json it says so on stderr, and prints nothing on stdout
    res = ok(run_cli(*TRAIN, "--init-seed", "0", "--out", run))
    assert "reusing the finished run" in res.err
    assert res.out == ""
    assert (run / "model.safetensors").stat().st_mtime_ns == mtime


def test_train_from_weights_on_shifted_data(trained, run_cli, tmp_path):
    summary = one_json(
        run_cli(
            "train",
            "--model",
            "mlp",
            "--weights",
            trained["a"] / "model.safetensors",
            "--rotation",
            "30",
            "--steps",
            "3",
            "--no-progress",
            "--out",
            tmp_path / "ft",
            "--json",
        )
    )
    # the start is model A (the same numbers train reported for it, up to the rotation)
    assert summary["checkpoint_steps"] == [0, 3]
    assert (tmp_path / "ft" / "model.safetensors").is_file()


# -- interpolate ----------------------------------------------------------------------


def test_interpolate_between_two_trained_models(trained, run_cli, tmp_path):
    out = tmp_path / "a-to-b"
    summary = one_json(
        run_cli(
            "interpolate",
            "--model",
            "mlp",
            "--weights",
            trained["a"] / "model.safetensors",
            "--to",
            trained["b"] / "model.safetensors",
            "--xrange",
            "0:1:3",
            "--no-progress",
            "--out",
            out,
            "--json",
        )
    )
    assert {"dataset", "evaluation", "run_dir", "spec"} <= set(summary)
    assert summary["kind"] == "landscape"
    assert coords(summary) == {"alpha": [0.0, 0.5, 1.0]}
    values = metrics(summary)
    assert {"train_loss", "test_loss", "train_accuracy", "test_accuracy"} <= set(values)
    assert all(len(v) == 3 for v in values.values())
    assert Path(summary["run_dir"]) == out
    assert summary["evaluation"]["strategy"] in ("vmap", "loop")
    assert summary["evaluation"]["points_per_second"] > 0
    assert summary["definition"] == "interpolation"
    assert summary["spec"]["alphas"] == [0.0, 0.5, 1.0]
    # the ends of the line are the two trained models
    for i, key in ((0, "json_a"), (-1, "json_b")):
        for name in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            assert values[name][i] == pytest.approx(trained[key]["final"][name], rel=1e-5)
    # the figures were drawn
    for name in ("landscape.png", "line.png", "line.pdf", "line.html"):
        assert (out / "figures" / name).stat().st_size > 0, name
    stored(out, summary)


def test_interpolate_random_line(trained, run_cli, tmp_path):
    summary = one_json(
        run_cli(
            "interpolate",
            "--model",
            "mlp",
            "--weights",
            trained["a"] / "model.safetensors",
            "--xrange",
            "-1:1:5",
            "--seed",
            "3",
            "--strategy",
            "loop",
            "--no-progress",
            "--no-plot",
            "--out",
            tmp_path / "line",
            "--json",
        )
    )
    assert summary["definition"] == "random_line"
    assert coords(summary) == {"alpha": [-1.0, -0.5, 0.0, 0.5, 1.0]}
    assert not (tmp_path / "line" / "figures").exists()
    assert attrs(summary)["seed"] == 3 and summary["spec"]["seed"] == 3
    # alpha = 0 is model A itself
    assert metrics(summary)["train_loss"][2] == pytest.approx(
        trained["json_a"]["final"]["train_loss"], rel=1e-5
    )
    assert (tmp_path / "line" / "tensors" / "directions.safetensors").is_file()


def test_interpolate_prints_a_summary_without_json(run_cli, tmp_path):
    res = ok(
        run_cli(
            "interpolate",
            "--model",
            "mlp",
            "--xrange",
            "0:1:2",
            "--splits",
            "train",
            "--no-progress",
            "--no-plot",
            "--out",
            tmp_path / "r",
        )
    )
    assert res.out == ""
    assert re.search(r"random_line: 2 points, strategy (vmap|loop)", res.err)
    assert "train_loss: min" in res.err


# -- surface --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_surface(trained, run_cli):
    """A random-plane surface around model A (no figures), and its JSON summary."""
    out = trained["base"] / "surface"
    args = [
        "surface",
        "--model",
        "mlp",
        "--weights",
        trained["a"] / "model.safetensors",
        *GRID,
        "--strategy",
        "loop",
        "--no-progress",
        "--no-plot",
        "--out",
        out,
        "--json",
    ]
    return out, one_json(run_cli(*args)), args


def test_surface_random_json(random_surface, trained):
    out, summary, _ = random_surface
    assert summary["definition"] == "surface"
    assert coords(summary) == {"alpha": [-1.0, 0.0, 1.0], "beta": [-1.0, 0.0, 1.0]}
    loss = np.array(metrics(summary)["train_loss"])
    assert loss.shape == (3, 3)
    assert np.isfinite(loss).all()
    assert {"test_loss", "train_accuracy", "test_accuracy"} <= set(metrics(summary))
    assert summary["evaluation"]["strategy"] == "loop"
    assert summary["evaluation"]["points"] == 9
    assert attrs(summary)["directions"] == "random"
    assert attrs(summary)["normalization"] == "filter"
    assert summary["trajectories"] == []
    stored(out, summary)
    # the center is model A
    assert loss[1, 1] == pytest.approx(trained["json_a"]["final"]["train_loss"], rel=1e-5)
    ds = results(out)
    np.testing.assert_array_equal(ds["train_loss"].values, loss)
    assert (out / "tensors" / "directions.safetensors").is_file()
    assert not (out / "figures").exists()


def test_surface_again_reuses_the_run(random_surface, run_cli):
    _, summary, args = random_surface
    again = one_json(run_cli(*args))
    assert metrics(again) == metrics(summary)
    assert again["evaluation"]["points_evaluated"] == summary["evaluation"]["points_evaluated"] == 9


def test_surface_from_the_directions_of_a_previous_run(random_surface, trained, run_cli, tmp_path):
    out, summary, _ = random_surface
    again = one_json(
        run_cli(
            "surface",
            "--model",
            "mlp",
            "--weights",
            trained["a"] / "model.safetensors",
            "--directions",
            out / "tensors" / "directions.safetensors",
            *GRID,
            "--strategy",
            "loop",
            "--no-progress",
            "--no-plot",
            "--out",
            tmp_path / "again",
            "--json",
        )
    )
    assert attrs(again)["directions"] == "given"
    assert metrics(again) == metrics(summary)
    first, second = results(out), results(tmp_path / "again")
    assert set(first.data_vars) == set(second.data_vars)
    for name in first.data_vars:
        np.testing.assert_array_equal(first[name].values, second[name].values)
        assert first[name].values.tobytes() == second[name].values.tobytes()


def test_surface_pca_of_a_training_trajectory(trained, run_cli, tmp_path):
    out = tmp_path / "pca"
    summary = one_json(
        run_cli(
            "surface",
            "--model",
            "mlp",
            "--weights",
            trained["a"] / "model.safetensors",
            "--pca",
            trained["a"] / "trajectory.safetensors",
            "--trajectory",
            trained["b"] / "trajectory.safetensors",
            *GRID,
            "--splits",
            "train",
            "--strategy",
            "loop",
            "--no-progress",
            "--no-plot",
            "--out",
            out,
            "--json",
        )
    )
    assert summary["definition"] == "pca_surface"
    assert attrs(summary)["directions"] == "pca"
    assert "PC1" in attrs(summary)["x_label"]
    trajs = summary["trajectories"]
    assert [t["label"] for t in trajs] == ["a", "b"]
    for t in trajs:
        assert t["steps"] == [0, 5, 10, 15, 20]
        assert len(t["alpha"]) == len(t["beta"]) == len(t["distance"]) == 5
    # the PCA plane is centred at A's final point, which lies in it
    a = trajs[0]
    assert a["alpha"][-1] == pytest.approx(0.0, abs=1e-5)
    assert a["beta"][-1] == pytest.approx(0.0, abs=1e-5)
    assert a["distance"][-1] == pytest.approx(0.0, abs=1e-5)
    assert all(d >= 0 for d in a["distance"])
    # B's trajectory (another initialization) runs far off A's plane
    assert min(trajs[1]["distance"]) > max(a["distance"])
    # the projections are part of the result: stored, loaded and drawn with it
    stored(out, summary)
    assert [t.label for t in load(out).trajectories] == ["a", "b"]


def test_surface_pca_fits_the_grid_to_the_trajectory(trained, run_cli, tmp_path):
    summary = one_json(
        run_cli(
            "surface",
            "--model",
            "mlp",
            "--weights",
            trained["a"] / "model.safetensors",
            "--pca",
            trained["a"] / "trajectory.safetensors",
            "--splits",
            "train",
            "--metrics",
            "loss",
            "--strategy",
            "vmap",
            "--no-progress",
            "--no-plot",
            "--out",
            tmp_path / "pca-fit",
            "--json",
        )
    )
    alpha, beta = coords(summary)["alpha"], coords(summary)["beta"]
    assert len(alpha) == len(beta) == 21
    (proj,) = summary["trajectories"]
    assert alpha[0] < min(proj["alpha"]) <= max(proj["alpha"]) < alpha[-1]
    assert beta[0] < min(proj["beta"]) <= max(proj["beta"]) < beta[-1]
    assert set(metrics(summary)) == {"train_loss"}


def test_surface_plane_through_three_models(trained, run_cli, tmp_path):
    summary = one_json(
        run_cli(
            "surface",
            "--model",
            "mlp",
            "--weights",
            trained["a"] / "model.safetensors",
            "--plane",
            trained["b"] / "model.safetensors",
            "--plane",
            trained["c"],
            "--xrange",
            "0:1:2",
            "--yrange",
            "0:1:2",
            "--splits",
            "train",
            "--no-progress",
            "--no-plot",
            "--out",
            tmp_path / "plane",
            "--json",
        )
    )
    assert summary["definition"] == "plane_surface"
    assert attrs(summary)["directions"] == "plane through three models"
    at = np.array(attrs(summary)["model_coords"]).reshape(3, 2)
    # A at the origin, B on the first axis at |theta_B - theta_A|, C off it
    np.testing.assert_allclose(at[0], [0.0, 0.0], atol=1e-6)
    assert at[1, 0] > 0
    assert at[1, 1] == pytest.approx(0.0, abs=1e-4)
    assert at[2, 1] != 0
    loss = np.array(metrics(summary)["train_loss"])
    assert loss.shape == (2, 2)
    assert loss[0, 0] == pytest.approx(trained["json_a"]["final"]["train_loss"], rel=1e-5)


def test_surface_in_float64(trained, random_surface, run_cli, tmp_path):
    _, float32, _ = random_surface
    summary = one_json(
        run_cli(
            "surface",
            "--model",
            "mlp",
            "--weights",
            trained["a"] / "model.safetensors",
            *GRID,
            "--dtype",
            "float64",
            "--strategy",
            "loop",
            "--no-progress",
            "--no-plot",
            "--out",
            tmp_path / "f64",
            "--json",
        )
    )
    assert attrs(summary)["dtype"] == "float64"
    for name, v in metrics(summary).items():
        np.testing.assert_allclose(v, metrics(float32)[name], rtol=1e-4, atol=1e-5)
    assert results(tmp_path / "f64").attrs["dtype"] == "float64"


def test_surface_prints_a_summary_and_draws_figures(run_cli, tmp_path):
    out = tmp_path / "s"
    res = ok(
        run_cli(
            "surface",
            "--model",
            "mlp",
            "--xrange",
            "-1:1:2",
            "--yrange",
            "-1:1:2",
            "--splits",
            "train",
            "--metrics",
            "loss",
            "--strategy",
            "loop",
            "--no-progress",
            "--out",
            out,
        )
    )
    assert res.out == ""
    assert "surface: 4 points, strategy loop" in res.err
    names = {p.name for p in (out / "figures").iterdir()}
    assert f"figures: {out / 'figures'} ({len(names)} files)" in res.err
    assert {"train_loss_contour.png", "train_loss_surface.html", "train_loss.vtp"} <= names


# -- plot -----------------------------------------------------------------------------


def test_plot_only_the_kinds_and_variables_asked_for(random_surface, run_cli):
    out, _, _ = random_surface
    res = ok(run_cli("plot", out, "--kind", "contour", "--kind", "vtp", "--var", "train_loss"))
    figures = out / "figures"
    names = sorted(p.name for p in figures.iterdir())
    assert names == ["train_loss.vtp", "train_loss_contour.pdf", "train_loss_contour.png"]
    for name in names:
        assert (figures / name).stat().st_size > 0
        assert str(figures / name) in res.err
    assert (figures / "train_loss.vtp").read_text().lstrip().startswith("<?xml")
    # --json lists the files on stdout
    listed = one_json(
        run_cli("plot", out, "--kind", "heatmap", "--var", "test_loss", "--format", "png", "--json")
    )
    assert listed == {
        "run_dir": str(out),
        "figures": [str(figures / "test_loss_heatmap.png")],
    }
    # --log writes beside the linear-scale files (a -log suffix), never over them
    linear = (figures / "train_loss_contour.png").read_bytes()
    listed = one_json(
        run_cli("plot", out, "--kind", "contour", "--var", "train_loss", "--log", "--json")
    )
    assert listed["figures"] == [
        str(figures / "train_loss_contour-log.png"),
        str(figures / "train_loss_contour-log.pdf"),
    ]
    assert (figures / "train_loss_contour.png").read_bytes() == linear


# -- help -----------------------------------------------------------------------------


def test_python_m_basinscope_help():
    env = {**os.environ, "COLUMNS": "100"}
    proc = subprocess.run(
        [sys.executable, "-m", "basinscope", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "interpolate", "surface", "plot", "demo", "study", "report"):
        assert command in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "command", ["train", "interpolate", "surface", "plot", "demo", "study", "report"]
)
def test_every_subcommand_help_has_examples(run_cli, command):
    res = ok(run_cli(command, "--help"))
    text = res.out
    assert "Usage:" in text
    assert "Examples:" in text
    assert f"basinscope {command}" in text.split("Examples:", 1)[1]


def test_top_level_help(run_cli):
    res = ok(run_cli("-h"))
    assert "Start with `basinscope demo`" in res.out


def test_surface_of_a_batchnorm_model_with_recomputed_statistics(run_cli, tmp_path):
    summary = one_json(
        run_cli(
            "surface",
            "--model",
            "mlp",
            "--model-kwargs",
            '{"batchnorm": true}',
            "--bn",
            "recompute",
            "--bn-batches",
            "2",
            "--xrange",
            "-1:1:2",
            "--yrange",
            "-1:1:2",
            "--splits",
            "train",
            "--no-progress",
            "--no-plot",
            "--out",
            tmp_path / "bn",
            "--json",
        )
    )
    assert attrs(summary)["bn_policy"] == "recompute"
    assert attrs(summary)["bn_batches"] == 2
    assert np.isfinite(np.array(metrics(summary)["train_loss"])).all()
