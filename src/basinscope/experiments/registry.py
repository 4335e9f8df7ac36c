"""Studies as registered, frozen configurations.

A study is a frozen dataclass of settings (each study's file lists them at the top), a
``run`` function that computes everything into a run folder, and a ``report`` function
that rebuilds the report from what ``run`` stored. Settings are changed by ``--set
key=value`` and by a TOML file, never by editing code::

    cfg = make_config("rotated-digits", quick=True, sets=["angles=[0, 60]"])
    result = run_study("rotated-digits", "basinscope-runs", cfg)

Layout under the output root (open_lth style; every folder is a run folder of format 2,
:mod:`basinscope.store.results`, with names from :mod:`basinscope.store.paths`)::

    <root>/stages/<stage>-<hash of its settings>/    shared by every run of every study:
                                                       manifest.json, result.json, ...
    <root>/<study>-<hash of the configuration>/       manifest.json (kind "study"),
                                                       result.json (a StudyResult),
                                                       report.html, figures/ (PNG and PDF)

``basinscope.load(folder)`` returns a stage's result and a study's
:class:`~basinscope.experiments.results.StudyResult`. Folders of the layouts before format 2
(``study.json``, ``settings.json``) are refused with the version and the fix.

A stage's settings include the folder names of the stages it depends on, so running a
study again reuses every finished stage, an interrupted study resumes, and a changed
setting recomputes only the stages that depend on it. A run folder and every stage being
computed are locked (:mod:`basinscope.store.lock`): a second process aimed at them stops
with a message naming the holder, or waits with ``wait=True`` (``--wait``).

Independent stages (those whose upstream stages are finished) are handed together to
:meth:`StudyContext.run_stages`, which runs them on the current executor: in order in this
process, or as Ray tasks in parallel (``--executor ray``, ``run_study(executor=...)``).
Folders, hashes and results are the same with either.

Where a study computes is two settings every built-in study has: ``device`` (cpu, cuda,
cuda:N or mps; ``--device``) and ``dtype``, the precision of its evaluations (float32 or
float64; ``--dtype``). They are checked before anything runs (an absent device is refused
with the fix), recorded in the run's manifest and result (``config``) and in the settings
of every stage they apply to, and count in a folder's digest only when they are not the
defaults (:func:`basinscope.experiments.stages.identity`): a run on the CPU in float32 has
the folders it had before they were settings. Measurements a study pins to float64 (Hessian
eigenvalues and traces, CKA) stay in float64 whatever ``dtype`` says, and training is in the
model's float32. Fine-tuning, CKA and the curvature maps run on the CPU whatever ``device``
says (their functions take no device yet); each study's ``precision`` definition says where
each of its measurements ran.

Studies pin every choice that would otherwise be made by timing (the engine's vmap/loop
strategy, the Hessian-vector-product method) in their configuration and record it in the
stage results, so two runs of a study give the same numbers: everything in result.json
except the fields named in :data:`VOLATILE_FIELDS` (see :func:`reproducible_part`). On a
GPU this also needs PyTorch's deterministic kernels (``torch.use_deterministic_algorithms``,
which the studies do not switch on): some CUDA kernels add in a varying order.

How many CPU threads torch computes with is not a setting: ``run_study(threads=N)``
(``--threads``; the command line's default is :func:`default_threads`) sets it for the
run, the run's manifest records it (``threads``, as it records the executor), and it is in
no folder's digest, so a study resumes and reuses its stages at any thread count. Every
stage computes with the driver's count (:meth:`StudyContext.run_stages`), and each stage's
manifest records the count it was computed with: float32 training and convolutions add in
an order that depends on it, so a stage computed at another count may differ in its last
bits (float64 measurements agree to rounding). Studies that have a ``threads`` setting
(flatness-vs-batch-size, ensembles-and-width) pin it in their configuration instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

import basinscope
from basinscope._checks import finite_float
from basinscope.errors import BasinscopeError
from basinscope.experiments.results import StudyResult
from basinscope.experiments.stages import StageLog, identity
from basinscope.store import atomic_write_json, lock_folder, paths, waiting

if TYPE_CHECKING:
    from basinscope.engine.executors import Executor

__all__ = [
    "ABOUT",
    "DEMO",
    "STUDIES",
    "StageCall",
    "Study",
    "StudyContext",
    "build_report",
    "check_config",
    "config_hash",
    "default_threads",
    "get_study",
    "list_studies",
    "load_run",
    "make_config",
    "rebuild_report",
    "register",
    "reproducible_part",
    "run_study",
    "study_spec",
]

ABOUT = """Run a registered study: every stage is stored under --out/stages (folders
named by a hash of their settings) and reused when a study runs again, so an
interrupted study resumes and a changed setting recomputes only what depends on
it. The run folder --out/<study>-<hash of the configuration> gets report.html
(self-contained, works offline), figures/ (PNG and PDF), result.json (every
number in the report) and manifest.json (the settings and versions).

