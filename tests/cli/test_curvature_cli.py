import json

import pytest

from basinscope.cli.main import main
from basinscope.models import build_model, save_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    p = tmp_path_factory.mktemp("w") / "mlp.safetensors"
    save_weights(build_model("mlp", {"hidden": [8]}, init_seed=0), p)
    return p


def run(capsys, *args):
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


BASE = ("--model", "mlp", "--model-kwargs", '{"hidden": [8]}', "--subset", "120", "--no-progress")


def test_hessian_json(capsys, weights, tmp_path):
    code, io = run(
        capsys,
        "hessian",
        *BASE,
        "--weights",
        str(weights),
        "--top",
        "2",
        "--bottom",
        "1",
        "--density",
        "--per-layer",
        "--out",
        str(tmp_path / "h"),
        "--json",
    )
    assert code == 0, io.err
    d = json.loads(io.out)
    assert d["kind"] == "hessian" and d["spec"]["k_top"] == 2 and d["spec"]["subset"] == 120
    assert len(d["top"]["eigenvalues"]) == 2 and all(d["top"]["converged"])
    assert d["semantics"]["num_examples"] == 120
    assert {m["module"] for m in d["per_module"]} == {"fc1", "fc2"}
    assert d["density"]["num_runs"] == 4 and d["definition"]["operator"].startswith("hessian")
    assert (tmp_path / "h" / "figures" / "hessian.png").stat().st_size > 1000
    assert (tmp_path / "h" / "tensors" / "eigenvectors.safetensors").is_file()
    assert json.loads((tmp_path / "h" / "result.json").read_text())["top"] == d["top"]


def test_hessian_map_writes_a_landscape_run(capsys, weights, tmp_path):
    code, io = run(
        capsys,
        "hessian",
        *BASE,
        "--weights",
        str(weights),
        "--map",
        "--xrange",
        "-1:1:2",
        "--yrange",
        "-1:1:2",
        "--out",
        str(tmp_path / "m"),
        "--json",
    )
    assert code == 0, io.err
    d = json.loads(io.out)
    assert d["kind"] == "landscape" and d["dataset"]["attrs"]["kind"] == "curvature_map"
    names = set(d["dataset"]["data_vars"])
    assert names >= {"train_ratio", "train_lambda_min", "train_lambda_max"}
    assert (tmp_path / "m" / "figures" / "train_ratio_contour.png").stat().st_size > 1000
    from basinscope.store import load

    assert json.loads(json.dumps(load(tmp_path / "m").to_dict())) == d


def test_sharpness_json(capsys, weights, tmp_path):
    code, io = run(
        capsys,
        "sharpness",
        *BASE,
        "--weights",
        str(weights),
        "--measure",
        "average",
        "--measure",
        "filter_normalized",
        "--samples",
        "4",
        "--directions",
        "3",
        "--out",
        str(tmp_path / "s"),
        "--json",
    )
    assert code == 0, io.err
    d = json.loads(io.out)
    assert d["kind"] == "sharpness_measures" and d["spec"]["measure"] == [
        "average",
        "filter_normalized",
    ]
    assert [m["measure"] for m in d["measures"]] == ["average", "filter_normalized"]
    assert all(m["definition"] for m in d["measures"])
    assert d["definition"]["average"] == d["measures"][0]["definition"]
    assert d["measures"][0]["params"]["samples"] == 4
    assert d["measures"][1]["params"]["num_directions"] == 3
    assert (tmp_path / "s" / "figures" / "sharpness_measures.png").is_file()


def test_one_sharpness_measure_is_one_result(capsys, weights, tmp_path):
    code, io = run(
        capsys,
        "sharpness",
        *BASE,
        "--weights",
        str(weights),
        "--measure",
        "worst_case",
        "--relative",
        "--norm",
        "linf",
        "--rho",
        "0.001",
        "--steps",
        "2",
        "--restarts",
        "1",
        "--out",
        str(tmp_path / "s"),
        "--json",
    )
    assert code == 0, io.err
    d = json.loads(io.out)
    assert d["kind"] == "sharpness" and d["measure"] == "worst_case" and "Keskar" in d["definition"]
    assert d["params"]["relative"] is True and d["params"]["rho"] == 0.001
    assert d["semantics"]["num_examples"] == 120 and len(d["values"]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("hessian", "--operator", "fisher"),
            "unknown --operator 'fisher': expected one of hessian",
        ),
        (("hessian", "--trace", "fast"), "unknown --trace 'fast': expected one of hutch"),
        (("hessian", "--dtype", "float16"), "unknown --dtype 'float16'"),
        (
            ("hessian", "--bn-mode", "batch"),
            "unknown --bn-mode 'batch': expected one of eval, train",
        ),
        (("hessian", "--hvp", "fast"), "unknown --hvp 'fast'"),
        (("hessian", "--map", "--xrange", "1:0:3"), "bad grid range '1:0:3'"),
        (("hessian", "--yrange", "1:0:3"), "bad grid range '1:0:3' for --yrange"),
        (("hessian", "--device", "nosuch"), "--device 'nosuch' is not available here"),
        (("sharpness", "--measure", "flatness"), r"unknown --measure 'flatness': expected one of"),
        (("sharpness", "--measure", "worst_case", "--norm", "l3"), "unknown --norm 'l3'"),
        (
            ("sharpness", "--sigma", "0"),
            r"--sigma must be a positive number, got 0\.0; e\.g\. --sigma",
        ),
    ],
)
def test_curvature_errors_are_explained(capsys, weights, tmp_path, args, message):
    cmd, *rest = args
    code, io = run(
        capsys, cmd, *BASE, "--weights", str(weights), *rest, "--out", str(tmp_path / "x")
    )
    assert code == 2
    assert "Traceback" not in io.err
    import re

    assert re.search(message, io.err), io.err
