"""``basinscope barrier / instability / basin / curve / align / ensemble`` through the real entry point.

Three tiny MLPs (hidden width 16) trained for 20 steps on 300 digits from different seeds;
every command's ``--json`` happy path with tiny settings, and its user errors by message
(exit 2, ``error:`` on stderr, no traceback).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from basinscope.cli.main import main

KWARGS = '{"hidden": [16]}'
BASE = ("--model", "mlp", "--model-kwargs", KWARGS, "--data", "digits", "--no-progress")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> list[Path]:
    from basinscope.data import load_digits
    from basinscope.models import build_model, save_weights
    from basinscope.training import TrainConfig, train

    folder = tmp_path_factory.mktemp("weights")
    data = load_digits("train").subset(list(range(300)))
    paths = []
    for seed in range(3):
        net = build_model("mlp", {"hidden": [16]}, init_seed=seed)
        trained = train(net, data, TrainConfig(steps=20, batch_size=32, lr=0.1, data_seed=seed))
        paths.append(save_weights(trained.model, folder / f"m{seed}.safetensors"))
    return paths


def run(capsys, *args):
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def ok_json(capsys, *args) -> dict:
    code, io = run(capsys, *args, "--json")
    assert code == 0, io.err
    assert io.out.count("\n") == 1, io.out  # one JSON object on one line
    return json.loads(io.out)


def assert_error(capsys, args, *patterns):
    code, io = run(capsys, *args)
    assert code == 2, (code, io.err)
    assert "Traceback" not in io.err, io.err
    assert io.err.startswith("error: "), io.err
    assert io.out == ""
    for p in patterns:
        assert re.search(p, io.err), f"{p!r} not in {io.err!r}"


def check_result_run(d: dict, run_dir: Path, *figures: str, models: str = "models") -> dict:
    """A run folder of the result protocol: the manifest (complete, the command's spec, the
    inputs' fingerprints), result.json == stdout == the loaded result's dict, figures.
    ``models`` is the command's option group of the model(s)."""
    from basinscope.store import load

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["format"] == 2
    assert manifest["result"] == {"kind": d["kind"], "schema": d["schema"]}
    assert manifest["command"][models]["model"] == "mlp"
    assert json.loads(manifest["command"][models]["model_kwargs"]) == {"hidden": [16]}
    assert set(manifest["fingerprints"]) == {"models", "data"}
    assert json.loads((run_dir / "result.json").read_text()) == d
    assert json.loads(json.dumps(load(run_dir).to_dict())) == d
    for name in figures:
        for ext in ("png", "pdf"):
            assert (run_dir / "figures" / f"{name}.{ext}").stat().st_size > 0
    return manifest


# -- barrier -----------------------------------------------------------------------------------
def test_barrier_two_models(capsys, weights, tmp_path):
    d = ok_json(
        capsys,
        "barrier",
        *BASE,
        "--weights",
        weights[0],
        "--weights",
        weights[1],
        "--num-points",
        "5",
        "--refine-rounds",
        "1",
        "--refine-points",
        "3",
        "--bootstrap",
        "20",
        "--out",
        tmp_path / "b",
    )
    assert d["kind"] == "barrier"
    assert d["definition"] == "linear" and "Entezari" in d["definition_formula"]
    assert d["metric"] == "error" and d["split"] == "train"
    assert d["num_points"] == 5 and d["refined"] and 5 < len(d["alphas"]) <= 8
    assert d["alphas"][0] == 0.0 and d["alphas"][-1] == 1.0
    assert d["value"] >= 0 and 0 <= d["worst_alpha"] <= 1
    assert len(d["ci"]) == 2 and d["bootstrap_samples"] == 20
    assert d["models"] == ["m0", "m1"]
    assert d["spec"]["definition"] == "linear" and d["spec"]["bootstrap"] == 20
    manifest = check_result_run(d, tmp_path / "b", "barrier")
    assert len(manifest["fingerprints"]["models"]) == 2
    assert manifest["command"]["barrier"]["definition"] == "linear"


def test_barrier_matrix_and_human_output(capsys, weights, tmp_path):
    args = ["barrier", *BASE, *[a for w in weights for a in ("--weights", w)]]
    args += ["--num-points", "5", "--no-refine", "--definition", "mean", "--metric", "loss"]
    d = ok_json(capsys, *args, "--out", tmp_path / "m")
    assert d["kind"] == "barrier_matrix" and d["labels"] == ["m0", "m1", "m2"]
    assert d["definition"] == "mean" and len(d["pairs"]) == 3
    m = d["matrix"]
    assert [m[i][i] for i in range(3)] == [0.0, 0.0, 0.0]
    assert m[0][1] == m[1][0] == d["pairs"][0]["value"] and m[1][2] == d["pairs"][2]["value"]
    assert d["max_value"] == max(p["value"] for p in d["pairs"])
    assert [p["models"] for p in d["pairs"]] == [["m0", "m1"], ["m0", "m2"], ["m1", "m2"]]
    check_result_run(d, tmp_path / "m", "barrier_matrix")
    two = ("barrier", *BASE, "--weights", weights[0], "--weights", weights[1])
    code, io = run(capsys, *two, "--num-points", "3", "--no-refine", "--out", tmp_path / "h")
    assert code == 0, io.err
    assert io.out == "" and "m0 -- m1: linear error barrier" in io.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--definition", "peak"), "unknown --definition 'peak': expected one of linear, mean"),
        (("--metric", "accuracy"), "unknown --metric 'accuracy': expected one of loss, error"),
        (("--num-points", "2"), "--num-points must be an integer >= 3"),
    ],
)
def test_barrier_errors(capsys, weights, tmp_path, extra, message):
    args = ("barrier", *BASE, "--weights", weights[0], "--weights", weights[1])
    assert_error(capsys, (*args, *extra, "--out", tmp_path / "x"), message)
    assert not (tmp_path / "x").exists()


