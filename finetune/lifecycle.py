"""A run's life as a process: who trains it, that nobody else does, and how it ends.

There is no job server: a run is a `forma train` process and its folder. So the folder carries what a job
table would (RELIABILITY G7):
- owner: the manifest records pid, host and process start time, and a heartbeat every `HEARTBEAT_S`;
  `finetune.run.load_manifest` shows a `running` run whose process is gone as `interrupted`.
- exclusivity: the trainer holds an exclusive `flock` on the run folder; a second `--resume` of the same
  run is refused (the kernel drops the lock when the process dies, even by `kill -9`).
- the end: `completed`; `cancelled` on SIGINT/SIGTERM; `failed` with `failure` = `retryable` (a full disk,
  no memory: free it and --resume) or `permanent`. Checkpoints stay either way, so any end but
  `completed` can be resumed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from finetune.record import finish_manifest, now_iso
from finetune.run import RunError, RunManifest, write_manifest

HEARTBEAT_S = 30.0
# A full disk or quota, or no memory: retrying after freeing the resource can succeed.
RETRYABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM}
# safetensors reports a full disk as SafetensorError("... No space left on device (os error 28)").
RETRYABLE_TEXT = ("No space left on device", "Disk quota exceeded", "out of memory", "Cannot allocate memory")


class RunCancelled(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run; a KeyboardInterrupt, so code that handles Ctrl-C handles it."""

    def __init__(self, signal_name: str, run_id: str = "") -> None:
        super().__init__(signal_name)
        self.signal_name, self.run_id = signal_name, run_id


class RunFailed(RunError):
    """A run that failed for a reason a retry can fix; the message says how to resume."""


def failure_kind(err: BaseException) -> Literal["retryable", "permanent"]:
    """'retryable' when `err`, or an exception it was raised from, is a full disk or no memory."""
    chain: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for item in chain:
        if isinstance(item, MemoryError) or type(item).__name__ == "OutOfMemoryError":
            return "retryable"
        if isinstance(item, OSError) and item.errno in RETRYABLE_ERRNOS:
            return "retryable"
        if any(text in str(item) for text in RETRYABLE_TEXT):
            return "retryable"
    return "permanent"


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `RunCancelled` in the main thread, so the run records how it ended.

    Without this, SIGTERM (what `kill`, systemd and docker send) ends Python at once and the manifest
    would say `running` until someone looks. Only the main thread may set handlers; elsewhere, no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum: int, frame: Any) -> None:
        raise RunCancelled(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, cancel) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _lock(folder: Path, run_id: str) -> int:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(
            f"run {run_id} is being trained by another process on this host; wait for it, or cancel it "
            "(kill -TERM <pid>, see its manifest.json) before resuming"
        ) from None
    return fd


class RunRecord:
    """The manifest of a run this process owns: its lock, its heartbeat, and how it ends."""

    def __init__(self, folder: Path, manifest: RunManifest, enabled: bool = True) -> None:
        self.folder, self.manifest, self.enabled = folder, manifest, enabled
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._fd: int | None = None
        self._beat: threading.Thread | None = None

    def start(self) -> None:
        """Lock the folder, then record this process as the trainer (before any model loads)."""
        if not self.enabled:
            return
        import psutil

        self._fd = _lock(self.folder, self.manifest.run_id)
        me = psutil.Process()
        self._update(
            status="running",
            error=None,
            failure=None,
            pid=me.pid,
            host=socket.gethostname(),
            process_started_at=me.create_time(),
            heartbeat_at=now_iso(),
        )
        self._beat = threading.Thread(target=self._heartbeat, name="forma-heartbeat", daemon=True)
        self._beat.start()

    def _update(self, **fields: Any) -> None:
        with self._write_lock:
            self.manifest = self.manifest.model_copy(update=fields)
            write_manifest(self.folder, self.manifest)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # a full disk must not kill the thread; the run decides
                self._update(heartbeat_at=now_iso())

    def ended(self, err: BaseException) -> BaseException:
        """Record how `err` ended the run; return the exception the caller should raise."""
        self.stop()
        run_id = self.manifest.run_id
        if isinstance(err, KeyboardInterrupt):
            name = err.signal_name if isinstance(err, RunCancelled) else "SIGINT"
            self._record(status="cancelled", error=f"cancelled by {name}", failure=None)
            return RunCancelled(name, run_id)
        kind = failure_kind(err)
        self._record(status="failed", error=repr(err)[:2000], failure=kind)
        if kind == "permanent":
            return err
        return RunFailed(
            f"run {run_id} failed ({err}); this is retryable: free the disk space or memory, then resume "
            f"with `forma train {self.manifest.schema_name} --resume {run_id}` (its checkpoints are kept)"
        )

    def completed(self, adapter_sha256: str, **results: Any) -> None:
        """`completed` with the adapter hash, after the heartbeat stopped (it must not write `running` back)."""
        self.stop()
        if self.enabled:
            with self._write_lock:
                self.manifest = finish_manifest(self.folder, self.manifest, adapter_sha256, **results)

    def _record(self, **fields: Any) -> None:
        if self.enabled:
            # Best effort: on a full disk even this write can fail; the run then reads as interrupted.
            with contextlib.suppress(OSError):
                self._update(**fields)

    def stop(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None

    def close(self) -> None:
        self.stop()
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


@contextlib.contextmanager
def owned(folder: Path, manifest: RunManifest, enabled: bool = True) -> Iterator[RunRecord]:
    record = RunRecord(folder, manifest, enabled)
    record.start()
    try:
        yield record
    finally:
        record.close()
