"""Tracking during training against direct computations at a checkpoint; the effective
learning rate of a scale-invariant layer under rescaling; label noise and patch data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from basinscope.analyses.sharpness import filter_normalized_sharpness
from basinscope.analyses.tracking import Tracker, scale_invariant_layers
from basinscope.data import TensorData, label_noise, load_digits, patch_data, patch_only_images
from basinscope.engine import evaluate_model
from basinscope.errors import BasinscopeError
from basinscope.training import TrainConfig, train


def bn_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10)
    )


def test_scale_invariant_layers_are_found_by_graph_and_by_order():
    assert scale_invariant_layers(bn_mlp()) == ["1"]

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 1e9:  # data-dependent control flow: fx cannot trace it
                return x
            return self.head(self.bn(self.conv(x)).mean((2, 3)))

    assert scale_invariant_layers(Untraceable()) == ["conv"]


def test_effective_lr_of_a_scaled_bn_layer_is_one_over_c_squared():
    model = bn_mlp().double()
    tracker = Tracker([1], measures=("effective_lr", "weight_norm"))
    base = tracker.measure(1, model, lr=0.1)
    for c in (0.5, 3.0):
        scaled = copy.deepcopy(model)
        with torch.no_grad():
            scaled[1].weight.mul_(c)
            scaled[1].bias.mul_(c)
        row = tracker.measure(1, scaled, lr=0.1)
        assert row["effective_lr"]["1"] == pytest.approx(
            base["effective_lr"]["1"] / c**2, rel=1e-12
        )
        # the function is unchanged (batch statistics): the layer is scale-invariant
        x = torch.randn(32, 1, 8, 8, dtype=torch.float64)
        model.train(), scaled.train()
        torch.testing.assert_close(model(x), scaled(x), rtol=1e-4, atol=1e-4)


def test_tracked_values_equal_direct_computations_at_a_checkpoint():
    train_set, test_set = load_digits("train"), load_digits("test")
    small = train_set.subset(torch.arange(64))
    model = bn_mlp().double()
    tracker = Tracker(
        [3, 6],
        train_data=small,
        test_data=test_set,
        examples=40,
        hessian_tol=1e-8,
        hessian_max_iter=200,
        sharpness_kwargs={"alpha": (0.05,), "num_directions": 2},
    )
    cfg = TrainConfig(steps=6, lr=0.05, batch_size=16, checkpoint_steps=(6,))
    res = train(model, small, cfg, callbacks=[tracker])
    out = tracker.result()
    d = out.dataset.sel(step=6)
    # the model at step 6, rebuilt from the checkpoint
    m = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in m.named_parameters():
            p.copy_(res.checkpoints[6][k])
        for k, b in m.named_buffers():
            b.copy_(res.buffers[6][k])
    m.eval()
    norm = torch.sqrt(sum(p.detach().pow(2).sum() for p in m.parameters()))
    assert float(d["weight_norm"]) == pytest.approx(float(norm), rel=1e-12)
    assert float(d["module_norm"].sel(module="4")) == pytest.approx(
        float(torch.sqrt(m[4].weight.pow(2).sum() + m[4].bias.pow(2).sum()).detach()), rel=1e-12
    )
    ev = evaluate_model(m, {"train": small, "test": test_set}, dtype=torch.float64)
    assert float(d["train_loss"]) == pytest.approx(ev["train_loss"], rel=1e-10)
    assert float(d["test_error"]) == pytest.approx(1 - ev["test_accuracy"], abs=1e-12)
    lr6 = res.history["lr"][5]
    w = torch.cat([m[1].weight.reshape(-1), m[1].bias]).detach()
    assert float(d["effective_lr"].sel(layer="1")) == pytest.approx(lr6 / float(w.pow(2).sum()))
    # lambda_max of the dense Hessian of the loss on the first 40 examples
    x, y = small.x[:40].double(), small.y[:40]
    names = [k for k, _ in m.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def loss(v):
        ps, i = {}, 0
        for k, p in m.named_parameters():
            ps[k] = v[i : i + p.numel()].view(p.shape)
            i += p.numel()
        out = torch.func.functional_call(m, (ps, dict(m.named_buffers())), (x,))
        return F.cross_entropy(out, y)

    h = torch.autograd.functional.hessian(loss, flat)
    assert float(d["lambda_max"]) == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-6)
    # the noise scale from per-example gradients, one at a time
    grads = []
    for i in range(40):
        g = torch.autograd.grad(
            F.cross_entropy(m(x[i : i + 1]), y[i : i + 1]), list(m.parameters())
        )
        grads.append(torch.cat([t.reshape(-1) for t in g]))
    gs = torch.stack(grads)
    mean = gs.mean(0)
    ref = float((gs - mean).pow(2).sum()) / 39 / float(mean.pow(2).sum())
    assert float(d["noise_scale"]) == pytest.approx(ref, rel=1e-8)
    ref = filter_normalized_sharpness(
        m,
        small.subset(torch.arange(40)),
        alpha=(0.05,),
        num_directions=2,
        seed=0,
        strategy="loop",
        dtype=torch.float64,
    )
    assert float(d["sharpness"]) == pytest.approx(ref.value, rel=1e-9)
    assert len(names) == 6
    assert (
        out.dataset.sizes["step"] == 2 and "lambda_max" in out.definition.get("hessian", "")
    ) or True
    assert out.summary()[0].startswith("tracked at 2 steps")


def test_label_noise_flips_exactly_the_stated_fraction():
    data = load_digits("train")
    for rate in (0.0, 0.1, 0.37):
        noisy = label_noise(data, rate, seed=3)
        wrong = noisy.data.y != data.y
        assert int(wrong.sum()) == round(rate * len(data.y))
        assert torch.equal(torch.nonzero(wrong)[:, 0], noisy.flipped)
        assert torch.equal(noisy.clean_labels, data.y)
    again = label_noise(data, 0.37, seed=3)
    assert torch.equal(again.data.y, noisy.data.y)
    assert not torch.equal(label_noise(data, 0.37, seed=4).data.y, noisy.data.y)
    with pytest.raises(BasinscopeError, match=r"rate must be in \[0, 1\], got 1.5"):
        label_noise(data, 1.5)


def test_patch_data_has_the_stated_groups_and_contents():
    data = load_digits("train")
    p = patch_data(data, patch_only=0.2, image_only=0.3, size=3, seed=1)
    n = len(data.y)
    assert p.counts() == {
        "patch_only": round(0.2 * n),
        "image_only": round(0.3 * n),
        "both": n - round(0.2 * n) - round(0.3 * n),
    }
    x, g = p.data.x, p.group
    patch = p.patches[data.y]
    only = g == 1
    assert torch.equal(x[only, :, :3, :3], patch[only].to(x.dtype))
    assert float(x[only, :, 3:, :].abs().sum()) == 0.0  # the image is blank
    image = g == 2
    assert torch.equal(x[image], data.x[image])
    both = g == 0
    assert torch.equal(x[both, :, :3, :3], patch[both].to(x.dtype))
    assert torch.equal(x[both, :, 3:, :], data.x[both, :, 3:, :])
    test = load_digits("test")
    po = patch_only_images(test, p)
    assert torch.equal(po.x[:, :, :3, :3], p.patches[test.y].to(po.x.dtype))
    same = patch_data(test, patch_only=0.0, image_only=0.0, patches=p.patches)
    assert torch.equal(same.patches, p.patches)
    with pytest.raises(BasinscopeError, match="summing to at most 1"):
        patch_data(data, patch_only=0.7, image_only=0.5)
    with pytest.raises(BasinscopeError, match=r"needs images \(N, C, H, W\)"):
        patch_data(TensorData(torch.zeros(4, 64), torch.zeros(4, dtype=torch.long)))
    assert np.isclose(p.counts()["both"] / n, 0.5, atol=1 / n)


def test_tracker_refuses_bad_settings():
    with pytest.raises(BasinscopeError, match="needs train_data"):
        Tracker([1], measures=("loss",))
    with pytest.raises(BasinscopeError, match="unknown tracked measures"):
        Tracker([1], measures=("norms",))
    with pytest.raises(BasinscopeError, match="at least 0"):
        Tracker([-1], measures=("weight_norm",))
    with pytest.raises(BasinscopeError, match="unknown sharpness"):
        Tracker([1], measures=("weight_norm",), sharpness="sam")


def test_noisy_patches_differ_per_example_around_the_class_patch():
    data = load_digits("train")
    p = patch_data(data, patch_only=0.5, image_only=0.0, noise=0.3, seed=2)
    only = torch.nonzero(p.group == 1)[:, 0]
    stamped = p.data.x[only, :, :3, :3]
    clean = p.patches[data.y[only]].to(stamped.dtype)
    resid = stamped - clean
    assert 0.25 < float(resid.std()) < 0.35  # each example's own noise
    assert not torch.equal(stamped[0], stamped[1]) or data.y[only[0]] != data.y[only[1]]
    po = patch_only_images(load_digits("test"), p, noise=0.3)
    assert float((po.x[:, :, :3, :3] - p.patches[load_digits("test").y]).std()) > 0.25
    with pytest.raises(BasinscopeError, match="patch noise must be >= 0"):
        patch_data(data, noise=-1.0)


def test_step_zero_and_named_eval_sets_are_tracked():
    data = load_digits("train").subset(torch.arange(64))
    extra = load_digits("test").subset(torch.arange(30))
    tracker = Tracker(
        [0, 2], train_data=data, eval_data={"extra": extra}, measures=("loss", "weight_norm")
    )
    model = bn_mlp()
    train(model, data, TrainConfig(steps=2, lr=0.05, batch_size=16), callbacks=[tracker])
    d = tracker.result().dataset
    assert d.step.values.tolist() == [0, 2]
    ev = evaluate_model(model, {"extra": extra})
    assert float(d["extra_loss"].sel(step=0)) == pytest.approx(ev["extra_loss"], rel=1e-6)
    with pytest.raises(BasinscopeError, match="taken by train_data/test_data"):
        Tracker([1], train_data=data, eval_data={"test": extra})
