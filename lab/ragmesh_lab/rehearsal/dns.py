"""The cluster's names for one workload of the lab: an HTTP CONNECT proxy in front of its
sidecar's outbound listeners.

A service that is handed a peer's address at run time (the quality gate: "embedding-canary:50051"
in the webhook's payload) dials it by name. In a cluster, DNS resolves the name and the sidecar
captures the connection; here the process gets ``grpc_proxy`` pointing at this proxy (gRPC's
own HTTP CONNECT support), which connects ``host:port`` to the sidecar listener mapped for it.
A name that is not mapped is refused (403), as REGISTRY_ONLY egress would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

from ragmesh_lab.cli.supervisor import free_port


class Names:
    def __init__(self, hosts: Mapping[str, str]) -> None:
        self.hosts = dict(hosts)  # "embedding-canary:50051" → "127.0.0.1:PORT"
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> str:
        """Start serving; the proxy URL for ``grpc_proxy``."""
        self._thread.start()
        self._ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._connect, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            address = self.hosts.get(target.removeprefix("dns:///"))
            if method != "CONNECT" or address is None:
                writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            host, port = address.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
