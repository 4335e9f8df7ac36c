"""``basinscope similarity / distance / rewind / criticality / finetune`` through the real entry point.

Two tiny MLPs (hidden width 16) trained for 20 steps on 300 digits from different seeds,
plus the first one's initialisation; every command's ``--json`` happy path with tiny
settings, and its user errors by message (exit 2, ``error:`` on stderr, no traceback).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from basinscope.cli.main import main

KWARGS = '{"hidden": [16]}'
BASE = ("--model", "mlp", "--model-kwargs", KWARGS, "--data", "digits", "--no-progress")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    from basinscope.data import load_digits
    from basinscope.models import build_model, save_weights
    from basinscope.training import TrainConfig, train

    folder = tmp_path_factory.mktemp("weights")
    data = load_digits("train").subset(list(range(300)))
    paths = {}
    for seed in range(2):
        net = build_model("mlp", {"hidden": [16]}, init_seed=seed)
        if seed == 0:
            paths["init"] = save_weights(net, folder / "init.safetensors")
        trained = train(net, data, TrainConfig(steps=20, batch_size=32, lr=0.1, data_seed=seed))
        paths[f"m{seed}"] = save_weights(trained.model, folder / f"m{seed}.safetensors")
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
    assert io.out.count("\n") == 1, io.out
    return json.loads(io.out)


def assert_error(capsys, args, *patterns):
    code, io = run(capsys, *args)
    assert code == 2, (code, io.err)
    assert "Traceback" not in io.err, io.err
    assert io.err.startswith("error: "), io.err
    assert io.out == ""
    for p in patterns:
        assert re.search(p, io.err), f"{p!r} not in {io.err!r}"


def check_result_run(d: dict, run_dir: Path, group: str, *figures: str) -> dict:
    """A run folder of the result protocol: the manifest (complete, the command's spec under
    ``command``, the inputs' fingerprints), result.json == stdout == the loaded result's
    dict, and the figures."""
    from basinscope.store import load

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["format"] == 2
    assert manifest["result"] == {"kind": d["kind"], "schema": d["schema"]}
    assert manifest["command"][group]["model"] == "mlp"
    assert json.loads(manifest["command"][group]["model_kwargs"]) == {"hidden": [16]}
    assert set(manifest["fingerprints"]) == {"models", "data"}
    assert json.loads((run_dir / "result.json").read_text()) == d
    assert json.loads(json.dumps(load(run_dir).to_dict())) == d
    for name in figures:
        for ext in ("png", "pdf"):
            assert (run_dir / "figures" / f"{name}.{ext}").stat().st_size > 0
    return manifest


# -- similarity ------------------------------------------------------------------------------
def test_similarity_json(capsys, weights, tmp_path):
    d = ok_json(
        capsys,
        "similarity",
        *BASE,
        "--weights",
        weights["m0"],
        "--weights",
        weights["m1"],
        "--max-examples",
        "200",
        "--batch-size",
        "100",
        "--out",
        tmp_path / "sim",
    )
    manifest = check_result_run(d, tmp_path / "sim", "models", "cka")
    assert d["kind"] == "cka" and d["models"] == ["m0", "m1"] and d["split"] == "test"
    assert d["layers_a"] == d["layers_b"] == ["fc1", "fc2"]
    assert d["method"] == "minibatch" and d["num_examples"] == 200
    assert "Nguyen" in d["definition"] and d["spec"]["method"] == "minibatch"
    assert manifest["command"]["cka"]["max_examples"] == 200
    assert len(d["matrix"]) == 2 and len(d["matrix"][0]) == 2
    assert all(0.0 <= d["matrix"][i][i] <= 1.0 + 1e-9 for i in range(2))


def test_similarity_linear_off_diagonal_layers(capsys, weights, tmp_path):
    d = ok_json(
        capsys,
        "similarity",
        *BASE,
        "--weights",
        weights["m0"],
        "--weights",
        weights["m0"],
        "--method",
        "linear",
        "--layers-a",
        "fc1",
        "--layers-b",
        "fc2",
        "--max-examples",
        "100",
        "--out",
        tmp_path / "sim2",
    )
    assert d["layers_a"] == ["fc1"] and d["layers_b"] == ["fc2"] and len(d["matrix"]) == 1
    assert d["method"] == "linear" and "Kornblith" in d["definition"]
    code, io = run(capsys, *args_of_linear(weights), "--out", tmp_path / "sim3")
    assert code == 0, io.err
    assert "the models share no layer names" in io.err and io.out == ""


def args_of_linear(weights) -> list:
    two = ["--weights", weights["m0"], "--weights", weights["m0"]]
    args = ["--method", "linear", "--layers-a", "fc1", "--layers-b", "fc2", "--max-examples", "100"]
    return ["similarity", *BASE, *two, *args]


def test_similarity_errors(capsys, weights, tmp_path):
    assert_error(
        capsys,
        ["similarity", *BASE, "--weights", weights["m0"]],
        "exactly two models are compared, got 1 --weights",
    )
    args = ["similarity", *BASE, "--weights", weights["m0"], "--weights", weights["m1"]]
    assert_error(
        capsys,
        [*args, "--method", "cosine"],
        "unknown --method 'cosine': expected one of minibatch, linear, debiased, rbf",
    )
    assert_error(capsys, [*args, "--batch-size", "3"], "--batch-size must be an integer >= 4")
    out = tmp_path / "bad"
    assert_error(capsys, [*args, "--layers-a", "nope", "--out", out], "no modules named")
    assert not out.exists()


# -- distance --------------------------------------------------------------------------------
def test_distance_json_with_mistakes(capsys, weights, tmp_path):
    d = ok_json(
        capsys,
        "distance",
        *BASE,
        "--weights",
        weights["init"],
        "--weights",
        weights["m0"],
        "--mistakes",
        "--out",
        tmp_path / "dist",
    )
    check_result_run(d, tmp_path / "dist", "models", "distance_and_mistakes")
    assert d["kind"] == "distance_and_mistakes"
    dist, m = d["distance"], d["mistakes"]
    assert dist["kind"] == "distance" and dist["models"] == ["init", "m0"]
    assert set(dist["per_module"]) == {"fc1", "fc2"}
    assert dist["overall"]["l2"] > 0
    assert m["kind"] == "mistakes" and m["split"] == "test"
    both_wrong = m["both_wrong_same"] + m["both_wrong_different"]
    parts = m["both_right"] + both_wrong + m["only_a_wrong"] + m["only_b_wrong"]
    assert parts == m["n"] and 0 <= m["agreement"] <= 1
    assert "argmax" in d["definition"]["agreement"]


def test_distance_modules_no_mistakes(capsys, weights, tmp_path):
    d = ok_json(
        capsys,
        "distance",
        *BASE,
        "--weights",
        weights["m0"],
        "--weights",
        weights["m1"],
        "--modules",
        "fc1",
        "--out",
        tmp_path / "dist2",
    )
    check_result_run(d, tmp_path / "dist2", "models", "distance")
    assert d["kind"] == "distance" and list(d["per_module"]) == ["fc1"]
    assert d["spec"]["modules"] == ["fc1"] and "arccos" in d["definition"]


def test_distance_errors(capsys, weights, tmp_path):
    assert_error(capsys, ["distance", *BASE], "exactly two models are compared, got 0 --weights")
    out = tmp_path / "bad"
    args = ["distance", *BASE, "--weights", weights["m0"], "--weights", weights["m1"]]
    assert_error(capsys, [*args, "--modules", "conv9", "--out", out], "'conv9' owns no parameters")
    assert not out.exists()


# -- rewind ----------------------------------------------------------------------------------
def test_rewind_json(capsys, weights, tmp_path):
    d = ok_json(
        capsys,
        "rewind",
        *BASE,
        "--weights",
        weights["m0"],
        "--init",
        weights["init"],
        "--strategy",
        "loop",
        "--out",
        tmp_path / "rw",
    )
    check_result_run(d, tmp_path / "rw", "model", "rewind")
    assert d["kind"] == "rewind" and list(d["rewound"]) == ["fc1", "fc2"]
    assert d["split"] == "test" and set(d["baseline"]) == {"loss", "accuracy"}
    assert d["spec"]["engine"]["strategy"] == "loop" and d["spec"]["split"] == "test"
    for m, r in d["rewound"].items():
        drop = -d["change"][m]["accuracy"]
        assert drop == pytest.approx(d["baseline"]["accuracy"] - r["accuracy"])


def test_rewind_errors(capsys, weights):
    assert_error(capsys, ["rewind", *BASE, "--weights", weights["m0"]], "--init is required")
    assert_error(
        capsys,
        ["rewind", *BASE, "--weights", weights["m0"], "--init", weights["init"], "--modules", "x"],
        "'x' owns no parameters",
    )


# -- criticality -----------------------------------------------------------------------------
def test_criticality_json(capsys, weights, tmp_path):
    d = ok_json(
        capsys,
        "criticality",
        *BASE,
        "--weights",
        weights["m0"],
        "--init",
        weights["init"],
        "--alphas",
        "0:1:3",
        "--sigmas",
        "0.05:0.2:2",
        "--samples",
        "2",
        "--strategy",
        "loop",
        "--out",
        tmp_path / "crit",
    )
    check_result_run(d, tmp_path / "crit", "model", "criticality")
    assert d["kind"] == "criticality" and set(d["modules"]) == {"fc1", "fc2"}
    mu = [float(m["mu"]) for m in d["modules"].values()]
    assert float(d["network_criticality"]) == pytest.approx(sum(mu))
    assert d["settings"]["noise"] == "absolute" and d["settings"]["samples"] == 2
    assert d["definition"]["noise"].startswith("absolute: sigma_eff = sigma")
    assert d["spec"]["noise_variant"] == "absolute" and d["settings"]["split"] == "train"
    assert len(d["alphas"]) == 3 and len(d["sigmas"]) == 2
    assert d["epsilon"] == pytest.approx(d["baseline_loss"] + 0.1)


def test_criticality_errors(capsys, weights, tmp_path):
    args = ["criticality", *BASE, "--weights", weights["m0"], "--init", weights["init"]]
    assert_error(capsys, [*args, "--samples", "3"], "--samples must be an even number")
    assert_error(capsys, [*args, "--sigmas", "0:1:3"], "every sigma must be > 0")
    assert_error(capsys, [*args, "--alphas", "0-1"], "bad grid range '0-1' for --alphas")
    assert_error(
        capsys,
        [*args, "--noise-variant", "huge"],
        "unknown --noise-variant 'huge': expected one of absolute, frobenius",
    )
    assert_error(capsys, [*args, "--alphas", "0:0:1"], "the valley plot needs a grid of at least 2")


# -- finetune --------------------------------------------------------------------------------
def test_finetune_json_two_strategies(capsys, weights, tmp_path):
    d = ok_json(
        capsys,
        "finetune",
        *BASE,
        "--weights",
        weights["m0"],
        "--rotation",
        "35",
        "--strategy",
        "ft",
        "--strategy",
        "surgical",
        "--blocks",
        "fc2",
        "--steps",
        "5",
        "--batch-size",
        "32",
        "--out",
        tmp_path / "ft",
    )
    manifest = check_result_run(d, tmp_path / "ft", "model", "finetune_comparison")
    assert d["kind"] == "finetune_comparison"
    assert d["target"]["rotation"] == 35.0 and d["source"]["rotation"] == 0.0
    assert manifest["command"]["data"]["rotation"] == 35.0
    assert manifest["command"]["source_rotation"] == 0.0
    assert [r["strategy"] for r in d["strategies"]] == ["ft", "surgical"]
    for s in d["strategies"]:
        assert s["kind"] == "finetune" and s["config"]["steps"] == 5
        assert Path(d["weights_files"][s["strategy"]]).is_file()
        assert set(s["before"]) == set(s["after"]) == {"source", "target"}
        src, tgt = s["before"]["source"]["accuracy"], s["after"]["source"]["accuracy"]
        assert s["forgetting"] == pytest.approx(src - tgt)
    surgical = d["strategies"][1]
    assert surgical["trainable"] == ["fc2.weight", "fc2.bias"]
    assert (
        surgical["spec"]["blocks"] == ["fc2"] and "Lee et al." in surgical["definition"]["strategy"]
    )
    assert surgical["trainable_params"] == 16 * 10 + 10
    assert surgical["trainable_params"] < d["strategies"][0]["trainable_params"]


def test_finetune_errors(capsys, weights, tmp_path):
    args = ["finetune", *BASE, "--weights", weights["m0"], "--steps", "1"]
    assert_error(capsys, ["finetune", *BASE], "--weights is required")
    assert_error(
        capsys,
        [*args, "--strategy", "magic"],
        "unknown --strategy 'magic': expected one of ft, lp, lp-ft, surgical, dfr, guided",
    )
    assert_error(capsys, [*args, "--blocks", "fc2"], "--blocks is only used by --strategy surgical")
    assert_error(
        capsys, [*args, "--strategy", "ft", "--strategy", "ft"], "each --strategy may be given once"
    )
    out = tmp_path / "bad"
    assert_error(
        capsys,
        [*args, "--strategy", "surgical", "--blocks", "conv*", "--out", out],
        "'conv\\*' matches no module",
    )
    assert not out.exists()
    assert_error(capsys, [*args, "--strategy", "surgical"], "needs blocks")
