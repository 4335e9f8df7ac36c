"""Landscapes and training: ``basinscope train`` (interpolate and surface to come)."""

from __future__ import annotations

from protocol_cases import MLP

COMMANDS = {
    "train": (
        lambda w: ["train", *MLP, "--weights", w[0], "--steps", "3", "--checkpoint-every", "1"],
        "train",
    ),
}
