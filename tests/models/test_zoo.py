"""The built-in models: shapes on digits and MNIST sizes, names, skips, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from basinscope.errors import BasinscopeError
from basinscope.models import MODELS, lenet, mlp, resnet
from basinscope.models.zoo import BasicBlock

CONFIGS = [
    ("mlp", {}),
    ("mlp", {"hidden": (32, 16), "batchnorm": True}),
    ("mlp", {"hidden": ()}),
    ("lenet", {}),
    ("lenet", {"width": 2, "batchnorm": True}),
    ("resnet", {"width": 4}),
    ("resnet", {"depth": 14, "width": 4, "skip": False, "batchnorm": False}),
]


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_forward_shapes(name, kwargs, size):
    torch.manual_seed(0)
    model = MODELS[name](image_size=size, **kwargs)
    out = model(torch.rand(3, 1, size, size))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def test_other_channels_and_classes():
    x = torch.rand(2, 3, 8, 8)
    for make in (mlp, lenet, resnet):
        assert make(num_classes=4, in_channels=3).eval()(x).shape == (2, 4)


def test_constructors_are_seeded():
    for make in (mlp, lenet, resnet):
        torch.manual_seed(3)
        a = make().state_dict()
        torch.manual_seed(3)
        b = make().state_dict()
        torch.manual_seed(4)
        c = make().state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)


def test_mlp_names_and_in_features():
    m = mlp(hidden=(5, 6), batchnorm=True)
    names = [n for n, _ in m.named_children()]
    assert names == ["flatten", "fc1", "bn1", "relu1", "fc2", "bn2", "relu2", "fc3"]
    assert m.fc1.in_features == 64
    assert mlp(in_features=10).fc1.in_features == 10
    assert mlp(in_channels=3, image_size=28).fc1.in_features == 3 * 28 * 28


def test_lenet_names():
    plain = {n for n, _ in lenet().named_children()}
    assert {"conv1", "conv2", "fc1", "fc2"} <= plain and "bn1" not in plain
    bn = {n for n, _ in lenet(batchnorm=True).named_children()}
    assert {"bn1", "bn2"} <= bn
    assert lenet(image_size=28).fc1.in_features == 16 * 7 * 7
    assert lenet(width=2).conv1.out_channels == 12


def test_resnet_structure():
    net = resnet(depth=14, width=8)
    assert len(net.layer1) == len(net.layer2) == len(net.layer3) == 2
    assert [net.layer1[0].conv1.out_channels, net.layer3[1].conv2.out_channels] == [8, 32]
    assert isinstance(net.layer1[0].shortcut, nn.Identity)
    assert isinstance(net.layer2[0].shortcut.conv, nn.Conv2d)  # 1x1 projection
    assert net.layer2[0].conv1.stride == (2, 2)
    nobn = resnet(batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in nobn.modules())


def test_noskip_has_no_residual_connections():
    torch.manual_seed(0)
    skip, noskip = resnet(width=4), resnet(width=4, skip=False)
    assert all(b.shortcut is None for b in noskip.modules() if isinstance(b, BasicBlock))
    assert not any("shortcut" in k for k in noskip.state_dict())
    # every no-skip weight is in the skip net: load them, outputs must still differ
    result = noskip.load_state_dict(skip.state_dict(), strict=False)
    assert result.missing_keys == []
    x = torch.rand(4, 1, 8, 8)
    skip.eval(), noskip.eval()
    assert not torch.allclose(skip(x), noskip(x))
    # a no-skip block is exactly the plain two-conv stack
    block = noskip.layer1[0]
    h = noskip.relu(noskip.bn1(noskip.conv1(x)))
    plain = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h))))))
    assert torch.equal(block(h), plain)
    # and a skip block adds its input
    sblock = skip.layer1[0]
    assert torch.allclose(
        sblock(h),
        sblock.relu(sblock.bn2(sblock.conv2(sblock.relu(sblock.bn1(sblock.conv1(h))))) + h),
    )


@pytest.mark.parametrize("depth", [7, 10, 2, 0, "8"])
def test_resnet_bad_depth(depth):
    with pytest.raises(BasinscopeError, match=r"6n\+2.*Valid depths: 8, 14, 20"):
        resnet(depth=depth)


def test_bad_sizes():
    with pytest.raises(BasinscopeError, match="image_size must be at least 4"):
        lenet(image_size=3)
    with pytest.raises(BasinscopeError, match="width must be a positive integer"):
        lenet(width=0)
    with pytest.raises(BasinscopeError, match="hidden_width must be a positive integer"):
        mlp(hidden=(8, 0))
    with pytest.raises(BasinscopeError, match="num_classes must be a positive integer"):
        resnet(num_classes=0)
