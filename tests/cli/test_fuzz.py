"""Property: no command line ends in a traceback (issue 11).

Every command of ``basinscope --help`` is run in this process on a tiny, valid base
command line (an MLP, 3 x 3 grids, two steps), with one to three of its options set to
malformed values: 0, negative, NaN, inf, huge and empty numbers, missing files, folders
where files are expected, files of the wrong kind or of another model, broken modules,
bad JSON, bad settings. The options and their kinds come from the commands themselves,
so a new option is fuzzed without editing this file. Whatever happens, the exit status is
0 or 2 and stderr holds no traceback: a user error is one ``error:`` line, a parse error
click's usage message.

Two tests share this: hypothesis draws random combinations (``test_no_command_line_...``,
``test_random_tokens_...``), and a sweep sets every option of every command, one at a time,
to the malformed values of its kind (``test_every_option_...``), so that no option is
left to chance. Deterministic (``derandomize=True``, no example database) and fast (about
40 s on a 2-core machine): each example is a tiny command or fails at its first check; an
example that runs for more than ``EXAMPLE_SECONDS`` fails the test rather than stalling CI.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from basinscope.cli.main import COMMANDS as LISTED
from basinscope.cli.main import load_command
from basinscope.models import build_model, save_weights
from untrusted import evil_checkpoint

EXAMPLE_SECONDS = 30
# more examples for a deeper search on a workstation: BASINSCOPE_FUZZ_EXAMPLES=200
EXAMPLES_PER_COMMAND = int(os.environ.get("BASINSCOPE_FUZZ_EXAMPLES", "8"))
COMMANDS = {name: load_command(name) for name in LISTED}


class _TooSlow(BaseException):
    """Raised by the timer: not an Exception, so the CLI's boundary does not catch it."""


# -- the files a careless or hostile user passes ------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, run_cli):
    d = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = np.arange(40) % 10
    np.savez(d / "labels12.npz", x=x, y=np.where(y == 3, 12, y))
    np.savez(d / "rgb.npz", x=rng.random((40, 3, 5, 5)).astype(np.float32), y=y)
    np.savez(d / "nan.npz", x=np.where(x > 0.5, np.nan, x), y=y)
    np.savez(d / "empty.npz", x=x[:0], y=y[:0])
    (d / "text.npz").write_text("not an archive")
    (d / "notes.txt").write_text("not weights")
    (d / "broken.safetensors").write_bytes(b"\x00\x01 truncated")
    (d / "folder").mkdir()
    (d / "bad.toml").write_text("grid = [1, 2\n")
    (d / "unknown.toml").write_text("bogus = 1\n")
    (d / "binary.toml").write_bytes(b"\x80\xba\x00")
    (d / "bs_fuzz_broken.py").write_text("def f(:\n")
    (d / "fake-study").mkdir()
    (d / "fake-study" / "study.json").write_text('{"study": "rotated-digits"}')
    (d / "fake-study" / "results.json").write_text('{"config": {}}')
    evil, _ = evil_checkpoint(d)
    paths = {
        "a": save_weights(build_model("mlp", init_seed=0), d / "a.safetensors"),
        "b": save_weights(build_model("mlp", init_seed=1), d / "b.safetensors"),
        "lenet": save_weights(build_model("lenet", init_seed=0), d / "lenet.safetensors"),
        "evil": evil,
        "dir": d / "folder",
        "missing": d / "missing.safetensors",
        "text": d / "notes.txt",
        "broken": d / "broken.safetensors",
        "npz": d / "rgb.npz",
    }
    res = run_cli(
        "surface",
        "--model",
        "mlp",
        "--xrange",
        "-1:1:3",
        "--yrange",
        "-1:1:3",
        "--splits",
        "train",
        "--strategy",
        "loop",
        "--no-plot",
        "--no-progress",
        "--out",
        d / "surface-run",
    )
    assert res.code == 0, res.err
    sys.path.insert(0, str(d))
    yield d, paths
    sys.path.remove(str(d))
    sys.modules.pop("bs_fuzz_broken", None)


