"""Saving figures to disk in several formats at once."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from basinscope.errors import BasinscopeError
from basinscope.store.atomic import atomic_path

__all__ = ["RASTER_DPI", "save_figure", "timing_independent"]

#: Resolution of raster outputs (png, jpg, ...), in dots per inch.
RASTER_DPI = 200

_VECTOR_FORMATS = frozenset({"pdf", "svg", "svgz", "eps", "ps", "pgf"})


@contextlib.contextmanager
def timing_independent() -> Iterator[None]:
    """Drawing without matplotlib's warning that placing a legend with ``loc="best"`` took
    over a second: it depends on the machine's load, not on the figure (under load it turned
    the same figure into a warning, and in tests, where warnings are errors, into a failure)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r'Creating legend with loc="best" can be slow')
        yield


def save_figure(
    fig: Figure,
    path_stem: str | Path,
    formats: Sequence[str] = ("png", "pdf"),
    *,
    dpi: int = RASTER_DPI,
) -> list[Path]:
    """Save ``fig`` once per format as ``<path_stem>.<format>`` and return the written paths.

    Args:
        fig: A matplotlib figure (for example the first element returned by ``plot_line``).
        path_stem: Output path without extension; missing parent folders are created. A
            trailing extension that is itself one of ``formats`` (``"out/fig.png"``) is
            dropped, so ``"out/fig.png"`` and ``"out/fig"`` give the same files.
        formats: File formats understood by matplotlib, e.g. ``("png", "pdf", "svg")``.
        dpi: Resolution of raster formats; vector formats (pdf, svg, eps) ignore it.

    Returns:
        The paths written, in the order of ``formats``.

    Raises:
        BasinscopeError: When ``formats`` is empty or names a format matplotlib cannot write.

    Figures are saved with ``bbox_inches="tight"``, laid out (constrained layout) by the
    first format's save and kept so for the others (one layout pass instead of one per
    format; the layout engine is restored afterwards); PDFs carry no creation date so that
    re-running an experiment produces byte-identical files.
    """
    fmts = [f.lower().lstrip(".") for f in formats]
    if not fmts:
        raise BasinscopeError("save_figure needs at least one format, e.g. ('png', 'pdf').")
    supported = fig.canvas.get_supported_filetypes()
    unknown = [f for f in fmts if f not in supported]
    if unknown:
        raise BasinscopeError(
            f"cannot save figures as {', '.join(unknown)}; "
            f"supported formats: {', '.join(sorted(supported))}."
        )

    stem = Path(path_stem)
    if stem.suffix.lower().lstrip(".") in fmts:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    engine = fig.get_layout_engine()
    try:
        for i, fmt in enumerate(fmts):
            path = stem.parent / f"{stem.name}.{fmt}"
            kwargs: dict[str, object] = {"format": fmt, "bbox_inches": "tight"}
            if fmt == "pdf":
                kwargs["metadata"] = {"Creator": "basinscope", "CreationDate": None}
            if fmt not in _VECTOR_FORMATS:
                kwargs["dpi"] = dpi
            with atomic_path(path, "figure") as tmp, timing_independent():
                fig.savefig(tmp, **kwargs)
            written.append(path)
            if i == 0 and engine is not None:
                fig.set_layout_engine("none")  # laid out by the first save: keep that layout
    finally:
        if engine is not None:
            fig.set_layout_engine(engine)
    return written
