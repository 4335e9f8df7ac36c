import json
import re

import pytest

from basinscope.experiments.rotated_digits import DemoConfig, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig.quick(grid=5, line_points=7)
    return out, cfg, run_demo(out, cfg, log=lambda m: None)


def test_quick_demo_writes_a_self_contained_report(demo_run):
    out, _, _ = demo_run
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert len(re.findall(r'src="data:image/png;base64,', html)) >= 3
    assert html.count('class="interactive"') == 2
    # offline: no script or image fetched from the network
    assert not re.search(r'<script[^>]+src="https?://', html)
    assert not re.search(r'<img[^>]+src="https?://', html)
    for stem in ("line", "surfaces_target_random_vs_pretrained", "surfaces_source_vs_target"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (out / "figures" / f"{stem}.pdf").stat().st_size > 1000


def test_quick_demo_numbers_are_recorded(demo_run):
    out, cfg, _ = demo_run
    saved = json.loads((out / "results.json").read_text())
    rows = {r["start"]: r for r in saved["adaptation_and_forgetting"]}
    assert set(rows) == {"pre-trained start", "random start"}
    pre = rows["pre-trained start"]
    # pre-training worked on the source, and fine-tuning adapted to the target
    assert pre["source acc. before"] > 0.6
    assert pre["target acc. after"] > pre["target acc. before"]
    assert len(saved["line"]["alpha"]) == cfg.line_points
    assert {"source_loss", "target_loss", "source_accuracy", "target_accuracy"} <= set(
        saved["line"]
    )
    for s in saved["surfaces"].values():
        assert 0 < sum(s["explained_variance_ratio"]) <= 1 + 1e-9


def test_running_the_demo_again_reuses_every_stage(demo_run):
    out, cfg, first = demo_run
    stages = sorted(p for p in out.iterdir() if p.is_dir() and p.name != "figures")
    mtimes = {p: (p / "manifest.json").stat().st_mtime_ns for p in stages}
    weights = {
        p: (p / "model.safetensors").stat().st_mtime_ns
        for p in stages
        if (p / "model.safetensors").exists()
    }
    again = run_demo(out, cfg, log=lambda m: None)
    assert again["adaptation_and_forgetting"] == first["adaptation_and_forgetting"]
    assert again["line"]["source_loss"] == first["line"]["source_loss"]
    assert sorted(p for p in out.iterdir() if p.is_dir() and p.name != "figures") == stages
    for p, t in weights.items():
        assert (p / "model.safetensors").stat().st_mtime_ns == t, p
    assert len(mtimes) == 6  # pretrain, two fine-tunings, line, two surfaces


def test_a_changed_setting_recomputes_only_what_depends_on_it(demo_run, tmp_path):
    out, cfg, _ = demo_run
    from dataclasses import replace

    before = {p.name for p in out.iterdir() if p.is_dir()}
    run_demo(out, replace(cfg, rotation=60.0), log=lambda m: None)
    after = {p.name for p in out.iterdir() if p.is_dir()}
    new = after - before
    # the pre-training is reused; fine-tunings, line and surfaces are recomputed
    assert not any(n.startswith("pretrain-") for n in new)
    assert sum(n.startswith("finetune-") for n in new) == 2
