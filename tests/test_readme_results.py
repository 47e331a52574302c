"""The README's results tables are `kdpipe compare` output on the committed metrics of each
measured suite (benchmarks/results/<suite>/metrics), never typed by hand: re-running the command
must reproduce the README's text exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdpipe.cli import main

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SUITES = sorted(p.name for p in RESULTS.iterdir() if (p / "metrics" / "evaluate.json").is_file()) \
    if RESULTS.is_dir() else []


def test_the_measured_suites_are_committed():
    # the default task's 17 runs, three seeds (and the GLUE benchmark on MRPC)
    assert "all_methods" in SUITES and "glue_mrpc" in SUITES


@pytest.mark.parametrize("suite", SUITES)
def test_readme_results_table_is_kdpipe_compare_output(suite, capsys):
    metrics = RESULTS / suite / "metrics"
    assert main(["compare", "--metrics-dir", str(metrics)]) == 0
    printed = capsys.readouterr().out.strip()
    readme = (REPO / "README.md").read_text()
    assert f"kdpipe compare --metrics-dir benchmarks/results/{suite}/metrics" in readme
    assert printed in readme, f"README's {suite} table differs from `kdpipe compare`: paste its output again"
