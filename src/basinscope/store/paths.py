"""Names that become parts of paths.

A split name, a metric name or a label given by the user may end up as a file or folder
name inside a run folder (journal arrays, figures, tensors). :func:`safe_component` is the
one gate every such name passes: it returns the name unchanged when it can be used as a
single path component and refuses it otherwise, before anything is written.
"""

from __future__ import annotations

__all__ = [
    "CURVE",
    "DEFAULT_ROOT",
    "FIGURES",
    "JOURNAL",
    "MANIFEST",
    "MAX_COMPONENT_BYTES",
    "MODELS",
    "OLD_STAGE",
    "OLD_STUDY",
    "REPORT",
    "RESULT",
    "STAGES",
    "TENSORS",
    "TRAJECTORY",
    "WEIGHTS",
    "default_run_dir",
    "digest",
    "run_name",
    "safe_component",
]

# -- the names inside a run folder (every module takes them from here) ----------------------
MANIFEST = "manifest.json"  # format, kind, schema, spec, fingerprints, versions, status
RESULT = "result.json"  # Result.to_dict(), what --json prints
TENSORS = "tensors"  # parameter dicts as <name>.safetensors
FIGURES = "figures"  # PNG/PDF/HTML figures
JOURNAL = "journal"  # per-point values of a resumable computation
REPORT = "report.html"  # the self-contained report of a run
# a train run's files, which users pass on to other commands (--weights, --pca, --trajectory)
WEIGHTS = "model.safetensors"  # the model a command produced (train: the final weights; align: B aligned to A)
TRAJECTORY = "trajectory.safetensors"  # the checkpoints by step (training.trajectory)
DEFAULT_ROOT = "basinscope-runs"  # where commands write when --out is not given
# weights a command writes beside its result, for other tools to read
MODELS = "models"  # several models a command produced, <name>.safetensors (ensemble members, fine-tuned models)
CURVE = "curve.safetensors"  # a trained curve (basinscope.analyses.load_curve)
# a study's output root (--out): the shared stage folders beside the studies' run folders
STAGES = "stages"  # <root>/stages/<stage>-<digest of its settings>/
# files of the layouts before run-folder format 2, only to recognise (and refuse) old folders
OLD_STUDY = "study.json"  # a study run folder (with results.json) of basinscope 0.1 / early 0.2
OLD_STAGE = "settings.json"  # a study's stage folder (with result.json, no manifest.json)


def digest(obj: object, n: int = 10) -> str:
    """The first ``n`` hex digits of the sha256 of ``obj`` as canonical JSON (sorted keys):
    the ``<digest>`` of a folder name (:func:`run_name`)."""
    import hashlib
    import json

    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def run_name(name: str, digest: str) -> str:
    """``<name>-<digest>``: the one way every run folder is named (a command's default
    folder, a study's run folder, each stage of a study), so that running the same thing
    again finds its folder."""
    return f"{safe_component(name, 'run name')}-{digest}"


def default_run_dir(command: str, spec_digest: str) -> str:
    """``basinscope-runs/<command>-<digest of the spec>``: every command and study stage
    names its folder this one way (a rerun of the same command finds its folder)."""
    return f"{DEFAULT_ROOT}/{run_name(command, spec_digest)}"


MAX_COMPONENT_BYTES = 200  # well under the 255 bytes of common file systems, room for suffixes


def safe_component(name: str, what: str = "name") -> str:
    """``name`` if it is usable as one file or folder name inside a run folder.

    Refused, with a :class:`~basinscope.errors.BasinscopeError` naming ``what``: anything
    that is not a non-empty string, a path separator (``/`` or ``\\``), a NUL or other
    control character, a leading dot (``.``, ``..``, hidden files), surrounding spaces,
    and names longer than 200 bytes in UTF-8.
    """
    from basinscope.errors import BasinscopeError

    def refuse(why: str) -> BasinscopeError:
        return BasinscopeError(
            f"{what} {name!r} cannot be used: it becomes a file name in the run folder, and "
            f"{why}. Use letters, digits, '-', '_' (e.g. 'test_rot90')"
        )

    if not isinstance(name, str) or not name:
        raise refuse("it is empty or not a string")
    if "/" in name or "\\" in name:
        raise refuse("it contains a path separator ('/' or '\\')")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise refuse("it contains a NUL or another control character")
    if name.startswith("."):
        raise refuse("it starts with a dot ('.', '..' and hidden names are not allowed)")
    if name != name.strip():
        raise refuse("it starts or ends with a space")
    if len(name.encode("utf-8")) > MAX_COMPONENT_BYTES:
        raise refuse(f"it is longer than {MAX_COMPONENT_BYTES} bytes")
    return name
