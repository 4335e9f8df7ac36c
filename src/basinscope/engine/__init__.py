"""The evaluation engine: metrics at many parameter points, fast, resumable."""

from basinscope.engine.batches import StreamingBatches, as_batches, num_examples, unpack_batch
from basinscope.engine.bn import BN_POLICIES, BatchNormWarning, has_batchnorm, warn_stored_bn
from basinscope.engine.evaluate import (
    STRATEGIES,
    ChunkJournal,
    EvalJob,
    EvalResult,
    Evaluator,
    evaluate_model,
    evaluate_points,
)
from basinscope.engine.executors import (
    EXECUTORS,
    Executor,
    LocalExecutor,
    current_executor,
    make_executor,
    use_executor,
)
from basinscope.engine.fit import check_model_data
from basinscope.engine.metrics import BUILTIN_METRICS, Metric, resolve_metrics
from basinscope.engine.points import PointBasis, chunk_slices
from basinscope.engine.task import LOSSES, Task, as_task

__all__ = [
    "BN_POLICIES",
    "BUILTIN_METRICS",
    "EXECUTORS",
    "LOSSES",
    "STRATEGIES",
    "BatchNormWarning",
    "ChunkJournal",
    "EvalJob",
    "EvalResult",
    "Evaluator",
    "Executor",
    "LocalExecutor",
    "Metric",
    "PointBasis",
    "StreamingBatches",
    "Task",
    "as_batches",
    "as_task",
    "check_model_data",
    "chunk_slices",
    "current_executor",
    "evaluate_model",
    "evaluate_points",
    "has_batchnorm",
    "make_executor",
    "num_examples",
    "resolve_metrics",
    "unpack_batch",
    "use_executor",
    "warn_stored_bn",
]
