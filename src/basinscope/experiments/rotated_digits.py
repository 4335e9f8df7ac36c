"""The rotated-digits transfer demo: is the fine-tuned model still in the pre-trained basin?

The distribution-shift talk's toy example on built-in data: pre-train a LeNet on upright
digits (the source distribution), then fine-tune for 100 gradient steps on rotated digits
(the target) from the pre-trained weights and from a random initialization, and look at
the landscape:

1. accuracy on source and target before and after (adaptation vs. forgetting),
2. the straight path from the pre-trained to the fine-tuned model, extrapolated to
   :math:`\\alpha \\in [-1, 2]`, on source and target data,
3. the 2D landscape (PCA plane of each fine-tuning trajectory) of the target loss,
   random start next to pre-trained start, with the trajectories drawn,
4. the same plane around the pre-trained start on the source loss next to the target loss.

Everything is stored stage by stage under the output folder (folders named by a hash of
their settings), so running the demo again reuses what is finished.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from basinscope.experiments.stages import stage_dir, train_stage

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Settings (steps are gradient steps; angles in degrees, counter-clockwise)."""

    rotation: float = 35.0  # target distribution: digits rotated by this angle
    pretrain_steps: int = 600  # LeNet on upright digits, SGD
    pretrain_lr: float = 0.05
    finetune_steps: int = 100  # the talk's "100 gradient steps"
    finetune_lr: float = 0.02
    batch_size: int = 64
    momentum: float = 0.9
    checkpoint_every: int = 5  # fine-tuning checkpoints for the PCA planes
    init_seed: int = 0  # pre-training initialization
    random_start_seed: int = 1  # initialization of the random-start fine-tuning
    data_seed: int = 0
    grid: int = 21  # points per axis of each 2D surface
    line_points: int = 31  # points on alpha in [-1, 2]
    width: int = 1  # LeNet width multiplier

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A reduced version for tests (well under a minute on 2 cores)."""
        return replace(
            cls(pretrain_steps=150, finetune_steps=40, checkpoint_every=5, grid=7, line_points=13),
            **overrides,
        )


def _config(steps: int, lr: float, cfg: DemoConfig, checkpoint_every: int):
    from basinscope.training import TrainConfig

    return TrainConfig(
        steps=steps,
        batch_size=cfg.batch_size,
        lr=lr,
        momentum=cfg.momentum,
        data_seed=cfg.data_seed,
        checkpoint_steps=tuple(range(0, steps + 1, checkpoint_every))
        + ((steps,) if steps % checkpoint_every else ()),
    )


def run_demo(
    out: str | Path, cfg: DemoConfig | None = None, *, progress: bool = False, log=print
) -> dict[str, Any]:
    """Run the demo into ``out`` and write ``out/report.html`` and ``out/results.json``."""
    from basinscope.analyses import interpolate, pca_surface
    from basinscope.data import load_digits, rotate
    from basinscope.data.tensordata import TensorData
    from basinscope.engine import evaluate_model
    from basinscope.geometry import get_params, norm, sub

    cfg = cfg or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    src_train, src_test = load_digits("train"), load_digits("test")
    tgt_train = TensorData(
        rotate(src_train.x, cfg.rotation), src_train.y, f"digits-train-rot{cfg.rotation:g}"
    )
    tgt_test = TensorData(
        rotate(src_test.x, cfg.rotation), src_test.y, f"digits-test-rot{cfg.rotation:g}"
    )
    model_kwargs = {"width": cfg.width}

    # -- 1. pre-train on the source distribution ---------------------------------------------
    pre_cfg = _config(cfg.pretrain_steps, cfg.pretrain_lr, cfg, max(cfg.pretrain_steps // 10, 1))
    pre_spec = {
        "model": "lenet",
        "model_kwargs": model_kwargs,
        "init_seed": cfg.init_seed,
        "data": src_train.name,
    }
    log(f"[1/5] pre-training a LeNet on upright digits ({cfg.pretrain_steps} steps)")
    pre = train_stage(
        stage_dir(out, "pretrain", {**pre_spec, **pre_cfg.to_dict()}),
        _seeded_lenet(cfg.init_seed, model_kwargs),
        src_train,
        pre_cfg,
        pre_spec,
        progress=progress,
    )

    # -- 2. fine-tune on the target from the pre-trained and from a random start -------------
    ft_cfg = _config(cfg.finetune_steps, cfg.finetune_lr, cfg, cfg.checkpoint_every)
    log(
        f"[2/5] fine-tuning on digits rotated by {cfg.rotation:g} degrees ({cfg.finetune_steps} steps, two starts)"
    )
    starts = {
        "pre-trained start": pre.model,
        "random start": _seeded_lenet(cfg.random_start_seed, model_kwargs),
    }
    finetuned = {}
    for label, start in starts.items():
        spec = {
            "start": label,
            "start_run": pre.run_dir.name if start is pre.model else cfg.random_start_seed,
            "data": tgt_train.name,
        }
        finetuned[label] = train_stage(
            stage_dir(out, "finetune-" + label.split()[0], {**spec, **ft_cfg.to_dict()}),
            start,
            tgt_train,
            ft_cfg,
            spec,
            progress=progress,
        )

    # -- 3. adaptation vs. forgetting ---------------------------------------------------------
    log("[3/5] measuring accuracy on source and target, and distances moved")
    tests = {"source": src_test, "target": tgt_test}
    rows = []
    for label, start in starts.items():
        ft = finetuned[label].model
        before, after = evaluate_model(start, tests), evaluate_model(ft, tests)
        moved = float(norm(sub(get_params(ft), get_params(start))))
        rows.append(
            {
                "start": label,
                "source acc. before": before["source_accuracy"],
                "source acc. after": after["source_accuracy"],
                "target acc. before": before["target_accuracy"],
                "target acc. after": after["target_accuracy"],
                "‖θ_ft − θ_start‖": moved,
                "relative distance": moved / float(norm(get_params(start))),
            }
        )

    # -- 4. the straight path from pre-trained to fine-tuned, extrapolated ---------------------
    log("[4/5] the straight path from pre-trained to fine-tuned (alpha in [-1, 2])")
    line = interpolate(
        pre.model,
        finetuned["pre-trained start"].model,
        tests,
        alphas=np.linspace(-1, 2, cfg.line_points),
        run_dir=stage_dir(
            out,
            "line",
            {
                "a": pre.run_dir.name,
                "b": finetuned["pre-trained start"].run_dir.name,
                "n": cfg.line_points,
            },
        ),
        attrs={"label_a": "pre-trained", "label_b": "fine-tuned"},
        progress=progress,
    )

    # -- 5. 2D landscapes in the PCA plane of each fine-tuning trajectory ----------------------
    log(f"[5/5] 2D landscapes ({cfg.grid}x{cfg.grid} points, source and target loss)")
    trains = {"source": src_train, "target": tgt_train}
    surfaces, projections = {}, {}
    for label, stage in finetuned.items():
        land, proj = pca_surface(
            stage.model,
            stage.checkpoints,
            trains,
            n=cfg.grid,
            run_dir=stage_dir(
                out, "surface-" + label.split()[0], {"run": stage.run_dir.name, "grid": cfg.grid}
            ),
            attrs={"title_hint": f"PCA plane of fine-tuning from the {label}"},
            progress=progress,
        )
        (land.run_dir / "trajectories.json").write_text(
            json.dumps([{**proj.to_dict(), "label": f"fine-tuning ({label})"}])
        )
        surfaces[label], projections[label] = land, proj

    results = {
        "config": asdict(cfg),
        "adaptation_and_forgetting": rows,
        "line": {
            "alpha": line.dataset.alpha.values.tolist(),
            **{v: line.dataset[v].values.tolist() for v in line.dataset.data_vars},
            "definition": "f(alpha) = L((1 - alpha) theta_pre + alpha theta_ft), mean cross-entropy on the test split",
            "run_dir": str(line.run_dir),
        },
        "surfaces": {
            label: {
                "run_dir": str(s.run_dir),
                "explained_variance_ratio": list(s.dataset.attrs["explained_variance_ratio"]),
                "max_distance_from_plane": float(projections[label].distance.max()),
                "strategy": s.dataset.attrs["strategy"],
            }
            for label, s in surfaces.items()
        },
        "stages": {
            "pretrain": str(pre.run_dir),
            **{k: str(v.run_dir) for k, v in finetuned.items()},
        },
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    from basinscope.experiments.demo_report import write_demo_report

    report = write_demo_report(out, cfg, results, line, surfaces, projections)
    results["report"] = str(report)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def _seeded_lenet(seed: int, kwargs: dict[str, Any]):
    from basinscope.models import build_model

    return build_model("lenet", kwargs, init_seed=seed)
