"""Stage ``inputs``: fingerprint the files outside the pipeline that params.yaml names.

DVC reads a stage's dependencies from dvc.yaml and cannot take a list of paths from params
(treeverse/dvc#8171), so a file named in ``task.files``, ``task.glue_dir``, ``teacher.model``
or a run's ``supplementary`` could change without DVC noticing.  This stage, which DVC runs on
every ``dvc repro`` (``always_changed``, well under a second: no torch), writes one manifest per
consumer with the content hash of every file that consumer reads, and each consumer depends on
its own manifest.  Editing the train CSV re-runs ``data`` and what follows from it; editing one
run's supplementary file re-runs only that run's ``distill@<run>`` stage (and ``evaluate``).  Unchanged
inputs give byte-identical manifests, so nothing downstream runs.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from kdpipe.config import Params
from kdpipe.data.tasks import TaskDataError, supplementary_input_files, task_input_files
from kdpipe.files import atomic_dir, write_json
from kdpipe.models.sources import resolve_model_path

MANIFEST_DIR = "data/inputs"  # data.json, teacher.json, distill/<run>.json


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shown(path: Path, root: Path) -> str:
    # The same file gets the same name on every machine and in a DVC experiment's temporary copy
    # of the project: an installed package's file from site-packages on, a project file relative.
    path = Path(path).resolve()
    if "site-packages" in path.parts:
        return str(Path(*path.parts[path.parts.index("site-packages"):]))
    return str(path.relative_to(root.resolve())) if path.is_relative_to(root.resolve()) else str(path)


def file_manifest(files: list[tuple[str, Path]], root: Path) -> dict:
    """``files`` are (params key, path) pairs; a missing one is the user's error, named by its key."""
    entries = []
    for key, path in files:
        if not Path(path).is_file():
            raise TaskDataError(f"{key}: {path} not found")
        entries.append({"key": key, "path": _shown(path, root), "sha256": sha256(path)})
    return {"files": entries}


def model_manifest(name: str, root: Path) -> dict:
    """Every file of a local (or packaged) model folder; a hub id is recorded by name only,
    since DVC cannot see the hub (pin a local copy to make it a dependency)."""
    folder = Path(resolve_model_path(name))
    if not folder.is_dir():
        return {"hub": name, "files": []}
    files = [(f"teacher.model ({name})", p) for p in sorted(folder.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")]
    return file_manifest(files, root)


def manifests(params: Params, root: Path) -> dict[str, dict]:
    """Manifest name (a path under ``MANIFEST_DIR`` without ``.json``) -> its content."""
    out = {"data": file_manifest(task_input_files(params.task, root), root),
           "teacher": model_manifest(params.teacher.model, root)}
    for run, cfg in params.distill.runs.items():
        files = supplementary_input_files(cfg.supplementary, params.task, root) if cfg.supplementary else []
        out[f"distill/{run}"] = file_manifest([(f"distill.runs.{run}.{k}", p) for k, p in files], root)
    return out


def write_manifests(params: Params, root: Path, out_dir: Path) -> dict[str, int]:
    """Write every manifest (all or none); returns the number of files each one covers."""
    found = manifests(params, root)  # every check before anything is written
    with atomic_dir(out_dir) as tmp:
        for name, content in found.items():
            path = tmp / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, content)
    return {name: len(content["files"]) for name, content in found.items()}


# Where each run's small git-tracked reports and curves live: a folder per run with a file per
# seed, or (exports) one file per run.  DVC leaves a removed stage's outputs in the workspace, so
# a run or seed dropped from params would linger in reports and plots.
RUN_FILES = (("metrics/distill", ".json", True), ("metrics/export", ".json", False),
             ("plots/train", ".csv", True), ("plots/dev", ".csv", True))
NOT_RUNS = frozenset({"teacher"})  # plots/train/teacher.csv sits beside the runs' curves


def remove_dropped_runs(params: Params, root: Path) -> list[str]:
    """Delete the per-run reports and curves of runs no longer in ``distill.runs``, the per-seed
    ones of seeds no longer in ``distill.seeds``, and per-run files where runs now keep a folder of
    seeds (the layout before seeds); their models stay (DVC's cache restores those).  Returns what
    was deleted."""
    keep = set(params.distill.runs) | NOT_RUNS
    seeds = {f"seed-{seed}" for seed in params.distill.seeds}
    removed = []
    for folder, suffix, per_seed in RUN_FILES:
        for path in sorted((root / folder).glob("*")):
            if path.is_dir():
                stale = [p for p in sorted(path.glob(f"*{suffix}")) if p.stem not in seeds] \
                    if path.name in keep else [path]
            elif path.suffix == suffix and path.stem not in NOT_RUNS:
                stale = [path] if per_seed or path.stem not in keep else []
            else:
                stale = []
            for p in stale:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(str(p.relative_to(root)))
    return removed
