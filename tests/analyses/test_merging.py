"""Model merging: every method against a brute-force float64 formula on tiny models, the
curvature-aware subspace merge against the closed-form minimiser of quadratic losses, its
error decomposition against the exact quadratic, the Fisher diagonals against dense
references, K = 1, selection, loading, the plane, and the messages of bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import basinscope as bs
from basinscope.analyses import merging as M
from basinscope.curvature import EFOperator
from basinscope.curvature.fisher import diagonal_fisher
from basinscope.engine import Task
from basinscope.errors import BasinscopeError


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def family(k=3, scale=0.3, seed=0):
    base = mlp(seed)
    models = []
    for i in range(k):
        m = copy.deepcopy(base)
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        models.append(m)
    return base, models


def datasets(k=3, n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g),
        )
        for _ in range(k)
    ]


def flat(m) -> np.ndarray:
    if isinstance(m, nn.Module):
        m = dict(m.named_parameters())
    return np.concatenate([v.detach().double().reshape(-1).numpy() for v in m.values()])


# -- the formulas ---------------------------------------------------------------------------
def test_uniform_and_task_arithmetic_equal_their_formulas():
    base, models = family()
    t0, ts = flat(base), [flat(m) for m in models]
    np.testing.assert_allclose(flat(M.uniform_soup(models)), np.mean(ts, 0), rtol=0, atol=1e-15)
    ref = t0 + 0.7 * sum(t - t0 for t in ts)
    np.testing.assert_allclose(flat(M.task_arithmetic(base, models, 0.7)), ref, atol=1e-14)


def ties_reference(t0, ts, density, lam):
    taus = [t - t0 for t in ts]
    n = len(t0)
    k = max(1, int(np.ceil(density * n)))
    trimmed = []
    for tau in taus:
        keep = np.argsort(-np.abs(tau), kind="stable")[:k]
        t = np.zeros(n)
        t[keep] = tau[keep]
        trimmed.append(t)
    out = np.zeros(n)
    for j in range(n):
        sign = np.sign(sum(t[j] for t in trimmed))
        agree = [t[j] for t in trimmed if t[j] != 0 and np.sign(t[j]) == sign]
        out[j] = np.mean(agree) if agree else 0.0
    return t0 + lam * out


@pytest.mark.parametrize("density", [0.1, 0.35, 1.0])
def test_ties_equals_trim_elect_disjoint_mean(density):
    base, models = family(k=4)
    got = flat(M.ties_merge(base, models, density=density, lam=0.8))
    ref = ties_reference(flat(base), [flat(m) for m in models], density, 0.8)
    np.testing.assert_allclose(got, ref, atol=1e-14)


def test_dare_masks_are_seeded_bernoulli_and_rescaled():
    base, models = family()
    t0, ts = flat(base), [flat(m) for m in models]
    p = 0.6
    ref = t0.copy()
    for i, t in enumerate(ts):
        g = torch.Generator().manual_seed(5 + i)
        keep = (torch.rand(len(t0), generator=g, dtype=torch.float64) >= p).numpy()
        ref += 0.5 * (t - t0) * keep / (1 - p)
    got = flat(M.dare_merge(base, models, drop_rate=p, lam=0.5, seed=5))
    np.testing.assert_allclose(got, ref, atol=1e-14)
    # p = 0 is task arithmetic; the mean over seeds converges to it (unbiased rescaling)
    np.testing.assert_allclose(
        flat(M.dare_merge(base, models, drop_rate=0.0, lam=0.5)),
        flat(M.task_arithmetic(base, models, 0.5)),
        atol=1e-15,
    )
    ta = flat(M.task_arithmetic(base, models, 1.0))
    errs = []
    for n in (16, 256):
        mean = np.mean([flat(M.dare_merge(base, models, 0.5, 1.0, seed=s)) for s in range(n)], 0)
        errs.append(np.abs(mean - ta).max())
    assert errs[1] < errs[0] / 2


def test_fisher_merge_formula_and_zero_fisher_fallback():
    _base, models = family()
    fishers = []
    for i, m in enumerate(models):
        g = torch.Generator().manual_seed(i)
        f = {
            k: torch.rand(v.shape, generator=g, dtype=torch.float64)
            for k, v in m.named_parameters()
        }
        f["0.bias"][0] = 0.0
        fishers.append(f)
    for f in fishers[:2]:
        f["2.bias"][1] = 0.0
    fishers[2]["2.bias"][1] = 0.0  # every Fisher zero here: the uniform mean
    got = M.fisher_merge(models, fishers)
    fs = [flat(f) for f in fishers]
    ts = [flat(m) for m in models]
    den = sum(fs)
    ref = np.where(
        den > 0, sum(f * t for f, t in zip(fs, ts)) / np.where(den > 0, den, 1), np.mean(ts, 0)
    )
    np.testing.assert_allclose(flat(got), ref, atol=1e-14)


def test_diagonal_fishers_equal_dense_references():
    model = mlp(3)
    x, y = datasets(1, n=10)[0]
    emp = diagonal_fisher(model, (x, y), fisher="empirical")
    dense = EFOperator(model, (x, y), dtype=torch.float64).dense()
    np.testing.assert_allclose(flat(emp), torch.diagonal(dense).numpy(), rtol=1e-10, atol=1e-14)
    # the true Fisher: the expectation over the model's classes, example by example
    params = dict(model.named_parameters())
    ref = {k: torch.zeros_like(v) for k, v in params.items()}
    for n in range(len(x)):
        logits = model(x[n : n + 1])
        probs = torch.softmax(logits, -1)[0].detach()
        for c in range(3):
            loss = F.cross_entropy(model(x[n : n + 1]), torch.tensor([c]))
            grads = torch.autograd.grad(loss, list(params.values()))
            for k, g in zip(params, grads):
                ref[k] += probs[c] * g * g / len(x)
    true = diagonal_fisher(model, (x, y), fisher="true")
    np.testing.assert_allclose(flat(true), flat(ref), rtol=1e-10, atol=1e-14)


# -- K = 1 ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,settings",
    [
        ("uniform", {}),
        ("ties", {"density": 1.0}),
        ("dare", {"drop_rate": 0.0}),
        ("fisher", {}),
        ("subspace", {"geometry": "curvature"}),
        ("subspace", {"geometry": "flat"}),
        ("subspace", {"geometry": "spectral", "rank": 5}),
    ],
)
def test_one_model_merges_to_itself(method, settings):
    base, models = family(k=1)
    r = M.merge(base, models, method=method, task_data=datasets(1), **settings)
    np.testing.assert_allclose(flat(r.merged), flat(models[0]), atol=1e-12)


def test_one_model_task_arithmetic_is_the_scaled_task_vector():
    base, models = family(k=1)
    r = M.merge(base, models, method="task_arithmetic", lam=0.3)
    t0 = flat(base)
    np.testing.assert_allclose(flat(r.merged), t0 + 0.3 * (flat(models[0]) - t0), atol=1e-14)


# -- the subspace ---------------------------------------------------------------------------
def test_subspace_is_the_svd_of_the_task_matrix():
    base, models = family(k=4)
    t0 = flat(base)
    T = np.stack([flat(m) - t0 for m in models])
    sub = M.task_subspace(base, models, rank=2)
    _, s, vh = np.linalg.svd(T, full_matrices=False)
    np.testing.assert_allclose(sub.singular_values.numpy(), s, rtol=1e-12)
    # the same subspace (the signs of singular vectors are arbitrary)
    P = vh[:2].T @ vh[:2]
    U = sub.basis.numpy()
    np.testing.assert_allclose(U @ U.T, P, atol=1e-12)
    np.testing.assert_allclose(sub.coords.numpy(), T @ U, atol=1e-12)
    resid = ((T - T @ U @ U.T) ** 2).sum(1)
    np.testing.assert_allclose(sub.residual_sq.numpy(), resid, rtol=1e-9, atol=1e-14)


def test_identity_metric_equals_the_flat_subspace_mean():
    base, models = family(k=4)
    sub = M.task_subspace(base, models, 0)
    eye = torch.eye(sub.rank, dtype=torch.float64).expand(4, -1, -1)
    for rank in (1, 3):
        a, ca, _ = M.subspace_merge(base, models, rank=rank, metrics=eye)
        b, _cb, cut = M.subspace_merge(base, models, rank=rank, metrics=None)
        np.testing.assert_allclose(flat(a), flat(b), atol=1e-14)
        np.testing.assert_allclose(ca.numpy(), cut.coords.numpy().mean(0), atol=1e-14)
    # flat at full rank is the plain mean task vector (the tau_i lie in the subspace)
    full, _, _ = M.subspace_merge(base, models, metrics=None)
    np.testing.assert_allclose(flat(full), flat(M.task_arithmetic(base, models, 0.25)), atol=1e-12)


def linear_family(k=3, d=6, n=40, seed=0):
    """K linear least-squares tasks from one base: theta_i is each task's exact minimiser, so
    each loss is exactly quadratic around it with Hessian (2/N) X_i^T X_i."""
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        base.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
    models, data, hessians = [], [], []
    for _ in range(k):
        x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, d)
        w = base.weight.detach()[0] + torch.randn(d, generator=g, dtype=torch.float64)
        y = (x @ w)[:, None] + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
        sol = torch.linalg.lstsq(x, y).solution[:, 0]
        m = copy.deepcopy(base)
        with torch.no_grad():
            m.weight.copy_(sol[None])
        models.append(m)
        data.append((x, y))
        hessians.append((2.0 / n) * (x.T @ x))
    return base, models, data, hessians


@pytest.mark.parametrize(
    "curvature,mean,rank",
    [
        ("ggn", "quadratic", 1),
        ("hessian", "quadratic", 2),
        ("ggn", "quadratic", 3),
        ("hessian", "projected", 3),  # at full rank the two means are one
    ],
)
def test_curvature_merge_is_the_closed_form_minimiser_in_the_subspace(curvature, mean, rank):
    base, models, data, hs = linear_family()
    r = M.merge(
        base,
        models,
        method="subspace",
        geometry="curvature",
        curvature=curvature,
        mean=mean,
        rank=rank,
        task_data=data,
        task=Task(loss="mse"),
        examples=1000,
    )
    t0, ts = flat(base), [flat(m) for m in models]
    sub = M.task_subspace(base, models, rank)
    U = sub.basis.numpy()
    H = [h.numpy() for h in hs]
    # argmin_c sum_i (t0 + U c - t_i)^T H_i (t0 + U c - t_i)
    lhs = sum(U.T @ h @ U for h in H)
    rhs = sum(U.T @ h @ (t - t0) for h, t in zip(H, ts))
    c = np.linalg.solve(lhs, rhs)
    np.testing.assert_allclose(flat(r.merged), t0 + U @ c, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(r.subspace["coefficients"], c, rtol=1e-9, atol=1e-11)
    assert r.subspace["curvature"] == curvature and r.subspace["mean"] == mean
    key = "subspace/curvature" + ("/quadratic" if mean == "quadratic" else "")
    assert r.definition == M.MERGE_DEFINITIONS[key]


def test_projected_mean_is_the_frechet_mean_of_the_projections():
    base, models, data, hs = linear_family()
    r = M.merge(base, models, method="subspace", rank=1, task_data=data, task=Task(loss="mse"))
    t0, ts = flat(base), [flat(m) for m in models]
    u = M.task_subspace(base, models, 1).basis.numpy()
    g = [u.T @ h.numpy() @ u for h in hs]
    c = [u.T @ (t - t0) for t in ts]
    ref = np.linalg.solve(sum(g), sum(gi @ ci for gi, ci in zip(g, c)))
    np.testing.assert_allclose(r.subspace["coefficients"], ref, rtol=1e-9)


def test_decomposition_is_the_exact_quadratic_and_curvature_beats_flat():
    base, models, data, hs = linear_family(k=3)
    d = M.merge_decomposition(base, models, data, task=Task(loss="mse"), examples=1000)
    t0, ts = flat(base), [flat(m) for m in models]
    H = [h.numpy() for h in hs]
    T = np.stack([t - t0 for t in ts])
    for geom in ("curvature", "flat"):
        for r in (1, 2, 3):
            c = d.table["coefficients"].sel(geometry=geom, rank=r).values[:r]
            sub = M.task_subspace(base, models, r)
            theta = t0 + sub.basis.numpy() @ c
            row = d.table.sel(geometry=geom, rank=r)
            for i in range(3):
                quad = 0.5 * (theta - ts[i]) @ H[i] @ (theta - ts[i])
                assert float(row["predicted"][i]) == pytest.approx(quad, rel=1e-9, abs=1e-12)
                # theta_i minimises its quadratic loss: the measured increase is the quadratic
                assert float(row["measured"][i]) == pytest.approx(quad, rel=1e-7, abs=1e-12)
                total = row["variance"][i] + row["residual"][i] + row["cross"][i]
                assert float(total) == pytest.approx(float(row["predicted"][i]), rel=1e-12)
                resid = T[i] - sub.basis.numpy() @ sub.basis.numpy().T @ T[i]
                assert float(row["residual"][i]) == pytest.approx(
                    0.5 * resid @ H[i] @ resid, rel=1e-9, abs=1e-12
                )
    var = d.table["variance"].sum("task")
    assert (var.sel(geometry="curvature") <= var.sel(geometry="flat") + 1e-12).all()
    # the quadratic mean minimises the whole quadratic model in the cut subspace
    q = M.merge_decomposition(base, models, data, task=Task(loss="mse"), mean="quadratic")
    pred = q.table["predicted"].sum("task")
    assert (pred.sel(geometry="curvature") <= pred.sel(geometry="flat") + 1e-12).all()
    projected = d.table["predicted"].sum("task").sel(geometry="curvature")
    assert (pred.sel(geometry="curvature") <= projected + 1e-12).all()
    # the quadratic mean minimises the whole quadratic model in the cut subspace
    q = M.merge_decomposition(base, models, data, task=Task(loss="mse"), mean="quadratic")
    pred = q.table["predicted"].sum("task")
    assert (pred.sel(geometry="curvature") <= pred.sel(geometry="flat") + 1e-12).all()
    assert (
        pred.sel(geometry="curvature")
        <= d.table["predicted"].sum("task").sel(geometry="curvature") + 1e-12
    ).all()
    assert len(d.summary()) == 1 + 2 * 3  # a header, then one row per geometry and rank


def test_spectral_merge_is_the_projected_mean_per_layer():
    base, models = family(k=3)
    got = M.spectral_merge(base, models, rank=2, lam=1.0)
    taus = M.task_vectors(base, models)
    for k, t0 in base.named_parameters():
        mats = [t[k].numpy() for t in taus]
        mean = np.mean(mats, 0)
        if t0.dim() == 2:
            p = np.linalg.svd(np.concatenate(mats, 1))[0][:, :2]
            q = np.linalg.svd(np.concatenate(mats, 0))[2][:2].T
            mean = p @ p.T @ mean @ q @ q.T
        np.testing.assert_allclose(got[k].numpy(), t0.detach().numpy() + mean, atol=1e-13)


# -- the analysis ---------------------------------------------------------------------------
def test_selection_picks_the_best_candidate_and_records_every_one():
    base, models = family()
    val = datasets()
    r = M.merge(
        base,
        models,
        method="ties",
        val_data=val,
        select=("lam", "density"),
        lams=(0.2, 1.0),
        densities=(0.3, 1.0),
    )
    assert len(r.selection) == 4 and r.selected == ("lam", "density")
    best = max(r.selection, key=lambda row: row["mean_accuracy"])
    assert r.mean_accuracy == best["mean_accuracy"]
    assert {k: r.hyper[k] for k in ("lam", "density")} == {
        "lam": best["lam"],
        "density": best["density"],
    }
    ref = bs.evaluate_model(r.to_model(base), val[0])
    assert r.metrics["task1"]["accuracy"] == pytest.approx(ref["train_accuracy"])
    losses = M.merge(
        base,
        models,
        method="task_arithmetic",
        val_data=val,
        select=("lam",),
        select_metric="mean_loss",
    )
    assert losses.mean_loss == min(row["mean_loss"] for row in losses.selection)


def test_merge_all_shares_work_and_names_every_variant():
    base, models = family()
    out = M.merge_all(
        base,
        models,
        methods=["uniform", "fisher", "subspace", ("subspace", {"geometry": "flat"})],
        task_data=datasets(),
        labels=("a", "b", "c"),
    )
    assert list(out) == ["uniform", "fisher", "subspace/curvature", "subspace/flat"]
    assert (
        out["fisher"].fisher == "empirical" and out["subspace/flat"].subspace["geometry"] == "flat"
    )
    assert out["uniform"].labels == ("a", "b", "c")


def test_merged_result_saves_loads_and_loads_into_the_model(tmp_path):
    base, models = family()
    r = M.merge(base, models, method="subspace", geometry="flat", val_data=datasets())
    model = r.to_model(base)
    np.testing.assert_array_equal(flat(model), flat(r.merged))
    bs.save(r, tmp_path / "run")
    back = bs.load(tmp_path / "run")
    assert back.to_dict() == r.to_dict()
    np.testing.assert_array_equal(flat(back.merged), flat(r.merged))


def test_buffers_are_the_mean_of_the_models():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    models = []
    for i in range(2):
        m = copy.deepcopy(base)
        m.train()
        m(torch.randn(16, 3) + i)
        models.append(m)
    r = M.merge(base, models, method="uniform")
    mean = (models[0][1].running_mean + models[1][1].running_mean) / 2
    torch.testing.assert_close(r.buffers["1.running_mean"], mean)
    assert r.to_model(base)[1].num_batches_tracked == base[1].num_batches_tracked


def test_plane_holds_the_models_and_projects_the_merges():
    base, models = family()
    ta = M.task_arithmetic(base, models, 0.5)
    land = M.merge_plane(
        base, models, {"ta": ta}, {"a": datasets()[0]}, i=0, j=2, n=4, dtype="float64"
    )
    attrs = land.dataset.attrs
    assert attrs["model_labels"] == ["base", "task1", "task3"]
    pos = np.array(attrs["model_points"])
    t0 = flat(base)
    d1, d2 = (flat(d) for d in land.directions)
    for p, m in zip(pos[1:], (models[0], models[2])):
        np.testing.assert_allclose(t0 + p[0] * d1 + p[1] * d2, flat(m), atol=1e-10)
    x, y, dist = attrs["merged_points"]["ta"]
    r = flat(ta) - t0
    assert np.linalg.norm(r - x * d1 - y * d2) == pytest.approx(dist, rel=1e-9)
    assert land.dataset["a_loss"].shape == (4, 4)
    a = land.dataset.alpha.values
    assert a.min() < min(pos[:, 0].min(), x) and a.max() > max(pos[:, 0].max(), x)


# -- messages -------------------------------------------------------------------------------
def test_bad_input_is_refused_with_what_and_how():
    base, models = family()
    other = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    with pytest.raises(BasinscopeError, match="shape"):
        M.merge(base, [*models, other])
    with pytest.raises(BasinscopeError, match="at least one fine-tuned model"):
        M.merge(base, [])
    with pytest.raises(
        BasinscopeError, match=r"Fisher merging needs each task's data \(task_data="
    ):
        M.merge(base, models, method="fisher")
    with pytest.raises(BasinscopeError, match=r"Curvature-aware merging .* needs each task's data"):
        M.merge(base, models, method="subspace")
    with pytest.raises(BasinscopeError, match="pass val_data="):
        M.merge(base, models, select=("lam",))
    with pytest.raises(BasinscopeError, match="val_data: got 2 datasets for 3 models"):
        M.merge(base, models, val_data=datasets(2))
    with pytest.raises(BasinscopeError, match="method uniform has no hyper-parameters"):
        M.MergeSpec(method="uniform", select=("lam",))
    with pytest.raises(BasinscopeError, match="rank must be at most the rank of the task vectors"):
        M.merge(base, models, method="subspace", geometry="flat", rank=4)
    with pytest.raises(BasinscopeError, match=r"unknown method 'soup': expected one of uniform"):
        M.merge(base, models, method="soup")
    with pytest.raises(BasinscopeError, match="every task vector is zero"):
        M.merge(base, [copy.deepcopy(base)], method="subspace", geometry="flat")
    with pytest.raises(BasinscopeError, match="labels: got 1 names for 3 models"):
        M.merge(base, models, labels=("a",))
    with pytest.raises(BasinscopeError, match="needs a cross-entropy loss"):
        x = datasets(1)[0][0]
        diagonal_fisher(base, (x, torch.zeros(len(x), 3)), fisher="true", task=Task(loss="mse"))


def test_a_spec_passes_every_setting():
    base, models = family(k=4)
    spec = M.MergeSpec(method="ties", lam=0.5, density=0.5)
    r = M.merge(base, models, spec=spec)
    np.testing.assert_allclose(
        flat(r.merged), flat(M.ties_merge(base, models, 0.5, 0.5)), atol=1e-14
    )
    assert r.hyper == {"lam": 0.5, "density": 0.5} and r.spec == spec


def test_float32_merges_and_decompositions_agree_with_float64():
    base, models, data, _ = linear_family()
    kw = {"task": Task(loss="mse"), "examples": 1000}
    d64 = M.merge_decomposition(base, models, data, **kw)
    d32 = M.merge_decomposition(base, models, data, dtype="float32", **kw)
    np.testing.assert_allclose(d32.table["predicted"], d64.table["predicted"], rtol=1e-4, atol=1e-5)
    r32 = M.merge(base, models, method="subspace", task_data=data, dtype="float32", **kw)
    r64 = M.merge(base, models, method="subspace", task_data=data, **kw)
    np.testing.assert_allclose(flat(r32.merged), flat(r64.merged), rtol=1e-4, atol=1e-5)


def test_grids_and_devices_are_checked_with_their_flags():
    lams = next(f for f in M.MergeSpec.__dataclass_fields__.values() if f.name == "lams")
    with pytest.raises(BasinscopeError, match=r"--lams must be comma-separated numbers, e\.g\."):
        lams.metadata["parse"]("bogus")
    ranks = M.MergeDecompositionSpec.__dataclass_fields__["ranks"].metadata["parse"]
    assert ranks("1, 3") == (1, 3)
    with pytest.raises(BasinscopeError, match="--ranks must be comma-separated integers"):
        ranks("1.5")
    for cls in (M.MergeSpec, M.MergeDecompositionSpec):
        with pytest.raises(BasinscopeError, match="'bogus' is not available here"):
            cls(device="bogus")