def test_barrier_needs_two_models(capsys, weights, tmp_path):
    assert_error(
        capsys,
        ("barrier", *BASE, "--weights", weights[0], "--out", tmp_path / "x"),
        "a barrier needs at least 2 models, got 1",
    )


# -- instability ---------------------------------------------------------------------------------
TRAIN = ("--total-steps", "10", "--batch-size", "32", "--lr", "0.1", "--num-points", "5")


def test_instability_sweep(capsys, weights, tmp_path):
    d = ok_json(capsys, "instability", *BASE, *TRAIN, "--k", "5,0", "--out", tmp_path / "i")
    assert d["kind"] == "instability_sweep" and d["ks"] == [0, 5]
    assert d["definition"] == "mean" and d["metric"] == "error"
    assert len(d["results"]) == 2 and d["values"] == [r["value"] for r in d["results"]]
    r = d["results"][1]
    assert r["kind"] == "instability" and r["spec"]["ks"] == [5]
    assert r["k"] == 5 and r["child_seeds"] == [1, 2] and r["pairs"] == [[0, 1]]
    assert r["copy_optimizer_state"] and len(r["details"]) == 1
    assert d["config"]["steps"] == 10 and d["config"]["lr"] == 0.1
    assert d["spec"]["ks"] == [0, 5] and d["spec"]["definition"] == "mean"
    manifest = check_result_run(d, tmp_path / "i", "instability_sweep", models="model")
    command = manifest["command"]
    assert command["instability"]["ks"] == [5, 0] and command["model"]["init_seed"] == 0