Settings: the study's defaults, then --quick's reductions (then --smoke's: every
stage and figure in seconds, numbers too small to mean anything), then --config
FILE.toml (keys at the top level or in a [<study>] table), then each --set
key=value (TOML values: 3, 0.1, true, "ft", [0, 15, 35]), then --device and
--dtype (the settings device and dtype: where the stages compute, and the
precision of their evaluations; Hessians stay in float64). `basinscope study
--list` shows the studies; `basinscope study NAME --show-config` their settings."""
DEMO = "rotated-digits"  # the study `basinscope demo` runs


@dataclass(frozen=True)
class StageCall:
    """One stage for :meth:`StudyContext.run_stages`: the ``folder`` it computes or reuses,
    and ``compute(log)``, which computes or reuses it (a stage function of
    :mod:`basinscope.experiments.stages` called with ``log=log``) and returns its value.

    ``compute`` may run in another process (a Ray task), so it must be picklable by
    cloudpickle and must not use the study's context (its log, ``say``): it gets what it
    needs (models, data, settings, the stages root) in its closure. ``log`` is where the
    stage's row goes (default: the study's log)."""

    folder: Path
    compute: Callable[[StageLog], Any]
    log: StageLog | None = None


@dataclass(frozen=True)
class StudyContext:
    """What a study's ``run`` gets besides its configuration."""

    run_dir: Path  # the run folder: manifest.json, result.json, report.html, figures/
    stages_root: Path  # shared stage folders
    log: StageLog
    progress: bool = False
    say: Callable[[str], None] = print

    def run_stages(self, stages: Sequence[StageCall], *, what: str = "") -> list[Any]:
        """Compute (or reuse) independent stages on the current executor
        (:func:`basinscope.engine.current_executor`, ``--executor``); their values in order.

        The caller submits together only stages whose upstream stages are finished (the
        folders named in their settings), so the dependency order is that of the stage
        hashes. With :class:`~basinscope.engine.LocalExecutor` they run here, in order, as a
        sequential study would run them; with a
        :class:`~basinscope.engine.ray_executor.RayExecutor` as Ray tasks, in parallel
        (retried on failure, then reported with the stage's folder name). Each stage is
        computed under its folder's lock by the process that runs it; two stages of one call
        that name the same folder (a repeated setting) are never run at once: the repeat
        runs after the first finished, and reuses it. Each stage records itself in a log of
        its own, which comes back with its value; the rows go to the stage's ``log`` (default:
        the study's) in the order of ``stages``, whichever finished first. ``what`` (e.g.
        ``"fine-tuning"``) is said before they start.

        Progress: one line per stage, ``[k/N] <stage folder>`` (`` (reused)`` when it was
        finished before): said as each stage starts when they run here, and as each wave
        ends for another executor (whose tasks run elsewhere)."""
        from basinscope.engine.executors import current_executor

        executor = current_executor()
        local = executor.name == "local"
        if what:
            how = "" if local else f", as {executor.name} tasks"
            self.say(f"{what}: {len(stages)} stage{'s' if len(stages) != 1 else ''}{how}")
        values: list[Any] = [None] * len(stages)
        logs: list[Any] = [None] * len(stages)
        pending = list(range(len(stages)))
        said = [0]  # stages announced so far

        def announce(folder: Path, reused: bool | None = None) -> None:
            said[0] += 1
            if reused is None:
                reused = _finished(folder)
            mark = " (reused)" if reused else ""
            self.say(f"[{said[0]}/{len(stages)}] {folder.name}{mark}")

        while pending:  # one wave per repeat of a folder (almost always one wave)
            wave, later, seen = [], [], set()
            for i in pending:
                key = stages[i].folder.absolute()
                (later if key in seen else wave).append(i)
                seen.add(key)
            tasks = [_StageTask(stages[i].compute, self.run_dir) for i in wave]
            if local:  # said in this process as each starts (never pickled)
                for i, task in zip(wave, tasks, strict=True):
                    task.announce = lambda f=stages[i].folder: announce(f)
            done = executor.run_tasks(
                tasks,
                names=[f"stage {stages[i].folder.name}" for i in wave],
                cpus=tasks[0].threads,  # each computes with the driver's threads: reserve them
            )
            for i, (value, stage_log) in zip(wave, done, strict=True):
                values[i], logs[i] = value, stage_log
                if not local:
                    rows = stage_log.rows()
                    announce(stages[i].folder, bool(rows) and all(r["reused"] for r in rows))
            pending = later
        for stage, stage_log in zip(stages, logs, strict=True):
            (self.log if stage.log is None else stage.log).extend(stage_log)
        return values


