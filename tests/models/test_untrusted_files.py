"""Files from elsewhere are data, never code: a malicious pickle does not run.

Checkpoints (``.pt``) load with ``torch.load(weights_only=True)`` and ``.npz`` files with
``allow_pickle=False``; each test first shows that its payload runs when unpickled the
unsafe way, so the test would fail if basinscope unpickled it.
"""

from __future__ import annotations

import numpy as np
import pytest

from basinscope.data import load_npz
from basinscope.errors import BasinscopeError
from basinscope.models import build_model, load_state_dict_file, load_weights
from untrusted import Payload, evil_checkpoint


def test_malicious_checkpoint_does_not_run(tmp_path):
    path, marker = evil_checkpoint(tmp_path)
    with pytest.raises(
        BasinscopeError,
        match=r"could not read '.*evil\.pt' as a PyTorch checkpoint \(UnpicklingError: .*"
        r"only weights are loaded, with weights_only=True",
    ):
        load_state_dict_file(path)
    with pytest.raises(BasinscopeError, match="as a PyTorch checkpoint"):
        load_weights(build_model("mlp"), path)
    assert not marker.exists()


def test_malicious_npz_does_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = Payload(marker)
    np.savez(path, x=payload, y=np.zeros(1, dtype=np.int64))
    with np.load(path, allow_pickle=True) as f:
        f["x"]  # the unsafe way runs the payload
    assert marker.exists()
    marker.unlink()
    with pytest.raises(
        BasinscopeError,
        match=r"as an \.npz file: it holds object arrays \(pickled Python objects\), which are "
        r"not loaded because unpickling can run code",
    ):
        load_npz(path)
    assert not marker.exists()
