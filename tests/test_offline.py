"""Nothing kdpipe runs needs the network: a tiny export, int8 quantisation, parity and a torch-free
prediction run with every outbound connection failing loudly (a Python-level guard that raises
on any non-loopback connect or name lookup) and, where the machine allows it, inside a network
namespace with no interfaces at all (so native code, onnxruntime's included, cannot reach out either)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from conftest import REPO

GUARD = textwrap.dedent('''
    import socket
    _real_connect, _real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    LOCAL = ("127.", "::1", "localhost", "/")

    def _blocked(what, target):
        raise RuntimeError(f"OUTBOUND NETWORK ATTEMPT: {what} {target!r}")

    def connect(self, address):
        host = address if isinstance(address, str) else address[0]
        if not str(host).startswith(LOCAL):
            _blocked("connect", address)
        return _real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not str(host).startswith(LOCAL):
            _blocked("getaddrinfo", host)
        return _real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
''')

JOB = textwrap.dedent('''
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from kdpipe.env import apply_defaults
    apply_defaults()
    import json, torch
    from conftest import tiny_bert
    from kdpipe.export.convert import export_onnx, parity, quantize_int8
    from kdpipe.export.runtime import make_session, session_logits
    out = Path(sys.argv[1])
    model = tiny_bert()
    batch = {"input_ids": torch.tensor([[101, 7592, 2088, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "token_type_ids": torch.zeros(1, 4, dtype=torch.long)}
    export_onnx(model, batch, out / "model.onnx")
    quantize_int8(out / "model.onnx", out / "model.int8.onnx")
    assert parity(model, out / "model.onnx", [batch])["max_abs_diff"] < 1e-4
    import socket
    try:
        socket.getaddrinfo("example.org", 443)
    except RuntimeError:
        print("guard active")
    print("logits", session_logits(make_session(out / "model.int8.onnx"), {k: v.numpy() for k, v in batch.items()}).shape)
''')


def _run(tmp_path, prefix: list[str]):
    (tmp_path / "guard").mkdir(exist_ok=True)
    (tmp_path / "guard" / "sitecustomize.py").write_text(GUARD)
    (tmp_path / "job.py").write_text(JOB)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path / 'guard'}:{REPO}", "HOME": str(tmp_path)}
    return subprocess.run([*prefix, sys.executable, str(tmp_path / "job.py"), str(tmp_path), str(REPO / "tests")],
                          capture_output=True, text=True, timeout=600, env=env)


def test_export_quantise_and_predict_with_every_outbound_connect_failing(tmp_path):
    proc = _run(tmp_path, [])
    assert proc.returncode == 0 and "logits (1, 3)" in proc.stdout, proc.stderr[-3000:]
    assert "guard active" in proc.stdout  # the guard was loaded and does raise
    assert "OUTBOUND NETWORK ATTEMPT" not in proc.stderr


def test_the_same_with_no_network_at_all(tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], capture_output=True).returncode != 0:
        import pytest
        pytest.skip("cannot create a network namespace here (needs unshare and root)")
    proc = _run(tmp_path, [unshare, "-n"])
    assert proc.returncode == 0 and "logits (1, 3)" in proc.stdout, proc.stderr[-3000:]
