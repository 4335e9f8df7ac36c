"""Checks shared by the study tests of ``device`` and ``dtype``: what a stage folder records
about where it computed, and the stage folders basinscope named before they were settings."""

from __future__ import annotations

import json
from pathlib import Path

from basinscope.store import paths

# Stages that compute on the CPU whatever the study's device: the curvature maps.
CPU_ONLY = ("curvature-map",)

# The stage folders of each study's default smoke run, ``run_study(NAME, root,
# make_config(NAME, smoke=True))``, as basinscope named them at commit d20fd4f, before device
# and dtype were settings; and the run folder's digest, ``config_hash(NAME, cfg)``. The
# rotated-digits Hessian stages are left out: their settings hold a fingerprint of the
# rotated images, whose last bits may differ between CPUs (they are checked by the digest of
# their recorded settings instead, :func:`digest_without_placement`).
BEFORE = {
    # rotated-digits: renamed by issue 19's science (seeds, independent random starts,
    # bootstrap CIs, a log-spaced sigma grid); seed 0's pre-training, fine-tuning, lines and
    # surfaces keep the names they had at d20fd4f (the first 8 finetune folders, line-*,
    # surface-*); issue 17's Definition 3.1 basin tests added settings (a new run-folder
    # digest) and two basin-* stages, every earlier folder unchanged
    "rotated-digits": (
        "89184c4de7",
        [
            *("pretrain-339b034cb5", "pretrain-e17b9cf8c2", "finetune-8fdf7c9e8c"),
            *("finetune-1a87793df6", "finetune-1d875bdb76", "finetune-e46428a48f"),
            *("finetune-9bd2ce0ddf", "finetune-b6c836c078", "finetune-c1993af7b7"),
            *("finetune-b3341ac5b0", "finetune-77b305956d", "finetune-30852acfe7"),
            *("finetune-2bbb763b9a", "finetune-218348527e", "finetune-8ca83a5846"),
            *("finetune-f8ab9baab7", "finetune-62d2450762", "finetune-979a53ff00"),
            *("line-c87de981b9", "line-cf7d992852", "surface-9bb6c97ded"),
            *("surface-52b805c062", "connectivity-75bffe58f6", "similarity-3d0cd2d9f1"),
            *("criticality-41166d750a", "criticality-20dfc62506", "connectivity-a2492b7b38"),
            *("basin-0dfa98a8a7", "basin-771c21bb6e"),
        ],
    ),
    "flatness-vs-batch-size": (
        "2e6e5a317a",
        [
            *("train-697c38f9fc", "evaluate-952ec30454", "hessian-6345540055"),
            *("sharpness-c5b624384f", "train-ea48f841a1", "evaluate-942555ee63"),
            *("hessian-c8ab103559", "sharpness-a7230c993a", "interpolation-bdb17ff743"),
            *("surface-29852c7506", "surface-d2218cffbb"),
        ],
    ),
    "skip-connections": (
        "d0a25397ee",
        [
            *("train-resnet8-skip-w4-107f8a944c", "center-resnet8-skip-w4-ec86615768"),
            *("surface-resnet8-skip-w4-e0a9428654", "curvature-map-resnet8-skip-w4-73b44b1425"),
            *("train-resnet8-noskip-w4-58ca928bef", "center-resnet8-noskip-w4-134aac723a"),
            *("surface-resnet8-noskip-w4-42bbcdd223", "curvature-map-resnet8-noskip-w4-9160309829"),
        ],
    ),
}


def read(folder: Path, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())


def kind_of(stage: str) -> str:
    """``surface`` of ``surface-resnet8-skip-w4-<digest>``: the stage's kind."""
    kind = stage.rsplit("-", 1)[0]
    for prefix in ("train", "center", "surface", "curvature-map"):
        if kind.startswith(prefix + "-resnet"):
            return prefix
    return kind


def recorded_placement(folder: Path) -> tuple[str | None, str | None]:
    """The (device, dtype) a stage folder says it computed with: a train stage's manifest
    (``device``; it trains in the model's float32), a landscape's result (its evaluation
    options), or the settings of any other stage (its manifest's spec; None where the
    stage has no such setting)."""
    manifest = read(folder, paths.MANIFEST)
    if manifest["kind"] == "train":
        return manifest.get("device"), None
    if manifest["kind"] == "landscape":
        ev = read(folder, paths.RESULT)["spec"].get("eval") or {}
        return ev.get("device"), ev.get("dtype")
    return manifest["spec"].get("device"), manifest["spec"].get("dtype")


def digest_without_placement(folder: Path) -> str:
    """The folder name a stage's recorded settings (a cached stage's manifest spec) gave
    before device and dtype were settings: ``<name>-<digest of the spec without them>``."""
    spec = read(folder, paths.MANIFEST)["spec"]
    rest = {k: v for k, v in spec.items() if k not in ("device", "dtype")}
    return paths.run_name(Path(folder).name.rsplit("-", 1)[0], paths.digest(rest))


def check_default_names(name: str, root: Path, results: dict) -> None:
    """The default smoke run of study ``name`` used the folders basinscope named before
    device and dtype were settings, and each records the CPU and float32 where it says."""
    digest, names = BEFORE[name]
    assert Path(results["run_dir"]).name == f"{name}-{digest}"
    stages = [r["stage"] for r in results["stages"]]
    if name == "rotated-digits":
        stages = [s for s in stages if not s.startswith("hessian")]
    assert stages == names
    for r in results["stages"]:
        folder = root / r["path"]
        device, dtype = recorded_placement(folder)
        assert device in (None, "cpu"), r["stage"]
        if dtype is not None and kind_of(r["stage"]) not in CPU_ONLY:
            assert dtype == "float32", r["stage"]
        if read(folder, paths.MANIFEST)["kind"] == "stage":
            assert digest_without_placement(folder) == r["stage"]


def check_device_recorded(root: Path, results: dict, device: str) -> None:
    """Every stage of a run on ``device`` says it computed there, but the stages that
    compute on the CPU whatever the device (:data:`CPU_ONLY`), which say nothing else."""
    for r in results["stages"]:
        got, _ = recorded_placement(root / r["path"])
        if kind_of(r["stage"]) in CPU_ONLY:
            assert got in (None, "cpu"), r["stage"]
        else:
            assert got == device, r["stage"]
