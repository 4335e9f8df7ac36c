"""The results a study stores: :class:`StageResult` (a stage whose value is not one analysis
result) and :class:`StudyResult` (a study run: every number its report shows).

Both are registered result kinds, so ``basinscope.load(folder)`` returns them typed for a
stage folder and for a study's run folder (see :mod:`basinscope.experiments.registry`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basinscope.errors import BasinscopeError
from basinscope.result import Result, encode
from basinscope.store import paths

__all__ = ["StageResult", "StudyResult"]


@dataclass(frozen=True)
class StageResult(Result, kind="stage"):
    """What one stage of a study computed when that is not a single analysis result (a
    table of barriers, a solution's curvature numbers, a fine-tuning record): the stage's
    name and its JSON-ready value, whose layout is the stage's own."""

    stage: str
    value: dict[str, Any]

    def summary(self) -> list[str]:
        return [f"stage {self.stage}: {', '.join(map(str, self.value)) or '(empty)'}"]


@dataclass(frozen=True)
class StudyResult(Result, kind="study"):
    """The results of a study run (``results``: a JSON-ready dict in the study's own layout,
    with ``study``, ``config``, ``stages``, ``seconds`` and ``run_dir`` at the top).

    Its dict is ``results`` itself with ``kind`` and ``schema`` in front, so the run
    folder's ``result.json`` reads as the study wrote it.
    """

    results: dict[str, Any]

    @property
    def study(self) -> str:
        return str(self.results.get("study"))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "schema": self.schema, **encode(self.results)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **tensor_fields: Any) -> StudyResult:
        if not isinstance(data, Mapping):
            raise BasinscopeError(f"a stored result is a JSON object, got {type(data).__name__}")
        if data.get("kind") != cls.kind or data.get("schema") != cls.schema:
            raise BasinscopeError(
                f"expected a {cls.kind!r} result of schema {cls.schema}, found kind "
                f"{data.get('kind')!r} schema {data.get('schema')!r}: run the study again with "
                "this version of basinscope (finished stages are reused)"
            )
        return cls({k: v for k, v in data.items() if k not in ("kind", "schema")})

    def summary(self) -> list[str]:
        """How many stages ran (and were reused) in how long, the report, the result."""
        stages = self.results.get("stages") or []
        reused = sum(bool(s.get("reused")) for s in stages if isinstance(s, Mapping))
        return [
            f"{len(stages)} stages ({reused} reused) in {self.results.get('seconds')} s",
            f"report: {self.results.get('report')}",
            f"all numbers: {Path(str(self.results.get('run_dir'))) / paths.RESULT}",
        ]
