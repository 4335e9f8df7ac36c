"""Protocol cases of ``basinscope calibrate``: one model and an ensemble of three (the
digits have no validation split: the temperature is fitted on train)."""

from __future__ import annotations

from protocol_cases import MLP, _w

CAL = ["--val-split", "train", "--bins", "5"]

COMMANDS = {
    "calibrate": (lambda w: ["calibrate", *MLP, *_w(w[:1]), *CAL], "calibration"),
    "calibrate-ensemble": (lambda w: ["calibrate", *MLP, *_w(w), *CAL], "calibration"),
}
