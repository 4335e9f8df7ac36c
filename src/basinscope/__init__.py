"""basinscope: see, measure and compare the loss landscapes of neural networks.

The public API is flat::

    import basinscope as bs

    land = bs.surface(model, data, alphas=..., betas=...)   # a filter-normalized plane
    r = bs.barrier(model_a, model_b, data, definition="linear")
    h = bs.hessian(model, data, k_top=3)
    bs.save(r, "runs/barrier"); bs.load("runs/barrier")      # the same typed result
    fig, ax = bs.plot(r)

Every analysis takes its settings as keyword arguments or as a spec (``spec=BarrierSpec(...)``)
and returns a frozen result with ``kind``, the spec and the named definition that produced
it. Names are imported on first use, so ``import basinscope`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    # landscapes
    "interpolate": ("basinscope.analyses", "interpolate"),
    "random_line": ("basinscope.analyses", "random_line"),
    "surface": ("basinscope.analyses", "random_surface"),
    "random_surface": ("basinscope.analyses", "random_surface"),
    "pca_surface": ("basinscope.analyses", "pca_surface"),
    "plane_surface": ("basinscope.analyses", "plane_surface"),
    "project_trajectory": ("basinscope.analyses", "project_trajectory"),
    # curvature and sharpness
    "hessian": ("basinscope.analyses.hessian", "hessian_analysis"),
    "curvature_map": ("basinscope.analyses.hessian_map", "curvature_map"),
    "hessian_map": ("basinscope.analyses.hessian_map", "hessian_map"),
    "sharpness": ("basinscope.analyses", "sharpness"),
    # connectivity
    "barrier": ("basinscope.analyses", "barrier"),
    "barrier_matrix": ("basinscope.analyses", "barrier_matrix"),
    "barriers": ("basinscope.analyses.barrier", "barriers"),
    "basin_test": ("basinscope.analyses", "basin_test"),
    "train_curve": ("basinscope.analyses", "train_curve"),
    "curve": ("basinscope.analyses.curves", "curve"),
    "align": ("basinscope.analyses.alignment", "align"),
    "ensemble": ("basinscope.analyses.ensembles", "ensemble"),
    "weight_matching": ("basinscope.analyses", "weight_matching"),
    "activation_matching": ("basinscope.analyses", "activation_matching"),
    "instability": ("basinscope.analyses", "instability"),
    "instability_analysis": ("basinscope.analyses.instability", "instability_analysis"),
    # transfer
    "cka_matrix": ("basinscope.analyses.similarity", "cka_matrix"),
    "linear_cka": ("basinscope.analyses.similarity", "linear_cka"),
    "parameter_distance": ("basinscope.analyses", "parameter_distance"),
    "mistake_analysis": ("basinscope.analyses.distance", "mistake_analysis"),
    "module_criticality": ("basinscope.analyses", "module_criticality"),
    "rewind": ("basinscope.analyses", "rewind"),
    "finetune": ("basinscope.training", "finetune"),
    "compare_strategies": ("basinscope.training", "compare_strategies"),
    # merging
    "merge": ("basinscope.analyses.merging", "merge"),
    "merge_all": ("basinscope.analyses.merging", "merge_all"),
    "merge_decomposition": ("basinscope.analyses.merging", "merge_decomposition"),
    "merge_plane": ("basinscope.analyses.merging", "merge_plane"),
    "MergeSpec": ("basinscope.analyses.merging", "MergeSpec"),
    "diagonal_fisher": ("basinscope.curvature.fisher", "diagonal_fisher"),
    # calibration and scaling laws
    "calibrate": ("basinscope.analyses.calibration", "calibrate"),
    "CalibrationSpec": ("basinscope.analyses.calibration", "CalibrationSpec"),
    "fit_temperature": ("basinscope.analyses.calibration", "fit_temperature"),
    "fit_power_law": ("basinscope.analyses.scaling", "fit_power_law"),
    "memory_split": ("basinscope.analyses.scaling", "memory_split"),
    # training dynamics
    "Tracker": ("basinscope.analyses.tracking", "Tracker"),
    "label_noise": ("basinscope.data", "label_noise"),
    "patch_data": ("basinscope.data", "patch_data"),
    # running any model: the task adapter and the engine
    "Task": ("basinscope.engine", "Task"),
    "evaluate_model": ("basinscope.engine", "evaluate_model"),
    # where chunks and stages run: this process, or a Ray cluster
    "LocalExecutor": ("basinscope.engine", "LocalExecutor"),
    "RayExecutor": ("basinscope.engine.ray_executor", "RayExecutor"),
    "use_executor": ("basinscope.engine", "use_executor"),
    # training, models, data
    "train": ("basinscope.training", "train"),
    "TrainConfig": ("basinscope.training", "TrainConfig"),
    "build_model": ("basinscope.models", "build_model"),
    "load_weights": ("basinscope.models", "load_weights"),
    "save_weights": ("basinscope.models", "save_weights"),
    "load_digits": ("basinscope.data", "load_digits"),
    "load_mnist5k": ("basinscope.data", "load_mnist5k"),
    "load_tokens": ("basinscope.data", "load_tokens"),
    "DictData": ("basinscope.data", "DictData"),
    # the protocol
    "Spec": ("basinscope.spec", "Spec"),
    "EvalOptions": ("basinscope.spec", "EvalOptions"),
    "option": ("basinscope.spec", "option"),
    "group": ("basinscope.spec", "group"),
    "with_defaults": ("basinscope.spec", "with_defaults"),
    "Result": ("basinscope.result", "Result"),
    "result_class": ("basinscope.result", "result_class"),
    "save": ("basinscope.store", "save"),
    "load": ("basinscope.store", "load"),
    "plot": ("basinscope.plotting", "plot"),
    "BasinscopeError": ("basinscope.errors", "BasinscopeError"),
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'basinscope' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
