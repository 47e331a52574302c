"""Writing outputs so that a failed or interrupted stage leaves nothing half-written behind.

The one place kdpipe writes files atomically: ``atomic_dir`` for folders, ``atomic_file`` for
single files (``write_json``, ``write_csv`` and ``write_text`` build on it).  Both write into a
temporary sibling and rename it into place only when the block succeeds.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator, Sequence


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; it replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a hard kill (SIGKILL)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if os.environ.get("KDPIPE_TEST_KILL_BEFORE_RENAME") == target.name:  # fault injection (tests)
            os.kill(os.getpid(), signal.SIGKILL)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: a serving user must be able to read it
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; it replaces ``target`` only if the block succeeds.

    Same folder, so ``os.replace`` is an atomic rename; on failure the temporary file (and any
    ``.data`` side file a writer left, as ONNX's external data) is removed and ``target`` is
    untouched.  The temporary name keeps ``target``'s suffix, for writers that go by it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.tmp-", suffix=target.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".data")):
            leftover.unlink(missing_ok=True)


def _umask() -> int:
    """The process umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Rows may have different keys (e.g. loss parts); missing cells are left empty."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def remove_stale_temporaries(root: str | Path, folders: Sequence[str]) -> list[Path]:
    """Remove the temporary siblings (``.<name>.tmp-*``) that a hard-killed writer left anywhere
    under ``root/<folder>``; returns what was removed."""
    removed = []
    for folder in folders:
        base = Path(root) / folder
        if not base.is_dir():
            continue
        for stale in sorted(base.rglob(".*.tmp-*"), reverse=True):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed
