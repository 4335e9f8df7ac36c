"""The transfer-methods study (issue 17): the shared skeleton (pre-training, answers, report)
on its smoke configuration. Each section's own tests use the same run (the
``transfer_smoke`` fixture of tests/experiments/conftest.py)."""

from __future__ import annotations

import json

import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import make_config, rebuild_report
from basinscope.experiments.transfer_common import QUESTIONS, mean_ci, spread
from basinscope.experiments.transfer_methods import SECTIONS


def test_the_run_has_the_pretrained_model_every_section_and_answer(transfer_smoke):
    _, cfg, _, run_dir = transfer_smoke
    saved = json.loads((run_dir / "result.json").read_text())
    pre = saved["pretrained"]
    assert 0 <= pre["source_accuracy"] <= 1 and 0 <= pre["target_accuracy"] <= 1
    assert pre["checkpoints"] == sorted({*cfg.pretrain_checkpoints, 0, cfg.pretrain_steps})
    assert list(saved["sections"]) == [s.KEY for s in SECTIONS]
    for a in saved["answers"]:
        assert a["question"] in QUESTIONS and a["answer"] and a["evidence"]
        assert a["supported"] in (True, False, None)
    html = (run_dir / "report.html").read_text()
    assert "Answers" in html and "How these numbers were made" in html


def test_the_report_is_rebuilt_from_result_json(transfer_smoke):
    _, _, _, run_dir = transfer_smoke
    (run_dir / "report.html").unlink()
    rebuild_report(run_dir)
    assert (run_dir / "report.html").stat().st_size > 0


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(BasinscopeError, match="is the source angle"):
        make_config("transfer-methods", sets=["target_angle=0"])
    with pytest.raises(BasinscopeError, match=r"pretrain_checkpoints .*e\.g\."):
        make_config("transfer-methods", sets=["pretrain_checkpoints=[0, 5000]"])


def test_mean_ci_is_the_student_t_interval():
    from scipy import stats

    v = [0.2, 0.5, 0.4]
    mean, ci = mean_ci(v, 0.9)
    half = stats.t.ppf(0.95, 2) * stats.tstd(v) / 3**0.5
    assert mean == pytest.approx(sum(v) / 3)
    assert ci == pytest.approx([mean - half, mean + half])
    assert mean_ci([0.3]) == (0.3, None)
    assert mean_ci([0.9, 1.0, 1.0], high=1.0)[1][1] == 1.0
    s = spread([1.0, 3.0])
    assert s["std"] == pytest.approx(2**0.5) and s["min"] == 1.0 and s["values"] == [1.0, 3.0]
