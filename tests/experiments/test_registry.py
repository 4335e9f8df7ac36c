"""Studies as registered, frozen configurations: defaults, --quick, TOML, --set, hashing."""

import dataclasses

import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import (
    config_hash,
    get_study,
    list_studies,
    make_config,
)


def test_builtin_studies_are_registered_with_frozen_configs():
    names = {s.name for s in list_studies()}
    assert {"rotated-digits", "flatness-vs-batch-size", "skip-connections", "merging"} <= names
    for s in list_studies():
        cfg = s.config()
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.__setattr__(dataclasses.fields(cfg)[0].name, None)
        # every quick override names a real setting
        assert set(s.quick) <= {f.name for f in dataclasses.fields(cfg)}
        assert s.summary


def test_overrides_apply_in_order_defaults_quick_toml_set(tmp_path):
    default = make_config("rotated-digits")
    assert default.angles == (0.0, 15.0, 35.0, 60.0, 90.0) and default.grid == 21
    quick = make_config("rotated-digits", quick=True)
    assert quick.grid == 7 and quick.finetune_steps < default.finetune_steps
    toml = tmp_path / "s.toml"
    toml.write_text('grid = 9\nangles = [10, 20]\nstrategies = ["ft", "lp"]\n')
    cfg = make_config("rotated-digits", quick=True, toml=toml, sets=["grid=11", "copies=3"])
    assert cfg.grid == 11  # --set wins over the file
    assert cfg.angles == (10.0, 20.0) and cfg.strategies == ("ft", "lp")
    assert cfg.copies == 3 and cfg.finetune_steps == quick.finetune_steps
    # a [study] table is read too
    toml.write_text("[rotated-digits]\ngrid = 5\n")
    assert make_config("rotated-digits", toml=toml).grid == 5


@pytest.mark.parametrize(
    "item, value",
    [
        ("angles=[0, 90]", (0.0, 90.0)),
        ("angles=45", (45.0,)),
        ("angles=0,30", (0.0, 30.0)),
        ("finetune_lr=1e-3", 1e-3),
        ("finetune_lr=1", 1.0),
        ("strategies=ft,lp", ("ft", "lp")),
        ('guided_signal="gradient_norm"', "gradient_norm"),
        ("guided_signal=curvature", "curvature"),
    ],
)
def test_set_values_use_toml_syntax_with_plain_fallbacks(item, value):
    cfg = make_config("rotated-digits", sets=[item])
    key = item.split("=")[0]
    assert getattr(cfg, key) == value


def test_hash_depends_on_every_setting_and_nothing_else():
    a = make_config("rotated-digits", quick=True)
    b = make_config("rotated-digits", quick=True)
    assert config_hash("rotated-digits", a) == config_hash("rotated-digits", b)
    c = make_config("rotated-digits", quick=True, sets=["grid=8"])
    assert config_hash("rotated-digits", a) != config_hash("rotated-digits", c)
    assert config_hash("rotated-digits", a) != config_hash("other", a)


def test_float_settings_refuse_booleans_and_int_settings_refuse_fractions():
    with pytest.raises(BasinscopeError, match=r"'grid' expects int, got 2\.5"):
        make_config("rotated-digits", sets=["grid=2.5"])
    with pytest.raises(BasinscopeError, match="'finetune_lr' expects float, got True"):
        make_config("rotated-digits", sets=["finetune_lr=true"])


def test_unknown_study_suggests_the_nearest():
    with pytest.raises(BasinscopeError, match="Did you mean 'skip-connections'"):
        get_study("skip-connection")


def test_figure_formats_are_checked_and_the_default_writes_pdfs():
    from basinscope.errors import BasinscopeError
    from basinscope.experiments.registry import make_config

    for name in ("rotated-digits", "flatness-vs-batch-size", "skip-connections", "merging"):
        assert make_config(name).figure_formats == ("png", "pdf")
        assert make_config(name, smoke=True).figure_formats == ("png",)
        with pytest.raises(
            BasinscopeError, match=r"figure_formats \['png', 'docx'\].*unknown \['docx'\]"
        ):
            make_config(name, sets=['figure_formats=["png", "docx"]'])
