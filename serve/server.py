"""`run_server(settings)`: uvicorn around the gateway, with SIGTERM draining. Import-safe: nothing starts
at import, so vLLM's spawned engine process can import this module."""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

from serve.app import create_app
from serve.gateway import Gateway
from serve.logs import configure_logging, log
from serve.settings import ServeSettings


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, flip the gateway to draining first: /readyz and new requests answer 503 while
    uvicorn waits (up to drain_timeout_s) for admitted requests, then lifespan stops the engine."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.gateway.admission.draining = True
        log("draining", signal=signal.Signals(sig).name, in_flight=self.gateway.admission.count)
        super().handle_exit(sig, frame)


def run_server(settings: ServeSettings) -> None:
    app = create_app(settings)  # refuses bad keys or access policy before anything is configured
    configure_logging()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # RequestContext writes the access line, as JSON with the request id
        timeout_graceful_shutdown=settings.drain_timeout_s,
        lifespan="on",
    )
    server = DrainingServer(config, app.state.gateway)
    server.run()
    if not server.started:  # lifespan startup failed (engine never ready); uvicorn logged why
        raise SystemExit(3)