def _finished(folder: Path) -> bool:
    """Whether the stage folder holds a finished stage (its manifest says complete)."""
    try:
        return json.loads((folder / paths.MANIFEST).read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


class _StageTask:
    """A :class:`StageCall`'s ``compute`` as an executor's task: ``(value, its log)``.

    The task computes with as many torch threads as the driver has (float32 convolutions
    and their gradients add in an order that depends on the thread count, so a stage
    computed with another count would differ in its last bits from the sequential run's).
    In a Ray task on another machine the stage folders must be where the driver has them
    (a shared filesystem, at the same path): the study's run folder, which the driver
    created, is looked for first, so a node that does not see it fails with the fix
    instead of writing stages nobody reads."""

    def __init__(self, compute: Callable[[StageLog], Any], run_dir: Path) -> None:
        import torch

        self.compute = compute
        self.run_dir = run_dir
        self.threads = torch.get_num_threads()
        self.announce: Callable[[], None] | None = None  # the progress line (local only)

    def __call__(self) -> tuple[Any, StageLog]:
        import torch

        if self.announce is not None:
            self.announce()
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(before)

    def _run(self) -> tuple[Any, StageLog]:
        if not self.run_dir.is_dir():
            import os
            import socket

            raise BasinscopeError(
                f"a study stage runs on {socket.gethostname()} (in {os.getcwd()}), where the "
                f"study's run folder {str(self.run_dir)!r} does not exist: the stage folders "
                "must be on a filesystem every node of the Ray cluster sees at the same path. "
                "Pass --out as an absolute path on a shared filesystem, or run the study with "
                "--executor local"
            )
        log = StageLog()
        return self.compute(log), log


@dataclass(frozen=True)
class Study:
    """A registered study.

    ``run(cfg, ctx) -> results`` computes (reusing finished stages) and returns a
    JSON-ready dict; ``report(run_dir, results) -> Path`` writes ``report.html`` and the
    figures from that dict and the stage folders it names, without recomputing anything.
    ``summary`` is one line (``basinscope study --list``); ``about`` a paragraph of what it
    computes (the help of ``basinscope demo`` for the demo's study).
    """

    name: str
    summary: str
    config: type
    run: Callable[[Any, StudyContext], dict[str, Any]]
    report: Callable[[Path, dict[str, Any]], Path]
    quick: dict[str, Any]  # overrides of the reduced version (--quick)
    # overrides of the smoke version (--smoke), applied after ``quick``: seconds, every stage
    # and figure of the study, numbers too small to mean anything (tests and pipeline checks)
    smoke: dict[str, Any] = dataclasses.field(default_factory=dict)
    about: str = ""


STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
    if not (dataclasses.is_dataclass(study.config) and study.config.__dataclass_params__.frozen):
        raise TypeError(f"study {study.name!r}: config must be a frozen dataclass")
    STUDIES[study.name] = study
    return study


BUILTIN = (
    "rotated_digits",
    "batch_size",
    "skip_connections",
    "merging",
    "ensembles_and_width",
    "lr_and_width",
    "minefield",
    "double_descent",
    "dln_saddles",
    "relu_conservation",
    "continual_shifts",
    "teacher_student",
    "certified_training",
    "transfer_methods",
)


def _load_builtin() -> None:
    # importing a study module registers it
    import importlib

    for module in BUILTIN:
        importlib.import_module(f"basinscope.experiments.{module}")


def list_studies() -> list[Study]:
    _load_builtin()
    return [STUDIES[k] for k in sorted(STUDIES)]


def get_study(name: str | None) -> Study:
    """The registered study ``name``; no name or an unknown one is refused with the names."""
    _load_builtin()
    if name is None:
        raise BasinscopeError(
            f"which study? Give its name (registered: {', '.join(sorted(STUDIES))}), e.g. "
            "`basinscope study rotated-digits`"
        )
    if name not in STUDIES:
        near = difflib.get_close_matches(name, list(STUDIES), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise BasinscopeError(
            f"unknown study {name!r}; registered studies: {', '.join(sorted(STUDIES))}.{hint} "
            "(`basinscope study --list` describes them)"
        )
    return STUDIES[name]


# -- configurations ------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}s"
    if _optional(tp) is not None:
        return f"{_type_name(_optional(tp))} or none"
    return getattr(tp, "__name__", str(tp))


def _optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _coerce(key: str, value: Any, tp: Any, where: str) -> Any:
    """``value`` (parsed from TOML) as the field's type, or a clear error."""

    original = value

    def bad() -> BasinscopeError:
        return BasinscopeError(
            f"{where}: setting {key!r} expects {_type_name(tp)}, got {original!r}"
            + (
                f" (e.g. {key}=[0, 15, 35])"
                if typing.get_origin(tp) is tuple
                else f" (e.g. {key}={_example(tp)})"
            )
        )

    inner = _optional(tp)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, inner, where)
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            value = [_parse_value(v.strip()) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        elem = typing.get_args(tp)[0]
        try:
            return tuple(_coerce(key, v, elem, where) for v in value)
        except BasinscopeError:
            raise bad() from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad()
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise bad()
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise bad()
        return str(value)
    raise bad()


def _example(tp: Any) -> str:
    return {int: "3", float: "0.05", bool: "true", str: "name"}.get(tp, "...")


def _parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax (``3``, ``0.1``, ``true``, ``[0, 15]``, ``"ft"``), or
    else the plain text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _check_keys(cls: type, keys: Sequence[str], where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for k in keys:
        if k not in names:
            near = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise BasinscopeError(
                f"{where}: unknown setting {k!r}{hint} Settings of this study: {', '.join(names)}"
            )


def make_config(
    name: str,
    *,
    quick: bool = False,
    smoke: bool = False,
    toml: str | Path | None = None,
    sets: Sequence[str] = (),
    device: str | None = None,
    dtype: str | None = None,
) -> Any:
    """The study's configuration: defaults, then ``quick`` overrides, then ``smoke``
    overrides (which imply ``quick``), then the TOML file, then each ``key=value`` of
    ``sets`` (later wins), then ``device`` and ``dtype`` when given (the same as
    ``device=...`` and ``dtype=...`` at the end of ``sets``: ``--device``, ``--dtype``)."""
    study = get_study(name)
    types_ = _field_types(study.config)
    values: dict[str, Any] = dict(study.quick) if quick or smoke else {}
    if smoke:
        values.update(study.smoke)
    if toml is not None:
        path = Path(toml)
        if path.is_dir():
            raise BasinscopeError(
                f"--config {str(path)!r} is a folder; pass a TOML file of settings, e.g. my.toml"
            )
        if not path.is_file():
            raise BasinscopeError(f"--config: no such file {str(path)!r} (expected a TOML file)")
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise BasinscopeError(
                f"--config {path}: not valid TOML ({type(e).__name__}: {e}); write settings "
                "as key = value lines, e.g. grid = 31"
            ) from None
        table = table.get(name, table) if isinstance(table.get(name), dict) else table
        where = f"--config {path}"
        _check_keys(study.config, list(table), where)
        values.update({k: _coerce(k, v, types_[k], where) for k, v in table.items()})
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BasinscopeError(
                f"--set expects key=value (e.g. --set finetune_steps=50), got {item!r}"
            )
        _check_keys(study.config, [key], "--set")
        values[key] = _coerce(key, _parse_value(text.strip()), types_[key], "--set")
    for key, value in (("device", device), ("dtype", dtype)):
        if value is not None:
            _check_keys(study.config, [key], f"--{key}")
            values[key] = _coerce(key, value, types_[key], f"--{key}")
    cfg = study.config(**values)
    check_config(cfg)
    return cfg


def check_config(cfg: Any) -> None:
    """Refuse a configuration before anything runs: every number setting must be finite
    (``nan`` and ``inf`` parse as TOML floats), then the study's own ``check()``."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float):
                default = f.default if f.default is not dataclasses.MISSING else None
                example = list(default) if isinstance(default, tuple) else default
                finite_float(
                    f"setting {f.name!r}",
                    v,
                    fix=f"nan and inf are not settings (the default is {f.name}={example})",
                )
    _check_figure_formats(getattr(cfg, "figure_formats", ("png",)))
    check_placement(cfg)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()
    check_pinned(cfg)


# The precisions a study evaluates in. Mixed precision (bfloat16, float16) is an option of
# the engine and of the commands, but the landscapes, barriers, criticality and sharpness
# the studies call take float32 or float64 only; add them here once they take all of
# basinscope.engine.precision.PRECISIONS.
STUDY_DTYPES = ("float32", "float64")


def check_placement(cfg: Any) -> None:
    """Refuse a ``dtype`` setting a study cannot evaluate in, and a ``device`` that is not
    available here, before anything runs (as :class:`basinscope.spec.EvalOptions` does for
    the commands)."""
    dtype = getattr(cfg, "dtype", None)
    if dtype is not None and dtype not in STUDY_DTYPES:
        from basinscope.engine.precision import PRECISIONS

        why = (
            "mixed precision does not reach the landscapes, barriers and sharpness of a study yet"
            if dtype in PRECISIONS
            else "the precision of the study's evaluations"
        )
        raise BasinscopeError(
            f"dtype {dtype!r}: expected one of {', '.join(STUDY_DTYPES)} ({why}); use "
            "--dtype float32 (the default) or --dtype float64"
        )
    device = getattr(cfg, "device", None)
    if device is None or device == "cpu":
        return
    import torch

    try:
        torch.empty(0, device=device)
    except Exception as e:
        text = " ".join(str(e).split())[:160]
        raise BasinscopeError(
            f"device {device!r} is not available here ({type(e).__name__}: {text}); use "
            "--device cpu (the default), or a device this machine has"
        ) from None
    try:  # the Hessians of every study are float64 (an MPS device has no float64)
        torch.empty(0, device=device, dtype=torch.float64)
    except Exception as e:
        text = " ".join(str(e).split())[:160]
        raise BasinscopeError(
            f"device {device!r} has no float64 ({type(e).__name__}: {text}), which the "
            "study's Hessians (and --dtype float64) need; use --device cpu or a CUDA device"
        ) from None


def _check_figure_formats(formats: Sequence[str]) -> None:
    from matplotlib.figure import Figure

    supported = Figure().canvas.get_supported_filetypes()
    bad = [f for f in formats if f not in supported]
    if bad or not formats:
        raise BasinscopeError(
            f"figure_formats {list(formats)}: expected formats matplotlib writes (e.g. "
            f'["png", "pdf"]; supported: {", ".join(sorted(supported))}), got '
            + (f"unknown {bad}" if bad else "none")
        )


# The choices a study pins instead of timing them (the settings eval_strategy and hvp_method).
PINNED = {
    "eval_strategy": ("loop", "vmap"),  # the engine's; "auto" would time both
    "hvp_method": ("double-backward", "forward-over-reverse", "reverse-over-forward"),  # not "auto"
}


def check_pinned(cfg: Any) -> None:
    """Refuse an ``eval_strategy`` or ``hvp_method`` setting that is not pinned: a choice
    made by timing would make two runs of the study differ."""
    for key, allowed in PINNED.items():
        value = getattr(cfg, key, None)
        if value is not None and value not in allowed:
            raise BasinscopeError(
                f"{key} {value!r}: expected one of {', '.join(allowed)} (a study pins it, so "
                "that two runs give the same numbers; 'auto' would choose by timing)"
            )


def config_dict(cfg: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def study_spec(name: str, cfg: Any) -> dict[str, Any]:
    """A study run's identity, its manifest's ``spec``: the study's name and settings."""
    return {"study": name, "config": config_dict(cfg)}


def config_hash(name: str, cfg: Any) -> str:
    """The digest in the name of the study's run folder, ``<study>-<digest>``: of the study's
    name and settings, ``device`` and ``dtype`` only when they are not the defaults
    (:func:`~basinscope.experiments.stages.identity`)."""
    return paths.digest({"study": name, "config": identity(config_dict(cfg))})


# -- threads -------------------------------------------------------------------------------

#: The most threads :func:`default_threads` gives.
MAX_DEFAULT_THREADS = 4


def default_threads() -> int:
    """The torch CPU threads a study computes with unless told (``--threads``).

    ``OMP_NUM_THREADS`` when it is set to a positive number (the user chose), else the
    number of cores this process may run on (``os.sched_getaffinity``: a container's or
    ``taskset``'s share, not the machine's cores; ``os.cpu_count()`` where there is no
    affinity), at most :data:`MAX_DEFAULT_THREADS`. Why the cap: the studies' models are
    small (LeNets and MLPs on 8x8 digits), so their operations gain little from more than
    a few threads, and OpenMP threads that outnumber the free cores spin-wait against each
    other and against every other process (a demo of three minutes took over two hours on a
    loaded machine with torch's default of one thread per physical core)."""
    import os

    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_THREADS))


def check_threads(name: str, cfg: Any, threads: int | None) -> None:
    """Refuse a thread count that is not a positive number, and one given to a study that
    pins its threads in its settings."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
        raise BasinscopeError(
            f"threads must be a whole number from 1 to 1,024 (torch CPU threads), got "
            f"{threads!r}; e.g. --threads 2"
        )
    pinned = getattr(cfg, "threads", None)
    if pinned is not None and pinned != threads:
        raise BasinscopeError(
            f"study {name!r} sets its threads in its settings (threads={pinned}, part of its "
            f"folders' digest), so --threads {threads} does not apply to it; use --set "
            f"threads={threads} instead"
        )


# -- running and reporting -----------------------------------------------------------------


def run_study(
    name: str,
    root: str | Path,
    cfg: Any = None,
    *,
    progress: bool = False,
    say: Callable[[str], None] = print,
    report: bool = True,
    wait: bool = False,
    executor: Executor | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run study ``name`` with ``cfg`` (default: its defaults) under ``root``.

    Returns the results (also stored in the run folder as a
    :class:`~basinscope.experiments.results.StudyResult`) with ``run_dir``, ``report`` and
    ``stages`` (each stage's folder, whether it was reused, and seconds). With
    ``report=False`` no report or figures are drawn (``report`` is then ``None``);
    :func:`rebuild_report` draws them later from the stored results. The run folder and
    each stage being computed are locked; if another process holds one, this raises
    :class:`~basinscope.store.FolderBusyError`, or waits with ``wait``.

    ``executor`` (``--executor``; default: the current one,
    :func:`~basinscope.engine.current_executor`), e.g. ``RayExecutor(workers=4)``, runs the
    study's independent stages (:meth:`StudyContext.run_stages`) and the chunks of the
    stages the driver computes itself; it is closed when the study ends. It changes where,
    never what: the configuration, the folders' digests and the results are the same with
    any executor. The run's manifest records it (``executor``).

    ``threads`` (``--threads``): the torch CPU threads the study computes with (restored
    when it ends; default: the current count, ``torch.get_num_threads()``). Like the
    executor it is recorded in the manifest (``threads``) and is in no digest; see the
    module's documentation for what it may change (the last bits of float32 training).
    """
    from basinscope.engine.executors import use_executor
    from basinscope.store.results import old_layout

    study = get_study(name)
    cfg = cfg if cfg is not None else study.config()
    check_config(cfg)
    check_threads(name, cfg, threads)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise BasinscopeError(
            f"the output root {str(root)!r} is a file, not a folder: pass a folder (--out)"
        )
    run_dir = root / paths.run_name(name, config_hash(name, cfg))
    old = old_layout(run_dir)
    if old is not None:
        raise old
    with use_executor(executor) as runner, waiting(wait), _torch_threads(threads):
        with lock_folder(run_dir, what="study run folder", say=say):
            return _run_locked(study, cfg, root, run_dir, progress, say, report, runner)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch computes with ``threads`` CPU threads in the block (None: as it does)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_threads(cfg: Any) -> int:
    """The torch threads the study's stages compute with: its ``threads`` setting where it
    has one (it sets them itself), else the driver's."""
    import torch

    pinned = getattr(cfg, "threads", None)
    return int(pinned) if pinned is not None else torch.get_num_threads()


def _run_locked(
    study: Study, cfg: Any, root: Path, run_dir: Path, progress, say, report: bool, runner
) -> dict:
    from basinscope.store.results import FORMAT
    from basinscope.store.run import versions

    name, spec = study.name, study_spec(study.name, cfg)
    manifest = {"format": FORMAT, "kind": "study", "spec": spec, "versions": versions()}
    manifest.update(created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), status="running")
    manifest["threads"] = threads = _run_threads(cfg)  # how, not what: in no digest
    atomic_write_json(
        run_dir / paths.MANIFEST, manifest, "study manifest", indent=2, sort_keys=True
    )
    log = StageLog()
    ctx = StudyContext(run_dir, root / paths.STAGES, log, progress, say)
    t0 = time.perf_counter()
    results = study.run(cfg, ctx)
    results = {
        "study": name,
        "config": config_dict(cfg),
        "basinscope": basinscope.__version__,
        **results,
        "seconds": round(time.perf_counter() - t0, 1),
        "stages": log.rows(root),
        "run_dir": str(run_dir),
    }
    where = runner.describe()
    _write_results(run_dir, results, where, threads)
    if not report:
        return {**results, "report": None}
    say("writing the report")
    results["report"] = str(study.report(run_dir, results))
    _write_results(run_dir, results, where, threads)
    return results


