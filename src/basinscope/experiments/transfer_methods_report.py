"""The transfer-methods study's report: the answers to the research questions first, then
each section's tables and figures (PNG/PDF), in one self-contained HTML file.

Everything is drawn from the results dict (stored in result.json); nothing is computed again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import basinscope
from basinscope.experiments.stages import stages_table
from basinscope.report import Report
from basinscope.store import paths
from basinscope.store.atomic import atomic_write_text

__all__ = ["SUPPORT_WORDS", "write_report"]

SUPPORT_WORDS = {True: "yes", False: "no: the data do not support it", None: "cannot tell"}


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    from basinscope.experiments.transfer_methods import SECTIONS

    run_dir = Path(run_dir)
    figs = run_dir / paths.FIGURES
    figs.mkdir(exist_ok=True)
    cfg, pol, pre = results["config"], results["policies"], results["pretrained"]
    rep = Report(
        "Transfer under distribution shift: the research questions, answered on digits",
        f"basinscope {basinscope.__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{cfg['seeds']} seeds · {results.get('seconds', '?')} s",
        formats=tuple(cfg.get("figure_formats", ("png", "pdf"))),
    )
    rep.text(
        "The distribution-shift talk's research questions, each answered by experiments whose "
        "numbers decide the answer. Data: "
        + pol["data"]
        + ". Model: "
        + pol["model"]
        + ". Pre-training: "
        + pol["pretrain"]
        + f"; the pre-trained model reaches {pre['source_accuracy']:.3f} test accuracy on "
        f"the source and {pre['target_accuracy']:.3f} on the target. Then "
        + pol["finetune"]
        + ". Intervals: "
        + results["definitions"]["ci"]
        + ". "
        + pol["batchnorm"]
        + "."
    )
    rep.heading("Answers")
    rep.table(
        [
            {
                "question": results["questions"].get(a["question"], a["question"]),
                "answer": a["answer"],
                "supported by the data": SUPPORT_WORDS.get(a["supported"], str(a["supported"])),
                "evidence": f"§{a['section_title']}: {a['evidence']}",
            }
            for a in results["answers"]
        ],
        "Each answer is computed from the numbers of the section it names; 'supported' "
        "follows the criterion stated there (e.g. non-overlapping intervals over the seeds).",
    )
    by_key = {s.KEY: s for s in SECTIONS}
    for key, section in results["sections"].items():
        if key in by_key:
            by_key[key].report(rep, section, cfg, figs)
    rep.heading("How these numbers were made")
    rep.text(
        "Pre-training, every fine-tuning and every measurement is a stage stored in a folder "
        "named by a hash of its settings, which include the folders of the stages it depends "
        "on; running the study again reuses them. result.json beside this report holds every "
        "number, with its definition. Precision and device: " + pol["precision"] + "."
    )
    stages_table(rep, results)
    return atomic_write_text(run_dir / paths.REPORT, rep.render(), "report")
