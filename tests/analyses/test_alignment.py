"""Permutation alignment: discovered specs, symmetry of every permutation, exact recovery of a
known permutation, barriers of trained pairs before/after alignment, REPAIR, and errors."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from basinscope.analyses.alignment import (
    AlignmentResult,
    AlignSpec,
    PermutationSpec,
    activation_matching,
    align,
    apply_permutation,
    barrier_before_after,
    linear_barrier,
    permutation_spec,
    random_permutation,
    repair,
    weight_matching,
)
from basinscope.analyses.barrier import BARRIER_DEFINITIONS, barrier_from_curve
from basinscope.errors import BasinscopeError
from basinscope.models.zoo import lenet, mlp, resnet
from basinscope.spec import EvalOptions

X8 = torch.linspace(-1, 1, 16 * 64).reshape(16, 1, 8, 8).sin()  # fixed example input

MODELS = {
    "mlp": lambda: mlp(hidden=(32, 16)),
    "mlp_bn": lambda: mlp(batchnorm=True),
    "lenet": lambda: lenet(),
    "lenet_bn": lambda: lenet(batchnorm=True),
    "resnet": lambda: resnet(depth=8, width=4),
    "resnet_noskip": lambda: resnet(depth=8, width=4, skip=False),
}


def _make(name, seed=0):
    torch.manual_seed(seed)
    model = MODELS[name]()
    with torch.no_grad():  # non-trivial BatchNorm state, so that forgetting a buffer shows
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return model.eval()


def _entries(spec, group):
    return {(n, a, b) for n, a, b in spec.groups[group]}


# -- spec discovery ----------------------------------------------------------------------------


def test_spec_of_mlp():
    spec = permutation_spec(mlp(hidden=(32, 16)), X8)
    assert dict(spec.sizes) == {"P_fc1": 32, "P_fc2": 16}
    assert _entries(spec, "P_fc1") == {
        ("fc1.weight", 0, 1),
        ("fc1.bias", 0, 1),
        ("fc2.weight", 1, 1),
    }
    assert spec.axes["fc2.weight"] == {0: ("P_fc2", 1), 1: ("P_fc1", 1)}
    assert "fc3.weight" in spec.axes and 0 not in spec.axes["fc3.weight"]  # logits never move
    assert spec.origin == "torch.fx" and spec.producers["P_fc1"] == ("fc1",)


def test_spec_of_mlp_with_batchnorm_moves_the_running_statistics():
    spec = permutation_spec(mlp(batchnorm=True), X8)
    assert list(spec.groups) == ["P_fc1"]
    bn = {(f"bn1.{k}", 0, 1) for k in ("weight", "bias", "running_mean", "running_var")}
    assert bn <= _entries(spec, "P_fc1")
    assert "bn1.num_batches_tracked" not in spec.axes


def test_spec_of_lenet_reads_flattened_channels_in_blocks():
    spec = permutation_spec(lenet(), X8)
    assert dict(spec.sizes) == {"P_conv1": 6, "P_conv2": 16, "P_fc1": 64}
    # conv2's 16 channels of 2x2 pixels are flattened into fc1's 64 inputs: blocks of 4
    assert _entries(spec, "P_conv2") == {
        ("conv2.weight", 0, 1),
        ("conv2.bias", 0, 1),
        ("fc1.weight", 1, 4),
    }


def test_spec_of_resnet_shares_one_permutation_per_residual_stream():
    spec = permutation_spec(resnet(depth=8, width=4), X8)
    assert len(spec.groups) == 6  # 3 streams + 3 inner block channels
    assert spec.producers["P_conv1"] == ("conv1", "layer1.0.conv2")
    stream = _entries(spec, "P_layer2.0.conv2")
    for name in ("layer2.0.conv2.weight", "layer2.0.shortcut.conv.weight"):
        assert (name, 0, 1) in stream
    for name in ("layer2.0.bn2.running_var", "layer2.0.shortcut.bn.running_mean"):
        assert (name, 0, 1) in stream
    assert {("layer3.0.conv1.weight", 1, 1), ("layer3.0.shortcut.conv.weight", 1, 1)} <= stream
    assert _entries(spec, "P_layer1.0.conv1") == {
        ("layer1.0.conv1.weight", 0, 1),
        ("layer1.0.conv2.weight", 1, 1),
        *{(f"layer1.0.bn1.{k}", 0, 1) for k in ("weight", "bias", "running_mean", "running_var")},
    }


def test_spec_of_resnet_without_skips_has_one_group_per_conv():
    spec = permutation_spec(resnet(depth=8, width=4, skip=False), X8)
    assert len(spec.groups) == 7
    assert spec.producers["P_conv1"] == ("conv1",)
    assert ("layer1.0.conv2.weight", 0, 1) in _entries(spec, "P_layer1.0.conv2")
    assert ("layer2.0.conv1.weight", 1, 1) in _entries(spec, "P_layer1.0.conv2")


def test_hand_written_spec_matches_the_discovered_one():
    model = mlp(hidden=(8,))
    hand = PermutationSpec.from_groups(
        {"P_fc1": [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)]},
        model,
        producers={"P_fc1": ["fc1"]},
        activation_sites={"P_fc1": ["relu1"]},
    )
    auto = permutation_spec(model, X8)
    assert _entries(hand, "P_fc1") == _entries(auto, "P_fc1") and hand.sizes == auto.sizes
    assert hand.origin == "hand-written" and json.dumps(hand.to_dict())
    perms = random_permutation(hand, seed=4)
    b = apply_permutation(model, hand, perms)
    found = weight_matching(model, b, hand, example_input=X8).permutations["P_fc1"]
    assert found == torch.argsort(perms["P_fc1"]).tolist()
    found = activation_matching(model, b, X8.repeat(4, 1, 1, 1), hand).permutations["P_fc1"]
    assert found == torch.argsort(perms["P_fc1"]).tolist()


class _Functional(nn.Module):
    """Functional ops, an in-graph residual, a view-flatten and a spatial mean."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc, self.fc2 = nn.Linear(64, 10), nn.Linear(4, 10)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = h + torch.tanh(self.conv2(h))
        h = F.max_pool2d(h, 2)
        return self.fc(h.view(h.size(0), -1)) + self.fc2(h.mean((2, 3)))


