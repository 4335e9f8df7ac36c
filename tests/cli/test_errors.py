"""Every user-facing error of the CLI, by its message, through the real entry point.

A user error prints ``error: <message>`` on stderr, with no traceback, and exits with 2;
a command-line parse error exits with 2 and click's usage message.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from basinscope.geometry import get_params, random_directions, save_directions
from basinscope.models import build_model, save_weights

TINY = ["--model", "mlp", "--xrange", "-1:1:3", "--yrange", "-1:1:3"]
QUIET = ["--no-progress", "--no-plot", "--strategy", "loop", "--splits", "train"]


def assert_user_error(res, *patterns: str) -> str:
    """Exit status 2, one ``error:`` message with every pattern in it, and no traceback."""
    assert res.code == 2, (res.code, res.err)
    assert "Traceback" not in res.err, res.err
    assert res.err.startswith("error: "), res.err
    assert res.out == "", res.out
    for pattern in patterns:
        assert re.search(pattern, res.err), f"{pattern!r} not in {res.err!r}"
    return res.err


@pytest.fixture
def surface(cli, tmp_path):
    """``surface(*extra)``: a tiny surface run into tmp_path/out with ``extra`` appended."""

    def run(*extra):
        return cli("surface", *TINY, *QUIET, "--out", tmp_path / "out", *extra)

    return run


# -- weights and models ---------------------------------------------------------------


def test_weights_with_other_shapes(surface, tmp_path):
    w = save_weights(build_model("mlp", {"hidden": [32]}), tmp_path / "w32.safetensors")
    err = assert_user_error(
        surface("--weights", w),
        r"the weights in .*w32\.safetensors do not fit the Sequential model",
        r"3 shape mismatches",
        re.escape("fc1.weight: checkpoint (32, 64) vs model (64, 64)"),
        re.escape("check --model and --model-kwargs"),
    )
    assert "missing keys" not in err
    assert not (tmp_path / "out").exists()


def test_weights_with_other_keys(surface, tmp_path):
    w = save_weights(build_model("mlp", {"hidden": [64, 64]}), tmp_path / "deep.pt")
    assert_user_error(
        surface("--weights", w),
        r"do not fit the Sequential model",
        r"2 unexpected keys \['fc3\.weight', 'fc3\.bias'\]",
        re.escape("fc2.weight: checkpoint (64, 64) vs model (10, 64)"),
        re.escape("check --model and --model-kwargs"),
    )


def test_weights_missing_keys(cli, tmp_path):
    w = save_weights(build_model("mlp", {"hidden": []}), tmp_path / "linear.safetensors")
    assert_user_error(
        cli("interpolate", "--model", "mlp", "--weights", w, "--xrange", "0:1:2", *QUIET),
        r"2 missing keys \['fc2\.weight', 'fc2\.bias'\]",
        re.escape("check --model and --model-kwargs"),
    )


def test_weights_that_fit_another_model_kwargs_do_load(surface, tmp_path):
    """The hint is right: the same file loads once --model-kwargs matches it."""
    w = save_weights(build_model("mlp", {"hidden": [32]}), tmp_path / "w32.safetensors")
    res = surface("--weights", w, "--model-kwargs", '{"hidden": [32]}')
    assert res.code == 0, res.err


@pytest.mark.parametrize(
    "spec, patterns",
    [
        (
            "nosuchmod:factory",
            [r"model module 'nosuchmod' \(from 'nosuchmod:factory'\) was not found", "PYTHONPATH"],
        ),
        (
            "basinscope.models:nosuch",
            [
                r"module 'basinscope\.models' has no attribute 'nosuch'",
                r"Callables in the module: .*lenet.*mlp",
            ],
        ),
        ("nosuchmodel", [r"unknown model 'nosuchmodel'", r"lenet, mlp, resnet", "module:factory"]),
        (
            "basinscope.models:",
            [r"is not an import spec: expected module:factory", "basinscope.models:lenet"],
        ),
    ],
)
def test_unknown_model(surface, spec, patterns):
    assert_user_error(surface("--model", spec), *patterns)


@pytest.mark.parametrize(
    "kwargs, patterns",
    [
        (
            "{bad",
            [
                r"--model-kwargs is not valid JSON \(Expecting property name .* at position 1\)",
                re.escape("""'{bad'; e.g. --model-kwargs '{"width": 2}'"""),
            ],
        ),
        ("[1, 2]", [r"--model-kwargs must be a JSON object, got list"]),
        (
            '{"width": 2}',
            [
                r"model factory 'mlp' does not accept the kwargs \{'width': 2\}",
                r"unexpected keyword argument 'width'",
                r"Its signature is \(in_features",
                "fix --model-kwargs to match",
            ],
        ),
        ('{"hidden": [0]}', [r"hidden_width must be a positive integer, got 0"]),
    ],
)
def test_bad_model_kwargs(surface, kwargs, patterns):
    assert_user_error(surface("--model-kwargs", kwargs), *patterns)


def test_weights_file_that_is_text(surface, tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_text("these are not weights\n")
    assert_user_error(
        surface("--weights", bad),
        r"could not read '.*x\.pt' as a PyTorch checkpoint",
        re.escape("torch.save(model.state_dict(), path)"),
    )


def test_weights_file_that_is_broken_safetensors(surface, tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00\x01 truncated")
    assert_user_error(
        surface("--weights", bad),
        r"could not read '.*x\.safetensors' as safetensors",
        "may be truncated or in another format",
    )


def test_weights_file_missing(surface, tmp_path):
    assert_user_error(
        surface("--weights", tmp_path / "missing.safetensors"),
        r"weights file '.*missing\.safetensors' does not exist",
    )


def test_weights_file_with_unknown_extension(surface, tmp_path):
    (tmp_path / "w.bin").write_bytes(b"")
    assert_user_error(
        surface("--weights", tmp_path / "w.bin"),
        r"cannot tell the format of weights file .*'\.bin'",
        r"\.safetensors, \.pt, \.pth",
    )


def test_interpolate_to_weights_of_another_model(cli, tmp_path):
    a = save_weights(build_model("mlp"), tmp_path / "a.safetensors")
    b = save_weights(build_model("mlp", {"hidden": [32]}), tmp_path / "b.safetensors")
    assert_user_error(
        cli(
            "interpolate", "--model", "mlp", "--weights", a, "--to", b, "--xrange", "0:1:3", *QUIET
        ),
        r"the weights in .*b\.safetensors do not fit",
        "check --model and --model-kwargs",
    )


# -- data -------------------------------------------------------------------------------


def test_unknown_data_spec(surface):
    assert_user_error(
        surface("--data", "cifar"),
        r"unknown data spec 'cifar'",
        r"Accepted: 'digits', 'mnist'",
        r"\.npz file",
        "module:attr",
    )


def test_unreadable_npz(surface, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a numpy archive")
    assert_user_error(
        surface("--data", bad),
        r"could not read '.*bad\.npz' as an \.npz file",
        re.escape("np.savez(path, x=inputs, y=labels)"),
    )


def test_missing_npz(surface, tmp_path):
    assert_user_error(
        surface("--data", tmp_path / "nope.npz"),
        r"data file '.*nope\.npz' does not exist",
    )


def test_npz_without_x_and_y(surface, tmp_path):
    p = tmp_path / "ab.npz"
    np.savez(p, a=np.zeros(3), b=np.zeros(3))
    assert_user_error(
        surface("--data", p),
        r"lacks the arrays x_train and y_train \(or x and y\); it holds \['a', 'b'\]",
    )


def test_empty_dataset(surface, tmp_path):
    p = tmp_path / "empty.npz"
    np.savez(p, x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros((0,), np.int64))
    assert_user_error(
        surface("--data", p),
        r"dataset 'empty-train' is empty",
        r"holds 0 samples in \['x', 'y'\]",
        "Save at least one sample",
    )


def test_test_split_asked_of_an_npz_with_only_x_and_y(surface, tmp_path):
    p = tmp_path / "xy.npz"
    np.savez(p, x=np.random.default_rng(0).random((20, 1, 8, 8)), y=np.arange(20) % 10)
    assert_user_error(
        surface("--data", p, "--splits", "train,test", "--holdout", "0"),
        r"'.*xy\.npz' has no test arrays: it holds \['x', 'y'\]",
        r"plain x/y serve only the 'train' split",
        r"as x_test/y_test",
        re.escape("np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"),
    )
    # ... and the fix it suggests (only the train split) works
    res = surface("--data", p, "--splits", "train", "--holdout", "0")
    assert res.code == 0, res.err


def test_unknown_split(surface):
    assert_user_error(
        surface("--splits", "train,valid"),
        r"the digits dataset has no split 'valid'",
        r"'train', 'test', 'all'",
    )


def test_empty_splits(surface):
    assert_user_error(surface("--splits", " , "), r"--splits needs at least one split name")


def test_unknown_metric(surface):
    assert_user_error(
        surface("--metrics", "loss,bogus"),
        r"unknown metric 'bogus': built-in metrics are loss, accuracy, error",
    )


def test_bad_shift(surface):
    assert_user_error(
        surface("--block-shuffle", "3"),
        r"cannot be cut into 3x3 tiles",
        re.escape("Valid block sizes: [1, 2, 4, 8]"),
    )


# -- grids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, text, patterns",
    [
        ("--xrange", "1:0:5", [r"START must be smaller than STOP \(1\.0 >= 0\.0\)"]),
        (
            "--xrange",
            "abc",
            [re.escape("expected --xrange START:STOP:NUM, e.g. --xrange -1:1:21")],
        ),
        ("--xrange", "0:1:0", [r"NUM must be at least 1, got 0"]),
        ("--yrange", "0:1", [re.escape("expected --yrange START:STOP:NUM")]),
        ("--yrange", "0:1e999:3", [r"START and STOP must be finite numbers"]),
        ("--xrange", "0:1:1000000", [r"more than the 100,000 allowed"]),
    ],
)
def test_bad_grid_range(surface, tmp_path, flag, text, patterns):
    err = assert_user_error(surface(flag, text), r"bad grid range", *patterns)
    assert f"{text!r} for {flag}" in err
    assert not (tmp_path / "out").exists()


def test_bad_interpolation_range(cli, tmp_path):
    assert_user_error(
        cli("interpolate", "--model", "mlp", "--xrange", "2:-1:5", *QUIET),
        r"bad grid range '2:-1:5' for --xrange: START must be smaller than STOP",
    )


# -- directions and planes --------------------------------------------------------------


def _directions_of(model, path):
    dirs = random_directions(get_params(model), 0, 2, "filter", "zero", False)
    return save_directions(path, dirs, {"kind": "test"})


def test_directions_of_another_width(surface, tmp_path):
    d = _directions_of(build_model("mlp", {"hidden": [32]}), tmp_path / "d32.safetensors")
    assert_user_error(
        surface("--directions", d),
        r"direction 0 does not fit the model",
        r"3 shape mismatches",
        re.escape("fc1.weight: ("),
        r"Directions must be made for the same architecture",
        r"drop --directions\) or pass the matching --model/--model-kwargs",
    )


def test_directions_of_another_depth(cli, tmp_path):
    d = _directions_of(build_model("mlp", {"hidden": [64, 64]}), tmp_path / "deep.safetensors")
    assert_user_error(
        cli("interpolate", "--model", "mlp", "--xrange", "0:1:3", "--directions", d, *QUIET),
        r"deep\.safetensors: direction 0 does not fit the model",
        r"fc3\.weight",
        r"fc2\.weight",
        r"same architecture",
    )


def test_directions_file_with_one_direction(surface, tmp_path):
    net = build_model("mlp")
    d = save_directions(
        tmp_path / "one.safetensors",
        random_directions(get_params(net), 0, 1, "filter", "zero", False),
    )
    assert_user_error(surface("--directions", d), r"a surface needs exactly 2 directions, got 1")


def test_directions_file_that_is_not_one(surface, tmp_path):
    w = save_weights(build_model("mlp"), tmp_path / "w.safetensors")
    assert_user_error(
        surface("--directions", w),
        r"is a safetensors file but not a basinscope directions file",
        r"save_directions\(\)",
    )
    assert_user_error(
        surface("--directions", tmp_path / "nope.safetensors"),
        r"directions file '.*nope\.safetensors' does not exist",
    )


def test_plane_given_once(surface, tmp_path):
    assert_user_error(
        surface("--plane", tmp_path / "b.safetensors"),
        r"--plane needs exactly two weight files \(models B and C\), got 1",
        re.escape("--plane B.safetensors --plane C.safetensors"),
    )


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--pca", "t.safetensors", "--directions", "d.safetensors"], "--directions and --pca"),
        (
            ["--plane", "b.safetensors", "--plane", "c.safetensors", "--pca", "t.safetensors"],
            "--pca and --plane",
        ),
    ],
)
def test_two_ways_to_make_the_plane(surface, tmp_path, flags, named):
    assert_user_error(surface(*flags), rf"choose one way to make the plane, got {re.escape(named)}")
    assert not (tmp_path / "out").exists()


def test_plane_through_identical_models(surface, tmp_path):
    w = save_weights(build_model("mlp"), tmp_path / "w.safetensors")
    assert_user_error(
        surface("--weights", w, "--plane", w, "--plane", w),
        r"models A and B are identical: they define no plane",
    )


def test_pca_of_a_file_that_is_not_a_trajectory(surface, tmp_path):
    w = save_weights(build_model("mlp"), tmp_path / "w.safetensors")
    assert_user_error(
        surface("--pca", w), r"is not a basinscope trajectory", "trajectory_to_safetensors"
    )


def test_trajectory_file_missing(surface, tmp_path):
    assert_user_error(
        surface("--trajectory", tmp_path / "nope.safetensors"),
        r"cannot read trajectory .*nope\.safetensors",
    )


# -- engine options -------------------------------------------------------------------


def test_unknown_bn_policy(surface, tmp_path):
    assert_user_error(
        surface("--bn", "bogus"),
        r"unknown --bn 'bogus': expected one of stored, recompute",
    )


def test_unknown_strategy(surface):
    assert_user_error(
        surface("--strategy", "bogus"),
        r"unknown --strategy 'bogus': expected one of auto, vmap, loop",
    )


def test_unknown_dtype(surface):
    assert_user_error(
        surface("--dtype", "int8"),
        r"unknown --dtype 'int8': expected one of float32, float64, bfloat16, float16",
    )


def test_unknown_normalization_and_bias_policy(surface):
    assert_user_error(
        surface("--normalization", "bogus"),
        r"unknown --normalization 'bogus': expected one of filter, layer, model, none",
    )
    assert_user_error(
        surface("--bias-policy", "bogus"),
        r"unknown --bias-policy 'bogus': expected one of zero, include, as_weights",
    )


@pytest.mark.parametrize("flag", ["--chunk-size", "--batch-size", "--bn-batches"])
def test_sizes_below_one(surface, tmp_path, flag):
    """Refused up front (not a ZeroDivisionError), before a run folder is written."""
    assert_user_error(surface(flag, "0"), rf"{flag} must be an integer >= 1, got 0")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(surface):
    assert_user_error(
        surface("--device", "cuda"),
        r"--device 'cuda' is not available here",
        r"use --device cpu",
    )


# -- run folders ----------------------------------------------------------------------


def test_different_spec_in_an_existing_run_folder(surface, tmp_path):
    assert surface().code == 0
    manifest = (tmp_path / "out" / "manifest.json").read_text()
    err = assert_user_error(
        surface("--seed", "1"),
        r"out already holds a different run \(2 settings differ\)",
        r"spec\.attrs\.seed: 0 -> 1",
        r"fingerprints\.directions",
        r"To resume it, repeat the original command",
        r"for a new run pass another --out folder \(or delete this one\)",
    )
    assert "seed" in err
    assert (tmp_path / "out" / "manifest.json").read_text() == manifest
    # the original command still reuses the run
    assert surface().code == 0


def test_out_folder_that_is_not_a_run(surface, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert_user_error(
        surface(),
        r"out exists, is not empty and has no manifest\.json",
        r"it is not a basinscope run folder",
        r"Pass an empty or new --out folder",
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]


def test_out_folder_with_a_broken_manifest(surface, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text("{not json")
    assert_user_error(
        surface(), r"manifest\.json exists but is not readable JSON", "choose another --out"
    )


def test_train_into_a_folder_holding_another_run(cli, surface, tmp_path):
    assert surface().code == 0
    assert_user_error(
        cli("train", "--model", "mlp", "--steps", "2", "--no-progress", "--out", tmp_path / "out"),
        r"already holds a different run",
        r"kind: 'landscape' -> 'train'",
    )


# -- plot -----------------------------------------------------------------------------


def test_plot_a_folder_that_is_not_a_run(cli, tmp_path):
    assert_user_error(
        cli("plot", tmp_path), rf"{re.escape(str(tmp_path))} is not a basinscope run folder"
    )
    assert_user_error(
        cli("plot", tmp_path / "nope"), r"nope is not a basinscope run folder: it has no manifest"
    )


def test_plot_a_train_run(cli, tmp_path):
    """A train run's result has a figure too (its loss curve): plot draws it, and only it."""
    res = cli(
        "train",
        "--model",
        "mlp",
        "--steps",
        "2",
        "--no-progress",
        "--no-plot",
        "--out",
        tmp_path / "t",
    )
    assert res.code == 0, res.err
    drawn = cli("plot", tmp_path / "t", "--format", "png", "--json")
    assert drawn.code == 0, drawn.err
    figure = tmp_path / "t" / "figures" / "train.png"
    assert json.loads(drawn.out)["figures"] == [str(figure)]
    assert figure.stat().st_size > 0
    assert_user_error(
        cli("plot", tmp_path / "t", "--format", "bogus"), r"cannot save figures as bogus"
    )


