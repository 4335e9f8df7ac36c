"""write_vtp: ParaView PolyData export, validated by parsing the XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from basinscope.errors import BasinscopeError
from basinscope.plotting import write_vtp


def _parse(path: Path) -> tuple[ET.Element, dict[str, np.ndarray]]:
    root = ET.parse(path).getroot()
    assert root.tag == "VTKFile" and root.get("type") == "PolyData"
    piece = root.find("PolyData/Piece")
    assert piece is not None
    arrays = {}
    for section in ("PointData", "CellData", "Points", "Polys"):
        for da in piece.findall(f"{section}/DataArray"):
            assert da.get("format") == "ascii"
            arrays[f"{section}/{da.get('Name')}"] = np.array((da.text or "").split(), dtype=float)
    return piece, arrays


def test_counts_points_and_connectivity(ramp: xr.Dataset, tmp_path: Path) -> None:
    out = write_vtp(ramp, "train_loss", tmp_path / "deep" / "ramp.vtp")
    assert out == tmp_path / "deep" / "ramp.vtp"
    piece, arr = _parse(out)
    na, nb = 13, 7
    assert int(piece.get("NumberOfPoints")) == na * nb
    n_polys = (na - 1) * (nb - 1)
    assert int(piece.get("NumberOfPolys")) == n_polys
    points = arr["Points/Points"].reshape(-1, 3)
    assert points.shape == (na * nb, 3)
    # Point j * na + i is (alpha[i], beta[j], value[i, j]).
    i, j = 4, 5
    p = points[j * na + i]
    assert p.tolist() == pytest.approx(
        [ramp.alpha[i].item(), ramp.beta[j].item(), ramp["train_loss"].values[i, j]]
    )
    np.testing.assert_allclose(arr["PointData/zvalue"], points[:, 2])
    conn = arr["Polys/connectivity"].astype(int)
    offsets = arr["Polys/offsets"].astype(int)
    assert offsets.size == n_polys and offsets[-1] == conn.size == 4 * n_polys
    assert np.all(np.diff(np.concatenate([[0], offsets])) == 4)
    assert conn.min() == 0 and conn.max() == na * nb - 1
    quads = conn.reshape(-1, 4)
    # Every quad is a unit grid cell: its corners span one step in alpha and in beta.
    corners = points[quads][:, :, :2]
    assert np.all(np.ptp(corners[:, :, 0], axis=1) == pytest.approx(0.25))
    assert np.all(np.ptp(corners[:, :, 1], axis=1) == pytest.approx(1 / 3))
    np.testing.assert_allclose(arr["CellData/averaged zvalue"], points[quads, 2].mean(axis=1))
    assert np.all(arr["PointData/finite"] == 1)


def test_nonfinite_values_are_replaced(bowl_nonfinite: xr.Dataset, tmp_path: Path) -> None:
    _, arr = _parse(write_vtp(bowl_nonfinite, "train_loss", tmp_path / "b.vtp"))
    z = arr["PointData/zvalue"].reshape(21, 21)  # rows: beta, columns: alpha
    assert np.all(np.isfinite(z))
    finite_max, finite_min = 3.1, 0.1
    assert z[0, 0] == pytest.approx(finite_max)  # NaN -> finite max
    assert z[-1, -1] == pytest.approx(finite_max)  # +inf -> finite max
    assert z[0, -1] == pytest.approx(finite_min)  # -inf at alpha[-1], beta[0] -> finite min
    flags = arr["PointData/finite"].reshape(21, 21)
    assert flags.sum() == 441 - 3 and flags[0, 0] == flags[-1, -1] == flags[0, -1] == 0


def test_zmax_and_log(bowl_nonfinite: xr.Dataset, tmp_path: Path) -> None:
    path = write_vtp(bowl_nonfinite, "train_loss", tmp_path / "b.vtp", log=True, zmax=2.0)
    _, arr = _parse(path)
    z = arr["PointData/zvalue"]
    assert z.max() == pytest.approx(np.log10(2.0)) and z.min() == pytest.approx(-1.0)
    assert "train_loss, log10, zmax=2" in path.read_text()


def test_errors(bowl: xr.Dataset, tmp_path: Path) -> None:
    with pytest.raises(BasinscopeError, match="at least 2 x 2"):
        write_vtp(bowl.isel(beta=[0]), "train_loss", tmp_path / "x.vtp")
    empty = bowl.assign(train_loss=bowl["train_loss"] * np.nan)
    with pytest.raises(BasinscopeError, match="no finite value"):
        write_vtp(empty, "train_loss", tmp_path / "x.vtp")
    with pytest.raises(BasinscopeError, match="needs positive values"):
        write_vtp(
            bowl.assign(train_loss=-bowl["train_loss"]), "train_loss", tmp_path / "x.vtp", log=True
        )
