import json

import numpy as np
import pytest
import torch
from torch import nn

from basinscope.analyses import random_surface
from basinscope.errors import BasinscopeError, SpecMismatchError
from basinscope.store import RunStore, load


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _surface(model, data, run_dir, **kw):
    return random_surface(
        model,
        data,
        alphas=np.linspace(-1, 1, 7),
        betas=np.linspace(-1, 1, 5),
        chunk_size=4,
        run_dir=run_dir,
        **kw,
    )


@pytest.mark.parametrize("strategy", ["auto", "loop"])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, small_data, strategy):
    model = _model()

    calls = []

    def interrupt(i, n):
        calls.append(i)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _surface(model, small_data, tmp_path / "cut", strategy=strategy, on_chunk=interrupt)
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert manifest["status"] == "running"
    assert not (tmp_path / "cut" / "result.json").exists()

    seen = []
    resumed = _surface(
        model, small_data, tmp_path / "cut", strategy=strategy, on_chunk=lambda i, n: seen.append(i)
    )
    assert seen[0] == 3  # continues at the first unfinished chunk
    assert resumed.evaluation["points_evaluated"] == 35 - 3 * 4
    # "auto" times the strategies once and records the winner, which the resumed run reuses;
    # the uninterrupted reference pins that strategy (vmap and loop agree only to rounding)
    chosen = json.loads((tmp_path / "cut" / "manifest.json").read_text())["evaluation"]
    assert resumed.evaluation["strategy"] == chosen["strategy"]
    assert strategy in ("auto", chosen["strategy"])
    full = _surface(model, small_data, tmp_path / "full", strategy=chosen["strategy"])
    for v in full.dataset.data_vars:
        assert np.array_equal(full.dataset[v].values, resumed.dataset[v].values), v
    on_disk = load(tmp_path / "cut").dataset
    for v in full.dataset.data_vars:
        assert np.array_equal(on_disk[v].values, full.dataset[v].values)
    assert set(on_disk.coords) == {"alpha", "beta"}


def test_finished_run_is_loaded_not_recomputed(tmp_path, small_data):
    model = _model()
    first = _surface(model, small_data, tmp_path / "r")
    seen = []
    again = _surface(model, small_data, tmp_path / "r", on_chunk=lambda i, n: seen.append(i))
    assert seen == []
    assert np.array_equal(first.dataset["train_loss"].values, again.dataset["train_loss"].values)


def test_different_spec_is_refused_with_the_differences(tmp_path, small_data):
    model = _model()
    _surface(model, small_data, tmp_path / "r")
    with pytest.raises(
        SpecMismatchError,
        match=r"already holds a different run \(2 settings differ\)[\s\S]*spec.attrs.seed: 0 -> 5",
    ):
        _surface(model, small_data, tmp_path / "r", seed=5)
    other = _model()
    with torch.no_grad():
        other[1].weight.add_(1)
    with pytest.raises(SpecMismatchError, match=r"fingerprints\.center"):
        _surface(other, small_data, tmp_path / "r")


def test_manifest_records_versions_fingerprints_and_strategy(tmp_path, small_data):
    _surface(_model(), small_data, tmp_path / "r")
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["versions"]["torch"] == torch.__version__
    assert set(m["fingerprints"]["data"]) == {"train", "test"}
    assert m["evaluation"]["strategy"] in ("vmap", "loop")
    assert m["status"] == "complete"
    assert (tmp_path / "r" / "tensors" / "directions.safetensors").is_file()


def test_non_run_folders_are_not_overwritten(tmp_path, small_data):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(BasinscopeError, match="is not a basinscope run folder"):
        _surface(_model(), small_data, tmp_path / "busy")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(BasinscopeError, match="not readable JSON"):
        _surface(_model(), small_data, tmp_path / "broken")
    with pytest.raises(BasinscopeError, match=r"has no manifest\.json"):
        RunStore.load(tmp_path / "busy")


def test_batchnorm_models_can_be_fingerprinted():
    from basinscope.store import fingerprint_tensors

    bn = nn.BatchNorm1d(3)
    a = fingerprint_tensors(bn.state_dict())  # includes the 0-d num_batches_tracked
    bn.num_batches_tracked += 1
    assert fingerprint_tensors(bn.state_dict()) != a
