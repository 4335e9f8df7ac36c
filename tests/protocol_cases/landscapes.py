"""Landscapes and training: ``basinscope interpolate``, ``surface`` and ``train``."""

from __future__ import annotations

from protocol_cases import MLP

FAST = ["--splits", "train", "--strategy", "loop"]
GRID = ["--xrange", "-1:1:3", "--yrange", "-1:1:3"]

COMMANDS = {
    "interpolate": (
        lambda w: [
            "interpolate",
            *MLP,
            "--weights",
            w[0],
            "--to",
            w[1],
            "--xrange",
            "0:1:3",
            *FAST,
        ],
        "landscape",
    ),
    "surface": (lambda w: ["surface", *MLP, "--weights", w[0], *GRID, *FAST], "landscape"),
    "surface-plane": (
        lambda w: ["surface", *MLP, "--weights", w[0], "--plane", w[1], "--plane", w[2], *FAST],
        "landscape",
    ),
    "train": (
        lambda w: ["train", *MLP, "--weights", w[0], "--steps", "3", "--checkpoint-every", "1"],
        "train",
    ),
}
