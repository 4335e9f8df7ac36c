"""Distribution shifts on image batches ``(N, C, H, W)``.

The pure functions (:func:`rotate`, :func:`block_shuffle`, :func:`add_noise`) take a
tensor and return a new one; :func:`apply_shift` and :func:`label_subset` do the same on
a :class:`TensorData` and record the shift in its name, so a fine-tuning run on
``digits-train-rot35`` says what it was trained on. They are shifts of images and feature
vectors: a :class:`~basinscope.data.DictData` (token sequences) is refused with a message.

Every shift is deterministic: rotation has no randomness, and the seeded ones draw from a
private ``torch.Generator().manual_seed(seed)`` on the CPU, never from the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from basinscope.data.dictdata import DictData
from basinscope.data.tensordata import TensorData
from basinscope.errors import BasinscopeError

__all__ = [
    "add_noise",
    "apply_shift",
    "block_permutation",
    "block_shuffle",
    "label_subset",
    "rotate",
]


def _check_images(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        found = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise BasinscopeError(
            f"{what} needs a batch of images shaped (N, C, H, W), found {found}. "
            "Feature vectors (N, D) cannot be rotated or block-shuffled; reshape them to "
            "images first, e.g. x.view(N, 1, H, W)."
        )


def rotate(x: Tensor, degrees: float) -> Tensor:
    """Rotate every image about its center by ``degrees``, counter-clockwise as displayed.

    "As displayed" means with row 0 at the top (as ``plt.imshow`` shows it), so
    ``rotate(x, 90)`` matches ``torch.rot90(x, 1, dims=(2, 3))`` on square images up to
    interpolation round-off. Sampling is bilinear with zero padding
    (``F.affine_grid``/``F.grid_sample``, ``align_corners=False``); the rotation is done in
    pixel units, so non-square images are not sheared. ``degrees == 0`` returns an exact
    copy without resampling.
    """
    _check_images(x, "rotate")
    if not math.isfinite(degrees):
        raise BasinscopeError(f"rotation must be a finite angle in degrees, found {degrees!r}.")
    if degrees == 0:
        return x.clone()
    if not x.is_floating_point():
        raise BasinscopeError(
            f"rotate needs floating-point images, found dtype {x.dtype}. Convert with x.float()."
        )
    n, _, h, w = x.shape
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    # Output pixel p (pixel units, centered, y pointing down) samples the input at R p with
    # R = [[c, -s], [s, c]]; in grid_sample's normalized coordinates this becomes D R D^-1
    # with D = diag(2 / W, 2 / H).
    theta = torch.tensor(
        [[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype, device=x.device
    )
    grid = F.affine_grid(theta.expand(n, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def block_permutation(num_blocks: int, seed: int) -> Tensor:
    """The tile permutation :func:`block_shuffle` uses for ``num_blocks`` tiles and ``seed``."""
    return torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))


def block_shuffle(x: Tensor, block: int, seed: int, *, inverse: bool = False) -> Tensor:
    """Cut each image into ``block x block`` tiles and permute the tiles.

    One permutation, fixed by ``seed``, is applied to every image (as in the feature-reuse
    experiment of Neyshabur et al., 2020): small blocks destroy the visual structure that
    pre-trained features rely on while keeping low-level statistics. Tiles are numbered
    row-major; output tile ``i`` is input tile ``perm[i]`` with
    ``perm = block_permutation(num_tiles, seed)``. ``inverse=True`` undoes the shuffle made
    with the same ``block`` and ``seed``. A single tile (``block == H == W``) gives a copy.
    """
    _check_images(x, "block_shuffle")
    n, c, h, w = x.shape
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise BasinscopeError(f"block must be a positive integer tile size, found {block!r}.")
    if h % block or w % block:
        divisors = [d for d in range(1, math.gcd(h, w) + 1) if h % d == 0 and w % d == 0]
        raise BasinscopeError(
            f"block_shuffle: images of height H={h} and width W={w} cannot be cut into "
            f"{block}x{block} tiles (block={block} must divide both). Valid block sizes: "
            f"{divisors}."
        )
    nh, nw = h // block, w // block
    if nh * nw == 1:
        return x.clone()
    perm = block_permutation(nh * nw, seed).to(x.device)
    if inverse:
        perm = torch.argsort(perm)
    tiles = x.reshape(n, c, nh, block, nw, block).permute(0, 1, 2, 4, 3, 5)
    tiles = tiles.reshape(n, c, nh * nw, block, block)[:, :, perm]
    out = tiles.reshape(n, c, nh, nw, block, block).permute(0, 1, 2, 4, 3, 5)
    return out.reshape(n, c, h, w).contiguous()


def add_noise(x: Tensor, std: float, seed: int) -> Tensor:
    """Add i.i.d. Gaussian noise of standard deviation ``std`` (seeded; no clipping)."""
    if not math.isfinite(std) or std < 0:
        raise BasinscopeError(f"noise std must be a finite number >= 0, found {std!r}.")
    if not x.is_floating_point():
        raise BasinscopeError(
            f"add_noise needs floating-point inputs, found dtype {x.dtype}. Convert with x.float()."
        )
    if std == 0:
        return x.clone()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x + std * noise.to(x.device)


def _num(v: float) -> str:
    return f"{v:g}"


def apply_shift(
    data: TensorData | DictData,
    *,
    rotation: float = 0.0,
    block_shuffle: int | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> TensorData | DictData:
    """Apply rotation, then block shuffling, then noise; the name records each shift.

    Args:
        data: The dataset; rotation and block shuffling need images ``(N, C, H, W)``.
        rotation: Degrees, counter-clockwise as displayed (see :func:`rotate`).
        block_shuffle: Tile size for :func:`block_shuffle`, or None for no shuffling.
        noise: Standard deviation of added Gaussian noise (0 for none).
        seed: Seed of the tile permutation and of the noise.

    Returns:
        A new :class:`TensorData`, e.g. named ``"digits-train-rot35-block4-noise0.1"``
        (with ``-seed<k>`` appended when a seeded shift uses ``seed != 0``). With no shift
        the input is returned unchanged (a :class:`DictData` too; asking it for a shift
        raises a BasinscopeError).
    """
    if isinstance(data, DictData):
        asked = [
            flag
            for flag, on in (
                (f"--rotation {rotation:g}", bool(rotation)),
                (f"--block-shuffle {block_shuffle}", block_shuffle is not None),
                (f"--noise {noise:g}", bool(noise)),
            )
            if on
        ]
        if asked:
            raise BasinscopeError(
                f"the dataset {data.name!r} is a dict of tensors ({', '.join(data)}), not "
                f"images or feature vectors, so the shifts {', '.join(asked)} do not apply "
                "to it (rotating or adding noise to token ids has no meaning). Drop those "
                "options, or shift the data yourself in a module:attr function of split."
            )
        return data
    x, parts = data.x, []
    if rotation:
        x = rotate(x, rotation)
        parts.append(f"rot{_num(rotation)}")
    if block_shuffle is not None:
        x = _block_shuffle(x, block_shuffle, seed)
        parts.append(f"block{block_shuffle}")
    if noise:
        x = add_noise(x, noise, seed)
        parts.append(f"noise{_num(noise)}")
    if not parts:
        return data
    if seed != 0 and (block_shuffle is not None or noise):
        parts.append(f"seed{seed}")
    name = "-".join([data.name or "data", *parts])
    return TensorData(x, data.y, name=name)


_block_shuffle = block_shuffle


def label_subset(data: TensorData, labels: Sequence[int]) -> TensorData:
    """Keep only the samples whose label is in ``labels``; labels keep their values.

    The result is named e.g. ``"digits-train-labels0_1_2"``. ``num_classes`` of the
    result is its largest kept label plus one, so a model head sized for the full
    dataset still fits.
    """
    if isinstance(data, DictData) or data.regression:
        what = "a dict of tensors" if isinstance(data, DictData) else "regression targets"
        raise BasinscopeError(
            f"label_subset of {data.name!r}: it needs integer class labels y, and the dataset "
            f"holds {what}. Select the examples with .subset(indices) instead."
        )
    wanted = sorted({int(v) for v in labels})
    present = sorted(int(v) for v in torch.unique(data.y))
    if not wanted:
        raise BasinscopeError(
            f"label_subset of {data.name!r}: no labels given; pass some of {present}."
        )
    missing = [v for v in wanted if v not in present]
    if missing:
        raise BasinscopeError(
            f"label_subset of {data.name!r}: labels {missing} do not occur in the dataset; "
            f"the labels present are {present}."
        )
    mask = torch.isin(data.y, torch.tensor(wanted, device=data.y.device))
    name = f"{data.name or 'data'}-labels{'_'.join(str(v) for v in wanted)}"
    return data.subset(mask, name=name)
