"""Stage `inputs`: hash the files outside the pipeline that params.yaml names (task files, GLUE
folder, teacher folder, supplementary files), one manifest per stage that reads them; DVC runs it
on every repro (see kdpipe/pipeline/inputs.py for why); it also removes the reports and curves of
runs dropped from distill.runs.  No MLflow run: it trains nothing."""

import sys

from kdpipe.config import ConfigError, load_params
from kdpipe.data.tasks import TaskDataError
from kdpipe.env import repo_root
from kdpipe.models.sources import ModelError
from kdpipe.pipeline.inputs import MANIFEST_DIR, remove_dropped_runs, write_manifests

root = repo_root()
try:
    params = load_params(root / "params.yaml")
    counts = write_manifests(params, root, root / MANIFEST_DIR)
except (ConfigError, TaskDataError, ModelError) as e:
    print(f"kdpipe inputs: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
for path in remove_dropped_runs(params, root):
    print(f"removed {path}: its run is no longer in distill.runs")
print("input files hashed:", ", ".join(f"{name}={n}" for name, n in counts.items()))
