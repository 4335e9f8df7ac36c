"""Brute-force float64 references shared by the tests."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def reference_metrics(model, params, buffers, x, y, *, bn_recompute_data=None):
    """Brute force: copy the model to float64, load the point's state, loop in eval mode."""
    m = copy.deepcopy(model).double()
    state = {
        k: v.double() if v.is_floating_point() else v for k, v in {**params, **buffers}.items()
    }
    m.load_state_dict(state, strict=True)
    if bn_recompute_data is not None:
        bns = [mod for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
        for b in bns:
            b.reset_running_stats()
            b.momentum = None
        m.eval()
        for b in bns:
            b.train()
        with torch.no_grad():
            for xb in bn_recompute_data:
                m(xb.double())
    m.eval()
    with torch.no_grad():
        out = m(x.double())
        loss = F.cross_entropy(out, y, reduction="mean").item()
        acc = (out.argmax(-1) == y).double().mean().item()
    return loss, acc


class MemoryJournal:
    """A run store's journal in memory; ``recorded`` is the strategy it starts with (``None``,
    or one an earlier run, or an earlier version, recorded)."""

    def __init__(self, recorded):
        self.recorded, self.chunks = recorded, {}

    def done_chunks(self):
        return set(self.chunks)

    def write_chunk(self, index, rows, values):
        self.chunks[index] = values

    def read_values(self):
        return {}

    def recorded_strategy(self):
        return self.recorded

    def record_strategy(self, info):
        self.recorded = dict(info)
