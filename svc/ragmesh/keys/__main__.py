"""Run the API key checker: ``python -m ragmesh.keys``.

Answers the ingress gateway's checks on RAGMESH_KEYS_PORT (:mod:`ragmesh.keys.servicer`)
from the key file RAGMESH_KEYS_FILE; Prometheus metrics on RAGMESH_METRICS_PORT. SIGTERM
stops it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from prometheus_client import start_http_server

from ragmesh.keys.service import KeyRing
from ragmesh.keys.servicer import KeysServer
from ragmesh.kit import config
from ragmesh.kit.server import configure_telemetry


def main() -> None:
    settings = config.load()
    configure_telemetry(settings.server, "keys")
    ring = KeyRing(settings.keys.file)
    metrics, _ = start_http_server(settings.server.metrics_port, addr=settings.server.host)
    server = KeysServer(settings.server.host, settings.keys.port, ring)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    print(
        f"keys listening on {settings.server.host}:{server.port} "
        f"metrics :{metrics.server_address[1]} ({len(ring)} keys)",
        flush=True,
    )
    stop.wait()
    server.httpd.shutdown()
    server.httpd.server_close()
    metrics.shutdown()


if __name__ == "__main__":
    main()
