"""Training that records trajectories: configs, schedules, the trainer, trajectory files.

The entry point is :func:`train`, a plain function of a model, data and a frozen
:class:`TrainConfig` that returns a frozen :class:`TrainResult`.
"""

from basinscope.training.callbacks import FGE, SWA, update_bn
from basinscope.training.config import BN_MODES, OPTIMIZERS, TrainConfig
from basinscope.training.constraints import TrustRegion, mask_scores, top_mask
from basinscope.training.finetune import (
    FinetuneComparison,
    FinetuneComparisonSpec,
    FinetuneResult,
    FinetuneSpec,
    FinetuneTraining,
    compare_strategies,
    finetune,
    head_parameters,
    module_ranking,
)
from basinscope.training.run import TrainRun, TrainSpec, history_dataset
from basinscope.training.schedules import SCHEDULES, check_schedule, lr_at
from basinscope.training.trainer import Callback, TrainResult, select_trainable, spawn, train
from basinscope.training.trajectory import load_trajectory, trajectory_to_safetensors

__all__ = [
    "BN_MODES",
    "FGE",
    "OPTIMIZERS",
    "SCHEDULES",
    "SWA",
    "Callback",
    "FinetuneComparison",
    "FinetuneComparisonSpec",
    "FinetuneResult",
    "FinetuneSpec",
    "FinetuneTraining",
    "TrainConfig",
    "TrainResult",
    "TrainRun",
    "TrainSpec",
    "TrustRegion",
    "check_schedule",
    "compare_strategies",
    "finetune",
    "head_parameters",
    "history_dataset",
    "load_trajectory",
    "lr_at",
    "mask_scores",
    "module_ranking",
    "select_trainable",
    "spawn",
    "top_mask",
    "train",
    "trajectory_to_safetensors",
    "update_bn",
]
