"""Section "fit" of the transfer-methods study: which pre-trained checkpoint, and block
shuffling (feature reuse). Its stages, fields, figures and answers on the shared smoke run
(``transfer_smoke``), its pure functions on hand-made inputs, and bad settings.

What the section shows is checked on the quick run in tests/experiments/test_studies_science.py."""

from __future__ import annotations

import json
import re

import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments import transfer_fit as fit
from basinscope.experiments.registry import make_config, rebuild_report, run_study
from basinscope.experiments.stages import stage_folders
from basinscope.experiments.transfer_methods import DEFINITIONS as STUDY_DEFINITIONS
from study_checks import forbid


def _section(transfer_smoke):
    _, cfg, res, run_dir = transfer_smoke
    saved = json.loads((run_dir / "result.json").read_text())
    return cfg, res, saved, saved["sections"]["fit"]


# -- the smoke run ------------------------------------------------------------------------------


def test_every_checkpoint_is_fine_tuned_for_every_seed_with_its_curves(transfer_smoke):
    cfg, _, saved, sec = _section(transfer_smoke)
    folders = stage_folders(transfer_smoke[3], saved)
    kept = sorted({*cfg.pretrain_checkpoints, 0, cfg.pretrain_steps})
    assert [c["step"] for c in sec["checkpoints"]] == kept == sec["setup"]["checkpoints"]
    assert sec["checkpoints_folder"] in folders
    evals = sorted({*range(0, cfg.steps, cfg.fit_eval_every), cfg.steps})
    for c in sec["checkpoints"]:
        assert 0 <= c["source_accuracy"] <= 1 and 0 <= c["target_accuracy_before"] <= 1
        assert len(c["folders"]) == len(c["accuracy_curves"]) == cfg.seeds
        assert all(f in folders and f.startswith("fit-curve-") for f in c["folders"])
        assert c["eval_step"] == evals
        finals = [curve[-1] for curve in c["accuracy_curves"]]
        assert c["final_accuracy"]["values"] == finals
        want = [
            fit.steps_to_accuracy(c["eval_step"], curve, cfg.fit_target_accuracy)
            for curve in c["accuracy_curves"]
        ]
        assert c["steps_to_target"]["values"] == want
        assert c["steps_to_target"]["reached"] == sum(v is not None for v in want)
        assert (c["steps_to_target"]["mean"] is None) == (None in want)
    # the random initialization's checkpoint is the untrained LeNet: chance on both
    first = sec["checkpoints"][0]
    assert first["step"] == 0 and first["source_accuracy"] < 0.3
    # the last checkpoint is the shared pre-trained model
    assert sec["checkpoints"][-1]["source_accuracy"] == pytest.approx(
        saved["pretrained"]["source_accuracy"]
    )