def test_instability_transfer(capsys, weights, tmp_path):
    d = ok_json(
        capsys,
        "instability",
        *BASE,
        *TRAIN,
        "--transfer",
        "--pretrained",
        weights[0],
        "--reset-optimizer",
        "--out",
        tmp_path / "t",
    )
    assert d["kind"] == "transfer_instability"
    assert d["pretrained_barrier"] == d["pretrained"]["value"]
    assert d["scratch_barrier"] == d["scratch"]["value"]
    assert d["pretrained"]["k"] == 0 and d["scratch"]["total_steps"] == 10
    assert not d["pretrained"]["copy_optimizer_state"] and d["spec"]["ks"] is None
    manifest = check_result_run(d, tmp_path / "t", "transfer_instability", models="model")
    assert len(manifest["fingerprints"]["models"]) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--k", "0,50"), r"every --k must lie in \[0, --total-steps\] = \[0, 10\], got \[50\]"),
        (("--k", "0,ten"), "--k must be comma-separated integers"),
        (("--transfer",), "--transfer needs --pretrained W"),
        (("--children", "3", "--child-seeds", "1,2"), "--child-seeds has 2 seeds for --children 3"),
        (("--definition", "max"), "unknown --definition 'max': expected one of linear, mean"),
        (("--schedule", "cosine", "--k", "5"), "the 'cosine' schedule depends on the run length"),
    ],
)
def test_instability_errors(capsys, tmp_path, extra, message):
    assert_error(capsys, ("instability", *BASE, *TRAIN, *extra, "--out", tmp_path / "x"), message)
    assert not (tmp_path / "x").exists()


# -- basin -----------------------------------------------------------------------------------
def test_basin(capsys, weights, tmp_path):
    args = ["basin", *BASE, *[a for w in weights for a in ("--weights", w)]]
    args += ["--delta", "5", "--samples", "6", "--pairs", "4", "--out", tmp_path / "bs"]
    d = ok_json(capsys, *args)
    assert (
        d["delta"] == 5 and d["epsilon_estimated"] and d["epsilon"] == d["condition1"]["estimate"]
    )
    assert d["affine_dimension"] == 2 and len(d["vertex_losses"]) == 3
    assert len(d["inside_losses"]) == 6 and len(d["noise_losses"]) == 4
    for i in (1, 2, 3):
        c = d[f"condition{i}"]
        assert c["condition"] == i and len(c["ci"]) == 2 and isinstance(c["holds"], bool)
    assert d["holds"] == all(d[f"condition{i}"]["holds"] for i in (1, 2, 3))
    assert "Definition 3.1" in d["definition"] and d["settings"]["samples"] == 6
    assert d["kind"] == "basin" and d["condition1"]["kind"] == "basin_condition"
    assert d["labels"] == ["m0", "m1", "m2"] and d["spec"]["delta"] == 5
    check_result_run(d, tmp_path / "bs", "basin")
    code, io = run(capsys, *args[:-2], "--epsilon", "0.01", "--out", tmp_path / "h")
    assert code == 0, io.err
    assert "(1) flat inside: estimate" in io.err and "(epsilon, delta)-basin:" in io.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "--delta is required"),
        (("--delta", "0"), "--delta must be a finite number > 0, got 0.0"),
        (("--delta", "1", "--samples", "1"), "--samples must be an integer >= 2"),
        (("--delta", "1", "--metric", "nll"), "unknown --metric 'nll': expected one of loss"),
    ],
)
def test_basin_errors(capsys, weights, tmp_path, extra, message):
    args = ("basin", *BASE, "--weights", weights[0], "--weights", weights[1])
    assert_error(capsys, (*args, *extra, "--out", tmp_path / "x"), message)
    assert not (tmp_path / "x").exists()


def test_basin_needs_weights(capsys, tmp_path):
    assert_error(capsys, ("basin", *BASE, "--delta", "1"), "pass --weights once per solution")


