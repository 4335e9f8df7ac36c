"""Export a 2D landscape as a VTK XML PolyData (``.vtp``) surface for ParaView.

This follows the reference implementation of Li et al. (2018),
``tomgoldstein/loss-landscape/h52vtp.py``: one point per grid node at
``(x, y, z) = (alpha, beta, value)``, one quad per grid cell, the node values as the point
array ``zvalue`` and the cell averages as the cell array ``averaged zvalue``, all in the
ASCII XML format so the file is human-readable and diff-able. Differences from the
reference: ``log`` uses ``log10`` of the positive values (the reference uses
``ln(value + 0.1)``), non-finite values are replaced rather than written as ``nan``, and a
``finite`` point array (1 = measured value, 0 = replaced) lets ParaView users threshold
the replaced points away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from basinscope.errors import BasinscopeError
from basinscope.plotting._grid import surface_grid

__all__ = ["vtp_arrays", "write_vtp"]

_PER_LINE = 6


def vtp_arrays(
    ds: xr.Dataset, var: str, *, log: bool = False, zmax: float | None = None
) -> dict[str, np.ndarray]:
    """The arrays written by :func:`write_vtp`, for inspection or other exporters.

    Returns a dict with ``points`` (``(N, 3)`` float), ``zvalue`` (``(N,)``), ``finite``
    (``(N,)`` uint8), ``connectivity`` (``(4 M,)`` int64), ``offsets`` (``(M,)`` int64) and
    ``cell_mean`` (``(M,)``), where ``N = len(alpha) * len(beta)`` and
    ``M = (len(alpha) - 1) * (len(beta) - 1)``. Point ``j * len(alpha) + i`` is the grid
    node ``(alpha[i], beta[j])``.

    Value handling, in order: values above ``zmax`` are clipped to ``zmax``; NaN and
    ``+inf`` become ``zmax`` (or, without ``zmax``, the largest finite value), ``-inf``
    the smallest finite value; with ``log`` the values become ``log10(value)``, and
    non-positive values take the log of the smallest positive value.
    """
    alpha, beta, z, _, _ = surface_grid(ds, var, log=False)
    if alpha.size < 2 or beta.size < 2:
        raise BasinscopeError(
            f"a surface needs at least 2 x 2 grid points, got {alpha.size} x {beta.size}."
        )
    raw = np.ma.getdata(z).astype(float)
    finite = ~np.ma.getmaskarray(z)
    if not finite.any():
        raise BasinscopeError(f"{var!r} has no finite value; there is no surface to export.")
    values = raw.copy()
    if zmax is not None:
        values[finite & (values > zmax)] = zmax
    hi = float(zmax) if zmax is not None else float(values[finite].max())
    lo = float(values[finite].min())
    values[np.isnan(raw) | (raw == np.inf)] = hi
    values[raw == -np.inf] = lo
    if log:
        positive = values > 0
        if not positive.any():
            raise BasinscopeError(f"log=True needs positive values, but {var!r} has none.")
        finite &= positive
        values = np.log10(np.where(positive, values, values[positive].min()))

    na, nb = alpha.size, beta.size
    a_grid, b_grid = np.meshgrid(alpha, beta)  # (nb, na): row j is beta[j]
    points = np.column_stack([a_grid.ravel(), b_grid.ravel(), values.ravel()])
    base = (np.arange(nb - 1)[:, None] * na + np.arange(na - 1)[None, :]).ravel()
    quads = np.column_stack([base, base + 1, base + na + 1, base + na]).astype(np.int64)
    flat = values.ravel()
    return {
        "points": points,
        "zvalue": flat,
        "finite": finite.ravel().astype(np.uint8),
        "connectivity": quads.ravel(),
        "offsets": 4 * np.arange(1, quads.shape[0] + 1, dtype=np.int64),
        "cell_mean": flat[quads].mean(axis=1),
    }


def _data_array(
    name: str, values: np.ndarray, vtk_type: str, *, components: int = 1, fmt: str = "{:.10g}"
) -> list[str]:
    flat = np.asarray(values).ravel()
    per_line = _PER_LINE * components
    lines = [
        f'        <DataArray type="{vtk_type}" Name="{name}" '
        f'NumberOfComponents="{components}" format="ascii">'
    ]
    for start in range(0, flat.size, per_line):
        lines.append("          " + " ".join(fmt.format(v) for v in flat[start : start + per_line]))
    lines.append("        </DataArray>")
    return lines


def write_vtp(
    ds: xr.Dataset,
    var: str,
    path: str | Path,
    *,
    log: bool = False,
    zmax: float | None = None,
) -> Path:
    """Write ``ds[var]`` as an ASCII VTK PolyData surface (``.vtp``) and return the path.

    Args:
        ds: 2D landscape with coordinates ``alpha``/``beta`` and ``var`` stored as
            ``(alpha, beta)``.
        var: Variable to export, e.g. ``"train_loss"``.
        path: Output file (conventionally ``*.vtp``); missing parent folders are created.
        log: Export ``log10`` of the values (see :func:`vtp_arrays`).
        zmax: Clip values above this (data units, before ``log``), like ``--zmax`` in
            ``h52vtp.py``; it also replaces NaN and ``+inf``.

    Returns:
        The written path. Open it in ParaView; colour by ``zvalue`` and, to hide replaced
        non-finite points, apply a Threshold on ``finite`` >= 1.
    """
    arr = vtp_arrays(ds, var, log=log, zmax=zmax)
    n_points, n_polys = arr["points"].shape[0], arr["offsets"].shape[0]
    desc = f"{var}{', log10' if log else ''}{f', zmax={zmax:g}' if zmax is not None else ''}"
    lines = [
        '<?xml version="1.0"?>',
        f"<!-- basinscope loss landscape: {desc}; x = alpha, y = beta, z = value -->",
        '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">',
        "  <PolyData>",
        f'    <Piece NumberOfPoints="{n_points}" NumberOfVerts="0" NumberOfLines="0" '
        f'NumberOfStrips="0" NumberOfPolys="{n_polys}">',
        '      <PointData Scalars="zvalue">',
        *_data_array("zvalue", arr["zvalue"], "Float64"),
        *_data_array("finite", arr["finite"], "UInt8", fmt="{:d}"),
        "      </PointData>",
        '      <CellData Scalars="averaged zvalue">',
        *_data_array("averaged zvalue", arr["cell_mean"], "Float64"),
        "      </CellData>",
        "      <Points>",
        *_data_array("Points", arr["points"], "Float64", components=3),
        "      </Points>",
        "      <Polys>",
        *_data_array("connectivity", arr["connectivity"], "Int64", fmt="{:d}"),
        *_data_array("offsets", arr["offsets"], "Int64", fmt="{:d}"),
        "      </Polys>",
        "    </Piece>",
        "  </PolyData>",
        "</VTKFile>",
    ]
    from basinscope.store.atomic import atomic_write_text

    return atomic_write_text(Path(path), "\n".join(lines) + "\n", "figure")
