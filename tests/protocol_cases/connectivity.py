"""Protocol cases of the connectivity commands (basin, curve, align, instability, ensemble);
the barrier's are in tests/test_protocol.py."""

from __future__ import annotations

from protocol_cases import MLP, _w

TINY = ["--batch-size", "32", "--num-points", "3"]
CURVE = ["--steps", "3", "--points", "3", "--splits", "train", "--strategy", "loop"]
TRANSFER = ["--transfer", "--total-steps", "2", *TINY]
FGE = ["--method", "fge", "--cycles", "2", "--cycle-steps", "2", *TINY]

COMMANDS = {
    "basin": (
        lambda w: ["basin", *MLP, *_w(w), "--delta", "1", "--samples", "3", "--pairs", "3"],
        "basin",
    ),
    "curve": (lambda w: ["curve", *MLP, *_w(w[:2]), *CURVE], "curve"),
    "align": (
        lambda w: ["align", *MLP, *_w(w[:2]), "--num-points", "3", "--strategy", "loop"],
        "alignment",
    ),
    "instability": (
        lambda w: ["instability", *MLP, "--k", "0,2", "--total-steps", "2", *TINY],
        "instability_sweep",
    ),
    "instability-transfer": (
        lambda w: ["instability", *MLP, "--pretrained", str(w[0]), *TRANSFER],
        "transfer_instability",
    ),
    "ensemble": (lambda w: ["ensemble", *MLP, *_w(w[:1]), *FGE], "ensemble"),
}
