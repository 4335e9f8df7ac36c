import numpy as np
import pytest
import torch
from torch import nn

from basinscope.analyses import (
    interpolate,
    pca_surface,
    plane_surface,
    project_trajectory,
    random_surface,
)
from basinscope.errors import BasinscopeError
from basinscope.geometry import get_params


def _relu_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _rescaled(model, c):
    """The same function: first layer (weights and bias) times c, second layer weights / c."""
    other = _relu_mlp().to(next(model.parameters()).dtype)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other[1].weight.mul_(c)
        other[1].bias.mul_(c)
        other[3].weight.div_(c)
    return other


@pytest.mark.parametrize("c", [0.2, 5.0])
def test_filter_normalized_surface_is_invariant_to_relu_rescaling(c, small_data):
    """Li et al.'s point: with filter normalization a rescaled network has the same surface."""
    m = _relu_mlp().double()  # float64 parameters: the symmetry is exact up to float64 rounding
    r = _rescaled(m, c).double()
    kw = dict(alphas=np.linspace(-1, 1, 5), betas=np.linspace(-1, 1, 5), dtype="float64", seed=3)
    a = random_surface(m, small_data, normalization="filter", **kw)
    b = random_surface(r, small_data, normalization="filter", **kw)
    np.testing.assert_allclose(
        a.dataset["train_loss"].values, b.dataset["train_loss"].values, rtol=1e-9
    )
    # without normalization the same random directions see a different surface
    a0 = random_surface(m, small_data, normalization="none", **kw)
    b0 = random_surface(r, small_data, normalization="none", **kw)
    assert np.abs(a0.dataset["train_loss"].values - b0.dataset["train_loss"].values).max() > 1e-3


def test_interpolation_extrapolates_and_records_definition(small_data):
    a, b = _relu_mlp(0), _relu_mlp(1)
    land = interpolate(a, b, small_data, alphas=np.linspace(-1, 2, 7))
    ds = land.dataset
    assert list(ds.alpha.values) == list(np.linspace(-1, 2, 7))
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy"} <= set(ds.data_vars)
    assert ds.attrs["kind"] == "interpolation" and ds.attrs["bn_policy"] == "stored"


def test_pca_surface_projects_its_own_trajectory_exactly_onto_the_plane(small_data):
    m = _relu_mlp()
    center = get_params(m)
    g = torch.Generator().manual_seed(0)
    u = {k: torch.randn(v.shape, generator=g) for k, v in center.items()}
    w = {k: torch.randn(v.shape, generator=g) for k, v in center.items()}
    traj = {
        s: {k: center[k] + (5 - s) * 0.1 * u[k] + s * (5 - s) * 0.01 * w[k] for k in center}
        for s in range(6)
    }
    land, proj = pca_surface(m, traj, small_data, n=5)
    assert land.dataset.attrs["kind"] == "pca_surface"
    assert sum(land.dataset.attrs["explained_variance_ratio"]) == pytest.approx(1.0, abs=1e-5)
    assert proj.distance.max() < 1e-4  # a trajectory in a 2D affine subspace lies in its PCA plane
    assert (proj.alpha[-1], proj.beta[-1]) == pytest.approx((0.0, 0.0), abs=1e-5)
    again = project_trajectory(land, traj, "again")
    np.testing.assert_allclose(again.alpha, proj.alpha, atol=1e-5)


def test_plane_through_three_models_puts_them_at_their_coordinates(small_data):
    a, b, c = (_relu_mlp(i).double() for i in range(3))
    land, pos = plane_surface(a, b, c, small_data, n=4, dtype="float64")
    line = interpolate(a, b, small_data, alphas=[1.0], dtype="float64")
    # evaluating exactly at B's coordinates reproduces B's loss
    at_b, _ = plane_surface(
        a, b, c, small_data, alphas=[pos[1, 0]], betas=[pos[1, 1]], dtype="float64"
    )
    assert at_b.dataset["train_loss"].values[0, 0] == pytest.approx(
        line.dataset["train_loss"].values[0], rel=1e-9
    )
    assert land.dataset.attrs["model_coords"] == pytest.approx(pos.reshape(-1).tolist())


# -- the landscape result ---------------------------------------------------------------------


def test_a_landscape_run_folder_holds_the_result_and_loads_it_back(tmp_path, small_data):
    from basinscope.analyses import RandomSurfaceSpec
    from basinscope.geometry import load_directions
    from basinscope.spec import EvalOptions
    from basinscope.store import load

    m = _relu_mlp()
    spec = RandomSurfaceSpec(
        alphas=(-1.0, 0.0, 1.0),
        betas=(0.0, 1.0),
        seed=3,
        metrics=("loss",),
        eval=EvalOptions(strategy="loop", chunk_size=2),
    )
    land = random_surface(m, small_data, spec=spec, run_dir=tmp_path / "r")
    assert land.kind == "landscape" and land.definition == "surface"
    assert "Li et al. 2018" in land.definition_formula
    assert land.spec == spec
    # the same settings as keywords give the same numbers
    same = random_surface(
        m, small_data, alphas=[-1, 0, 1], betas=[0, 1], seed=3, metrics=["loss"], strategy="loop"
    )
    assert (
        same.dataset["train_loss"].values.tobytes() == land.dataset["train_loss"].values.tobytes()
    )
    loaded = load(tmp_path / "r")
    assert isinstance(loaded.spec, RandomSurfaceSpec) and loaded.spec == spec
    assert loaded.to_dict() == land.to_dict()
    for v in land.dataset.data_vars:
        assert loaded.dataset[v].values.tobytes() == land.dataset[v].values.tobytes()
    # the directions in the run folder are what `basinscope surface --directions` takes
    dirs, meta = load_directions(tmp_path / "r" / "tensors" / "directions.safetensors")
    assert meta["n_directions"] == 2
    for d, e in zip(dirs, land.directions):
        assert list(d) == list(e) and all(torch.equal(d[k], e[k]) for k in d)


def test_each_landscape_spec_is_read_back_as_itself():
    from basinscope.analyses import (
        InterpolationSpec,
        LandscapeSpec,
        PCASurfaceSpec,
        PlaneSurfaceSpec,
        RandomLineSpec,
        RandomSurfaceSpec,
    )

    for cls in (
        LandscapeSpec,
        InterpolationSpec,
        RandomLineSpec,
        RandomSurfaceSpec,
        PCASurfaceSpec,
        PlaneSurfaceSpec,
    ):
        spec = cls(metrics=("loss",))
        back = LandscapeSpec.from_dict(spec.to_dict())
        assert type(back) is cls and back == spec


def test_the_line_functions_take_their_spec(small_data):
    from basinscope.analyses import InterpolationSpec, RandomLineSpec, random_line

    a, b = _relu_mlp(0), _relu_mlp(1)
    spec = InterpolationSpec(alphas=(0.0, 0.5, 1.0), metrics=("loss",))
    land = interpolate(a, b, small_data, spec=spec)
    assert land.spec == spec and land.definition == "interpolation"
    assert list(land.dataset.data_vars) == ["train_loss", "test_loss"]
    line = random_line(a, small_data, spec=RandomLineSpec(alphas=(0.0, 1.0), seed=4))
    assert line.spec.seed == 4 and line.dataset.attrs["seed"] == 4
    with pytest.raises(BasinscopeError, match=r"random_line\(\) takes a RandomLineSpec"):
        random_line(a, small_data, spec=spec)
