"""BatchNorm policies.

The loss at a parameter point depends on BatchNorm's running statistics, which are not
parameters. Two named policies:

``stored``     use the running statistics stored with the model (at a point between two
               models, the statistics are interpolated with the same coefficients).
               Cheap, but the statistics belong to the endpoints, not to the point: a
               barrier measured this way between two solutions can be an artifact.
``recompute``  at every point, reset the statistics and re-estimate them from
               ``bn_batches`` training batches in train mode with a cumulative average
               (``momentum=None``, as :func:`torch.optim.swa_utils.update_bn`), then
               evaluate in eval mode.
"""

from __future__ import annotations

import warnings

from torch import nn

__all__ = ["BN_POLICIES", "BatchNormWarning", "has_batchnorm", "warn_stored_bn"]

BN_POLICIES = ("stored", "recompute")


class BatchNormWarning(UserWarning):
    """Comparison across solutions that relies on stored BatchNorm statistics."""


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def warn_stored_bn(model: nn.Module, what: str) -> None:
    """Warn once per call when ``what`` compares solutions using stored statistics."""
    if has_batchnorm(model):
        warnings.warn(
            f"{what}: the model has BatchNorm and the comparison uses the stored running "
            "statistics (bn_policy='stored'); values between solutions can be artifacts of "
            "mismatched statistics. Use bn_policy='recompute' (--bn recompute) to re-estimate "
            "them at every point.",
            BatchNormWarning,
            stacklevel=3,
        )
