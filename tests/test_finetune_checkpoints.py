"""Checkpoint completeness markers: a half-written or tampered checkpoint is detected and skipped."""

from __future__ import annotations

from pathlib import Path

from finetune.checkpoints import MARKER, incomplete_reason, latest_complete, write_marker


def make_checkpoint(root: Path, step: int, marked: bool = True) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights-%d" % step)
    (folder / "optimizer.pt").write_bytes(b"optimizer-%d" % step)
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    if marked:
        write_marker(folder, step)
    return folder


def test_the_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 2)
    newest = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 4)
    assert latest_complete(tmp_path) == newest  # numeric order, not string order ("10" < "4")


def test_a_checkpoint_without_marker_is_skipped_and_named(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 4, marked=False)
    warnings: list[str] = []
    assert latest_complete(tmp_path, warn=warnings.append) == good
    assert warnings == [f"skipping checkpoint checkpoint-4: no {MARKER} (the save did not finish)"]


def test_a_truncated_file_is_detected(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path, 2)
    bad = make_checkpoint(tmp_path, 4)
    (bad / "optimizer.pt").write_bytes(b"opt")
    assert incomplete_reason(bad) == "optimizer.pt differs from the sha256 its marker recorded"
    assert latest_complete(tmp_path, warn=lambda _: None) == good


def test_a_deleted_trainer_state_is_detected(tmp_path: Path) -> None:
    bad = make_checkpoint(tmp_path, 4)
    (bad / "trainer_state.json").unlink()
    assert incomplete_reason(bad) == "trainer_state.json is missing"
    assert latest_complete(tmp_path, warn=lambda _: None) is None


def test_an_unreadable_marker_is_detected(tmp_path: Path) -> None:
    bad = make_checkpoint(tmp_path, 4)
    (bad / MARKER).write_text("{not json")
    assert (incomplete_reason(bad) or "").startswith(f"unreadable {MARKER}")


def test_no_checkpoint_folder_means_start_fresh(tmp_path: Path) -> None:
    assert latest_complete(tmp_path / "absent") is None
    assert latest_complete(tmp_path) is None
