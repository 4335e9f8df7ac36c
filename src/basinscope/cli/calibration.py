"""``basinscope calibrate``: temperature scaling of a model or an ensemble, generated from
:class:`~basinscope.analyses.calibration.CalibrationSpec`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from basinscope.analyses.calibration import CalibrationResult, CalibrationSpec, calibrate
from basinscope.cli.generate import Command, Context
from basinscope.errors import BasinscopeError
from basinscope.inputs import DataOptions, ModelsOptions, TaskOptions, fingerprints
from basinscope.spec import Spec, group, option, with_defaults

__all__ = ["CALIBRATE", "CalibrateCommand", "run_calibrate"]

#: the splits of the built-in data (none has a validation split)
_BUILTIN_SPLITS = {
    "digits": ("train", "test", "all"),
    "mnist": ("train", "test", "all"),
    "mnist5k": ("train", "test", "all"),
    "tokens": ("train", "test", "all"),
}

_Members = with_defaults(
    ModelsOptions,
    weights=((), "Weights of the model; repeat for an ensemble, once per member."),
)


@dataclass(frozen=True)
class CalibrateCommand(Spec):
    models: _Members = group(_Members)
    data: DataOptions = group(DataOptions)
    task: TaskOptions = group(TaskOptions)
    split: str = option("test", "Split every metric is reported on.")
    val_split: str = option(
        "",
        "Split the temperature is fitted on (held out from training and from --split); "
        "default: test-time cross-validation on --split (halved at random --repeats times).",
    )
    calibration: CalibrationSpec = group(CalibrationSpec)

    def check(self) -> None:
        flag = self.models.name_of("weights")
        if not self.models.weights:
            raise BasinscopeError(
                f"calibration needs the model to calibrate: pass {flag} model.safetensors, "
                f"or {flag} once per member for an ensemble ({flag} a.safetensors {flag} "
                "b.safetensors)"
            )
        if self.task.loss == "mse":
            raise BasinscopeError(
                f"calibration scales a classifier's probabilities: {self.task.name_of('loss')} "
                "mse is a regression loss; calibrate a classifier (cross_entropy, model, or a "
                "loss of integer class labels)"
            )


def _load_val(cmd: CalibrateCommand) -> Any:
    """The split the temperature is fitted on (None: cross-validation on --split); a
    --val-split the data lacks is refused with the fix."""
    val, flag = cmd.val_split, cmd.name_of("val_split")
    if not val:
        return None
    have = _BUILTIN_SPLITS.get(cmd.data.data)
    if have is not None and val not in have:
        raise BasinscopeError(
            f"{cmd.data.data} has no split {val!r} to fit the temperature on (its splits: "
            f"{', '.join(have)}): leave {flag} out (test-time cross-validation on "
            f"{cmd.name_of('split')}), or use data with a held-out validation split (a .npz "
            f"with x_val/y_val beside x_train/y_train and x_test/y_test, then {flag} val)"
        )
    try:
        return cmd.data.load(val)
    except BasinscopeError as e:
        raise BasinscopeError(
            f"{flag} {val} (the split the temperature is fitted on): {e}"
        ) from None


def _warn_about_splits(cmd: CalibrateCommand) -> None:
    """Warn when the temperature is fitted where it is evaluated or where the model was
    trained."""
    val, test = cmd.val_split, cmd.split
    flag, tflag = cmd.name_of("val_split"), cmd.name_of("split")
    if not val:
        return
    if val == test:
        warnings.warn(
            f"{flag} and {tflag} are both {val!r}: the temperature is fitted on the data it is "
            "evaluated on, so the calibrated metrics are optimistic; fit it on a held-out "
            f"split ({flag} val with a .npz holding x_val/y_val), or leave {flag} out for "
            "test-time cross-validation",
            UserWarning,
            stacklevel=2,
        )
    elif val == "train":
        warnings.warn(
            f"{flag} train: the temperature is fitted on the training data, where a model is "
            "more confident than on new data, so it comes out too low (calibration "
            f"under-corrects); prefer a held-out {flag}",
            UserWarning,
            stacklevel=2,
        )


def _size(data: Any) -> str:
    """`` (N examples)``, or nothing for data streamed without a length."""
    try:
        return f" ({len(data)} examples)"
    except TypeError:
        return ""


def run_calibrate(cmd: CalibrateCommand, ctx: Context) -> CalibrationResult:
    nets = cmd.models.load(1, "calibration")
    val = _load_val(cmd)
    test = val if cmd.split == cmd.val_split else cmd.data.load(cmd.split)
    for name, d in ((cmd.val_split, val), (cmd.split, test)):
        if d is None:
            continue
        if getattr(d, "regression", False) is True:  # TensorData with float targets
            y = d.y
            raise BasinscopeError(
                f"calibration scales a classifier's probabilities: the {name} split of "
                f"{cmd.data.data} has regression targets ({str(y.dtype).replace('torch.', '')} "
                f"y of shape {tuple(y.shape)}); calibrate a classifier, on data whose y are "
                "integer class labels"
            )
    data = {cmd.split: test} | ({cmd.val_split: val} if val is not None else {})
    ctx.open(fingerprints(nets, data))
    what = "one model" if len(nets) == 1 else f"an ensemble of {len(nets)} (and each member)"
    where = (
        f"fitted on {cmd.val_split}{_size(val)}"
        if val is not None
        else f"fitted by test-time cross-validation ({cmd.calibration.repeats} halvings)"
    )
    ctx.say(f"temperature scaling of {what}: {where}, reported on {cmd.split}{_size(test)} ...")
    res = calibrate(
        nets,
        val,
        test,
        spec=cmd.calibration,
        task=cmd.task.build(),
        labels=tuple(cmd.models.labels()),
        split=cmd.split,
        val_split=cmd.val_split or "(cross-validation)",
    )
    _warn_about_splits(cmd)  # about the result: after any error, which is the one line shown
    return res


CALIBRATE_EX = """
basinscope calibrate --model mlp --weights model.safetensors --data data.npz

basinscope calibrate --model mlp --weights model.safetensors --bins 10 --binning equal_mass \\
    --repeats 10 --json

basinscope calibrate --model lenet --weights s1.safetensors --weights s2.safetensors \\
    --weights s3.safetensors --data data.npz --val-split val --split test --out runs/calibration
"""
CALIBRATE = Command(
    "calibrate", CalibrateCommand, run_calibrate, CALIBRATE_EX, CalibrationSpec, CalibrationResult
)
