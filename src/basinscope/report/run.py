"""The report of any run folder: ``basinscope report RUN_DIR`` for every command.

One self-contained page: what was computed (the result's kind and its named definition),
the numbers (every scalar field of the result), the figure
(:func:`basinscope.plotting.plot`), the settings (the command's spec), the inputs'
fingerprints, the versions and any warnings. Studies have reports of their own
(:func:`basinscope.experiments.registry.rebuild_report`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from basinscope.report.html import Report

__all__ = ["run_report"]


def _flat(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        out: list[tuple[str, Any]] = []
        for k, v in d.items():
            out += _flat(v, f"{prefix}{k}.")
        return out
    return [(prefix.rstrip("."), d)]


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def run_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` for the result stored there; returns its path."""
    import basinscope
    from basinscope.errors import BasinscopeError
    from basinscope.plotting import plot
    from basinscope.plotting.dispatch import PLOTTERS
    from basinscope.store import load, load_manifest, paths

    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    result = load(run_dir)
    d = result.to_dict()
    versions = manifest.get("versions", {})
    rep = Report(
        f"basinscope {result.kind}: {run_dir.name}",
        f"basinscope {basinscope.__version__} (run written by {versions.get('basinscope', '?')}, "
        f"torch {versions.get('torch', '?')}) · {manifest.get('created_at', '')}",
    )
    definition = d.get("definition_formula") or d.get("definition")
    if definition:
        rep.heading("Definition")
        rep.text(str(definition))
    rep.heading("Result")
    rows = [{"quantity": k, "value": v} for k, v in d.items() if _scalar(v) and k != "schema"]
    rep.table(rows, f"Every number of the {result.kind} result (the full result: result.json)")
    try:
        fig, _ = plot(result)
    except BasinscopeError:
        if result.kind in PLOTTERS:
            raise
        fig = None  # a kind without a figure (a study stage's dict): the numbers say it all
    if fig is not None:
        rep.figure(
            fig,
            f"{result.kind} ({definition or 'see result.json'})",
            save_as=run_dir / paths.FIGURES / result.kind,
        )
    rep.heading("Settings")
    command = manifest.get("command") or {"spec": manifest.get("spec")}
    rep.table(
        [
            {"setting": k, "value": json.dumps(v) if not _scalar(v) else v}
            for k, v in _flat(command)
        ],
        "The command's settings (manifest.json)",
    )
    fps = _flat(manifest.get("fingerprints") or {})
    if fps:
        rep.table([{"input": k, "fingerprint": v} for k, v in fps], "Inputs (sha256 prefixes)")
    if manifest.get("warnings"):
        rep.heading("Warnings")
        for w in manifest["warnings"]:
            rep.text(str(w))
    return rep.write(run_dir / paths.REPORT)