class _InputResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)) + x)  # the input's features cannot be permuted


def test_spec_follows_functional_ops_and_fixes_groups_added_to_the_input():
    torch.manual_seed(0)
    model = _Functional()
    spec = permutation_spec(model, X8)
    assert list(spec.groups) == ["P_conv1"] and spec.sizes["P_conv1"] == 4
    assert {("conv2.weight", 1, 1), ("conv2.weight", 0, 1), ("fc.weight", 1, 16)} <= _entries(
        spec, "P_conv1"
    )
    assert ("fc2.weight", 1, 1) in _entries(spec, "P_conv1")
    perms = random_permutation(spec, seed=0)
    b = apply_permutation(model, spec, perms)
    res = weight_matching(model, b, example_input=X8)
    assert res.permutations["P_conv1"] == torch.argsort(perms["P_conv1"]).tolist()
    assert permutation_spec(_InputResidual(), X8).groups == {}


# -- permutations are symmetries --------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_random_permutation_leaves_the_function_unchanged(name, seed):
    model = _make(name)
    before = copy.deepcopy(model.state_dict())
    spec = permutation_spec(model, X8)
    perms = random_permutation(spec, seed)
    permuted = apply_permutation(model, spec, perms)
    with torch.no_grad():
        torch.testing.assert_close(permuted(X8), model(X8), atol=1e-5, rtol=0)
    assert any(  # the weights did move ...
        not torch.equal(v, permuted.state_dict()[k]) for k, v in model.state_dict().items()
    ) or all(torch.equal(p, torch.arange(len(p))) for p in perms.values())
    for k, v in model.state_dict().items():  # ... and the caller's model did not
        assert torch.equal(v, before[k])


# -- weight and activation matching recover a known permutation exactly -------------------------


@pytest.mark.parametrize("name", ["mlp", "lenet", "lenet_bn", "resnet", "resnet_noskip"])
@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_weight_matching_recovers_a_known_permutation(name, noise):
    a = _make(name, seed=1)
    spec = permutation_spec(a, X8)
    perms = random_permutation(spec, seed=7)
    b = apply_permutation(a, spec, perms)
    if noise:
        torch.manual_seed(3)
        with torch.no_grad():
            for p in b.parameters():
                p.add_(noise * torch.randn_like(p))
    res = weight_matching(a, b, example_input=X8, seed=2)
    for g, p in perms.items():
        assert res.permutations[g] == torch.argsort(p).tolist(), g
    assert res.max_output_diff <= 1e-5 and res.iterations >= 2
    assert res.objective[-1] >= res.objective[0]
    for k, v in a.state_dict().items():
        torch.testing.assert_close(res.model.state_dict()[k], v, atol=10 * noise, rtol=0)
        if not noise:
            assert torch.equal(res.model.state_dict()[k], v), k


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet"])
def test_activation_matching_recovers_a_known_permutation(name, digits_xy):
    """LeNet has 19 of 64 fc1 units dead on the data: the pre-activation tie-break matches them."""
    a = _make(name, seed=1)
    spec = permutation_spec(a, X8)
    perms = random_permutation(spec, seed=5)
    b = apply_permutation(a, spec, perms)
    res = activation_matching(a, b, digits_xy, num_examples=512)
    assert isinstance(res, AlignmentResult) and res.method == "activation_matching"
    for g, p in perms.items():
        assert res.permutations[g] == torch.argsort(p).tolist(), g
    for k, v in a.state_dict().items():
        assert torch.equal(res.model.state_dict()[k], v), k
    assert json.loads(json.dumps(res.to_dict()))["max_output_diff"] <= 1e-5