def test_plot_an_unfinished_run(cli, surface, tmp_path):
    assert surface().code == 0
    run = tmp_path / "out"
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "result.json").unlink()
    assert_user_error(
        cli("plot", run),
        r"holds an unfinished landscape run \(status 'running'\)",
        r"run the command that wrote it again to finish it",
    )


def test_plot_unknown_kind_and_variable(cli, surface, tmp_path):
    assert surface().code == 0
    assert_user_error(
        cli("plot", tmp_path / "out", "--kind", "bogus"),
        r"unknown figure kinds \['bogus'\]: expected some of contour, filled, heatmap, 3d, html, vtp",
    )
    assert_user_error(
        cli("plot", tmp_path / "out", "--var", "test_loss"),
        r"has no variables \['test_loss'\]; it has \['train_accuracy', 'train_loss'\]",
    )


# -- train and demo -------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, patterns",
    [
        (["--optimizer", "bogus"], [r"unknown optimizer 'bogus'", r"'sgd', 'adam', 'adamw'"]),
        (["--schedule", "bogus"], [r"unknown learning-rate schedule 'bogus'"]),
        (["--steps", "0"], [r"steps must be >= 1, got 0"]),
        (["--checkpoint-steps", "a,b"], [r"--checkpoint-steps must be comma-separated integers"]),
        (["--checkpoint-every", "-1"], [r"--checkpoint-every must be an integer >= 0, got -1"]),
        (["--checkpoint-steps", "100"], [re.escape("checkpoint_steps must lie in [0, steps]")]),
        (["--frozen", "nomatch*"], [r"the frozen pattern 'nomatch\*' matches no parameter"]),
        (["--model", "nosuchmod:f"], [r"model module 'nosuchmod'"]),
        (["--data", "cifar"], [r"unknown data spec 'cifar'"]),
    ],
)
def test_train_errors(cli, tmp_path, flags, patterns):
    args = ["train", "--model", "mlp", "--steps", "5", "--no-progress", "--out", tmp_path / "t"]
    assert_user_error(cli(*args, *flags), *patterns)