# -- curve -----------------------------------------------------------------------------------
def test_curve(capsys, weights, tmp_path):
    d = ok_json(
        capsys,
        "curve",
        *BASE,
        "--weights",
        weights[0],
        "--weights",
        weights[1],
        "--steps",
        "8",
        "--batch-size",
        "64",
        "--points",
        "5",
        "--splits",
        "train,test",
        "--strategy",
        "loop",
        "--out",
        tmp_path / "c",
    )
    assert d["kind"] == "curve"
    m = d["metrics"]
    t = m["curve"]["coords"]["t"]["data"]
    assert t == [0.0, 0.25, 0.5, 0.75, 1.0] and m["line"]["coords"]["alpha"]["data"] == t
    curve, line = m["curve"]["data_vars"], m["line"]["data_vars"]
    assert {"train_loss", "train_error", "test_loss", "test_error"} <= set(curve)
    assert m["length_ratio"] >= 1 - 1e-6 and m["length_ratio"] == m["length"] / m["distance"]
    assert d["config"]["kind"] == "bezier" and d["config"]["order"] == 2
    assert d["spec"]["kind"] == "bezier" and d["spec"]["steps"] == 8
    assert len(d["history"]["loss"]) == 8
    # the curve's endpoints are the models: equal values at t = 0 and t = 1
    assert curve["train_loss"]["data"][0] == pytest.approx(line["train_loss"]["data"][0], rel=1e-5)
    check_result_run(d, tmp_path / "c", "curve")
    from basinscope.analyses import load_curve
    from basinscope.store import load

    curve = load_curve(d["curve_file"])
    assert Path(d["curve_file"]) == tmp_path / "c" / "curve.safetensors"
    assert curve.kind == "bezier" and len(curve.control_points) == 1
    stored = load(tmp_path / "c").curve  # the points are in the run folder too
    for p, q in zip(curve.points, stored.points):
        assert all(torch.equal(p[k], q[k]) for k in p)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--kind", "spline"), "unknown --kind 'spline': expected one of bezier, polychain"),
        (("--order", "1"), "--order must be at least 2 for a Bezier curve"),
        (("--points", "1"), "--points must be an integer >= 2"),
    ],
)
def test_curve_errors(capsys, weights, tmp_path, extra, message):
    args = ("curve", *BASE, "--weights", weights[0], "--weights", weights[1])
    assert_error(capsys, (*args, *extra, "--out", tmp_path / "x"), message)
    assert not (tmp_path / "x").exists()


def test_curve_needs_two_models(capsys, weights, tmp_path):
    args = ["curve", *BASE, *[a for w in weights for a in ("--weights", w)]]
    assert_error(capsys, args, "a curve joins exactly two models, got 3 --weights")


# -- align -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_align(capsys, weights, tmp_path, method):
    from basinscope.data import load_digits
    from basinscope.models import build_model, load_weights

    saved = tmp_path / "aligned.safetensors"
    d = ok_json(
        capsys,
        "align",
        *BASE,
        "--weights",
        weights[0],
        "--weights",
        weights[1],
        "--method",
        method,
        "--num-points",
        "5",
        "--num-examples",
        "200",
        "--save",
        saved,
        "--out",
        tmp_path / "a",
    )
    assert d["kind"] == "alignment" and d["barrier"]["kind"] == "barrier_comparison"
    assert d["method"] == f"{method}_matching" and d["max_output_diff"] < 1e-4
    assert all(sorted(p) == list(range(len(p))) for p in d["permutations"].values())
    assert d["barrier"]["definition"] == "linear" and d["barrier"]["metric"] == "loss"
    assert len(d["barrier"]["curve_before"]) == len(d["barrier"]["curve_after"]) == 5
    # both ends of the two lines are A and the same function as B
    assert d["barrier"]["curve_after"][-1] == pytest.approx(d["barrier"]["curve_before"][-1], 1e-4)
    assert d["aligned_weights"] == [str(tmp_path / "a" / "model.safetensors"), str(saved)]
    assert d["spec"]["method"] == method and d["labels"] == ["m0", "m1"]
    check_result_run(d, tmp_path / "a", "alignment")
    x = load_digits("train").x[:50]
    b = load_weights(build_model("mlp", {"hidden": [16]}), weights[1]).eval()
    aligned = load_weights(build_model("mlp", {"hidden": [16]}), saved).eval()
    with torch.no_grad():
        assert torch.allclose(aligned(x), b(x), atol=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--method", "optimal"), "unknown --method 'optimal': expected one of weight"),
        (("--save", "out.npz"), "written as .safetensors or .pt"),
        (("--num-points", "2"), "--num-points must be an integer >= 3"),
    ],
)
def test_align_errors(capsys, weights, tmp_path, extra, message):
    args = ("align", *BASE, "--weights", weights[0], "--weights", weights[1])
    assert_error(capsys, (*args, *extra, "--out", tmp_path / "x"), message)
    assert not (tmp_path / "x").exists()


