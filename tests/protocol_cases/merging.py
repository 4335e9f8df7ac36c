"""Protocol cases of the merging commands: the first weight file is the base, the other
two the "fine-tuned" models; each task's validation data is the digits' test split."""

from __future__ import annotations

from protocol_cases import MLP, _w

VAL = ["--val-data", "digits", "--val-data", "digits"]

COMMANDS = {
    "merge": (
        lambda w: [
            "merge",
            *MLP,
            "--base",
            str(w[0]),
            *_w(w[1:]),
            "--select",
            "lam",
            "--lams",
            "0.5,1",
            *VAL,
        ],
        "merge",
    ),
    "merge-decomposition": (
        lambda w: [
            "merge-decomposition",
            *MLP,
            "--base",
            str(w[0]),
            *_w(w[1:]),
            "--task-data",
            "digits",
            "--task-data",
            "digits",
            "--examples",
            "64",
        ],
        "merge_decomposition",
    ),
}
