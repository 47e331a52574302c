"""The CLI's own surface: --version, help with examples on every subcommand, a missing pipeline
package named with the extra to install, and `kdpipe ui` stopping its MLflow server and workers
on SIGTERM.  (The runtime install itself: tests/test_runtime_install.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from kdpipe import __version__, cli
from kdpipe.cli import COMMANDS, build_parser, main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"kdpipe {__version__}"


@pytest.mark.parametrize("command", sorted(build_parser().get_default("commands")))
def test_every_subcommand_says_what_it_does_and_shows_an_example(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: kdpipe {command}" in out and "examples:\n  kdpipe " + command in out
    assert len(build_parser().get_default("commands")) == len(COMMANDS)


def test_a_missing_pipeline_package_names_the_extra(monkeypatch, capsys):
    def needs_mlflow(args):
        raise ModuleNotFoundError("No module named 'mlflow.server'", name="mlflow.server")

    monkeypatch.setattr(cli, "_run_ui", needs_mlflow)
    assert main(["ui"]) == 2
    err = capsys.readouterr().err
    assert err == ("kdpipe ui: error: mlflow is not installed; this command needs the pipeline install: "
                   "pip install 'kdpipe[pipeline]'\n")


def test_a_missing_kdpipe_module_is_not_blamed_on_the_install(monkeypatch):
    def broken(args):
        raise ModuleNotFoundError("No module named 'kdpipe.nowhere'", name="kdpipe.nowhere")

    monkeypatch.setattr(cli, "_run_ui", broken)
    with pytest.raises(ModuleNotFoundError, match="kdpipe.nowhere"):
        main(["ui"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_stops_its_server_and_workers_on_sigterm(tmp_path):
    import psutil

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "kdpipe.cli", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the MLflow server did not start")
    family = psutil.Process(proc.pid).children(recursive=True)
    assert family, "the server runs in child processes"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "something still listens on the port"
