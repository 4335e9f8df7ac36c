import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from basinscope.errors import BasinscopeError
from basinscope.geometry import filter_norms, normalize_direction, random_direction


def _params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        f"p{i}": torch.randn(s, generator=g, dtype=torch.float64) * (i + 1)
        for i, s in enumerate(shapes)
    }


shape_st = st.one_of(
    st.tuples(st.integers(1, 6), st.integers(1, 5)),
    st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
)


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(shape_st, min_size=1, max_size=3), seed=st.integers(0, 1000))
def test_filter_normalization_gives_each_filter_the_norm_of_the_model_filter(shapes, seed):
    params = _params(shapes, seed)
    raw = _params(shapes, seed + 1)
    d = normalize_direction(raw, params, "filter", "zero")
    for k in params:
        torch.testing.assert_close(
            filter_norms(d[k]), filter_norms(params[k]), rtol=1e-10, atol=1e-12
        )
        # direction of each filter unchanged (positive multiple of the raw filter)
        cos = torch.nn.functional.cosine_similarity(
            d[k].reshape(len(d[k]), -1), raw[k].reshape(len(d[k]), -1)
        )
        torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-10)


def test_layer_and_model_normalization():
    params = _params([(4, 3), (5, 4, 2, 2)])
    raw = _params([(4, 3), (5, 4, 2, 2)], 7)
    d = normalize_direction(raw, params, "layer")
    for k in params:
        assert torch.isclose(d[k].norm(), params[k].norm())
    d = normalize_direction(raw, params, "model")
    total_d = sum(v.pow(2).sum() for v in d.values()).sqrt()
    total_p = sum(v.pow(2).sum() for v in params.values()).sqrt()
    assert torch.isclose(total_d, total_p)
    d = normalize_direction(raw, params, "none")
    for k in params:
        assert torch.equal(d[k], raw[k])


def test_bias_policies():
    params = {
        "w": torch.randn(3, 2, dtype=torch.float64),
        "b": torch.randn(3, dtype=torch.float64) + 3,
    }
    raw = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64)}
    assert torch.equal(
        normalize_direction(raw, params, "filter", "zero")["b"], torch.zeros(3, dtype=torch.float64)
    )
    assert torch.equal(normalize_direction(raw, params, "filter", "as_weights")["b"], params["b"])
    inc = normalize_direction(raw, params, "filter", "include")["b"]
    assert torch.isclose(inc.norm(), params["b"].norm())


def test_zero_filters_stay_zero_without_nan():
    params = {"w": torch.zeros(3, 4)}
    raw = {"w": torch.randn(3, 4)}
    raw["w"][1] = 0
    d = normalize_direction(raw, params, "filter")
    assert torch.isfinite(d["w"]).all()
    assert torch.equal(d["w"], torch.zeros(3, 4))


def test_random_direction_is_seeded_and_leaves_global_rng_alone():
    params = _params([(4, 3), (2, 3, 3, 3)])
    state = torch.random.get_rng_state()
    d1 = random_direction(params, 5)
    assert torch.equal(torch.random.get_rng_state(), state)
    d2 = random_direction(params, 5)
    d3 = random_direction(params, 6)
    for k in params:
        assert torch.equal(d1[k], d2[k])
        assert not torch.equal(d1[k], d3[k])


def test_unknown_normalization_and_bias_policy_are_named():
    p = {"w": torch.ones(2, 2)}
    with pytest.raises(
        BasinscopeError, match=r"unknown normalization 'filt'.*filter, layer, model, none"
    ):
        normalize_direction(p, p, "filt")
    with pytest.raises(
        BasinscopeError, match=r"unknown bias policy 'keep'.*zero, include, as_weights"
    ):
        normalize_direction(p, p, "filter", "keep")


def test_direction_with_wrong_keys_is_refused():
    with pytest.raises(BasinscopeError, match=r"1 missing keys \['b'\]"):
        normalize_direction({"w": torch.ones(2)}, {"w": torch.ones(2), "b": torch.ones(2)})
