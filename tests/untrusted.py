"""Malicious files for the safety tests: unpickling them would run code (create a marker)."""

from __future__ import annotations

import pathlib

import torch


class Payload:
    """Unpickling this creates ``marker``: it stands for any code an attacker would run."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def evil_checkpoint(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """``(path, marker)``: a ``.pt`` file whose unpickling creates ``marker``.

    The payload is shown to work (the unsafe ``torch.load`` runs it), so a test that then
    finds no marker has shown that basinscope did not unpickle it.
    """
    marker = folder / "code-ran"
    path = folder / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "the payload should run when unpickled the unsafe way"
    marker.unlink()
    return path, marker
