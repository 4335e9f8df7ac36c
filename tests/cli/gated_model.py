"""A model for the kill-and-resume tests: an MLP whose forward pass can stop at a gate.

With ``BASINSCOPE_TEST_GATE=DIR`` set, the ``GATE_AT``-th forward pass writes a line to the
FIFO ``DIR/ready`` and then blocks reading ``DIR/go``, so the test interrupts the run at a
known point (several chunks done, one in flight) instead of polling a clock. Without the
variable it is a plain MLP; the weights are the same either way.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from basinscope.models import mlp

GATE_AT = 60  # forward passes before the gate: 10 chunks of 3 points on two batches


class GatedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        gate = os.environ.get("BASINSCOPE_TEST_GATE")
        if gate and self.calls == GATE_AT:
            with open(os.path.join(gate, "ready"), "w") as f:
                f.write("ready\n")
            with open(os.path.join(gate, "go")) as f:  # blocks until the test kills us
                f.read()
        return self.net(x)


def gated_mlp() -> GatedMLP:
    return GatedMLP()
