"""What makes a checkpoint reusable: a fingerprint of a run's inputs and code, and the marker a
finished phase leaves so that a run interrupted in a later phase does not train it again."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from kdpipe.codebase import import_closure, module_file
from kdpipe.files import write_json
from kdpipe.training.engine import TrainResult, is_main_process

PHASE_DONE_FILE = "phase_done.json"


def fingerprint(*parts, code: str) -> str:
    """Hash of configs, input files (folders are read whole) and the source of module ``code``
    and every kdpipe module it imports (``kdpipe.codebase``: the rule ``dvc.yaml`` follows), so
    a resumable checkpoint is only reused by a run with the same inputs and the same code."""
    h = hashlib.sha256()
    for source in sorted(import_closure(module_file(code))):
        h.update(source.read_bytes())
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            for f in sorted(part.rglob("*")):
                if f.is_file():
                    h.update(f.name.encode())
                    h.update(f.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def finished_phase(phase_dir: Path, fingerprint: str, student) -> TrainResult | None:
    """A phase that already completed (the run was interrupted in a later phase): its selected
    weights are loaded into ``student`` and its result returned, so it is not trained again."""
    marker = Path(phase_dir) / PHASE_DONE_FILE
    if not marker.exists():
        return None
    done = json.loads(marker.read_text())
    if done["fingerprint"] != fingerprint:
        return None
    from safetensors.torch import load_model
    load_model(student, str(Path(phase_dir) / done["result"]["selected"] / "model.safetensors"))
    return TrainResult(**done["result"])


def mark_phase_done(phase_dir: Path, fingerprint: str, result: TrainResult) -> None:
    if is_main_process():
        write_json(Path(phase_dir) / PHASE_DONE_FILE, {"fingerprint": fingerprint, "result": asdict(result)})


def remove_checkpoints(checkpoint_dir: Path) -> None:
    """Once a stage's output is written nothing needs its checkpoints (best/last weights,
    finished-phase markers): they go, on rank 0."""
    if is_main_process():
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def keep_selected_only(phase_dir: Path) -> None:
    """A finished phase that may be reused later (a PTP student, reused when other runs change)
    keeps its marker and the weights it selected; the other weights go."""
    marker = Path(phase_dir) / PHASE_DONE_FILE
    if not (is_main_process() and marker.exists()):
        return
    selected = json.loads(marker.read_text())["result"]["selected"]
    for other in ("best", "last"):
        if other != selected:
            shutil.rmtree(Path(phase_dir) / other, ignore_errors=True)