def _pools(d: Path, p: dict[str, Path]) -> dict[str, list]:
    s = lambda *xs: [str(x) for x in xs]  # noqa: E731
    weights = s(p["lenet"], p["evil"], p["dir"], p["missing"], p["text"], p["broken"], p["npz"], "")
    return {
        "int": ["0", "-1", "-7", "1000000000000", "99999999999999999999", "1.5", "abc", "", "2"],
        "float": ["nan", "inf", "-inf", "-1", "0", "1e308", "1e-320", "abc", "", "0.5"],
        "seed": ["-1", "9223372036854775808", "99999999999999999999", "x", "3"],
        "range": [
            "",
            "abc",
            "1:0:3",
            "0:1:0",
            "nan:1:3",
            "0:1e999:3",
            "0:1:1000000",
            "0:1",
            "-1:1:2",
            "0:0:1",
        ],
        "ints": ["", "a,b", "-1", "0,99999999999999999999", "1,2", ",,"],
        "text": ["bogus", "", "../x", "<script>", "a,b", " "],
        "split": ["", "valid", "../x", "train,../x", " , ", "test"],
        "model": [
            "",
            "nosuch",
            "lenet",
            "basinscope.models:",
            "os:getcwd",
            "bs_fuzz_broken:f",
            "a:b:c",
            "nosuch_module_zz:f",
        ],
        "kwargs": [
            "{",
            "[]",
            '{"hidden": [0]}',
            '{"nope": 1}',
            '{"hidden": [1000000]}',
            '"x"',
            "null",
            '{"num_classes": 3}',
        ],
        "data": [
            "cifar",
            "",
            *s(d / "labels12.npz", d / "rgb.npz", d / "nan.npz"),
            *s(d / "empty.npz", d / "text.npz", p["dir"], d / "missing.npz"),
            "nosuch_module_zz:x",
            "os:sep",
            "bs_fuzz_broken:x",
            "basinscope.data:nope",
        ],
        "weights": weights,
        "trajectory": weights,
        "save": s(p["text"] / "x.safetensors", d / "x.txt", p["dir"]),
        "out": s(p["text"], p["text"] / "sub", p["broken"]),
        "config": s(d / "bad.toml", d / "unknown.toml", d / "binary.toml", p["dir"], d / "no.toml"),
        "set": [
            "grid=1",
            "gird=5",
            "grid",
            "=3",
            "batch_size=0",
            "finetune_lr=nan",
            "angles=[inf]",
            "width=0",
            "copies=100000",
            "hessian_examples=0",
            'surgical_blocks=["nosuch"]',
            "pretrain_steps=-1",
            "angles=ninety",
            "angles=[]",
            "strategies=[]",
            "lr=inf",
            "hidden=[0]",
            "span=-1",
            "depths=[7]",
        ],
        "run_dir": s(p["dir"], p["missing"], p["text"], d / "fake-study", d / "surface-run", ""),
        "study": ["", "rotated-digit", "nosuch", "../x"],
    }


_KIND_BY_NAME = {
    "--out": "out",
    "--model": "model",
    "--model-b": "model",
    "--model-kwargs": "kwargs",
    "--model-kwargs-b": "kwargs",
    "--data": "data",
    "--weights": "weights",
    "--to": "weights",
    "--init": "weights",
    "--pretrained": "weights",
    "--plane": "weights",
    "--pca": "trajectory",
    "--trajectory": "trajectory",
    "--save": "save",
    "--config": "config",
    "--set": "set",
    "--xrange": "range",
    "--yrange": "range",
    "--alphas": "range",
    "--sigmas": "range",
    "--k": "ints",
    "--child-seeds": "ints",
    "--milestones": "ints",
    "--checkpoint-steps": "ints",
    "--splits": "split",
    "--split": "split",
    "--eval-split": "split",
    "--base": "weights",
    "--task-data": "data",
    "--val-data": "data",
    "--val-split": "split",
}


def _options(name: str) -> dict[str, str | None]:
    """Each option of command ``name`` -> the kind of values it gets (None: a flag)."""
    cmd = COMMANDS[name]
    hints = typing.get_type_hints(cmd.callback)
    out: dict[str, str | None] = {}
    for param in cmd.params:
        flag, hint = param.opts[0], hints[param.name]
        if not flag.startswith("--"):
            out[param.name] = "run_dir" if name in ("plot", "report") else "study"
            continue
        if hint is bool:
            for f in (*param.opts, *getattr(param, "secondary_opts", ())):
                out[f] = None
            continue
        scalar = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
        if "seed" in flag and flag != "--child-seeds":
            kind = "seed"
        elif scalar is int:
            kind = "int"  # e.g. sharpness --directions: a count there
        elif flag in _KIND_BY_NAME:
            kind = _KIND_BY_NAME[flag]
        elif flag == "--directions":
            kind = "weights"
        else:
            kind = "float" if scalar is float else "text"
        out[flag] = kind
    if name == "demo":  # demo has no --show-config: only settings that fail stay fast
        out = {k: v for k, v in out.items() if k in ("--set", "--config", "--out", "--json")}
    if name == "study":
        out.pop("--show-config")  # never run a whole study
    return out


