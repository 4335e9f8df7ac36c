"""Inputs reach models with plain NCHW strides (oneDNN issue 6035 guard)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

from basinscope.data import load_digits
from basinscope.engine import as_batches
from basinscope.training import TrainConfig, train


def _plain(x: torch.Tensor) -> bool:
    return x.stride() == torch.empty(x.shape).stride()


def test_ambiguous_and_channels_last_inputs_get_plain_strides():
    x = torch.rand(6, 8, 8, 1).permute(0, 3, 1, 2)  # (N, 1, H, W) with channels-last strides
    assert not _plain(x)
    wide = torch.rand(6, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    for data in [(x, torch.zeros(6, dtype=torch.long)), (wide, torch.zeros(6, dtype=torch.long))]:
        (xb, _), *_ = as_batches(data, batch_size=4)
        assert _plain(xb)
        assert torch.equal(xb, data[0][:4])
    # a plain tensor is passed through without a copy
    plain = torch.rand(6, 3, 5, 5)
    (xb, _), *_ = as_batches((plain, torch.zeros(6, dtype=torch.long)), batch_size=6)
    assert xb.data_ptr() == plain.data_ptr()


def test_the_trainer_feeds_plain_strides(monkeypatch):
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            seen.append(x.stride() == torch.empty(x.shape).stride())
            return self.fc(x.flatten(1))

    d = load_digits("train")
    x = d.x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
    train(Spy(), (x[:64], d.y[:64]), TrainConfig(steps=2, batch_size=16))
    assert seen and all(seen)


def test_one_thread_resnet_training_on_avx2_does_not_corrupt_the_heap():
    # oneDNN's AVX2 1x1 strided backward-weights kernel overflows its scratch buffer for
    # channels-last inputs with fewer than 8 channels (ResNet-8 width 4 shortcut) and
    # aborts with one thread; ONEDNN_MAX_CPU_ISA=AVX2 selects that kernel on any x86 CPU.
    code = textwrap.dedent(
        """
        import torch
        torch.set_num_threads(1)
        from basinscope.data import load_digits
        from basinscope.models import resnet
        from basinscope.training import TrainConfig, train
        d = load_digits("train")
        model = resnet(depth=8, width=4, batchnorm=False)
        train(model, d, TrainConfig(steps=30, batch_size=64, lr=0.05))
        print("trained")
        """
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trained" in proc.stdout
