"""SIGKILL at a seeded-random point of every stage kind (data, teacher, teacher outputs, PTP, distill, export),
then ``dvc repro``: the pipeline ends with the same metrics, weights, splits and curves as an
uninterrupted run, and no kill leaves a half-written output or a temporary sibling behind."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_e2e import _env, dvc, make_project, tiny_params

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # pytest -m heavy

RUNS = {"pea": {"method": "pea_kd"}}  # PTP, SPS, the teacher cache: every stage kind in one run
SEED = 20261202  # the kill points are drawn from this


def _params(glue_dir):
    params = tiny_params(glue_dir, "rte", RUNS)
    params["teacher"]["train"].update(epochs=2, checkpoint_every=1)
    params["ptp"]["train"].update(epochs=2, checkpoint_every=1)
    params["distill"]["train"].update(epochs=2, checkpoint_every=1)
    return params


def fingerprint(root: Path) -> dict[str, str]:
    """What must match: metrics (latencies and training seconds aside), weights, splits, the teacher cache, curves."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items()
                    if "latency" not in k and k not in ("speedup", "size_mb", "train_seconds")}
        return [strip(v) for v in obj] if isinstance(obj, list) else obj
    out = {}
    for f in sorted(root.glob("metrics/**/*.json")):
        if f.parent.name == "summary" and f.stem.endswith("_ms"):  # latencies, one file each
            continue
        out[str(f.relative_to(root))] = json.dumps(strip(json.loads(f.read_text())), sort_keys=True)
    for pattern in ("models/**/*.safetensors", "data/prepared/*.parquet", "data/teacher_outputs/*.npy",
                    "plots/train/**/*.csv", "plots/dev/**/*.csv"):
        for f in sorted(root.glob(pattern)):
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _stage_process(dvc_proc: subprocess.Popen, script: str):
    import psutil

    # the Python process itself, named by its argv: dvc starts the command through $SHELL, and a
    # shell that does not exec (dash, or no $SHELL) is a parent whose command line also names the
    # script; killing it would orphan the stage, which then finishes and publishes its outputs
    for child in psutil.Process(dvc_proc.pid).children(recursive=True):
        try:
            if script in child.cmdline()[1:2]:
                return child
        except psutil.Error:
            continue
    return None


def kill_during(root: Path, stage: str, ready) -> str:
    """Start ``dvc repro <stage>``, SIGKILL the stage's process once ``ready()`` holds (or, with
    ``ready`` a folder name, when the stage is about to rename that finished output into place),
    and return what dvc printed (it must have failed)."""
    script = f"stages/{stage.split('@')[0]}.py"
    env = _env(root)
    if isinstance(ready, str):
        env["KDPIPE_TEST_KILL_BEFORE_RENAME"] = ready
        ready = lambda: False  # noqa: E731 - the stage kills itself
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-s", stage], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    victim = None
    while time.time() < deadline and proc.poll() is None:
        victim = victim or _stage_process(proc, script)
        if victim is not None and ready():
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and ("-9" in out or "SIGKILL" in out or victim is not None), \
        f"{stage} was not killed:\n{out[-3000:]}"
    return out


def step_reached(root: Path, checkpoint: str, step: int):
    state = root / checkpoint / "trainer_state.json"

    def ready():
        try:
            return json.loads(state.read_text())["step"] >= step
        except (OSError, ValueError, KeyError):
            return False
    return ready


@pytest.fixture(scope="module")
def reference(tmp_path_factory, glue_dir, minilm_path):
    root = make_project(tmp_path_factory.mktemp("reference"), _params(glue_dir))
    dvc("repro", root=root)
    return fingerprint(root)


def test_every_stage_kind_killed_at_a_random_point_then_repro_matches(reference, tmp_path, glue_dir):
    root = make_project(tmp_path, _params(glue_dir))
    dvc("repro", "-s", "inputs", root=root)  # `repro -s <stage>` runs that stage alone: its manifest first
    draw = random.Random(SEED)
    steps = 8  # 64 examples, batch 16, 2 epochs
    # training stages: at a drawn step; the others when their finished output is about to be
    # renamed into place (the worst moment: everything written, nothing published)
    kills = [
        ("data", "prepared"),
        ("teacher", step_reached(root, "checkpoints/teacher", draw.randint(1, steps - 1))),
        ("teacher_outputs", "teacher_outputs"),
        ("ptp", step_reached(root, "checkpoints/ptp/L2_uniform_sps-upper_swap", draw.randint(1, steps - 1))),
        ("distill@pea", step_reached(root, "checkpoints/distill/pea/seed-1", draw.randint(1, steps - 1))),
        ("export@pea", "pea"),
    ]
    for stage, ready in kills:
        if stage == "export@pea":  # everything before it, uninterrupted
            dvc("repro", "evaluate", root=root)
        kill_during(root, stage, ready)
        target = {"data": "data/prepared", "teacher": "models/teacher", "teacher_outputs": "data/teacher_outputs",
                  "ptp": "models/ptp", "distill@pea": "models/students/pea/seed-1", "export@pea": "exports/pea"}[stage]
        assert not (root / target).exists(), f"{stage}: a killed first run left {target}"
        if stage in ("data", "teacher_outputs", "export@pea"):
            assert list(root.glob(f"{Path(target).parent}/.{Path(target).name}.tmp-*")), "no kill before the rename"
        dvc("repro", "-s", stage, root=root)  # resumes (training stages) or starts over, and cleans up
        assert not list(root.glob("**/.*.tmp-*")), f"{stage}: temporary siblings left after the re-run"
    dvc("repro", root=root)
    got = fingerprint(root)
    assert got.keys() == reference.keys()
    differ = [k for k in got if got[k] != reference[k]]
    assert not differ, f"differ from the uninterrupted run: {differ}"