def test_align_needs_two_models(capsys, weights):
    assert_error(capsys, ("align", *BASE, "--weights", weights[0]), "exactly two models, got 1")


# -- ensemble --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "extra", "budget", "members"),
    [
        ("fge", ("--cycles", "2", "--cycle-steps", "4", "--pretrain-steps", "20"), 28, 2),
        ("swa", ("--steps", "6", "--swa-start", "3"), 6, 4),
        ("independent", ("--members", "2", "--budget", "12"), 12, 2),
    ],
)
def test_ensemble(capsys, weights, tmp_path, method, extra, budget, members):
    start = () if method == "independent" else ("--weights", weights[0])
    d = ok_json(
        capsys,
        "ensemble",
        *BASE,
        *start,
        "--method",
        method,
        *extra,
        "--batch-size",
        "32",
        "--num-points",
        "5",
        "--out",
        tmp_path / "e",
    )
    assert d["method"] == method and d["budget"] == budget and d["members"] == members
    assert 0 <= d["ensemble_accuracy"] <= 1 and 0 <= d["diversity"] <= 1
    assert len(d["member_accuracies"]) == len(d["member_files"]) == 2
    assert len(d["barriers"]) == 1 and d["barrier_definition"] == "linear"
    assert all(Path(f).is_file() for f in d["member_files"])
    assert d["kind"] == "ensemble" and d["spec"]["method"] == method
    assert [Path(f).stem for f in d["member_files"]] == d["member_names"]
    check_result_run(d, tmp_path / "e", "ensemble", models="model")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--method", "fge"), "--method fge starts from a trained model: pass its weights"),
        (("--method", "bagging"), "unknown --method 'bagging': expected one of fge"),
        (("--method", "independent", "--budget", "1", "--members", "3"), "less than one update"),
        (("--method", "independent", "--steps", "5", "--budget", "10"), "not both"),
    ],
)
def test_ensemble_errors(capsys, tmp_path, extra, message):
    assert_error(capsys, ("ensemble", *BASE, *extra, "--out", tmp_path / "x"), message)
    assert not (tmp_path / "x").exists()


def test_ensemble_cycle_steps(capsys, weights, tmp_path):
    args = ("ensemble", *BASE, "--weights", weights[0], "--cycle-steps", "1")
    assert_error(capsys, args, "--cycle-steps must be an integer >= 2, got 1")


# -- help -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["barrier", "instability", "basin", "curve", "align", "ensemble"])
def test_help_has_examples(capsys, cmd):
    code, io = run(capsys, cmd, "--help")
    assert code == 0
    assert "Examples:" in io.out and f"basinscope {cmd}" in io.out and "JSON" in io.out


def test_ensemble_swa_barriers_with_recomputed_batchnorm(capsys, tmp_path):
    from basinscope.models import build_model, save_weights

    w = save_weights(
        build_model("mlp", {"hidden": [8], "batchnorm": True}), tmp_path / "bn.safetensors"
    )
    args = ("ensemble", "--model", "mlp", "--model-kwargs", '{"hidden": [8], "batchnorm": true}')
    args += (
        "--weights",
        w,
        "--method",
        "swa",
        "--bn",
        "recompute",
        "--steps",
        "4",
        "--swa-start",
        "2",
    )
    args += ("--num-points", "3", "--out", tmp_path / "x", "--json", "--no-progress")
    code, io = run(capsys, *args)
    assert code == 0, io.err
    out = json.loads(io.out)
    assert out["metrics"]["barrier_details"][0]["bn_policy"] == "recompute"


def test_same_out_with_other_settings_is_refused(capsys, weights, tmp_path):
    args = ("barrier", *BASE, "--weights", weights[0], "--weights", weights[1], "--no-refine")
    args += ("--num-points", "3", "--out", tmp_path / "r")
    code, io = run(capsys, *args)
    assert code == 0, io.err
    assert_error(capsys, (*args, "--definition", "mean"), "already holds a different run")
    assert (tmp_path / "r" / "result.json").is_file()