@pytest.mark.parametrize(
    "args, patterns",
    [
        (["demo", "--set", "grid=1", "--quick"], [r"grid must be an integer >= 3, got 1"]),
        (["demo", "--set", "gird=5"], [r"unknown setting 'gird'", r"did you mean 'grid'\?"]),
        (["demo", "--set", "grid"], [r"--set expects key=value", r"got 'grid'"]),
        (
            ["demo", "--set", "angles=ninety"],
            [r"setting 'angles' expects a list of floats, got 'ninety'", r"angles=\[0, 15, 35\]"],
        ),
        (
            ["demo", "--set", "copies=1"],
            [r"copies must be an integer >= 2, got 1 \(the barrier is between two"],
        ),
        (["demo", "--set", 'strategies=["ft", "dfr"]'], [r"dfr needs a held-out set"]),
        (["demo", "--set", "finetune_lr=fast"], [r"'finetune_lr' expects float, got 'fast'"]),
        (["demo", "--config", "nosuch.toml"], [r"--config: no such file 'nosuch.toml'"]),
        (
            ["study", "rotated-digit"],
            [r"unknown study 'rotated-digit'", r"Did you mean 'rotated-digits'\?"],
        ),
        (["study"], [r"which study\?", r"rotated-digits"]),
        (
            ["demo", "--threads", "0"],
            [r"threads must be a whole number from 1 to 1,024 \(torch CPU threads\), got 0"],
        ),
        (
            ["study", "flatness-vs-batch-size", "--threads", "2"],
            [
                r"study 'flatness-vs-batch-size' sets its threads in its settings \(threads=1",
                r"use --set threads=2 instead",
            ],
        ),
        (["report", "nowhere"], [r"'nowhere' is not a folder: pass the run folder \(--out\)"]),
    ],
)
def test_study_errors(cli, tmp_path, monkeypatch, args, patterns):
    monkeypatch.chdir(tmp_path)
    assert_user_error(
        cli(*args, "--out", tmp_path / "runs") if args[0] != "report" else cli(*args), *patterns
    )
    assert not (tmp_path / "runs").exists()


