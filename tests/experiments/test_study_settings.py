"""Study settings are refused when the configuration is parsed, before anything runs.

make_config (and so ``--show-config``, ``--set`` and ``--config``) checks every setting:
numbers are finite, counts lie in a stated range, names exist. run_study checks a
configuration built by hand too.
"""

from __future__ import annotations

import dataclasses

import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import get_study, list_studies, make_config, run_study
from user_errors import assert_one_line


@pytest.mark.parametrize(
    "study, setting, message",
    [
        ("rotated-digits", "batch_size=0", r"batch_size must be an integer >= 1, got 0"),
        (
            "rotated-digits",
            "finetune_lr=nan",
            r"setting 'finetune_lr' must be a finite number, got nan; nan and inf are not "
            r"settings \(the default is finetune_lr=0\.02\)",
        ),
        ("rotated-digits", "angles=[0, inf]", r"setting 'angles' must be a finite number, got inf"),
        ("rotated-digits", "angles=[720]", r"angles must be in \[-360, 360\], got 720\.0"),
        ("rotated-digits", "width=0", r"width must be an integer >= 1, got 0"),
        ("rotated-digits", "width=1000", r"width must be <= 16 \(the LeNet width multiplier\)"),
        (
            "rotated-digits",
            "copies=100000",
            r"copies must be <= 16 \(each copy repeats every fine-tuning run of every angle\), "
            r"got 100,000",
        ),
        ("rotated-digits", "hessian_examples=0", r"hessian_examples must be an integer >= 1"),
        (
            "rotated-digits",
            "hessian_examples=5000",
            r"hessian_examples must be <= 1,347 \(the digits' training split has 1,347 images\)",
        ),
        (
            "rotated-digits",
            'surgical_blocks=["conv1", "conv9"]',
            r"surgical_blocks \['conv1', 'conv9'\]: the block pattern 'conv9' matches no module "
            r"with parameters; the modules are conv1, conv2, fc1, fc2",
        ),
        ("rotated-digits", "pretrain_steps=-5", r"pretrain_steps must be an integer >= 1, got -5"),
        ("rotated-digits", "finetune_steps=10000000", r"finetune_steps must be <= 1,000,000"),
        ("rotated-digits", "grid=100000", r"grid must be <= 201 points per axis"),
        ("rotated-digits", "momentum=1.0", r"momentum must be in \[0, 1\), got 1\.0"),
        ("rotated-digits", "pretrain_lr=-0.1", r"pretrain_lr must be a positive number, got -0\.1"),
        ("rotated-digits", "hessian_tol=0", r"hessian_tol must be in \(0, 1\), got 0\.0"),
        ("rotated-digits", "criticality_samples=3", r"criticality_samples must be even"),
        ("rotated-digits", "guided_top_k=9", r"guided_top_k must be <= 4 \(the LeNet's modules"),
        ("rotated-digits", "init_seed=-1", r"init_seed must be an integer >= 0, got -1"),
        ("rotated-digits", "seeds=0", r"seeds must be an integer >= 1, got 0"),
        ("rotated-digits", "seeds=100", r"seeds must be <= 16 \(each seed repeats the whole"),
        ("rotated-digits", "bootstrap=-1", r"bootstrap must be an integer >= 0, got -1"),
        ("rotated-digits", "independent_steps=0", r"independent_steps must be an integer >= 1"),
        ("rotated-digits", "criticality_sigmas=2", r"criticality_sigmas must be an integer >= 3"),
        (
            "rotated-digits",
            "criticality_sigma_range=[1, 0.1]",
            r"criticality_sigma_range \[1\.0, 0\.1\]: the smallest sigma must be below the largest",
        ),
        (
            "rotated-digits",
            "criticality_sigma_range=[0, 1]",
            r"criticality_sigma_range must be a positive number, got 0\.0; e\.g\. \[0\.001, 1\]",
        ),
        (
            "rotated-digits",
            "criticality_sigma_range=[1]",
            r"criticality_sigma_range \[1\.0\]: expected two numbers \[smallest, largest\]",
        ),
        ("flatness-vs-batch-size", "hidden=[]", r"hidden is empty: give the MLP's hidden widths"),
        ("flatness-vs-batch-size", "hidden=[64, 0]", r"hidden must be an integer >= 1, got 0"),
        ("flatness-vs-batch-size", "momentum=nan", r"setting 'momentum' must be a finite number"),
        ("flatness-vs-batch-size", "trace_rtol=2", r"trace_rtol must be in \(0, 1\), got 2\.0"),
        (
            "flatness-vs-batch-size",
            "trace_max_probes=5",
            r"trace_max_probes must be an integer >= 10, got 5 \(Hutchinson draws at least 10",
        ),
        ("flatness-vs-batch-size", "threads=100000", r"threads must be <= 1,024, got 100,000"),
        ("flatness-vs-batch-size", 'schedule="cyclic"', r"expected constant, cosine or linear"),
        ("skip-connections", "width=0", r"width must be an integer >= 1, got 0"),
        ("skip-connections", "lr=inf", r"setting 'lr' must be a finite number, got inf"),
        ("skip-connections", "span=-1", r"span must be a positive number, got -1\.0"),
        ("skip-connections", "depths=[8, 200]", r"depths \[8, 200\]: at most 110"),
        ("skip-connections", "steps=0", r"steps must be an integer >= 1, got 0"),
    ],
)
def test_bad_setting_is_refused_by_make_config(study, setting, message):
    with pytest.raises(BasinscopeError, match=message):
        make_config(study, quick=True, sets=[setting])


def test_show_config_refuses_too(cli):
    """`--show-config` runs nothing and still refuses a bad setting."""
    res = cli("study", "rotated-digits", "--show-config", "--set", "batch_size=0")
    assert_one_line(res, r"batch_size must be an integer >= 1, got 0")
    res = cli("study", "rotated-digits", "--show-config", "--set", "batch_size=32")
    assert res.code == 0 and "batch_size = 32" in res.out


def test_config_file_settings_are_checked(cli, tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text("[skip-connections]\nspan = inf\n")
    assert_one_line(
        cli("study", "skip-connections", "--show-config", "--config", toml),
        r"setting 'span' must be a finite number, got inf",
    )


@pytest.mark.parametrize("study", [s.name for s in list_studies()])
def test_defaults_and_quick_pass_the_checks(study):
    """The checks refuse nothing a study ships with."""
    make_config(study)
    make_config(study, quick=True)


def test_run_study_checks_a_configuration_built_by_hand(tmp_path):
    cfg = dataclasses.replace(get_study("rotated-digits").config(), finetune_lr=float("nan"))
    with pytest.raises(BasinscopeError, match="setting 'finetune_lr' must be a finite number"):
        run_study("rotated-digits", tmp_path, cfg)
    assert not any(tmp_path.iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(BasinscopeError, match=r"the output root '.*file' is a file, not a folder"):
        run_study("rotated-digits", tmp_path / "file", get_study("rotated-digits").config())
