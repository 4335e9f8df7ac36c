"""The transfer commands: similarity, distance (with and without --mistakes), rewind,
criticality and finetune."""

from __future__ import annotations

from protocol_cases import MLP, _w

_GRID = ["--alphas", "0:1:2", "--sigmas", "0.1:1:2", "--samples", "2", "--strategy", "loop"]

COMMANDS = {
    "similarity": (lambda w: ["similarity", *MLP, *_w(w[:2]), "--max-examples", "64"], "cka"),
    "distance": (lambda w: ["distance", *MLP, *_w(w[:2])], "distance"),
    "distance-mistakes": (
        lambda w: ["distance", *MLP, *_w(w[:2]), "--mistakes"],
        "distance_and_mistakes",
    ),
    "rewind": (
        lambda w: ["rewind", *MLP, *_w(w[:1]), "--init", str(w[1]), "--strategy", "loop"],
        "rewind",
    ),
    "criticality": (
        lambda w: ["criticality", *MLP, *_w(w[:1]), "--init", str(w[1]), *_GRID],
        "criticality",
    ),
    "finetune": (
        lambda w: ["finetune", *MLP, *_w(w[:1]), "--steps", "2", "--strategy", "lp"],
        "finetune_comparison",
    ),
}
