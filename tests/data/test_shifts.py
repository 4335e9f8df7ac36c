"""Distribution shifts: rotation, block shuffling, noise, label subsets."""

from __future__ import annotations

import pytest
import torch

from basinscope.data import (
    TensorData,
    add_noise,
    apply_shift,
    block_permutation,
    block_shuffle,
    label_subset,
    rotate,
)
from basinscope.errors import BasinscopeError


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(5, 2, 8, 8, generator=torch.Generator().manual_seed(0))


def test_rotate_zero_is_exact_copy(images):
    out = rotate(images, 0.0)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_rotate_multiples_of_90_match_rot90(images, k):
    # counter-clockwise as displayed == torch.rot90 with positive k on dims (H, W)
    assert torch.allclose(rotate(images, 90.0 * k), torch.rot90(images, k, dims=(2, 3)), atol=1e-5)


def test_rotate_direction_counter_clockwise():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 4] = 1.0  # a dot right of center
    out = rotate(x, 90.0)
    assert out[0, 0, 0, 2] == pytest.approx(1.0, abs=1e-5)  # now above center (row 0 = top)


def test_rotate_non_square_180(images):
    x = torch.rand(2, 1, 6, 10)
    assert torch.allclose(rotate(x, 180.0), torch.rot90(x, 2, dims=(2, 3)), atol=1e-5)


def test_rotate_preserves_centered_symmetric_blob():
    r = torch.arange(16, dtype=torch.float64) - 7.5
    blob = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 8.0)[None, None]
    assert torch.allclose(rotate(blob, 180.0), blob, atol=1e-6)
    # an arbitrary angle moves mass only by interpolation error
    rot = rotate(blob, 35.0)
    assert torch.allclose(rot, blob, atol=0.05)
    assert rot.sum().item() == pytest.approx(blob.sum().item(), rel=0.02)
    assert not torch.allclose(rot, blob, atol=1e-9)


def test_rotate_changes_images_at_35_degrees(images):
    assert not torch.allclose(rotate(images, 35.0), images, atol=0.05)


def test_rotate_errors(images):
    with pytest.raises(BasinscopeError, match=r"\(N, C, H, W\), found shape \(5, 128\)"):
        rotate(images.reshape(5, -1), 10.0)
    with pytest.raises(BasinscopeError, match="finite angle"):
        rotate(images, float("nan"))
    with pytest.raises(BasinscopeError, match="floating-point images"):
        rotate(images.long(), 10.0)


def _tiles(x: torch.Tensor, b: int) -> list[torch.Tensor]:
    h, w = x.shape[-2:]
    return [x[:, :, i : i + b, j : j + b] for i in range(0, h, b) for j in range(0, w, b)]


@pytest.mark.parametrize("block", [1, 2, 4])
def test_block_shuffle_permutes_tiles(images, block):
    out = block_shuffle(images, block, seed=3)
    assert out.shape == images.shape
    # same pixel multiset per image
    flat_in = images.reshape(5, -1).sort(dim=1).values
    assert torch.equal(out.reshape(5, -1).sort(dim=1).values, flat_in)
    # output tile i is input tile perm[i], the same permutation for every image/channel
    perm = block_permutation((8 // block) ** 2, 3)
    tin, tout = _tiles(images, block), _tiles(out, block)
    for i, p in enumerate(perm.tolist()):
        assert torch.equal(tout[i], tin[p])
    assert not torch.equal(out, images)


def test_block_shuffle_seeds_and_inverse(images):
    a = block_shuffle(images, 2, seed=0)
    assert torch.equal(a, block_shuffle(images, 2, seed=0))
    assert not torch.equal(a, block_shuffle(images, 2, seed=1))
    assert torch.equal(block_shuffle(a, 2, seed=0, inverse=True), images)


def test_block_shuffle_whole_image_is_copy(images):
    out = block_shuffle(images, 8, seed=5)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()


def test_block_shuffle_errors(images):
    with pytest.raises(BasinscopeError, match=r"H=8 and width W=8 .*block=3.*\[1, 2, 4, 8\]"):
        block_shuffle(images, 3, seed=0)
    with pytest.raises(BasinscopeError, match="positive integer tile size"):
        block_shuffle(images, 0, seed=0)


def test_add_noise_is_seeded(images):
    a, b = add_noise(images, 0.1, seed=1), add_noise(images, 0.1, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, add_noise(images, 0.1, seed=2))
    assert (a - images).std().item() == pytest.approx(0.1, rel=0.15)
    assert torch.equal(add_noise(images, 0.0, seed=1), images)
    with pytest.raises(BasinscopeError, match="finite number >= 0"):
        add_noise(images, -1.0, seed=0)
    with pytest.raises(BasinscopeError, match="floating-point inputs"):
        add_noise(images.long(), 0.1, seed=0)


def test_apply_shift_composes_and_names(images):
    d = TensorData(images, torch.arange(5), name="digits-train")
    assert apply_shift(d) is d
    r = apply_shift(d, rotation=35)
    assert r.name == "digits-train-rot35" and torch.equal(r.x, rotate(images, 35))
    full = apply_shift(d, rotation=-12.5, block_shuffle=4, noise=0.1, seed=7)
    assert full.name == "digits-train-rot-12.5-block4-noise0.1-seed7"
    want = add_noise(block_shuffle(rotate(images, -12.5), 4, 7), 0.1, 7)
    assert torch.equal(full.x, want) and torch.equal(full.y, d.y)


def test_apply_shift_needs_images():
    d = TensorData(torch.rand(4, 6), torch.arange(4), name="feats")
    assert apply_shift(d, noise=0.5).name == "feats-noise0.5"
    with pytest.raises(BasinscopeError, match="block_shuffle needs a batch of images"):
        apply_shift(d, block_shuffle=2)


def test_label_subset():
    d = TensorData(torch.rand(9, 3), torch.arange(9) % 3, name="d")
    s = label_subset(d, [2, 0])
    assert s.name == "d-labels0_2" and len(s) == 6
    assert set(s.y.tolist()) == {0, 2} and s.num_classes == 3
    with pytest.raises(BasinscopeError, match=r"labels \[5\] do not occur.*\[0, 1, 2\]"):
        label_subset(d, [0, 5])
    with pytest.raises(BasinscopeError, match="no labels given"):
        label_subset(d, [])
