"""Helpers (no tests) for the HTTP-surface battery (test_rel_auth, test_rel_load, test_rel_contract).

Gateways here run exactly as `forma serve` runs them: serve_fixtures' `Gateway` is
`server_config(create_app())` in a thread (for tests that read the app's state), `GatewayProcess` is the
real `forma serve` CLI in its own process (for load and memory: its RSS is the gateway's alone, and it
does not share a GIL with the load generator). `raw_exchange` speaks HTTP/1.1 over a plain socket, for
requests httpx will not send.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from serve_fixtures import ADMIN, CONTACT_ONLY, Home, home_settings

from serve.app import create_app
from serve.engine_process import free_port
from serve.settings import ServeSettings

KEYS = f"{ADMIN}=*,admin;{CONTACT_ONLY}=contact"
FORMA = str(Path(sys.executable).parent / "forma")
# Schema-valid answers for the shared home's schemas, for a FakeEngine standing in for a healthy engine.
VALID = {
    "invoice": {"vendor": "ACME", "currency": "EUR", "paid": True},
    "contact": {"name": "Ann", "role": "buyer"},
}


def valid_reply(body: dict[str, Any]) -> tuple[str, str]:
    """FakeEngine `reply`: a valid record for the schema whose release the request names."""
    schema = str(body.get("model", "")).split("-")[0]
    return json.dumps(VALID.get(schema, {})), "stop"


def settings_for(home: Home, engine_url: str, **overrides: Any) -> ServeSettings:
    """serve_fixtures' settings with this battery's keys (KEYS)."""
    return home_settings(home, engine_url, **({"api_keys": KEYS} | overrides))


def offline_app() -> Any:
    """The app object only (no server, no engine): for walking its route table and spec."""
    root = Path("/nonexistent")
    settings = ServeSettings(
        schemas_root=root, runs_root=root, releases_root=root, engine_url="http://127.0.0.1:9", api_keys=KEYS
    )
    return create_app(settings)


class GatewayProcess:
    """`forma serve --engine-url URL` as users run it, over the shared home (linked into its own
    FORMA_HOME), with extra CLI arguments and FORMA_SERVE_* settings."""

    def __init__(self, home: Home, root: Path, engine_url: str, args: list[str], env: dict[str, str]) -> None:
        forma_home = root / "home"
        forma_home.mkdir(parents=True)
        for name, target in [("schemas", home.schemas), ("runs", home.runs), ("releases", home.releases)]:
            (forma_home / name).symlink_to(target)
        self.port, self.log_path = free_port(), root / "gateway.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [FORMA, "serve", "--engine-url", engine_url, "--port", str(self.port), *args]
        self.env = os.environ | {"FORMA_HOME": str(forma_home), "FORMA_API_KEYS": KEYS} | env
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GatewayProcess:
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("forma serve did not become ready")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 2**20

    def metric(self, name: str) -> float:
        """A label-less gauge or counter from GET /metrics (admin key)."""
        text = httpx.get(self.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).text
        found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
        assert found, f"{name} not in /metrics"
        return float(found.group(1))

    def histogram(self, name: str) -> dict[float, float]:
        """Cumulative bucket counts {le: count} of a label-less histogram."""
        text = httpx.get(self.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).text
        pattern = rf'^{re.escape(name)}_bucket{{le="([^"]+)"}} ([0-9.e+-]+)$'
        return {float(le): float(count) for le, count in re.findall(pattern, text, re.M)}


@dataclass
class RawReply:
    status: int | None  # None: the server closed the connection without an answer
    head: bytes = b""
    body: bytes = b""
    error: str | None = None  # a reset or timeout seen by the client
    elapsed_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def raw_exchange(
    port: int, head: bytes, body: bytes = b"", drip_s: float = 0.0, timeout_s: float = 15.0
) -> RawReply:
    """Send `head` (request line + headers, ending in a blank line) and `body` over a plain socket, one
    byte per `drip_s` if set, reading the answer as it comes; return what came back and how it ended."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        received = bytearray()
        reader = threading.Thread(target=_read_all, args=(sock, received, timeout_s), daemon=True)
        reader.start()
        error = _send(sock, head, body, drip_s, reader)
        reader.join(timeout_s)
        error = error or getattr(reader, "error", None)
    return _parse(bytes(received), error, time.monotonic() - started)


def _send(
    sock: socket.socket, head: bytes, body: bytes, drip_s: float, reader: threading.Thread
) -> str | None:
    try:
        sock.sendall(head)
        if not drip_s:
            sock.sendall(body)
            return None
        for byte in body:
            if not reader.is_alive():  # the server answered and closed: stop dripping
                return None
            time.sleep(drip_s)
            sock.sendall(bytes([byte]))
    except OSError as err:  # a closed connection while sending is how a refused upload ends
        return f"send: {type(err).__name__}"
    return None


def _read_all(sock: socket.socket, into: bytearray, timeout_s: float) -> None:
    sock.settimeout(timeout_s)
    try:
        while chunk := sock.recv(65536):
            into.extend(chunk)
    except OSError as err:
        threading.current_thread().error = f"recv: {type(err).__name__}"  # type: ignore[attr-defined]


def _parse(data: bytes, error: str | None, elapsed: float) -> RawReply:
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        return RawReply(None, head, body, error, elapsed)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return RawReply(
        int(lines[0].split()[1]), head, body, error, elapsed, {k.lower(): v for k, v in headers.items()}
    )
