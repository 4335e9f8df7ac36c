import numpy as np
import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.geometry import (
    check_directions_fit,
    dot,
    flatten,
    load_directions,
    norm,
    orthogonalize,
    pca_directions,
    plane_through,
    project_onto_plane,
    random_directions,
    save_directions,
    unflatten,
)

SHAPES = {"a.weight": (4, 3), "a.bias": (4,), "c.weight": (2, 3, 2, 2)}


def _rand(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=torch.float64) * scale for k, s in SHAPES.items()}


def test_flatten_unflatten_round_trip():
    p = _rand(0)
    v = flatten(p)
    assert v.numel() == sum(np.prod(s) for s in SHAPES.values())
    back = unflatten(v, p)
    for k in p:
        assert torch.equal(back[k], p[k])


def test_pca_matches_numpy_svd():
    center = _rand(0)
    traj = [
        {
            k: center[k]
            + 0.1 * i * _rand(1)[k]
            + 0.05 * np.sin(i) * _rand(2)[k]
            + 0.01 * _rand(10 + i)[k]
            for k in center
        }
        for i in range(8)
    ]
    traj.append(center)
    res = pca_directions(traj, 2)
    m = np.stack([flatten(t).numpy() - flatten(center).numpy() for t in traj])
    m = m - m.mean(0)
    _, s, vt = np.linalg.svd(m, full_matrices=False)
    var = s**2 / (len(traj) - 1)
    np.testing.assert_allclose(res.explained_variance, var[:2], rtol=1e-10)
    np.testing.assert_allclose(res.explained_variance_ratio, var[:2] / var.sum(), rtol=1e-10)
    for i in range(2):
        got = flatten(res.directions[i]).numpy()
        assert abs(abs(got @ vt[i]) - 1) < 1e-10
        assert abs(np.linalg.norm(got) - 1) < 1e-12


def test_pca_needs_enough_checkpoints():
    with pytest.raises(BasinscopeError, match="needs at least 3 checkpoints, got 2"):
        pca_directions([_rand(0), _rand(1)], 2)


def test_projection_recovers_coordinates_and_distance():
    c = _rand(0)
    d1, d2 = _rand(1), _rand(2)
    (e,) = orthogonalize([_rand(3)])
    # make e orthogonal to the plane
    _, _, e3 = orthogonalize([d1, d2, e])
    e3 = {k: v / float(norm(e3)) for k, v in e3.items()}
    pts = [
        {k: c[k] + a * d1[k] + b * d2[k] + r * e3[k] for k in c}
        for a, b, r in [(0.5, -0.2, 0.0), (-1.0, 2.0, 0.3), (0.0, 0.0, 1.5)]
    ]
    proj = project_onto_plane(pts, c, d1, d2)
    np.testing.assert_allclose(proj.alpha, [0.5, -1.0, 0.0], atol=1e-10)
    np.testing.assert_allclose(proj.beta, [-0.2, 2.0, 0.0], atol=1e-10)
    np.testing.assert_allclose(proj.distance, [0.0, 0.3, 1.5], atol=1e-10)


def test_projection_refuses_parallel_directions():
    d = _rand(1)
    with pytest.raises(BasinscopeError, match="parallel"):
        project_onto_plane([d], d, d, {k: 2 * v for k, v in d.items()})


def test_orthogonalize_keeps_norms():
    a, b = random_directions(_rand(0), 1, 2, "filter", "include", orthogonal=True)
    assert abs(float(dot(a, b))) < 1e-9 * float(norm(a) * norm(b))
    _, b0 = random_directions(_rand(0), 1, 2, "filter", "include")
    assert float(norm(b)) == pytest.approx(float(norm(b0)))


def test_plane_through_three_models_reproduces_them():
    a, b, c = _rand(0), _rand(1), _rand(2)
    (e1, e2), pos = plane_through(a, b, c)
    assert float(norm(e1)) == pytest.approx(1) and float(norm(e2)) == pytest.approx(1)
    assert abs(float(dot(e1, e2))) < 1e-12
    for model, (x, y) in zip([a, b, c], pos):
        rebuilt = {k: a[k] + x * e1[k] + y * e2[k] for k in a}
        for k in a:
            torch.testing.assert_close(rebuilt[k], model[k])
    with pytest.raises(BasinscopeError, match="identical"):
        plane_through(a, a, c)


def test_directions_round_trip_through_safetensors(tmp_path):
    dirs = [_rand(1), _rand(2)]
    p = save_directions(tmp_path / "d.safetensors", dirs, {"normalization": "filter"})
    back, meta = load_directions(p)
    assert meta["normalization"] == "filter" and meta["n_directions"] == 2
    for d, e in zip(dirs, back):
        for k in d:
            assert torch.equal(d[k], e[k])


def test_direction_file_errors(tmp_path):
    with pytest.raises(BasinscopeError, match="does not exist"):
        load_directions(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(BasinscopeError, match="could not read directions file"):
        load_directions(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.ones(2)}, str(other))
    with pytest.raises(BasinscopeError, match="not a basinscope directions file"):
        load_directions(other)


def test_directions_that_do_not_fit_the_model_are_explained():
    params = _rand(0)
    d = _rand(1)
    d.pop("a.bias")
    d["c.weight"] = torch.zeros(3, 3)
    d["extra"] = torch.zeros(1)
    with pytest.raises(
        BasinscopeError,
        match=r"direction 0 does not fit the model.*1 missing keys \['a.bias'\]; 1 unexpected keys \['extra'\]; 1 shape mismatches \['c.weight: \(2, 3, 2, 2\) vs \(3, 3\)'\].*recreate them",
    ):
        check_directions_fit([d], params)