def _write_results(
    run_dir: Path,
    results: dict[str, Any],
    executor: dict[str, Any] | None = None,
    threads: int | None = None,
) -> None:
    """result.json (a StudyResult), and its digest in the manifest: :func:`rebuild_report`
    tells an edited result.json (the user's to fix) from one as written (a report that
    fails is a bug)."""
    from basinscope.store import save

    result = StudyResult(results)
    # the bytes store.save writes (json.dumps(to_dict(), indent=1)); checked on reading
    text = json.dumps(result.to_dict(), indent=1)
    extra: dict[str, Any] = {"results_sha256": hashlib.sha256(text.encode()).hexdigest()}
    if executor is not None:  # where the stages ran (not part of the results)
        extra["executor"] = executor
    if threads is not None:  # the torch threads they computed with (neither)
        extra["threads"] = threads
    save(result, run_dir, extra=extra)


def _results_as_written(run_dir: Path) -> bool:
    try:
        meta = json.loads((run_dir / paths.MANIFEST).read_text())
        digest = hashlib.sha256((run_dir / paths.RESULT).read_bytes()).hexdigest()
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("results_sha256") == digest


# Fields of result.json that depend on the machine, the moment or the folder rather than on
# the computation: timings (and the timed trials of strategies), whether a stage was reused
# from an earlier run, and absolute paths. Everything else is reproducible.
VOLATILE_FIELDS = ("seconds", "chunk_seconds", "points_per_second", "trial", "reused")
VOLATILE_FIELDS += ("run_dir", "report")


