"""Every command runs any model on any device: its spec carries --device, --dtype and the
task options (--task, --loss, --output-key, --targets-key, --input-keys, --call)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from tests.cli.test_help import COMMANDS

from basinscope.inputs import TaskOptions
from basinscope.spec import EVAL_DTYPES, Spec


def _fields(spec: type[Spec], prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf field of a command's spec, by dotted path through its option groups."""
    out: dict[str, dataclasses.Field] = {}
    hints = typing.get_type_hints(spec)
    for f in dataclasses.fields(spec):
        t = hints[f.name]
        if isinstance(t, type) and issubclass(t, Spec):
            out.update(_fields(t, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_every_command_has_device_dtype_and_the_task_options(cmd):
    fields = _fields(cmd.spec)
    devices = [k for k in fields if k.rsplit(".", 1)[-1] == "device"]
    dtypes = [k for k in fields if k.rsplit(".", 1)[-1] == "dtype"]
    assert len(devices) == 1, f"{cmd.name}: device options {devices}"
    assert len(dtypes) == 1, f"{cmd.name}: dtype options {dtypes}"
    choices = fields[dtypes[0]].metadata.get("choices")
    assert choices and {"float32", "float64"} <= set(choices) <= set(EVAL_DTYPES)
    tasks = [f for f in dataclasses.fields(cmd.spec) if f.name == "task"]
    nested = [k for k in fields if k.endswith("task.loss")]
    assert tasks or nested, f"{cmd.name} has no task options"
    hints = typing.get_type_hints(cmd.spec)
    assert any(hints.get(f.name) is TaskOptions for f in tasks) or nested


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_help_shows_device_dtype_and_loss(cli, monkeypatch, cmd):
    monkeypatch.setenv("COLUMNS", "400")
    out = cli(cmd.name, "--help").out
    for flag in ("--device", "--dtype", "--task", "--loss", "--output-key", "--targets-key"):
        assert flag in out, f"{cmd.name} --help lacks {flag}"


def test_task_options_build_the_task():
    from basinscope.engine import Task

    assert TaskOptions().build() == Task()
    t = TaskOptions(loss="mse", output_key="0", targets_key="target", input_keys=("a", "b"))
    assert t.build() == Task(loss="mse", output=0, targets="target", inputs=("a", "b"))
    assert TaskOptions(output_key="logits", call="keywords").build() == Task(
        output="logits", call="keywords"
    )


def test_a_bad_loss_says_what_is_expected(cli):
    res = cli("surface", "--loss", "hinge")
    assert res.code == 2
    assert (
        "--loss 'hinge' is not a loss: expected cross_entropy, mse, model or module:attr "
        "(a function of (prediction, targets)), e.g. --loss mse" in " ".join(res.err.split())
    )
