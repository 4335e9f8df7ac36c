"""Every generated command's --help: its analysis spec's docstring (one text for
``help(bs.XSpec)`` and ``--help``), a --json paragraph from the result's fields, examples."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

from basinscope.cli import main as cli_main
from basinscope.cli.generate import Command
from basinscope.result import _stored

COMMANDS = [
    c
    for module, attr, _ in cli_main.COMMANDS.values()
    if isinstance(c := getattr(importlib.import_module(module), attr), Command)
]


def test_every_command_is_registered_once():
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names)) == 19
    assert set(names) <= set(cli_main.COMMANDS)
    assert all(cli_main.COMMANDS[c.name][1] for c in COMMANDS)


@pytest.mark.parametrize("name", list(cli_main.COMMANDS))
def test_the_listed_summary_is_the_start_of_the_commands_own_help(name):
    """`basinscope --help` lists each command without importing it: its summary must be
    the first sentence(s) of the help the command shows itself."""
    summary = cli_main.COMMANDS[name][2]
    help_text = " ".join(inspect.cleandoc(cli_main.load_command(name).help or "").split())
    assert help_text.startswith(summary), (summary, help_text[: len(summary) + 40])
    assert summary.endswith((".", ")", "?"))  # whole sentences, not a cut


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_help_is_the_specs_doc_the_results_fields_and_examples(cli, monkeypatch, cmd):
    monkeypatch.setenv("COLUMNS", "400")  # one paragraph per line: compare whole sentences
    res = cli(cmd.name, "--help")
    assert res.code == 0, res.err
    out = " ".join(res.out.split())
    doc = inspect.getdoc(cmd.about)
    assert doc.splitlines()[0] in out  # the one-line summary of `basinscope --help`
    assert " ".join(doc.split("\n\n")[1].split())[:60] in out  # the definition follows
    fields = [f.name for f in dataclasses.fields(cmd.result) if _stored(f)]
    assert f"JSON (--json): the {cmd.result.kind} result: kind, schema, {', '.join(fields)}." in out
    assert not any(m in out for m in ("``", ":func:", ":class:", ":meth:")), "reST in --help"
    examples = out.split("Examples:", 1)[1]
    assert f"basinscope {cmd.name}" in examples


def test_rich_markup_in_a_docstring_stays_text(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    res = cli("similarity", "--help")
    assert "matrix[i, j] is the centered kernel alignment" in " ".join(res.out.split())


def test_prose_is_reflowed_for_the_terminal_to_wrap(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    res = cli("barrier", "--help")
    line = "f(alpha) is the mean --metric on --split. The barrier is defined by --definition"
    assert any(line in row for row in res.out.splitlines())  # not broken where the doc is
