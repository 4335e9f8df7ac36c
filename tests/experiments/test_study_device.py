"""Where a study computes: the settings ``device`` and ``dtype`` (``--device``, ``--dtype``).

They are settings of every study (``--set``, ``--config``, and the flags, applied last),
checked before anything runs, recorded in the run's configuration, and part of a folder's
digest only when they are not the defaults, so that the folders of CPU float32 runs keep
the names they had before. The runs themselves are checked in each study's test file, on
its smoke run (the default names, a float64 run, a run on the device string ``cpu:0``).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.experiments import stages
from basinscope.experiments.registry import (
    config_hash,
    get_study,
    list_studies,
    make_config,
    run_study,
)
from study_devices import BEFORE
from user_errors import assert_one_line

STUDIES = [s.name for s in list_studies()]
ABSENT = "cuda:7"  # no CUDA device here (nor a machine with 8 GPUs)
NOT_HERE = rf"device '{ABSENT}' is not available here \(.+\); use --device cpu \(the default\)"
needs_absent_device = pytest.mark.skipif(
    torch.cuda.device_count() > 7, reason=f"{ABSENT} exists on this machine"
)

# config_hash(name, make_config(name, quick=..., smoke=...)) at commit d20fd4f, before device
# and dtype were settings (the smoke digests are in study_devices.BEFORE)
DIGESTS_BEFORE = {
    # rotated-digits: changed on purpose by issue 19's science (new settings: seeds,
    # independent_steps, bootstrap, criticality_sigmas, criticality_sigma_range); were
    # 614dd59950 and 2a7b85371b; and by issue 17's Definition 3.1 basin test (basin_delta,
    # basin_samples, basin_pairs, basin_confidence); were 90c1650963 and 7530e1d4db
    "rotated-digits": {"default": "c3d1e3cb16", "quick": "116ea515de"},
    "flatness-vs-batch-size": {"default": "beeed2de13", "quick": "adb88e23d2"},
    "skip-connections": {"default": "9d1530f6ae", "quick": "3d594f592f"},
}


def test_identity_leaves_out_device_and_dtype_only_at_their_defaults():
    settings = {"a": 1, "device": "cpu", "dtype": "float32"}
    assert stages.identity(settings) == {"a": 1}
    assert stages.identity({"a": 1, "device": "cuda", "dtype": "float64"}) == {
        "a": 1,
        "device": "cuda",
        "dtype": "float64",
    }
    assert stages.identity({"a": 1, "device": "cpu", "dtype": "float64"}) == {
        "a": 1,
        "dtype": "float64",
    }
    # a stage folder's digest: the defaults do not count, anything else does
    root = "stages"
    assert stages.stage_dir(root, "s", settings) == stages.stage_dir(root, "s", {"a": 1})
    for other in ({"device": "cuda:0"}, {"dtype": "float64"}):
        assert stages.stage_dir(root, "s", {**settings, **other}) != stages.stage_dir(
            root, "s", {"a": 1}
        )
    assert (stages.DEFAULT_DEVICE, stages.DEFAULT_DTYPE) == ("cpu", "float32")


# studies added after device and dtype became settings have no earlier digests to keep
@pytest.mark.parametrize("name", list(DIGESTS_BEFORE))
def test_every_shipped_configuration_keeps_the_run_folder_digest_it_had(name):
    """The defaults, --quick and --smoke of every study name their run folders as before
    device and dtype were settings; another device or dtype names another folder."""
    cases = {
        "default": make_config(name),
        "quick": make_config(name, quick=True),
        "smoke": make_config(name, smoke=True),
    }
    expected = {**DIGESTS_BEFORE[name], "smoke": BEFORE[name][0]}
    for which, cfg in cases.items():
        assert (cfg.device, cfg.dtype) == ("cpu", "float32")
        assert config_hash(name, cfg) == expected[which], which
    smoke = cases["smoke"]
    explicit = make_config(name, smoke=True, device="cpu", dtype="float32")
    assert config_hash(name, explicit) == expected["smoke"]
    others = [
        dataclasses.replace(smoke, dtype="float64"),
        dataclasses.replace(smoke, device="cuda"),
    ]
    digests = {config_hash(name, c) for c in others}
    assert len(digests) == 2 and expected["smoke"] not in digests


@pytest.mark.parametrize("name", [s for s in STUDIES if s not in DIGESTS_BEFORE])
def test_a_newer_study_leaves_the_default_device_and_dtype_out_of_its_digest(name):
    """Passing a study's own defaults names the same folder; another precision another one
    (teacher-student computes in float64 by default, the others in float32)."""
    smoke = make_config(name, smoke=True)
    explicit = make_config(name, smoke=True, device="cpu", dtype=smoke.dtype)
    assert config_hash(name, explicit) == config_hash(name, smoke)
    other = "float32" if smoke.dtype == "float64" else "float64"
    assert config_hash(name, dataclasses.replace(smoke, dtype=other)) != config_hash(name, smoke)


@pytest.mark.parametrize("name", STUDIES)
def test_device_and_dtype_are_settings_the_flags_set_last(name, tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('dtype = "float64"\ndevice = "cpu"\n')
    assert make_config(name, toml=toml).dtype == "float64"
    assert make_config(name, sets=["dtype=float64"]).dtype == "float64"
    # --dtype / --device are --set dtype=... / device=... after every other setting
    assert make_config(name, toml=toml, sets=["dtype=float64"], dtype="float32").dtype == "float32"
    cfg = make_config(name, smoke=True, device="cpu:0", dtype="float64")
    assert (cfg.device, cfg.dtype) == ("cpu:0", "float64")


@needs_absent_device
@pytest.mark.parametrize("name", STUDIES)
def test_an_absent_device_is_refused_before_anything_runs(name, tmp_path):
    for kwargs in ({"device": ABSENT}, {"sets": [f"device={ABSENT}"]}):
        with pytest.raises(BasinscopeError, match=NOT_HERE):
            make_config(name, smoke=True, **kwargs)
    # a configuration built by hand is checked by run_study, before any folder is written
    cfg = dataclasses.replace(get_study(name).config(), device=ABSENT)
    with pytest.raises(BasinscopeError, match=NOT_HERE):
        run_study(name, tmp_path / "runs", cfg, say=lambda m: None)
    assert not (tmp_path / "runs").exists()


def test_a_device_without_float64_is_refused_for_the_hessians(monkeypatch):
    """An MPS device has no float64, which every study's Hessians need: refused up front
    (simulated here on the device string cpu:0)."""
    real = torch.empty

    def empty(*args, device=None, dtype=None, **kwargs):
        if str(device) == "cpu:0" and dtype == torch.float64:
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype")
        return real(*args, device=device, dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    for name in STUDIES:
        with pytest.raises(
            BasinscopeError,
            match=r"device 'cpu:0' has no float64 \(TypeError: Cannot convert a MPS Tensor to "
            r"float64 dtype\), which the study's Hessians \(and --dtype float64\) need; use "
            r"--device cpu or a CUDA device",
        ):
            make_config(name, smoke=True, device="cpu:0")


@pytest.mark.parametrize(
    "dtype, message",
    [
        (
            "bfloat16",
            r"dtype 'bfloat16': expected one of float32, float64 \(mixed precision does not "
            r"reach the landscapes, barriers and sharpness of a study yet\); use --dtype float32 "
            r"\(the default\) or --dtype float64",
        ),
        ("float16", r"dtype 'float16': expected one of float32, float64 \(mixed precision"),
        (
            "half",
            r"dtype 'half': expected one of float32, float64 \(the precision of the study's "
            r"evaluations\)",
        ),
    ],
)
def test_a_precision_a_study_does_not_evaluate_in_is_refused(dtype, message):
    for name in STUDIES:
        with pytest.raises(BasinscopeError, match=message):
            make_config(name, dtype=dtype)


@needs_absent_device
@pytest.mark.parametrize(
    "args",
    [
        ["study", "rotated-digits", "--smoke", "--device", ABSENT],
        ["study", "flatness-vs-batch-size", "--smoke", "--set", f"device={ABSENT}"],
        ["demo", "--smoke", "--device", ABSENT],
        ["demo", "--smoke", "--dtype", "float64", "--device", ABSENT],
    ],
)
def test_cli_refuses_an_absent_device_in_one_line_and_writes_nothing(cli, tmp_path, args):
    out = tmp_path / "runs"
    assert_one_line(cli(*args, "--out", out, "--no-progress"), NOT_HERE)
    assert not out.exists()


def test_cli_refuses_mixed_precision_for_a_study(cli, tmp_path):
    res = cli("demo", "--smoke", "--dtype", "bfloat16", "--out", tmp_path / "runs")
    assert_one_line(res, r"dtype 'bfloat16': expected one of float32, float64")
    assert not (tmp_path / "runs").exists()


def test_cli_show_config_shows_device_and_dtype(cli):
    res = cli("study", "skip-connections", "--smoke", "--show-config")
    assert res.code == 0 and "device = 'cpu'" in res.out and "dtype = 'float32'" in res.out
    res = cli(
        "study",
        "rotated-digits",
        "--show-config",
        "--json",
        "--device",
        "cpu",
        "--dtype",
        "float64",
    )
    assert res.code == 0, res.err
    settings = json.loads(res.out)
    assert (settings["device"], settings["dtype"]) == ("cpu", "float64")
    help_text = cli("demo", "--help").out
    assert "--device" in help_text and "--dtype" in help_text
