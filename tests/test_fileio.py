"""Atomic writes: a failure part-way leaves the old content, and no temp files, behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.fileio import atomic_write_json, atomic_write_text, staged_dir


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "f.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_failed_write_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):  # test double: a crash between writing and renaming
        raise OSError("disk full")

    monkeypatch.setattr("schemas.fileio.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_staged_dir_publishes_or_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    with pytest.raises(RuntimeError), staged_dir(final) as tmp:
        (tmp / "w.bin").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with staged_dir(final) as tmp:
        (tmp / "w.bin").write_bytes(b"whole")
    assert (final / "w.bin").read_bytes() == b"whole"
    with pytest.raises(OSError), staged_dir(final) as tmp:
        (tmp / "w.bin").write_bytes(b"other")  # published folders are immutable
    assert (final / "w.bin").read_bytes() == b"whole"
