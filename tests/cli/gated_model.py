"""A model for the kill-and-resume tests: an MLP whose forward pass can stop at a gate.

With ``BASINSCOPE_TEST_GATE=DIR`` set, the ``GATE_AT``-th forward pass writes a line to the
FIFO ``DIR/ready`` and then waits to be interrupted, so the test interrupts the run at a
known point (several chunks done, one in flight) instead of polling a clock. It waits in
short sleeps, not in one blocking call: a SIGINT that arrives just before a blocking system
call starts (the test sends it as soon as it has read the line) would leave Python's handler
waiting for the call to return, and the run would hang; a sleep loop checks for it every
0.05 s. Without the
variable it is a plain MLP; the weights are the same either way. The gate is a
``torch.fx.wrap``-ped call, so it runs on every pass even where the engine runs a traced
copy of the model; its input goes into the gate first, so the engine keeps the plain path.
"""

from __future__ import annotations

import os
import time

import torch
from torch import Tensor, nn

from basinscope.models import mlp

GATE_AT = 60  # forward passes before the gate: 10 chunks of 3 points on two batches
_calls = 0


@torch.fx.wrap  # a call in a traced graph too: the gate runs on every forward pass
def _count_and_gate(x: Tensor) -> Tensor:
    global _calls
    _calls += 1
    gate = os.environ.get("BASINSCOPE_TEST_GATE")
    if gate and _calls == GATE_AT:
        with open(os.path.join(gate, "ready"), "w") as f:
            f.write("ready\n")
        for _ in range(12_000):  # until the test interrupts us (at most 10 minutes)
            time.sleep(0.05)
    return x


class GatedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(_count_and_gate(x))


def gated_mlp() -> GatedMLP:
    return GatedMLP()