def _base(name: str, p: dict[str, Path], d: Path) -> list[str]:
    """A tiny, valid command line for each command (fast when no mutation stops it)."""
    m, q = ["--model", "mlp"], ["--no-progress"]
    a, b = str(p["a"]), str(p["b"])
    two = ["--weights", a, "--weights", b]
    return {
        "train": ["train", *m, "--steps", "2", "--batch-size", "32", *q],
        "interpolate": [
            "interpolate",
            *m,
            "--xrange",
            "0:1:3",
            "--splits",
            "train",
            "--strategy",
            "loop",
            "--no-plot",
            *q,
        ],
        "surface": [
            "surface",
            *m,
            "--xrange",
            "-1:1:3",
            "--yrange",
            "-1:1:3",
            "--splits",
            "train",
            "--strategy",
            "loop",
            "--no-plot",
            *q,
        ],
        "hessian": [
            "hessian",
            *m,
            "--subset",
            "32",
            "--top",
            "1",
            "--bottom",
            "0",
            "--trace",
            "none",
            "--max-iter",
            "8",
            "--tol",
            "0.1",
            "--xrange",
            "-1:1:2",
            "--yrange",
            "-1:1:2",
            *q,
        ],
        "sharpness": [
            "sharpness",
            *m,
            "--subset",
            "32",
            "--measure",
            "average",
            "--samples",
            "2",
            "--steps",
            "1",
            "--restarts",
            "1",
            "--directions",
            "1",
            *q,
        ],
        "barrier": [
            "barrier",
            *m,
            *two,
            "--num-points",
            "3",
            "--no-refine",
            "--strategy",
            "loop",
            *q,
        ],
        "instability": [
            "instability",
            *m,
            "--k",
            "0",
            "--total-steps",
            "2",
            "--num-points",
            "3",
            "--batch-size",
            "32",
            *q,
        ],
        "basin": ["basin", *m, *two, "--delta", "0.5", "--samples", "2", "--pairs", "2", *q],
        "curve": [
            "curve",
            *m,
            *two,
            "--steps",
            "2",
            "--points",
            "3",
            "--splits",
            "train",
            "--strategy",
            "loop",
            *q,
        ],
        "align": [
            "align",
            *m,
            *two,
            "--num-points",
            "3",
            "--max-iter",
            "2",
            "--strategy",
            "loop",
            *q,
        ],
        "ensemble": [
            "ensemble",
            *m,
            "--method",
            "independent",
            "--members",
            "2",
            "--steps",
            "2",
            "--num-points",
            "3",
            *q,
        ],
        "calibrate": ["calibrate", *m, *two, "--val-split", "train", "--bins", "5", *q],
        "similarity": ["similarity", *m, *two, "--max-examples", "64", *q],
        "distance": ["distance", *m, *two, "--mistakes", *q],
        "rewind": ["rewind", *m, "--weights", a, "--init", b, "--strategy", "loop", *q],
        "criticality": [
            "criticality",
            *m,
            "--weights",
            a,
            "--init",
            b,
            "--alphas",
            "0:1:2",
            "--sigmas",
            "0.1:1:2",
            "--samples",
            "2",
            "--strategy",
            "loop",
            *q,
        ],
        "finetune": ["finetune", *m, "--weights", a, "--steps", "2", *q],
        "merge": ["merge", *m, "--base", a, "--weights", b, "--val-data", "digits", *q],
        "merge-decomposition": [
            "merge-decomposition",
            *m,
            "--base",
            a,
            "--weights",
            b,
            "--task-data",
            "digits",
            "--examples",
            "32",
            *q,
        ],
        "plot": ["plot", str(d / "surface-run"), "--kind", "contour", "--format", "png"],
        "study": ["study", "rotated-digits", "--show-config"],
        "demo": ["demo", "--set", "grid=1", *q],
        "report": ["report", str(d / "fake-study")],
    }[name]


def _set(args: list[str], flag: str, value: str | None, positional: bool) -> list[str]:
    """``args`` with ``flag`` set to ``value`` (replacing its first value if present)."""
    if positional:
        return [args[0], value, *args[2:]] if len(args) > 1 else [*args, value]
    if value is None:
        return [*args, flag]
    if flag in args:
        i = args.index(flag)
        return [*args[: i + 1], value, *args[i + 2 :]]
    return [*args, flag, value]


_counter = itertools.count()


@st.composite
def _command_lines(draw, name: str, files) -> list[str]:
    d, p = files
    pools, options = _pools(d, p), _options(name)
    args = _base(name, p, d)
    for flag in draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=3)):
        kind = options[flag]
        value = None if kind is None else draw(st.sampled_from(pools[kind]))
        args = _set(args, flag, value, positional=not flag.startswith("--"))
    if "--out" in options and "--out" not in args:
        args += ["--out", str(d / "runs" / f"{name}-{next(_counter)}")]
    if draw(st.integers(0, 9)) == 0:
        args.append(draw(st.sampled_from(["--no-such-flag", "extra-argument", "-x"])))
    return args


