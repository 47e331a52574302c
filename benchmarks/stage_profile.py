"""Where a ``dvc repro`` spends its time, stage by stage, measured in one run.

    python benchmarks/stage_profile.py PROJECT [--force] [--no-run]

Runs ``dvc repro`` (``--force``: every stage) in PROJECT, a kdpipe project (a clone of this repo),
with a ``python`` on PATH that records each stage process's wall time, then prints per stage:
its wall time, the time inside its MLflow run (the work itself), and the rest (interpreter
start-up, imports, params checks and preflight, tracking set-up), plus each share of the whole.
``--no-run`` only reads what an earlier run recorded (PROJECT/.stage_times.log, PROJECT/mlflow.db).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOG = ".stage_times.log"


def _shim(folder: Path, log: Path) -> None:
    """A ``python`` that runs this interpreter and appends "<seconds> <args>" to ``log``."""
    shim = folder / "python"
    shim.write_text(f"""#!/bin/sh
start=$(date +%s.%N)
{shlex.quote(sys.executable)} "$@"
rc=$?
end=$(date +%s.%N)
echo "$start $end $*" >> {shlex.quote(str(log))}
exit $rc
""")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)


def run(project: Path, force: bool) -> float:
    log = project / LOG
    log.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _shim(Path(tmp), log)
        env = {**os.environ, "PATH": f"{tmp}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", "repro", *(["--force"] if force else [])], cwd=project,
                       env=env, check=True)
        return time.perf_counter() - start


def stage_walls(project: Path) -> dict[str, float]:
    walls = {}
    for line in (project / LOG).read_text().splitlines():
        start, end, *args = line.split()
        script = next((a for a in args if a.startswith("stages/")), None)
        if script is None:
            continue
        rest = args[args.index(script) + 1:]  # distill: RUN (stage distill@RUN); export: RUN SEED
        name = Path(script).stem + (f"@{rest[0]}" if rest else "")
        walls[name] = float(end) - float(start)
    return walls


def tracked_seconds(project: Path) -> dict[str, float]:
    """Seconds inside each stage's MLflow run, for the newest pipeline run in PROJECT/mlflow.db."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, "tags.`kdpipe.kind` = 'pipeline'", order_by=["start_time DESC"],
                                 max_results=1)
    if not parents:
        return {}
    children = client.search_runs(experiments, f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    out: dict[str, float] = {}
    for child in children:
        if child.info.end_time:
            # distill/<run>/seed-<seed> -> distill@<run>, the DVC stage that trains all of the run's seeds
            name = re.sub(r"/seed-\d+$", "", re.sub(r"/", "@", child.info.run_name, count=1))
            out[name] = out.get(name, 0.0) + (child.info.end_time - child.info.start_time) / 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--force", action="store_true", help="re-run every stage (dvc repro --force)")
    parser.add_argument("--no-run", action="store_true", help="only read an earlier run's records")
    args = parser.parse_args()
    total = None if args.no_run else run(args.project, args.force)
    walls, inside = stage_walls(args.project), tracked_seconds(args.project)
    whole = total or sum(walls.values())
    print(f"| stage | wall s | in its MLflow run s | start-up, imports, checks s | share of the whole |")
    print("|---|---|---|---|---|")
    for name, wall in walls.items():
        work = inside.get(name)
        print(f"| {name} | {wall:.1f} | {'-' if work is None else f'{work:.1f}'} | "
              f"{'-' if work is None else f'{wall - work:.1f}'} | {100 * wall / whole:.0f} % |")
    overhead = whole - sum(walls.values())
    print(f"| (dvc itself: hashing, locks, between stages) | {overhead:.1f} | - | - | {100 * overhead / whole:.0f} % |")
    print(f"| **whole dvc repro** | {whole:.1f} | | | 100 % |")


if __name__ == "__main__":
    main()