# -- trained pairs: barriers and REPAIR ---------------------------------------------------------


def _train(x, y, seed, steps=150):
    torch.manual_seed(seed)
    model = mlp(hidden=(64, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_pair(digits_xy):
    x, y = digits_xy
    a, b = _train(x, y, seed=0), _train(x, y, seed=1)
    return a, b, weight_matching(a, b, example_input=x[:16])


def _loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def test_weight_matching_lowers_the_barrier_of_two_trained_mlps(trained_pair, digits_xy):
    a, b, res = trained_pair
    assert res.max_output_diff <= 1e-5
    cmp = barrier_before_after(a, b, res, digits_xy, num_points=11)
    print(f"loss barrier before {cmp.before:.4f}, after weight matching {cmp.after:.4f}")
    assert cmp.before > 0.05 and cmp.after < 0.5 * cmp.before
    assert cmp.curve_after[0] == pytest.approx(cmp.curve_before[0])
    assert cmp.curve_after[-1] == pytest.approx(cmp.curve_before[-1], abs=1e-5)  # same function
    assert json.dumps(cmp.to_dict())


def test_linear_barrier_is_the_gap_above_the_chord():
    assert linear_barrier([0, 0.5, 1], [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    with pytest.raises(BasinscopeError, match="from 0 to 1"):
        linear_barrier([0.2, 1.0], [1.0, 2.0])


def test_barriers_are_the_barrier_modules_definitions(trained_pair, digits_xy):
    """One place per definition: every barrier here is barrier_from_curve's."""
    a, b, res = trained_pair
    values = [1.0, 2.5, 1.5, 3.0, 2.0]
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert linear_barrier(alphas, values) == barrier_from_curve(alphas, values, "linear")[0]
    for definition in BARRIER_DEFINITIONS:
        cmp = barrier_before_after(a, b, res, digits_xy, num_points=5, definition=definition)
        assert cmp.definition == definition
        assert cmp.definition_formula == BARRIER_DEFINITIONS[definition]
        for value, curve in ((cmp.before, cmp.curve_before), (cmp.after, cmp.curve_after)):
            assert value == barrier_from_curve(cmp.alphas, curve, definition)[0]
    with pytest.raises(BasinscopeError, match="unknown barrier definition 'peak'"):
        barrier_before_after(a, b, res, digits_xy, num_points=5, definition="peak")


def test_align_is_matching_then_the_barriers(trained_pair, digits_xy, tmp_path):
    from basinscope.plotting import plot
    from basinscope.store import load, save

    a, b, _ = trained_pair
    x, y = digits_xy
    data = {"train": (x, y), "test": (x[:64], y[:64])}
    loop = EvalOptions(strategy="loop")  # the same numbers, whichever strategy is faster
    spec = AlignSpec(method="weight", split="test", num_points=5, seed=3, eval=loop)
    res = align(a, b, data, spec=spec, labels=("a", "b"))
    matched = weight_matching(a, b, example_input=x[:64], seed=3)
    test = {"test": data["test"]}
    cmp = barrier_before_after(a, b, matched, test, num_points=5, strategy="loop")
    assert res.spec == spec and res.labels == ("a", "b") and res.kind == "alignment"
    assert res.permutations == matched.permutations and res.objective == matched.objective
    assert res.barrier.to_dict() == cmp.to_dict() and res.barrier.split == "test"
    assert "Git Re-Basin" in res.definition
    again = load(save(res, tmp_path / "run"))
    assert again.to_dict() == json.loads(json.dumps(res.to_dict())) and again.model is None
    assert again.permutation_spec.groups == res.permutation_spec.groups
    assert again.permutation_spec.axes == res.permutation_spec.axes
    for r in (res, res.barrier, matched):
        fig, ax = plot(r)
        assert ax in fig.axes
    with pytest.raises(BasinscopeError, match="unknown alignment method 'optimal'"):
        align(a, b, data, method="optimal")
    with pytest.raises(BasinscopeError, match="the data has no split 'valid'"):
        align(a, b, data, split="valid")


def test_repair_does_not_increase_the_midpoint_loss(trained_pair, digits_xy):
    a, _, res = trained_pair
    x, y = digits_xy
    mid = copy.deepcopy(a)
    mid.load_state_dict(
        {k: 0.5 * (v + res.model.state_dict()[k]) for k, v in a.state_dict().items()}
    )
    repaired = repair(a, res.model, 0.5, digits_xy, num_examples=1797)
    plain, fixed = _loss(mid, x, y), _loss(repaired, x, y)
    print(f"midpoint loss after alignment {plain:.4f}, with REPAIR {fixed:.4f}")
    assert fixed <= plain
    # at alpha = 0 REPAIR's targets are model A's own statistics: nothing to correct
    with torch.no_grad():
        torch.testing.assert_close(repair(a, res.model, 0.0, digits_xy)(x), a(x), atol=1e-4, rtol=0)


def test_repair_with_batchnorm_resets_the_statistics(digits_xy):
    x, _ = digits_xy
    a, b = _make("mlp_bn", 0), _make("mlp_bn", 1)
    repaired = repair(a, b, 0.5, digits_xy, num_examples=256)
    with torch.no_grad():
        h = repaired.fc1(repaired.flatten(x[:256]))
    torch.testing.assert_close(repaired.bn1.running_mean, h.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(repaired.bn1.running_var, h.var(0), atol=1e-4, rtol=1e-4)
    assert not a.training and not repaired.training


# -- errors ---------------------------------------------------------------------------------------


class _Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return x
        return -x


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.gate, self.fc2 = nn.Linear(64, 8), _Gate(), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc2(self.gate(self.fc1(x.flatten(1))))


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 8), nn.Linear(16, 10)

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        return self.fc2(torch.cat([h, h.relu()], dim=1))


def test_untraceable_model_names_the_module_and_the_fix():
    with pytest.raises(
        BasinscopeError, match=r"could not trace module 'gate' \(_Gate\).*hand-written"
    ):
        permutation_spec(_Untraceable(), X8)


def test_unsupported_op_names_the_node():
    with pytest.raises(BasinscopeError, match=r"call function 'cat'.*PermutationSpec.from_groups"):
        permutation_spec(_Concat(), X8)


def test_wrong_hand_written_spec_fails_verification():
    a = _make("mlp", seed=1)
    b = apply_permutation(
        a, permutation_spec(a, X8), random_permutation(permutation_spec(a, X8), 1)
    )
    partial = PermutationSpec.from_groups({"P_fc1": [("fc1.weight", 0), ("fc1.bias", 0)]}, a)
    with pytest.raises(BasinscopeError, match="hand-written spec misses or mislabels an axis"):
        weight_matching(a, b, partial, example_input=X8)


def test_failed_verification_of_a_discovered_spec_is_reported_as_a_bug():
    a = _make("mlp", seed=1)
    auto = permutation_spec(a, X8)
    b = apply_permutation(a, auto, random_permutation(auto, 1))
    broken = PermutationSpec(
        {"P_fc1": auto.groups["P_fc1"][:2]}, {"P_fc1": 32}, origin="torch.fx"
    )  # as if discovery had missed fc2's input axis
    with pytest.raises(RuntimeError, match="bug in basinscope's permutation-spec discovery"):
        weight_matching(a, b, broken, example_input=X8)


def test_activation_matching_and_repair_say_what_they_need(digits_xy):
    model = mlp(hidden=(4,))
    spec = PermutationSpec.from_groups({"P": [("fc1.weight", 0), ("fc2.weight", 1)]}, model)
    with pytest.raises(BasinscopeError, match="no activation sites"):
        activation_matching(model, model, digits_xy, spec)
    no_bias = nn.Sequential(nn.Flatten(), nn.Linear(64, 8, bias=False), nn.ReLU(), nn.Linear(8, 10))
    with pytest.raises(BasinscopeError, match=r"bias of '1', which has none"):
        repair(no_bias, no_bias, 0.5, digits_xy)


def test_bad_permutations_and_specs_are_rejected():
    model = mlp(hidden=(4,))
    spec = permutation_spec(model, X8)
    with pytest.raises(BasinscopeError, match=r"must hold each of 0..3 once"):
        apply_permutation(model, spec, {"P_fc1": [0, 0, 1, 2]})
    with pytest.raises(BasinscopeError, match="unknown groups"):
        apply_permutation(model, spec, {"P_fc9": [0, 1, 2, 3]})
    with pytest.raises(BasinscopeError, match="not a parameter or buffer"):
        PermutationSpec.from_groups({"P": [("fc9.weight", 0)]}, model)
    with pytest.raises(BasinscopeError, match="mixes sizes"):
        PermutationSpec.from_groups({"P": [("fc1.weight", 0), ("fc1.weight", 1)]}, model)
