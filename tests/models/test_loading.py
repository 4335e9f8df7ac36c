"""build_model specs and seeding; weight files in and out."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from basinscope.errors import BasinscopeError
from basinscope.models import (
    build_model,
    lenet,
    load_state_dict_file,
    load_weights,
    mlp,
    resnet,
    save_weights,
)

# ------------------------------------------------------------------------- build_model


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "spec", ["lenet", "basinscope.models:lenet", "basinscope.models.zoo:lenet"]
)
def test_build_model_specs(spec):
    model = build_model(spec, {"width": 2, "image_size": 28})
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert model.conv1.out_channels == 12


def test_build_model_seeding_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = build_model("resnet", {"width": 4}, init_seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_model("resnet", {"width": 4}, init_seed=7)
    c = build_model("resnet", {"width": 4}, init_seed=8)
    assert same_weights(a, b) and not same_weights(a, c)
    torch.manual_seed(7)
    assert same_weights(a, resnet(width=4))  # init_seed means manual_seed before building
    # without init_seed the global RNG is used (and advanced)
    build_model("mlp")
    assert not torch.equal(torch.random.get_rng_state(), state)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    name = "bs_user_model_mod"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def make(hidden: int = 4, *, act: str = "relu"):
                return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 10))

            def not_a_model():
                return "model"

            def broken(**kwargs):
                raise TypeError("inner bug")

            NUMBER = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_build_model_user_factory(factory_module):
    m = build_model(f"{factory_module}:make", {"hidden": 7}, init_seed=0)
    assert m[1].out_features == 7


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        ("vgg", None, r"unknown model 'vgg'.*lenet, mlp, resnet.*module:factory"),
        (":make", None, "expected module:factory"),
        ("a:b:c", None, "expected module:factory"),
        ("surely_missing_models_xyz:make", None, r"model module 'surely_missing_models_xyz'"),
        ("{mod}:nope", None, r"has no attribute 'nope'.*Callables in the module: broken, make"),
        ("{mod}:NUMBER", None, r"non-callable 'NUMBER'"),
        ("{mod}:make", {"hiden": 3}, r"kwargs \{'hiden': 3\}.*\(hidden: int = 4, \*, act: str"),
        ("{mod}:broken", {}, r"kwargs \{\}.*inner bug"),
        ("{mod}:not_a_model", None, "returned a str, not an nn.Module"),
        ("lenet", [1, 2], "must be a dict of keyword arguments"),
        ("resnet", {"depth": 9}, "6n\\+2"),
    ],
)
def test_build_model_errors(factory_module, spec, kwargs, match):
    with pytest.raises(BasinscopeError, match=match):
        build_model(spec.format(mod=factory_module), kwargs)


def test_build_model_error_restores_rng():
    state = torch.random.get_rng_state()
    with pytest.raises(BasinscopeError):
        build_model("resnet", {"depth": 9}, init_seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)


# ------------------------------------------------------------------------ weight files


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    src = resnet(width=4)
    src.train()(torch.rand(8, 1, 8, 8))  # move the BN running stats off their defaults
    path = save_weights(src, tmp_path / "sub" / f"w{suffix}")
    assert path.is_file()
    state = load_state_dict_file(path)
    assert state.keys() == src.state_dict().keys()
    torch.manual_seed(1)
    dst = resnet(width=4)
    assert not same_weights(src, dst)
    assert load_weights(dst, path) is dst
    assert same_weights(src, dst)


def test_save_state_dict_with_shared_and_strided_tensors(tmp_path):
    w = torch.rand(4, 6)
    state = {"a": w, "b": w, "c": w.t()}  # shared storage, non-contiguous
    save_weights(state, tmp_path / "s.safetensors")
    back = load_state_dict_file(tmp_path / "s.safetensors")
    assert torch.equal(back["c"], w.t()) and torch.equal(back["a"], back["b"])


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_pt_wrapped_state_dict(tmp_path, key):
    model = lenet()
    torch.save({key: model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    assert load_state_dict_file(tmp_path / "ckpt.pt").keys() == model.state_dict().keys()


def test_load_weights_mismatch_lists_keys():
    src = lenet(batchnorm=True)
    with pytest.raises(BasinscopeError) as info:
        load_weights(lenet(), src.state_dict())
    msg = str(info.value)
    assert "10 unexpected keys ['bn1.weight'" in msg
    assert "check --model and --model-kwargs" in msg
    with pytest.raises(BasinscopeError, match=r"10 missing keys \['bn1.weight', .*, \.\.\.\]"):
        load_weights(lenet(batchnorm=True), lenet().state_dict())
    with pytest.raises(
        BasinscopeError,
        match=r"shape mismatches \['conv1.weight: checkpoint \(12, 1, 3, 3\) vs model \(6, 1",
    ):
        load_weights(lenet(), lenet(width=2).state_dict())


def test_load_weights_mismatch_leaves_model_untouched():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = mlp().state_dict()
    bad["extra"] = torch.zeros(1)
    with pytest.raises(BasinscopeError, match="1 unexpected keys \\['extra'\\]"):
        load_weights(model, bad)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_weight_file_errors(tmp_path):
    with pytest.raises(BasinscopeError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pt")
    with pytest.raises(BasinscopeError, match=r"extension '\.ckpt'; use one of \.safetensors"):
        load_state_dict_file(tmp_path / "w.ckpt")
    with pytest.raises(BasinscopeError, match="extension"):
        save_weights(mlp(), tmp_path / "w.bin")
    for name in ("bad.pt", "bad.safetensors"):
        (tmp_path / name).write_bytes(b"garbage, not weights" * 10)
    with pytest.raises(BasinscopeError, match=r"could not read .*bad\.pt. as a PyTorch checkpoint"):
        load_state_dict_file(tmp_path / "bad.pt")
    with pytest.raises(BasinscopeError, match=r"could not read .*bad\.safetensors. as safetensors"):
        load_state_dict_file(tmp_path / "bad.safetensors")
    good = save_weights(mlp(), tmp_path / "good.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:200])
    with pytest.raises(BasinscopeError, match="as safetensors"):
        load_state_dict_file(tmp_path / "cut.safetensors")
    good_pt = save_weights(mlp(), tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes(good_pt.read_bytes()[:200])
    with pytest.raises(BasinscopeError, match="as a PyTorch checkpoint"):
        load_state_dict_file(tmp_path / "cut.pt")


def test_non_state_dict_contents(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(BasinscopeError, match="holds a list, not a state dict"):
        load_state_dict_file(tmp_path / "list.pt")
    torch.save({"w": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(BasinscopeError, match=r"1 entries are not tensors \(\['epoch'\]\)"):
        load_state_dict_file(tmp_path / "mixed.pt")
    with pytest.raises(BasinscopeError, match="writes tensors only"):
        save_weights({"w": 1.0}, tmp_path / "x.pt")
    with pytest.raises(BasinscopeError, match=r"needs an nn\.Module or a dict"):
        save_weights([1], tmp_path / "x.pt")


def test_a_module_in_the_working_folder_is_found_without_pythonpath(tmp_path, monkeypatch):
    # the installed `basinscope` script puts neither "" nor the working folder on sys.path
    # (python -m does); --model mynet:make run next to mynet.py must still find it
    import sys

    from basinscope._imports import import_attr

    (tmp_path / "bs_cwd_user_net.py").write_text("def make():\n    return 'made'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "bs_cwd_user_net", raising=False)
    assert import_attr("bs_cwd_user_net:make", "m:f")() == "made"
    assert sys.path[-1] == str(tmp_path)  # after the installed packages: it shadows none
    sys.modules.pop("bs_cwd_user_net", None)