def reproducible_part(results: Any) -> Any:
    """``results`` without the :data:`VOLATILE_FIELDS` (at any depth): what two runs of the
    same study configuration must agree on exactly."""
    if isinstance(results, dict):
        return {k: reproducible_part(v) for k, v in results.items() if k not in VOLATILE_FIELDS}
    if isinstance(results, list):
        return [reproducible_part(v) for v in results]
    return results


def _read_json(path: Path, run_dir: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BasinscopeError(
            f"{str(path)!r} is not valid JSON ({type(e).__name__}: {e}): it was edited or "
            f"truncated. Run the study again to rewrite it (finished stages are reused): "
            f"`basinscope study <name> --out {run_dir.parent}` with the same settings."
        ) from None


def load_run(run_dir: str | Path) -> tuple[Study, dict[str, Any]]:
    """The study and the stored results of a finished run folder."""
    from basinscope.store import load_manifest

    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)  # refuses a missing folder, and old layouts and formats
    meta, res = run_dir / paths.MANIFEST, run_dir / paths.RESULT
    if manifest.get("kind") != "study":
        raise BasinscopeError(
            f"{str(run_dir)!r} is not a study run folder (its {paths.MANIFEST} says kind "
            f"{manifest.get('kind')!r}); pass a folder that `basinscope study` or `basinscope "
            "demo` wrote, e.g. basinscope-runs/rotated-digits-<hash>"
        )
    spec = manifest.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("study"), str):
        raise BasinscopeError(
            f"{str(meta)!r} does not name its study (expected a 'spec' object with a 'study' "
            f"name, found {_short_json(spec)}): it was edited. Run the study again to rewrite "
            "its run folder (finished stages are reused)."
        )
    if not res.is_file():
        raise BasinscopeError(
            f"{str(run_dir)!r} has no {paths.RESULT}: the study did not finish. Run it again "
            "(finished stages are reused) to complete it."
        )
    results = _read_json(res, run_dir)
    if not isinstance(results, dict):
        raise BasinscopeError(
            f"{str(res)!r} holds {_short_json(results)}, not the JSON object a study writes: it "
            "was edited. Run the study again to rewrite it (finished stages are reused)."
        )
    return get_study(spec["study"]), StudyResult.from_dict(results).results


