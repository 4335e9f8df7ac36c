"""``basinscope merge`` through the real entry point.

A tiny MLP (hidden width 16) trained for 20 steps on 300 digits (the base), fine-tuned for
10 steps on two tasks (rotated and noisy digits); each task's data and validation data as
``.npz`` files. The happy paths (uniform, task arithmetic with ``--select lam``, fisher
with ``--task-data``), the stored result and ``model.safetensors`` (it loads into the
model and equals the library's merge), and every user error of the command by message
(exit 2, one ``error:`` line, no traceback).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from user_errors import assert_one_line

KWARGS = '{"hidden": [16]}'
MLP = ("--model", "mlp", "--model-kwargs", KWARGS, "--no-progress")
TASKS = {"rot": {"rotation": 30.0}, "noise": {"noise": 0.5}}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from basinscope.data import apply_shift, load_digits
    from basinscope.models import build_model, save_weights
    from basinscope.training import TrainConfig, train

    d = tmp_path_factory.mktemp("merge")
    train_data, test_data = load_digits("train"), load_digits("test")
    sub = train_data.subset(list(range(300)))
    net = build_model("mlp", {"hidden": [16]}, init_seed=0)
    base = train(net, sub, TrainConfig(steps=20, batch_size=32, lr=0.1)).model
    out = {"base": save_weights(base, d / "base.safetensors")}
    for i, (name, shift) in enumerate(TASKS.items()):
        tr = apply_shift(sub, seed=i, **shift)
        va = apply_shift(test_data.subset(list(range(120))), seed=i, **shift)
        tuned = train(
            copy.deepcopy(base), tr, TrainConfig(steps=10, batch_size=32, lr=0.05, data_seed=i)
        ).model
        out[name] = save_weights(tuned, d / f"{name}.safetensors")
        for kind, ds in (("train", tr), ("val", va)):
            out[f"{name}-{kind}"] = d / f"{name}-{kind}.npz"
            np.savez(out[f"{name}-{kind}"], x=ds.x.numpy(), y=ds.y.numpy())
    return out


def _w(files, *names) -> list[str]:
    return [a for n in names for a in ("--weights", str(files[n]))]


def _data(files, flag: str, kind: str) -> list[str]:
    return [a for n in TASKS for a in (flag, str(files[f"{n}-{kind}"]))]


def _models(files):
    from basinscope.models import build_model, load_weights

    def one(name):
        return load_weights(build_model("mlp", {"hidden": [16]}), files[name])

    return one("base"), [one(n) for n in TASKS]


def _loaded(path: Path):
    from basinscope.models import build_model, load_weights

    return load_weights(build_model("mlp", {"hidden": [16]}), path)


def _same(model, params) -> None:
    own = dict(model.named_parameters())
    assert set(own) == set(params)
    for k, v in params.items():
        torch.testing.assert_close(own[k].detach(), v, rtol=0, atol=0)


def test_uniform_soup_writes_the_merged_weights(cli, files, tmp_path):
    from basinscope.analyses.merging import merge
    from basinscope.store import load

    out = tmp_path / "run"
    res = cli("merge", *MLP, *_w(files, *TASKS), "--method", "uniform", "--out", out, "--json")
    assert res.code == 0, res.err
    printed = json.loads(res.out)
    assert printed["kind"] == "merge" and printed["method"] == "uniform"
    assert printed["labels"] == list(TASKS) and printed["metrics"] == {}
    stored = load(out)
    base, nets = _models(files)
    want = merge(nets[0], nets, method="uniform", labels=list(TASKS))
    _same(_loaded(out / "model.safetensors"), want.merged)
    for k, v in want.merged.items():
        torch.testing.assert_close(stored.merged[k], v, rtol=0, atol=0)
    soup = {
        k: (dict(nets[0].named_parameters())[k] + dict(nets[1].named_parameters())[k]) / 2
        for k, _ in base.named_parameters()
    }
    for k, v in soup.items():
        torch.testing.assert_close(stored.merged[k], v.detach())
    assert (out / "figures" / "merge.png").stat().st_size > 1000


def test_task_arithmetic_chooses_lambda_on_validation(cli, files, tmp_path):
    from basinscope.analyses.merging import merge
    from basinscope.data import load_npz
    from basinscope.store import load

    out = tmp_path / "run"
    args = [*_w(files, *TASKS), "--base", files["base"], "--method", "task_arithmetic"]
    sel = ["--select", "lam", "--lams", "0.3,0.6,1", *_data(files, "--val-data", "val")]
    res = cli("merge", *MLP, *args, *sel, "--labels", "r", "--labels", "n", "--out", out, "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert d["selected"] == ["lam"] and d["select_metric"] == "mean_accuracy"
    assert [row["lam"] for row in d["selection"]] == [0.3, 0.6, 1.0]
    best = max(d["selection"], key=lambda row: row["mean_accuracy"])
    assert d["hyper"] == {"lam": best["lam"]}
    assert set(d["metrics"]) == {"r", "n"} and d["mean_accuracy"] == best["mean_accuracy"]
    base, nets = _models(files)
    val = [load_npz(str(files[f"{n}-val"]), "train") for n in TASKS]
    want = merge(
        base, nets, method="task_arithmetic", lam=best["lam"], val_data=val, labels=["r", "n"]
    )
    assert want.metrics == d["metrics"]
    merged = _loaded(out / "model.safetensors")
    _same(merged, want.merged)
    _same(merged, load(out).merged)
    assert load(out).to_dict() == d


@pytest.mark.parametrize(
    ("method", "settings"),
    [("ties", {"lam": 0.5, "density": 0.5}), ("dare", {"lam": 0.7, "drop_rate": 0.3, "seed": 3})],
)
def test_the_methods_settings_reach_the_merge(cli, files, tmp_path, method, settings):
    from basinscope.analyses.merging import dare_merge, ties_merge

    out = tmp_path / "run"
    flags = [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    args = [*_w(files, *TASKS), "--base", files["base"], "--method", method, *flags]
    res = cli("merge", *MLP, *args, "--out", out, "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["hyper"] == {k: v for k, v in settings.items() if k != "seed"}
    base, nets = _models(files)
    if method == "ties":
        want = ties_merge(base, nets, density=settings["density"], lam=settings["lam"])
    else:
        want = dare_merge(base, nets, settings["drop_rate"], settings["lam"], settings["seed"])
    _same(_loaded(out / "model.safetensors"), want)


def test_fisher_merging_reads_each_tasks_data(cli, files, tmp_path):
    from basinscope.analyses.merging import merge
    from basinscope.data import load_npz

    out = tmp_path / "run"
    args = [*_w(files, *TASKS), "--method", "fisher", "--examples", "64"]
    res = cli("merge", *MLP, *args, *_data(files, "--task-data", "train"), "--out", out, "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert d["method"] == "fisher" and d["fisher"] == "empirical"
    _, nets = _models(files)
    data = [load_npz(str(files[f"{n}-train"]), "train") for n in TASKS]
    want = merge(nets[0], nets, method="fisher", examples=64, task_data=data, labels=list(TASKS))
    _same(_loaded(out / "model.safetensors"), want.merged)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["fingerprints"]["data"]) == ["task_data:noise", "task_data:rot"]


# -- user errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "patterns"),
    [
        ([], [r"merging needs the fine-tuned models: pass --weights once per task"]),
        (
            ["--weights", "A", "--method", "task_arithmetic"],
            [r"--method task_arithmetic needs --base", r"e\.g\. --base base\.safetensors"],
        ),
        (
            ["--weights", "A", "--weights", "B", "--method", "uniform", "--val-data", "v.npz"],
            [r"--val-data is given 1 time for 2 --weights", r"once per --weights"],
        ),
        (
            ["--weights", "A", "--method", "uniform", "--task-data", "a", "--task-data", "b"],
            [r"--task-data is given 2 times for 1 --weights"],
        ),
        (
            ["--weights", "A", "--weights", "B", "--method", "uniform", "--labels", "x"],
            [r"--labels is given 1 time for 2 --weights"],
        ),
        (
            [
                "--weights",
                "A",
                "--weights",
                "B",
                "--method",
                "uniform",
                "--labels",
                "x",
                "--labels",
                "x",
            ],
            [r"--labels repeats a name \(x, x\)"],
        ),
        (
            ["--weights", "A", "--method", "fisher"],
            [
                r"--method fisher \(each model's diagonal empirical Fisher\) needs each task's data",
                r"pass --task-data once per --weights",
            ],
        ),
        (
            ["--weights", "A", "--base", "B", "--method", "subspace"],
            [
                r"--method subspace with --geometry curvature \(each task's ggn in the subspace\) "
                r"needs each task's data",
                r"--task-data task1\.npz",
            ],
        ),
        (
            ["--weights", "A", "--base", "B", "--select", "lam"],
            [
                r"--select lam chooses on validation data, and there is none",
                r"pass --val-data once per --weights",
                r"or drop --select",
            ],
        ),
        (
            ["--weights", "A", "--method", "uniform", "--select", "lam"],
            [r"--select lam: method uniform has no hyper-parameters"],
        ),
    ],
    ids=[
        "no-weights",
        "no-base",
        "val-count",
        "task-count",
        "label-count",
        "label-repeat",
        "fisher-no-data",
        "curvature-no-data",
        "select-no-val",
        "select-useless",
    ],
)
def test_user_errors_name_the_flag_and_the_fix(cli, tmp_path, extra, patterns):
    out = tmp_path / "run"
    res = cli("merge", *MLP, *extra, "--out", out)
    assert_one_line(res, *patterns)
    assert res.out == "" and not out.exists()


def test_weights_of_another_model_are_refused(cli, files, tmp_path):
    from basinscope.models import build_model, save_weights

    other = save_weights(build_model("mlp", {"hidden": [8]}), tmp_path / "w8.safetensors")
    res = cli("merge", *MLP, *_w(files, *TASKS), "--base", other, "--out", tmp_path / "run")
    assert_one_line(res, r"w8\.safetensors do not fit the Sequential model")


def test_validation_data_of_other_inputs_is_refused(cli, files, tmp_path):
    bad = tmp_path / "rgb.npz"
    rng = np.random.default_rng(0)
    np.savez(bad, x=rng.random((20, 3, 5, 5)).astype(np.float32), y=np.arange(20) % 10)
    args = [*_w(files, *TASKS), "--base", files["base"], "--select", "lam"]
    res = cli("merge", *MLP, *args, "--val-data", bad, "--val-data", bad, "--out", tmp_path / "r")
    assert_one_line(
        res, r"cannot take the inputs of split 'rot'", r"each example has shape \(3, 5, 5\)"
    )


def test_missing_data_files_are_named(cli, files, tmp_path):
    args = [*_w(files, *TASKS), "--method", "fisher", "--task-data", "no.npz"]
    res = cli("merge", *MLP, *args, "--task-data", "no.npz", "--out", tmp_path / "r")
    assert_one_line(res, r"data file 'no\.npz' does not exist")
    assert not (tmp_path / "r" / "model.safetensors").exists()


# -- merge-decomposition -------------------------------------------------------------------
def test_the_decomposition_equals_the_librarys(cli, files, tmp_path):
    from basinscope.analyses.merging import merge_decomposition
    from basinscope.data import load_npz
    from basinscope.store import load

    out = tmp_path / "run"
    args = [*_w(files, *TASKS), "--base", files["base"], "--examples", "64", "--ranks", "1,2"]
    res = cli(
        "merge-decomposition",
        *MLP,
        *args,
        *_data(files, "--task-data", "train"),
        "--out",
        out,
        "--json",
    )
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert d["kind"] == "merge_decomposition" and d["labels"] == list(TASKS)
    base, nets = _models(files)
    data = [load_npz(str(files[f"{n}-train"]), "train") for n in TASKS]
    want = merge_decomposition(base, nets, data, ranks=(1, 2), examples=64, labels=list(TASKS))
    got = load(out)
    assert list(got.table["rank"].values) == [1, 2]
    assert list(got.table["geometry"].values) == ["curvature", "flat"]
    for v in ("variance", "residual", "cross", "predicted", "measured"):
        np.testing.assert_allclose(got.table[v].values, want.table[v].values, rtol=1e-12)
    assert (out / "figures" / "merge_decomposition.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("extra", "patterns"),
    [
        (["--weights", "A", "--task-data", "a.npz"], [r"--base is required", r"--base base\."]),
        (
            ["--weights", "A", "--weights", "B", "--base", "C", "--task-data", "a.npz"],
            [r"--task-data is given 1 time for 2 --weights", r"once per --weights"],
        ),
        (
            ["--weights", "A", "--base", "C", "--task-data", "a", "--labels", "x", "--labels", "y"],
            [r"--labels must name each of the 1 tasks once"],
        ),
    ],
    ids=["no-base", "data-count", "labels"],
)
def test_decomposition_user_errors(cli, tmp_path, extra, patterns):
    res = cli("merge-decomposition", *MLP, *extra, "--out", tmp_path / "run")
    assert_one_line(res, *patterns)
    assert not (tmp_path / "run").exists()
