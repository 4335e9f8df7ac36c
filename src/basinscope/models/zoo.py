"""Small models for loss-landscape experiments.

The image models (:func:`mlp`, :func:`lenet`, :func:`resnet`) take ``num_classes``,
``in_channels`` and ``image_size`` so that the same architecture runs on the 8x8 digits and
on 28x28 MNIST. :data:`MODELS` also registers ``bert``, the small Hugging Face transformer
of :mod:`basinscope.models.hf` (token data; needs the transformers extra). All use
PyTorch's RNG for their initialization, so ``torch.manual_seed(k)`` before construction
fixes the weights.
Submodule names are stable (``fc1``, ``conv1``, ``layer2.0.conv1``...): they are the keys of
parameter dicts, direction files and checkpoints.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from basinscope._checks import positive_int
from basinscope.errors import BasinscopeError
from basinscope.models.hf import bert
from basinscope.models.solvable import deep_linear, two_layer_relu

__all__ = ["MODELS", "BasicBlock", "LeNet", "ResNet", "bert", "lenet", "mlp", "resnet"]


#: Largest layer width, channel count or class count: a 100,000-wide layer already holds
#: 10**10 weights (40 GB) next to another as wide.
MAX_WIDTH = 100_000


def _check_positive(**values: int) -> None:
    for key, v in values.items():
        positive_int(key, v, high=MAX_WIDTH, high_why=" (wider layers do not fit in memory)")


def mlp(
    in_features: int | None = None,
    hidden: Sequence[int] = (64,),
    num_classes: int = 10,
    batchnorm: bool = False,
    in_channels: int = 1,
    image_size: int = 8,
) -> nn.Sequential:
    """A fully connected ReLU network on flattened inputs.

    Layers are named ``flatten``, then per hidden layer ``fc<i>`` [``bn<i>``] ``relu<i>``,
    then the output layer ``fc<len(hidden) + 1>``. ``hidden=()`` gives a linear
    classifier. ``in_features`` defaults to ``in_channels * image_size ** 2``.
    """
    hidden = list(hidden)
    _check_positive(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    for h in hidden:
        _check_positive(hidden_width=h)
    if in_features is None:
        in_features = in_channels * image_size**2
    positive_int("in_features", in_features, high=None)
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        if batchnorm:
            layers[f"bn{i}"] = nn.BatchNorm1d(h)
        layers[f"relu{i}"] = nn.ReLU()
        width = h
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


class LeNet(nn.Module):
    """Two 3x3 conv + max-pool stages and two fully connected layers (see :func:`lenet`)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 8,
        width: int = 1,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(
            in_channels=in_channels, num_classes=num_classes, image_size=image_size, width=width
        )
        if image_size < 4:
            raise BasinscopeError(
                f"lenet pools twice by 2, so image_size must be at least 4, found {image_size}."
            )
        c1, c2 = 6 * width, 16 * width
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1) if batchnorm else None
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2) if batchnorm else None
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        side = image_size // 2 // 2
        self.fc1 = nn.Linear(c2 * side * side, 64 * width)
        self.fc2 = nn.Linear(64 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.bn1(x)
        x = self.pool(self.relu(x))
        x = self.conv2(x)
        if self.bn2 is not None:
            x = self.bn2(x)
        x = self.pool(self.relu(x))
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)


def lenet(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 8,
    width: int = 1,
    batchnorm: bool = False,
) -> LeNet:
    """A LeNet-style CNN: conv(6w) [bn] relu pool, conv(16w) [bn] relu pool, fc(64w), fc.

    Convolutions are 3x3 with padding 1, pools are 2x2 (8 -> 4 -> 2 on digits, 28 -> 14 -> 7
    on MNIST). Submodules: ``conv1``, ``conv2``, ``fc1``, ``fc2`` and, with ``batchnorm``,
    ``bn1``, ``bn2``. ``width`` multiplies every hidden width.
    """
    return LeNet(in_channels, num_classes, image_size, width, batchnorm)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm (or Identity); the residual add only if ``skip``.

    ``shortcut`` is a 1x1 conv (+BN) when the block changes shape, the identity
    otherwise, and absent (None) when ``skip=False``: no-skip blocks carry no unused
    parameters.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        skip: bool = True,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        bias = not batchnorm
        self.skip = skip
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes) if batchnorm else nn.Identity()
        self.relu = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if skip:
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(
                    OrderedDict(
                        conv=nn.Conv2d(in_planes, planes, 1, stride=stride, bias=bias),
                        bn=nn.BatchNorm2d(planes) if batchnorm else nn.Identity(),
                    )
                )
            else:
                self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


class ResNet(nn.Module):
    """A CIFAR-style ResNet (see :func:`resnet`)."""

    def __init__(
        self,
        depth: int = 8,
        width: int = 16,
        skip: bool = True,
        batchnorm: bool = True,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 8,
    ) -> None:
        super().__init__()
        _check_positive(
            width=width, num_classes=num_classes, in_channels=in_channels, image_size=image_size
        )
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise BasinscopeError(
                f"resnet depth must be 6n+2 for a whole number n >= 1 of blocks per stage, "
                f"found depth={depth!r}. Valid depths: 8, 14, 20, 26, 32, 44, 56, 110."
            )
        n = (depth - 2) // 6
        bias = not batchnorm
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.relu = nn.ReLU()
        planes = width
        stages = []
        for s, stage_width in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(BasicBlock(planes, stage_width, stride, skip, batchnorm))
                planes = stage_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet(
    depth: int = 8,
    width: int = 16,
    skip: bool = True,
    batchnorm: bool = True,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 8,
) -> ResNet:
    """A small CIFAR-style ResNet (He et al., 2016) with optional skips and BatchNorm.

    Stem ``conv1``/``bn1`` (3x3, ``width`` channels), then ``layer1``-``layer3`` of
    ``(depth - 2) // 6`` :class:`BasicBlock` s each with widths ``width``, ``2 * width``,
    ``4 * width`` (stride 2 entering ``layer2`` and ``layer3``, with a 1x1 conv shortcut
    where the shape changes), global average pooling and ``fc``. ``skip=False`` removes
    every residual connection, giving the no-skip networks of Li et al. (2018), whose
    landscapes turn chaotic with depth. ``batchnorm=False`` replaces each BatchNorm by
    ``nn.Identity`` (and gives the convolutions biases). ``image_size`` is accepted for a
    uniform signature; global pooling makes the network work at any size >= 4.
    """
    return ResNet(depth, width, skip, batchnorm, num_classes, in_channels, image_size)


#: The built-in models by name (``--model lenet``); ``bert`` needs the transformers extra.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet": lenet,
    "resnet": resnet,
    "bert": bert,
    "deep_linear": deep_linear,
    "two_layer_relu": two_layer_relu,
}
