"""Training-data corruptions of the training-dynamics experiments: label noise and patches.

``label_noise``  symmetric label noise (Zhang et al. 2017; Nakkiran et al. 2020's deep double
                 descent): exactly ``round(rate * N)`` examples, chosen uniformly without
                 replacement by a seeded generator, get a label drawn uniformly from the
                 *other* classes, so the stated fraction of labels is wrong.
``patch_data``   the patch-augmented data of Li, Wei & Ma (2019), *Towards explaining the
                 regularization effect of initial large learning rate*: every class gets a
                 fixed random patch (seeded); a fraction ``patch_only`` of the examples
                 keeps only the patch of its class (the image is blanked: hard-to-fit,
                 easy-to-generalize), a fraction ``image_only`` keeps only the image
                 (easy-to-fit, hard-to-generalize), the rest has both. The group of every
                 example is recorded, and :func:`patch_only_images` makes the evaluation
                 set of patches alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from basinscope.data.tensordata import TensorData
from basinscope.errors import BasinscopeError

__all__ = [
    "PATCH_GROUPS",
    "LabelNoise",
    "PatchData",
    "label_noise",
    "patch_data",
    "patch_only_images",
]

PATCH_GROUPS = ("both", "patch_only", "image_only")


@dataclass(frozen=True)
class LabelNoise:
    """Noisy data and what was done: ``data`` (labels changed), ``flipped`` (indices of the
    changed examples, sorted), ``clean_labels``, ``rate`` and ``seed``."""

    data: TensorData
    flipped: Tensor
    clean_labels: Tensor
    rate: float
    seed: int


def _classes(data: TensorData, what: str) -> int:
    if data.regression:
        raise BasinscopeError(
            f"{what} needs integer class labels; {data.name!r} has regression targets"
        )
    return int(data.y.max()) + 1


def label_noise(
    data: TensorData, rate: float, seed: int = 0, num_classes: int | None = None
) -> LabelNoise:
    """Symmetric label noise: exactly ``round(rate * N)`` labels replaced by another class
    (see the module docstring). ``num_classes`` defaults to the largest label + 1."""
    if not 0 <= rate <= 1:
        raise BasinscopeError(f"label noise rate must be in [0, 1], got {rate}")
    c = num_classes or _classes(data, "label noise")
    if c < 2:
        raise BasinscopeError(f"label noise needs at least 2 classes, got {c}")
    n = len(data.y)
    k = round(rate * n)
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n, generator=gen)[:k].sort().values
    y = data.y.clone()
    shift = torch.randint(1, c, (k,), generator=gen)  # another class: y + 1..c-1 mod c
    y[idx] = (y[idx].cpu() + shift).remainder(c).to(y.device)
    name = f"{data.name or 'data'}-noise{rate:g}-seed{seed}"
    return LabelNoise(TensorData(data.x, y, name=name), idx, data.y.clone(), float(rate), int(seed))


@dataclass(frozen=True)
class PatchData:
    """Patch-augmented data: ``data``, ``group`` (per example: 0 both, 1 patch only, 2 image
    only, as :data:`PATCH_GROUPS`), the class ``patches`` (C, *patch shape), where they sit
    (``corner``: top-left pixel) and the ``seed``."""

    data: TensorData
    group: Tensor
    patches: Tensor
    corner: tuple[int, int]
    seed: int

    def counts(self) -> dict[str, int]:
        return {g: int((self.group == i).sum()) for i, g in enumerate(PATCH_GROUPS)}


def _check_images(x: Tensor) -> None:
    if x.ndim != 4:
        raise BasinscopeError(
            f"patch data needs images (N, C, H, W), got shape {tuple(x.shape)}; reshape "
            "flat inputs to images first"
        )


def _stamp(x: Tensor, patches: Tensor, y: Tensor, corner: tuple[int, int]) -> Tensor:
    out = x.clone()
    ph, pw = patches.shape[-2:]
    r, c = corner
    out[:, :, r : r + ph, c : c + pw] = patches[y].to(out.dtype)
    return out


def patch_data(
    data: TensorData,
    *,
    patch_only: float = 0.2,
    image_only: float = 0.2,
    size: int = 3,
    corner: tuple[int, int] = (0, 0),
    scale: float = 1.0,
    noise: float = 0.0,
    seed: int = 0,
    patches: Tensor | None = None,
) -> PatchData:
    """Patch-augmented data (see the module docstring): exactly ``round(patch_only * N)``
    examples keep only their class's ``size x size`` patch (the image zeroed), exactly
    ``round(image_only * N)`` only the image, the rest both. Patches are Gaussian with
    standard deviation ``scale`` per class (seeded), or the given ``patches`` (e.g. the
    training set's, for its test set). ``noise`` adds to every example's patch its own
    Gaussian noise of that standard deviation (seeded): Li, Wei & Ma's patches are noisy, so
    the patch is easy to fit but its noise is what a small learning rate memorises."""
    _check_images(data.x)
    if patch_only < 0 or image_only < 0 or patch_only + image_only > 1:
        raise BasinscopeError(
            f"patch_only + image_only must be fractions summing to at most 1, got "
            f"{patch_only} + {image_only}"
        )
    _, ch, h, w = data.x.shape
    if size < 1 or corner[0] + size > h or corner[1] + size > w:
        raise BasinscopeError(f"a {size}x{size} patch at {corner} does not fit {h}x{w} images")
    c = _classes(data, "patch data")
    if patches is None:
        gen = torch.Generator().manual_seed(int(seed))
        patches = torch.randn(c, ch, size, size, generator=gen) * scale
    elif tuple(patches.shape) != (c, ch, size, size):
        raise BasinscopeError(
            f"patches must have shape (classes, channels, size, size) = {(c, ch, size, size)}, "
            f"got {tuple(patches.shape)}"
        )
    n = len(data.y)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 1_000_003))
    k_patch, k_image = round(patch_only * n), round(image_only * n)
    group = torch.zeros(n, dtype=torch.int64)
    group[order[:k_patch]] = 1
    group[order[k_patch : k_patch + k_image]] = 2
    x = data.x.clone()
    per = _noisy(patches, data.y.cpu(), noise, int(seed) + 2_000_003)
    stamped = _stamp(torch.zeros_like(x), per, torch.arange(n), corner)
    both = _stamp(x, per, torch.arange(n), corner)
    g = group.to(x.device)[:, None, None, None]
    x = torch.where(g == 1, stamped, torch.where(g == 2, x, both))
    name = f"{data.name or 'data'}-patch{patch_only:g}-image{image_only:g}-seed{seed}"
    return PatchData(TensorData(x, data.y, name=name), group, patches, tuple(corner), int(seed))


def _noisy(patches: Tensor, y: Tensor, noise: float, seed: int) -> Tensor:
    """One patch per example: its class's, plus its own Gaussian noise of std ``noise``."""
    if noise < 0:
        raise BasinscopeError(f"patch noise must be >= 0, got {noise}")
    per = patches[y].clone()
    if noise:
        per += noise * torch.randn(per.shape, generator=torch.Generator().manual_seed(seed))
    return per


def patch_only_images(
    data: TensorData, patched: PatchData, *, noise: float = 0.0, seed: int = 1
) -> TensorData:
    """``data``'s labels with only their class's patch of ``patched`` (blank images), each
    with its own Gaussian noise of std ``noise`` (seeded): the evaluation set of what the
    patch alone predicts."""
    _check_images(data.x)
    per = _noisy(patched.patches, data.y.cpu(), noise, seed)
    x = _stamp(torch.zeros_like(data.x), per, torch.arange(len(data.y)), patched.corner)
    return TensorData(x, data.y, name=f"{data.name or 'data'}-patch-only")
