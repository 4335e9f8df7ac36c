"""Shared helpers of the commands not yet generated from specs (``basinscope similarity``,
``distance``, ``rewind``, ``criticality``, ``finetune``): option values, validation, run
folders, the ``_analysis`` context, figures and the final summary.

Every command writes a run folder (``--out``) with ``manifest.json`` (the full spec and
the fingerprints of the models and data), ``results.json`` and ``figures/`` (PNG and PDF),
prints progress on stderr and, with ``--json``, one JSON object on stdout: the content of
``results.json`` plus ``run_dir`` and ``figures``.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from basinscope.cli.common import (
    DataOptions,
    default_out,
    emit_json,
    hold_out_folder,
    info,
    out_callback,
    parse_json_kwargs,
    sanitize,
)
from basinscope.errors import BasinscopeError

STRATEGIES = ("auto", "vmap", "loop")

OUT_OPT = typer.Option(
    None,
    "--out",
    help="Run folder (default: basinscope-runs/<command>-<time>).",
    callback=out_callback,
)


# -- helpers ---------------------------------------------------------------------------------
def _choice(flag: str, value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise BasinscopeError(
            f"unknown {what} {value!r} for {flag}: expected one of {', '.join(choices)}"
        )
    return value


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short names of weight files: the stem, or parent/stem, or the path when those repeat."""
    for make in (
        lambda p: p.stem,
        lambda p: f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem,
        str,
    ):
        names = [make(Path(p)) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [f"{i}:{p}" for i, p in enumerate(paths)]


def _spec(model: str, model_kwargs: str | None, weights, data: DataOptions, **extra) -> dict:
    if isinstance(weights, (list, tuple)):
        w: Any = [str(p) for p in weights]
    else:
        w = str(weights) if weights is not None else None
    return {
        "model": model,
        "model_kwargs": parse_json_kwargs(model_kwargs),
        "weights": w,
        **data.to_dict(),
        **extra,
    }


def _open(
    out: Path | None,
    kind: str,
    spec: dict[str, Any],
    models: Sequence,
    datasets: dict,
    wait: bool = False,
):
    """The command's run store, its folder locked until the command ends (``--wait``)."""
    from basinscope.store import RunStore, fingerprint_tensors

    fps = {
        "models": [fingerprint_tensors(m.state_dict()) for m in models],
        "data": {name: d.fingerprint() for name, d in datasets.items()},
    }
    return RunStore.open(hold_out_folder(out or default_out(kind), wait), kind, spec, fps)


@contextmanager
def _analysis(store, notes: list[str]) -> Iterator[None]:
    """Run an analysis in a fresh or resumed run folder.

    The analyses' warnings (BatchNorm, affinely dependent models) are printed as
    ``warning:`` lines and collected in ``notes``. A user error raised by the analysis in a
    folder this command created removes the folder again, so that the corrected command is
    not refused as a different run of the same folder.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except BasinscopeError:
            if not store.resumed:
                shutil.rmtree(store.path, ignore_errors=True)
            raise
        finally:
            for w in caught:
                if not issubclass(w.category, (UserWarning, RuntimeWarning)):
                    continue
                msg = " ".join(str(w.message).split())
                if msg not in notes:
                    notes.append(msg)
                    info(f"warning: {msg}")


def _finish(
    store,
    result: dict[str, Any],
    figures: list[Path],
    json_out: bool,
    notes: list[str],
    summary: Callable[[], None],
) -> None:
    """Write results.json, mark the run complete, then print JSON or the summary."""
    from basinscope.store import atomic_write_json

    result = sanitize(result)
    result["warnings"] = list(notes)
    atomic_write_json(store.path / "results.json", result, "results")
    store.update_manifest(status="complete")
    out = {**result, "run_dir": str(store.path), "figures": [str(f) for f in figures]}
    if json_out:
        emit_json(out)
        return
    summary()
    info(f"run folder: {store.path}")


def _fmt(x: Any) -> str:
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def _save(fig, store, name: str) -> list[Path]:
    from basinscope.plotting.io import save_figure

    return save_figure(fig, store.figures / name)


def _say(json_out: bool, progress: bool) -> Callable[[str], None]:
    quiet = json_out or not progress
    return lambda msg: info(msg, quiet)


def _train_config(**kw):
    from basinscope.training import TrainConfig

    return TrainConfig(**kw)
