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
    assert len(d["top"]["eigenvalues"]) == 2 and all(d["top"]["converged"])
    assert d["semantics"]["num_examples"] == 120
    assert {m["module"] for m in d["per_module"]} == {"fc1", "fc2"}
    assert any(f.endswith("spectral_density.png") for f in d["figures"])
    assert json.loads((tmp_path / "h" / "results.json").read_text())["top"] == d["top"]


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
    assert set(d["metrics"]) >= {"train_ratio", "train_lambda_min", "train_lambda_max"}
    assert any(f.endswith("train_ratio_contour.png") for f in d["figures"])


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
    assert [m["measure"] for m in d["measures"]] == ["average", "filter_normalized"]
    assert all(m["definition"] for m in d["measures"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("hessian", "--operator", "fisher"), "unknown curvature operator 'fisher'"),
        (("hessian", "--trace", "fast"), "unknown trace method 'fast'"),
        (("hessian", "--dtype", "float16"), "unknown dtype 'float16'"),
        (("hessian", "--bn-mode", "batch"), "unknown --bn-mode 'batch'"),
        (("hessian", "--hvp", "fast"), "unknown --hvp 'fast'"),
        (("hessian", "--map", "--xrange", "1:0:3"), "bad grid range '1:0:3'"),
        (("sharpness", "--measure", "flatness"), r"unknown sharpness measure\(s\) \['flatness'\]"),
        (("sharpness", "--measure", "worst_case", "--norm", "l3"), "l3"),
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
