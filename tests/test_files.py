"""Atomic writes: a reader sees the old file or the whole new one, never a part, never a temporary."""

import os

import pytest

from edgempi.files import atomic_path


def test_a_finished_write_replaces_the_file_after_syncing_it(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "out.txt"
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert events[:2] == ["fsync", "replace"]  # the data is on disk before the name points at it
    assert os.listdir(target.parent) == ["out.txt"]


@pytest.mark.parametrize("existing", [None, "old"])
def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path, existing):
    target = tmp_path / "out.txt"
    if existing:
        target.write_text(existing)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert os.listdir(tmp_path) == (["out.txt"] if existing else [])
    if existing:
        assert target.read_text() == existing
