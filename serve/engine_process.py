"""The child vLLM engine: start it in its own process group, wait for it, stop it and all its children.

vLLM's API server spawns an EngineCore process; a process group lets one signal reach both, so a
stopped gateway never leaves an engine behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def engine_on_gpu() -> bool:
    """Whether the child engine will run on an accelerator: vLLM's own platform detection, the one the
    child makes. It imports vLLM (seconds), so the gateway asks only when the answer matters."""
    from vllm.platforms import current_platform

    return not current_platform.is_cpu()


class EngineProcess:
    """One child engine. `start` may be called again after it died (the supervisor restarts it)."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path | None) -> None:
        self.command, self.env, self.log_path = command, env, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = -1

    def start(self) -> None:
        log: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it; closed below)
        try:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            if not isinstance(log, int):
                log.close()
        self.restarts += 1

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no engine log: set engine_log to keep one)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole group; SIGKILL whatever is left of it after `timeout`; reap the leader."""
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        # The EngineCore and worker children may outlive the API server by a moment: wait for the
        # whole group, within one budget, so a stop never takes longer than `timeout` plus the kill.
        deadline = time.monotonic() + timeout
        while (self.process.poll() is None or _group_alive(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