def _short_json(value: Any) -> str:
    text = json.dumps(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def rebuild_report(run_dir: str | Path, *, wait: bool = False) -> Path:
    """Rewrite ``report.html`` and the figures of a finished run from its stored results
    (under the run folder's lock: see :func:`run_study`).

    A ``result.json`` that was edited or truncated (a missing key, a value of the wrong
    type) is reported as a :class:`BasinscopeError` naming the file and the key. One that is
    as the study wrote it (its digest is in the manifest) lets a failure show as the bug it
    is.
    """
    study, results = load_run(run_dir)
    res = Path(run_dir) / paths.RESULT
    try:
        with lock_folder(run_dir, wait=wait, what="study run folder"):
            return study.report(Path(run_dir), results)
    except BasinscopeError:
        raise
    except Exception as e:
        if _results_as_written(Path(run_dir)):
            raise  # the report cannot read what the study wrote: a bug, with its traceback
        raise _edited(e, study.name, res) from e


def build_report(run_dir: str | Path, *, wait: bool = False) -> Path:
    """Write report.html for a finished run folder from its stored results; nothing is
    recomputed. A study's run folder gets the study's report (from result.json and the
    stage folders); the folder of any other command gets a page with the result's
    definition, every number, its figure, the settings and the inputs' fingerprints."""
    from basinscope.report.run import run_report
    from basinscope.store import load_manifest

    if load_manifest(run_dir).get("kind") == "study":
        return rebuild_report(run_dir, wait=wait)
    return run_report(run_dir)


def _edited(e: Exception, study: str, res: Path) -> BasinscopeError:
    if isinstance(e, KeyError):
        return BasinscopeError(
            f"{str(res)!r} (or a stage folder it names) lacks the key {e.args[0]!r} that the "
            f"{study} report needs: the file was edited or comes from another version of "
            "basinscope. Run the study again to rewrite it (finished stages are reused), then "
            "`basinscope report` works."
        )
    text = " ".join(str(e).split())[:200]
    return BasinscopeError(
        f"{str(res)!r} does not have the structure the {study} report needs "
        f"({type(e).__name__}: {text}): the file was edited or comes from another version "
        "of basinscope. Run the study again to rewrite it (finished stages are reused)."
    )
