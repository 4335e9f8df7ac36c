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


def check_run(d: dict, *figures: str) -> dict:
    run_dir = Path(d["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["spec"]["model"] == "mlp"
    results = json.loads((run_dir / "results.json").read_text())
    assert {**results, "run_dir": d["run_dir"], "figures": d["figures"]} == d
    for name in figures:
        for ext in ("png", "pdf"):
            f = run_dir / "figures" / f"{name}.{ext}"
            assert f.is_file() and str(f) in d["figures"], f
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
    check_run(d, "cka")
    assert d["layers_a"] == d["layers_b"] == ["fc1", "fc2"]
    assert d["method"] == "minibatch" and d["num_examples"] == 200
    assert set(d["diagonal"]) == {"fc1", "fc2"}
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in d["diagonal"].values())
    assert len(d["matrix"]) == 2 and len(d["matrix"][0]) == 2


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
    assert d["diagonal"] is None and len(d["matrix"]) == 1


def test_similarity_errors(capsys, weights, tmp_path):
    assert_error(capsys, ["similarity", *BASE, "--weights", weights["m0"]], "exactly two --weights")
    args = ["similarity", *BASE, "--weights", weights["m0"], "--weights", weights["m1"]]
    assert_error(capsys, [*args, "--method", "cosine"], "unknown CKA method 'cosine'")
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
    check_run(d, "distance", "mistakes")
    assert set(d["per_module"]) == {"fc1", "fc2"}
    assert [r["module"] for r in d["table"]] == ["fc1", "fc2", "(all)"]
    assert d["overall"]["l2"] > 0
    m = d["mistakes"]
    parts = m["both_right"] + m["both_wrong"] + m["only_a_wrong"] + m["only_b_wrong"]
    assert parts == m["n"] and 0 <= m["agreement"] <= 1


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
    assert list(d["per_module"]) == ["fc1"] and d["mistakes"] is None


def test_distance_errors(capsys, weights, tmp_path):
    assert_error(capsys, ["distance", *BASE], "exactly two --weights")
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
    check_run(d, "rewind")
    assert [r["module"] for r in d["table"]] == ["fc1", "fc2"]
    assert d["split"] == "test" and set(d["baseline"]) == {"loss", "accuracy"}
    for r in d["table"]:
        assert r["accuracy_drop"] == pytest.approx(d["baseline"]["accuracy"] - r["accuracy"])


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
    check_run(d, "valley_fc1", "valley_fc2")
    assert set(d["modules"]) == set(d["mu"]) == {"fc1", "fc2"}
    assert d["settings"]["noise"] == "absolute" and d["settings"]["samples"] == 2
    assert len(d["alphas"]) == 3 and len(d["sigmas"]) == 2
    assert d["epsilon"] == pytest.approx(d["baseline_loss"] + 0.1)


def test_criticality_errors(capsys, weights, tmp_path):
    args = ["criticality", *BASE, "--weights", weights["m0"], "--init", weights["init"]]
    assert_error(capsys, [*args, "--samples", "3"], "--samples must be an even number")
    assert_error(capsys, [*args, "--sigmas", "0:1:3"], "every sigma must be > 0")
    assert_error(capsys, [*args, "--alphas", "0-1"], "bad grid range '0-1' for --alphas")
    assert_error(capsys, [*args, "--noise-variant", "huge"], "unknown noise variant 'huge'")


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
    manifest = check_run(d, "finetune")
    assert manifest["spec"]["target"]["rotation"] == 35.0
    assert manifest["spec"]["source"]["rotation"] == 0.0
    assert [r["strategy"] for r in d["table"]] == ["ft", "surgical"]
    for s in d["strategies"]:
        assert Path(s["weights_file"]).is_file()
        assert set(s["before"]) == set(s["after"]) == {"source", "target"}
        src, tgt = s["before"]["source"]["accuracy"], s["after"]["source"]["accuracy"]
        assert s["forgetting"] == pytest.approx(src - tgt)
    surgical = d["strategies"][1]
    assert surgical["trainable"] == ["fc2.weight", "fc2.bias"]
    assert d["table"][1]["trainable_params"] < d["table"][0]["trainable_params"]


def test_finetune_errors(capsys, weights, tmp_path):
    args = ["finetune", *BASE, "--weights", weights["m0"], "--steps", "1"]
    assert_error(capsys, ["finetune", *BASE], "--weights is required")
    assert_error(capsys, [*args, "--strategy", "magic"], "unknown fine-tuning strategy 'magic'")
    out = tmp_path / "bad"
    assert_error(
        capsys,
        [*args, "--strategy", "surgical", "--blocks", "conv*", "--out", out],
        "'conv\\*' matches no module",
    )
    assert not out.exists()
    assert_error(capsys, [*args, "--strategy", "surgical"], "needs blocks")