def test_every_block_size_has_pt_and_rit_with_the_relative_drop(transfer_smoke):
    cfg, _, _, sec = _section(transfer_smoke)
    sh = sec["shuffle"]
    assert [r["block"] for r in sh["blocks"]] == list(cfg.fit_blocks)
    for r in sh["blocks"]:
        assert r["tiles"] == (8 // r["block"]) ** 2
        assert (f"block{r['block']}" in r["data"]) and f"rot{cfg.target_angle:g}" in r["data"]
        for init in ("P-T", "RI-T"):
            run = r[init]
            assert len(run["accuracy_curves"]) == cfg.seeds
            assert run["eval_step"][0] == 0 and run["eval_step"][-1] == cfg.fit_shuffle_steps
            assert run["final_accuracy"]["values"] == [c[-1] for c in run["accuracy_curves"]]
            assert run["mean_train_loss"]["mean"] > 0
        pt, ri = r["P-T"]["final_accuracy"]["values"], r["RI-T"]["final_accuracy"]["values"]
        assert r["relative_drop"]["values"] == pytest.approx(
            [(p - q) / p for p, q in zip(pt, ri, strict=True)]
        )
        lp, lr = r["P-T"]["mean_train_loss"]["values"], r["RI-T"]["mean_train_loss"]["values"]
        assert r["loss_area_gap"]["values"] == pytest.approx(
            [b - a for a, b in zip(lp, lr, strict=True)]
        )
    # every run is a stage of its own (start, data and steps differ)
    every = [f for r in sh["blocks"] for i in ("P-T", "RI-T") for f in r[i]["folders"]]
    every += [f for c in sec["checkpoints"] for f in c["folders"]]
    assert len(set(every)) == len(every)
    # the example digits: 8x8 tiles is the rotated digit itself, the others permute its pixels
    ex = {int(b): img for b, img in sh["examples"].items()}
    assert set(ex) == set(cfg.fit_blocks)
    flat = {b: sorted(v for row in img for v in row) for b, img in ex.items()}
    assert all(flat[b] == flat[8] for b in ex) and ex[1] != ex[8]
    assert len(sh["example_upright"]) == 8 and ex[8] != sh["example_upright"]


def test_the_verdict_and_the_answers_follow_the_numbers(transfer_smoke):
    _, res, saved, sec = _section(transfer_smoke)
    v = sec["verdict"]
    assert v == fit.verdict(sec, sec["setup"]["tolerance"], sec["setup"]["eval_every"])
    cks = sec["checkpoints"]
    assert v["later_better_final"] == fit.interval_order(
        cks[-1]["final_accuracy"]["ci"], cks[0]["final_accuracy"]["ci"]
    )
    mine = [a for a in saved["answers"] if a["section"] == "fit"]
    assert mine == [{**a, "section": "fit", "section_title": fit.TITLE} for a in fit.answers(sec)]
    assert len(mine) == 6 and all(a["question"] == "fit" for a in mine)
    keys = ("later_better_final", "later_faster", "start_earlier", "speed_independent")
    keys += ("drop_shrinks", "speed_survives")
    assert [a["supported"] for a in mine] == [v[k] for k in keys]
    for a in mine:
        assert a["answer"] and ("figures fit_" in a["evidence"])
    assert res["sections"]["fit"]["verdict"] == v


def test_every_definition_reaches_the_results(transfer_smoke):
    _, _, saved, sec = _section(transfer_smoke)
    for k, text in fit.DEFINITIONS.items():
        assert STUDY_DEFINITIONS[f"fit.{k}"] == saved["definitions"][f"fit.{k}"] == text
    for k in ("final_accuracy", "steps_to_target", "relative_drop", "mean_train_loss"):
        assert k in fit.DEFINITIONS
    assert sec["setup"]["strategy"].startswith("ft: every parameter")
    assert sec["setup"]["speed_definitions"]["shuffle"] == ["mean_train_loss", "steps_to_fraction"]


def test_figures_and_the_report_section(transfer_smoke):
    _, cfg, _, run_dir = transfer_smoke
    for stem in fit.FIGURES:
        for ext in cfg.figure_formats:
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    html = (run_dir / "report.html").read_text()
    assert fit.TITLE in html and "Which pre-trained checkpoint" in html
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    assert sum("relative accuracy drop" in c for c in captions) == 1
    assert sum("not reached" in c for c in captions) == 1


def test_rebuilding_the_section_trains_nothing(transfer_smoke, monkeypatch):
    _, _, _, run_dir = transfer_smoke
    forbid(monkeypatch, ("basinscope.training:train", "basinscope.engine:evaluate_model"))
    for stem in fit.FIGURES:
        (run_dir / "figures" / f"{stem}.png").unlink()
    rebuild_report(run_dir)
    assert all((run_dir / "figures" / f"{s}.png").is_file() for s in fit.FIGURES)


def test_running_again_reuses_every_stage_and_gives_the_same_numbers(transfer_smoke):
    root, cfg, first, _ = transfer_smoke
    again = run_study("transfer-methods", root, cfg, say=lambda _m: None, report=False)
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    assert again["sections"]["fit"] == first["sections"]["fit"]


def test_a_curve_stage_is_fine_tuning_with_strategy_ft(transfer_smoke):
    """The section trains with ``train`` (for the accuracy curve); its final accuracy is the
    one ``finetune(strategy="ft")`` reaches from the same start, seed and steps."""
    from basinscope.experiments.transfer_common import lenet, shifted_digits, train_config
    from basinscope.models import load_weights
    from basinscope.store import paths
    from basinscope.training.finetune import finetune

    root, cfg, res, _ = transfer_smoke
    pre_dir = root / "stages" / res["pretrained"]["folder"]
    model = load_weights(lenet(cfg), pre_dir / paths.WEIGHTS)
    target = shifted_digits(cfg, cfg.target_angle)
    out = finetune(
        model,
        target["train"],
        strategy="ft",
        config=train_config(cfg, 0),
        eval_target=target["test"],
    )
    got = res["sections"]["fit"]["checkpoints"][-1]["final_accuracy"]["values"][0]
    assert out.after["target"]["accuracy"] == pytest.approx(got, abs=1e-6)


# -- pure functions -----------------------------------------------------------------------------


def test_steps_to_accuracy_is_the_first_measured_step_reaching_it():
    steps, acc = [0, 10, 20, 30], [0.1, 0.5, 0.49, 0.9]
    for thr in (0.05, 0.1, 0.3, 0.5, 0.6, 0.9, 0.95):
        brute = min((s for s, a in zip(steps, acc) if a >= thr), default=None)
        assert fit.steps_to_accuracy(steps, acc, thr) == brute
    assert fit.steps_to_accuracy(steps, acc, 0.95) is None  # "not reached", never a number


def test_relative_drop_area_and_interval_order():
    assert fit.relative_drop(0.8, 0.6) == pytest.approx(0.25)
    assert fit.relative_drop(0.5, 0.6) == pytest.approx(-0.2)
    with pytest.raises(BasinscopeError, match=r"acc\(P-T\) > 0"):
        fit.relative_drop(0.0, 0.5)
    assert fit.area_under_loss([2.0, 1.0, 0.0]) == pytest.approx(1.0)
    with pytest.raises(BasinscopeError, match="at least one update"):
        fit.area_under_loss([])
    assert fit.interval_order([0.5, 0.6], [0.1, 0.4]) is True
    assert fit.interval_order([0.1, 0.4], [0.5, 0.6]) is False
    assert fit.interval_order([0.1, 0.5], [0.4, 0.6]) is None
    assert fit.interval_order(None, [0.4, 0.6]) is None
    assert fit.earliest_within([0, 10, 50], [0.2, None, 0.9], 0.5) == 50
    assert fit.earliest_within([0, 10], [0.2, 0.3], 0.5) is None


def _hand_made(final, steps_to, drops, gaps, source=(0.1, 0.9, 0.95)):
    """A section with three checkpoints (0, 50, 100) and two blocks (8, 1)."""

    def s(vals, ci):
        import numpy as np

        return {"mean": float(np.mean(vals)), "ci": ci, "values": vals}

    cks = []
    for step, (f, t), src in zip((0, 50, 100), zip(final, steps_to), source):
        reached = [v for v in t if v is not None]
        mean = sum(reached) / len(t) if len(reached) == len(t) else None
        cks.append(
            {
                "step": step,
                "source_accuracy": src,
                "final_accuracy": s(*f),
                "steps_to_target": {"values": t, "mean": mean, "reached": len(reached)},
            }
        )
    blocks = [
        {"block": b, "relative_drop": s(*d), "loss_area_gap": s(*g)}
        for b, d, g in zip((8, 1), drops, gaps)
    ]
    return {"checkpoints": cks, "shuffle": {"blocks": blocks}}


def test_verdict_on_hand_made_numbers():
    sec = _hand_made(
        final=[([0.5, 0.6], [0.4, 0.7]), ([0.9, 0.9], [0.88, 0.92]), ([0.9, 0.92], [0.89, 0.93])],
        steps_to=[[None, None], [60, 80], [30, 30]],
        drops=[([0.2, 0.3], [0.15, 0.35]), ([0.0, 0.02], [-0.05, 0.07])],
        gaps=[([0.5, 0.6], [0.4, 0.7]), ([0.2, 0.3], [0.1, 0.4])],
    )
    v = fit.verdict(sec, tolerance=0.01, eval_every=10)
    assert v["later_better_final"] is True and v["later_faster"] is True
    # bound min(0.89, 0.91 - 0.01) = 0.89: checkpoint 50 (mean 0.9) is within
    assert v["final_bound"] == pytest.approx(0.89) and v["earliest_final"] == 50
    assert v["start_earlier"] is True and v["source_plateau"] == 100
    # speed: 50's mean 70 > 30 + 10, so the speed saturates only at 100: independent
    assert v["earliest_speed"] == 100 and v["speed_independent"] is True
    assert v["drop_shrinks"] is True and v["pt_better"] == {"8": True, "1": None}
    assert v["speed_survives"] is True
    texts = [a["answer"] for a in fit.answers({**sec, "verdict": v, "setup": _setup()})]
    assert "not reached" in texts[1] and "step 50 of 100" in texts[2]
    assert "independent" in texts[3] and "features are reused" in texts[4]

    # the reverse: overlapping intervals cannot tell, a contradicted claim is False
    sec = _hand_made(
        final=[([0.9, 0.95], [0.85, 1.0]), ([0.5, 0.6], [0.4, 0.7]), ([0.9, 0.92], [0.8, 1.0])],
        steps_to=[[20, 20], [None, 40], [30, 40]],
        drops=[([0.0, 0.02], [-0.05, 0.07]), ([0.2, 0.3], [0.15, 0.35])],
        gaps=[([0.5, 0.6], [0.4, 0.7]), ([-0.3, -0.2], [-0.4, -0.1])],
    )
    v = fit.verdict(sec, tolerance=0.01, eval_every=10)
    assert v["later_better_final"] is None and v["later_faster"] is False
    assert v["earliest_final"] == 0 and v["earliest_speed"] == 0
    assert v["speed_independent"] is False
    assert v["drop_shrinks"] is False and v["speed_survives"] is False
    texts = [a["answer"] for a in fit.answers({**sec, "verdict": v, "setup": _setup()})]
    assert "cannot tell" in texts[0] and "no final accuracy" in texts[2]
    assert "not supported" in texts[4] and "not supported" in texts[5]


def _setup():
    return {"target_accuracy": 0.8, "shuffle_steps": 100}


# -- bad settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, message",
    [
        (
            "fit_blocks=[8, 3]",
            r"fit_blocks \[8, 3\].*divide.*\[1, 2, 4, 8\].*e\.g\. \[8, 4, 2, 1\]",
        ),
        ("fit_blocks=[8]", r"at least two distinct tile sizes"),
        ("fit_blocks=[4, 4]", r"at least two distinct"),
        ("fit_eval_every=0", "fit_eval_every"),
        ("fit_shuffle_steps=0", "fit_shuffle_steps"),
        ("fit_target_accuracy=1.5", "fit_target_accuracy"),
        ("fit_speed_fraction=0", "fit_speed_fraction"),
        ("fit_tolerance=-0.1", "fit_tolerance"),
        ("fit_shuffle_seed=-1", "fit_shuffle_seed"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(item, message):
    with pytest.raises(BasinscopeError, match=message):
        make_config("transfer-methods", sets=[item])
