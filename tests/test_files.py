"""Atomic writes: outputs appear whole or not at all, readable by a serving user (umask 022)."""

from __future__ import annotations

import os
import stat

import pytest

from kdpipe.files import atomic_dir, atomic_file, remove_stale_temporaries, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_folders_and_files_are_world_readable(tmp_path, umask_022):
    with atomic_dir(tmp_path / "export") as tmp:
        (tmp / "model.onnx").write_bytes(b"x")
    write_json(tmp_path / "export" / "kdpipe.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "export" / "kdpipe.json").stat().st_mode) == 0o644


def test_a_failed_block_leaves_nothing_and_the_old_output_whole(tmp_path):
    write_json(tmp_path / "m.json", {"old": True})
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "m.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("half")
        raise RuntimeError
    assert (tmp_path / "m.json").read_text().strip() == '{\n  "old": true\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_stale_temporaries_of_a_hard_kill_are_removed(tmp_path):
    (tmp_path / "models" / ".teacher.tmp-abc").mkdir(parents=True)
    (tmp_path / "metrics" / ".x.tmp-1.json").parent.mkdir()
    (tmp_path / "metrics" / ".x.tmp-1.json").write_text("{")
    (tmp_path / "models" / "keep").mkdir()
    removed = remove_stale_temporaries(tmp_path, ["models", "metrics", "exports"])
    assert len(removed) == 2 and [p.name for p in (tmp_path / "models").iterdir()] == ["keep"]