def test_study_config_file_errors(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("grid = [1, 2\n")
    assert_user_error(cli("demo", "--config", bad), r"bad.toml: not valid TOML")
    bad.write_text("grid = 5\nbogus = 1\n")
    assert_user_error(cli("demo", "--config", bad), r"unknown setting 'bogus'")
    bad.write_text('grid = "fine"\n')
    assert_user_error(cli("demo", "--config", bad), r"setting 'grid' expects int, got 'fine'")


# -- the parser -----------------------------------------------------------------------


def test_unknown_option_is_a_usage_error(cli):
    res = cli("surface", "--bogus-flag")
    assert res.code == 2
    assert "Traceback" not in res.err
    assert "Usage:" in res.err and "surface" in res.err
    assert "No such option: --bogus-flag" in res.err


def test_bad_option_value_is_a_usage_error(cli):
    res = cli("surface", "--chunk-size", "many")
    assert res.code == 2
    assert "Traceback" not in res.err
    assert "Usage:" in res.err
    assert "Invalid value for '--chunk-size'" in res.err
    assert "integer" in res.err


def test_unknown_command_is_a_usage_error(cli):
    res = cli("surfac")
    assert res.code == 2
    assert "Traceback" not in res.err
    assert "No such command 'surfac'" in res.err


def test_no_arguments_prints_the_help(cli):
    res = cli()
    assert res.code == 2
    assert "Traceback" not in res.err
    assert "Usage:" in res.out + res.err
    assert "surface" in res.out + res.err


# -- Ctrl-C ---------------------------------------------------------------------------


def test_ctrl_c_exits_130_with_the_resume_hint(cli, monkeypatch):
    """typer turns KeyboardInterrupt into a returned 130; the hint must still be printed."""
    import basinscope.cli.landscape as landscape

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(landscape, "line_from_files", interrupted)
    res = cli("interpolate", "--model", "mlp", *QUIET)
    assert res.code == 130
    assert "Traceback" not in res.err
    assert "interrupted: finished chunks are saved in the run folder" in res.err
    assert "run the same command again to resume" in res.err