def _check(res, args) -> None:
    shown = " ".join(args)
    assert "Traceback" not in res.err, f"basinscope {shown}\n{res.err}"
    assert res.code in (0, 2), f"basinscope {shown}: exit status {res.code}\n{res.err}"
    if res.code == 2 and res.err.startswith("error: "):
        assert res.err.count("\n") == 1, f"basinscope {shown}: more than one line\n{res.err}"
    elif res.code == 2:  # click's parse error ("Error: ...", with its usage) or the help
        assert "Error:" in res.err or "Usage:" in res.out, f"basinscope {shown}\n{res.err}"


def _run(run_cli, folder: Path, args: list[str]):
    """One example in ``folder`` (a study's default --out), failing if it runs too long.

    The example's timer replaces pytest-timeout's (also SIGALRM) and gives back what was
    left of it afterwards.
    """

    def too_slow(*_):
        raise _TooSlow(f"basinscope {' '.join(args)} ran for more than {EXAMPLE_SECONDS} s")

    old_dir, old_handler = os.getcwd(), signal.signal(signal.SIGALRM, too_slow)
    os.chdir(folder)
    t0 = time.monotonic()
    outer, _ = signal.setitimer(signal.ITIMER_REAL, EXAMPLE_SECONDS)
    try:
        return run_cli(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - t0), 1e-3))
        os.chdir(old_dir)


def test_every_command_is_fuzzed():
    assert sorted(COMMANDS) == sorted(
        [
            "train",
            "interpolate",
            "surface",
            "hessian",
            "sharpness",
            "barrier",
            "instability",
            "basin",
            "curve",
            "align",
            "ensemble",
            "calibrate",
            "similarity",
            "distance",
            "rewind",
            "criticality",
            "finetune",
            "merge",
            "merge-decomposition",
            "plot",
            "study",
            "report",
            "demo",
        ]
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_no_command_line_ends_in_a_traceback(name, files, run_cli):
    d = files[0]
    (d / "runs").mkdir(exist_ok=True)

    @settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=EXAMPLES_PER_COMMAND,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(args=_command_lines(name, files))
    def check(args):
        _check(_run(run_cli, d / "runs", args), args)

    check()


def _sweep_values(d: Path, p: dict[str, Path]) -> dict[str, list[str]]:
    """For each kind, values that a careful program refuses (the huge ones: caps)."""
    return {
        "int": ["-1", "99999999999999999999"],
        "float": ["nan", "-inf"],
        "seed": ["-1", "99999999999999999999"],
        "range": ["abc", "0:1:0"],
        "ints": ["a,b"],
        "text": ["bogus"],
        "split": ["../x"],
        "model": ["nosuch"],
        "kwargs": ["{"],
        "data": [str(d / "text.npz")],
        "weights": [str(p["missing"])],
        "trajectory": [str(p["missing"])],
        "save": [str(p["text"] / "x.safetensors")],
        "out": [str(p["text"])],
        "config": [str(d / "bad.toml")],
        "set": ["grid=1"],
        "run_dir": [str(p["missing"])],
        "study": ["nosuch"],
    }


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_with_malformed_values(name, files, run_cli):
    """Every option of every command (flags aside) once with each malformed value of its
    kind, on the tiny base command line: the sweep the random examples may miss."""
    d, p = files
    values = _sweep_values(d, p)
    (d / "sweep").mkdir(exist_ok=True)
    for flag, kind in _options(name).items():
        if kind is None:
            continue
        for value in values[kind]:
            args = _set(_base(name, p, d), flag, value, positional=not flag.startswith("--"))
            if flag != "--out" and "--out" in _options(name):
                args += ["--out", str(d / "sweep" / f"{name}-{next(_counter)}")]
            _check(_run(run_cli, d / "sweep", args), args)


_TOKENS = [
    "--model",
    "mlp",
    "--steps",
    "0",
    "--out",
    "--xrange",
    "nan",
    "--json",
    "--",
    "-1",
    "",
    "--weights",
    "--set",
    "x=",
    "--help-me",
    "train",
    "10**9",
    "\x00",
]


@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(sorted(COMMANDS)), tokens=st.lists(st.sampled_from(_TOKENS), max_size=6)
)
def test_random_tokens_after_a_command_line(name, tokens, files, run_cli):
    """Token soup appended to a tiny command line: parsed or refused, never a traceback."""
    d, p = files
    args = [*_base(name, p, d), *tokens]
    (d / "tokens").mkdir(exist_ok=True)
    _check(_run(run_cli, d / "tokens", args), args)
