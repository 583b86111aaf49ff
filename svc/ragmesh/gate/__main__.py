"""Run the retrieval-quality gate: ``python -m ragmesh.gate``.

Serves Flagger's webhook protocol on RAGMESH_GATE_PORT (see :mod:`ragmesh.gate.servicer`).
SIGTERM stops accepting webhooks and closes the channels.
"""

from __future__ import annotations

import asyncio
import signal
import threading

from ragmesh.gate.service import load_golden
from ragmesh.gate.servicer import GateServer, Retrievers
from ragmesh.kit import config
from ragmesh.kit.errors import ConfigError
from ragmesh.kit.server import configure_telemetry


def main() -> None:
    settings = config.load()
    configure_telemetry(settings.server, "gate")
    if settings.gate.golden is None:
        raise ConfigError("RAGMESH_GATE_GOLDEN is required")
    golden = load_golden(settings.gate.golden)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        retrievers = Retrievers(settings.peers.call_timeout, settings.query.default_tenant)
        server = GateServer(settings.server.host, settings.gate.port, golden, retrievers, loop)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
        thread.start()
        print(f"gate listening on {settings.server.host}:{server.port}", flush=True)
        await stop.wait()
        await asyncio.to_thread(server.httpd.shutdown)
        server.httpd.server_close()
        await retrievers.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
