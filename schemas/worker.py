"""The grammar worker: compiles and probes schemas under a hard time bound (RELIABILITY A4/A5).

A hostile schema can make a grammar compiler run for minutes or exhaust memory, in native code that
no exception can interrupt. So the work runs in a process that can be killed. Two levels:

- the *zygote*, spawned once: it pays for importing vLLM, xgrammar, llguidance and the tokenizer
  (~10 s on a small machine) and never compiles anything itself;
- per schema it forks a *child* (~60 ms, sharing those imports) that compiles and probes, and kills it
  with SIGKILL when it passes the deadline. The zygote survives, so a refusal costs no restart.

Linux only (fork). The parent keeps a backstop deadline on the zygote too.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import select
import signal
import time
from pathlib import Path
from typing import Any

from schemas.errors import SchemaError
from schemas.report import GrammarReport

CHECK_TIMEOUT_S = 10.0  # compile + probes of one schema (RELIABILITY A5 budget)
START_TIMEOUT_S = 180.0  # importing vLLM on a loaded 2-core machine
TOO_COMPLEX = (
    "schema_too_complex",
    "compiling the grammar took more than {t:.0f} s",
    "",
    "simplify the schema: fewer optional properties, alternatives, nested levels or long maxLength",
)


def _bound_child(timeout: float) -> None:
    """Hard stops that hold even if the zygote dies: SIGKILL on parent death, and a CPU-time limit."""
    import ctypes
    import resource

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    seconds = int(timeout) + 5
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))


def _child(engine: Any, schema: dict[str, Any], write_fd: int, timeout: float) -> None:
    """In the forked child: check one schema, write the pickled answer, exit without cleanup."""
    _bound_child(timeout)
    known = set(engine.cache)
    try:
        answer: tuple = ("ok", engine.check(schema).model_dump())
    except SchemaError as err:
        answer = ("error", (err.code, err.message, err.pointer, err.fix))
    except Exception as err:  # a backend bug must refuse this schema, not kill the registry
        answer = (
            "error",
            (
                "unsupported_schema",
                f"the grammar backend failed: {err!r}",
                "",
                "simplify the schema around the keyword it names",
            ),
        )
    fresh = {k: v for k, v in engine.cache.items() if k not in known}
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(pickle.dumps((*answer, fresh)))
    os._exit(0)


def _read_until(fd: int, deadline: float) -> bytes | None:
    """All bytes from `fd` until EOF, or None if the deadline passes first."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def check_in_child(engine: Any, schema: dict[str, Any], timeout: float) -> tuple:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(engine, schema, write_fd, timeout)
    os.close(write_fd)
    try:
        data = _read_until(read_fd, time.monotonic() + timeout)
    finally:
        os.close(read_fd)
    if data is None:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if data is None:
        code, message, pointer, fix = TOO_COMPLEX
        return "error", (code, message.format(t=timeout), pointer, fix)
    if not data:
        return "error", (
            "schema_too_complex",
            "the grammar compiler crashed on this schema",
            "",
            "simplify the schema",
        )
    status, payload, fresh = pickle.loads(data)
    engine.cache.update(fresh)  # later children start from what earlier probes learnt
    return status, payload


def _zygote(conn: Any, tokenizer_path: str, timeout: float) -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the tokenizer is used in forked children
    from schemas.grammar import GrammarEngine

    engine = GrammarEngine(Path(tokenizer_path))
    conn.send(("ready", engine.versions))
    while True:
        try:
            schema = conn.recv()
        except EOFError:
            return
        conn.send(check_in_child(engine, schema, timeout))


class GrammarWorker:
    """Parent-side handle: `worker.check(schema)` -> GrammarReport, or SchemaError."""

    def __init__(self, tokenizer_path: Path, timeout: float = CHECK_TIMEOUT_S) -> None:
        self.tokenizer_path, self.timeout = Path(tokenizer_path), timeout
        self.process: Any = None
        self.conn: Any = None

    def __enter__(self) -> GrammarWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # the zygote itself starts clean; only it forks
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_zygote, args=(child, str(self.tokenizer_path), self.timeout), daemon=True
        )
        self.process.start()
        child.close()
        try:
            if not self.conn.poll(START_TIMEOUT_S):
                raise TimeoutError(f"no answer within {START_TIMEOUT_S:.0f} s")
            self.conn.recv()
        except (EOFError, TimeoutError) as err:
            self.close()
            raise RuntimeError(
                f"the grammar worker did not start ({err!r}); see its traceback above"
            ) from None

    def check(self, schema: dict[str, Any]) -> GrammarReport:
        if self.process is None or not self.process.is_alive():
            self._start()
        self.conn.send(schema)
        if not self.conn.poll(self.timeout + 30):  # backstop: the zygote itself stopped answering
            self.close()
            code, message, pointer, fix = TOO_COMPLEX
            raise SchemaError(code, message.format(t=self.timeout), pointer, fix)
        status, payload = self.conn.recv()
        if status == "ok":
            return GrammarReport.model_validate(payload)
        code, message, pointer, fix = payload
        raise SchemaError(code, message, pointer, fix)

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join(timeout=10)
        if self.conn is not None:
            self.conn.close()
        self.process = self.conn = None
