"""Server bootstrap shared by every service.

A :class:`ServiceHost` starts a ``grpc.aio`` server with the kit's interceptors, the library
health servicer (NOT_SERVING until the service's ``load`` finished, and again while
draining), server reflection, message-size and keepalive options, and a Prometheus metrics
HTTP server on its own port. :func:`run` adds SIGTERM/SIGINT handling:
NOT_SERVING → wait ``drain_seconds`` → ``server.stop(grace_seconds)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from ragmesh.kit import logs, tracing
from ragmesh.kit.config import ServerSettings
from ragmesh.kit.interceptors import (
    CallContextInterceptor,
    ConcurrencyLimit,
    ErrorInterceptor,
    FaultInterceptor,
    MetricsInterceptor,
)

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Channel arguments for a server behind Envoy.

    Envoy (and Istio's sidecar) may send HTTP/2 PINGs on idle connections; the Python
    default (one ping per 5 minutes, GOAWAY ``too_many_pings`` otherwise) would cut them.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class ServiceSpec:
    """What a service plugs into the host."""

    name: str
    service_names: Sequence[str]
    register: Callable[[grpc.aio.Server], None]
    load: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]] | None = None
    extra_reflection: Sequence[str] = field(default_factory=tuple)
    #: background work the service lives by (the ingest worker's loop), awaited after load:
    #: when it ends or raises, the error is logged with its traceback and health turns
    #: NOT_SERVING, so the liveness probe restarts the process
    watch: Callable[[], Awaitable[None]] | None = None
    #: the engine's own health (a model server reachable, a model loaded), asked every
    #: RAGMESH_HEALTH_INTERVAL_SECONDS after load: False or an error turns health NOT_SERVING
    #: until it answers True again (text-embeddings-inference's health watcher, in spirit)
    health: Callable[[], Awaitable[bool]] | None = None


def faults(settings: ServerSettings) -> list[FaultInterceptor]:
    """The fault injector, only when RAGMESH_FAULT_* asks for one."""
    if settings.fault_error_percent or settings.fault_delay:
        return [FaultInterceptor(settings.fault_error_percent, settings.fault_delay)]
    return []


class ServiceHost:
    """One running service: gRPC server, health, reflection and metrics endpoint."""

    def __init__(self, settings: ServerSettings, spec: ServiceSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.limiter = ConcurrencyLimit(settings.max_concurrent_rpcs)
        self.server = grpc.aio.server(
            interceptors=[
                *tracing.server_interceptors(),
                CallContextInterceptor(),
                MetricsInterceptor(),
                ErrorInterceptor(),
                self.limiter,
                *faults(settings),
            ],
            options=server_options(settings.max_message_bytes),
        )
        self.port = 0
        self.metrics_port = 0
        self._metrics_httpd: Any = None
        self._stopped = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and start serving; every service reports NOT_SERVING until :meth:`load`."""
        await self._set_all(NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.spec.register(self.server)
        names = (*self.spec.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.grpc_port}")
        httpd, _ = start_http_server(self.settings.metrics_port, addr=self.settings.host)
        self._metrics_httpd = httpd
        self.metrics_port = int(httpd.server_port)
        await self.server.start()
        log.info(
            "%s listening: grpc %s:%d, metrics %s:%d",
            self.spec.name,
            self.settings.host,
            self.port,
            self.settings.host,
            self.metrics_port,
        )

    async def load(self) -> None:
        """Load the model or index, then report SERVING."""
        await self.spec.load()
        await self._set_all(SERVING)
        log.info("%s ready", self.spec.name)
        if self.spec.watch is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(self.spec.watch))
        if self.spec.health is not None:
            self._prober = asyncio.get_running_loop().create_task(self._probe(self.spec.health))

    async def _probe(self, healthy: Callable[[], Awaitable[bool]]) -> None:
        """Follow the engine's health: NOT_SERVING while it is down, SERVING once it is back."""
        serving = True
        while not self._stopped.is_set():
            await asyncio.sleep(self.settings.health_interval)
            try:
                ok = bool(await asyncio.wait_for(healthy(), self.settings.health_interval))
                problem = "" if ok else "reports unhealthy"
            except Exception as e:
                ok, problem = False, f"health check failed: {type(e).__name__}: {e}"
            if self._stopped.is_set() or ok == serving:
                continue
            serving = ok
            if ok:
                log.info("%s engine healthy again: SERVING", self.spec.name)
            else:
                log.warning("%s engine %s: NOT_SERVING", self.spec.name, problem)
            await self._set_all(SERVING if ok else NOT_SERVING)

    async def _watch(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except Exception:
            log.exception("%s failed: reporting NOT_SERVING", self.spec.name)
        else:
            if self._stopped.is_set():
                return
            log.error("%s stopped working: reporting NOT_SERVING", self.spec.name)
        if not self._stopped.is_set():
            await self._set_all(NOT_SERVING)

    async def drain_and_stop(self) -> None:
        """NOT_SERVING, let load balancers notice, then stop with a grace period."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        log.info("%s draining for %.1fs", self.spec.name, self.settings.drain_seconds)
        await asyncio.sleep(self.settings.drain_seconds)
        await self.server.stop(self.settings.grace_seconds)
        if self.spec.close is not None:
            await self.spec.close()
        for task in (self._watcher, self._prober):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        tracing.flush()
        log.info("%s stopped", self.spec.name)

    async def wait(self) -> None:
        """Wait until the server has stopped."""
        await self.server.wait_for_termination()

    async def _set_all(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ("", *self.spec.service_names):
            await self.health.set(name, status)


async def run(settings: ServerSettings, spec: ServiceSpec) -> None:
    """Run a service until SIGTERM or SIGINT, then drain and stop."""
    host = ServiceHost(settings, spec)
    await host.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        log.info("%s got signal %d", spec.name, signum)
        if not stopping:
            stopping.append(loop.create_task(host.drain_and_stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await host.load()
    except Exception:
        log.exception("%s failed to load", spec.name)
        await host.server.stop(0)
        raise
    await host.wait()
    if stopping:
        await stopping[0]


def configure_telemetry(settings: ServerSettings, service: str) -> None:
    """JSON log lines on stderr (:mod:`ragmesh.kit.logs`) and tracing (:mod:`ragmesh.kit.tracing`).

    Call before any channel or server is created: they pick up the tracing interceptors.
    """
    logs.configure(settings.log_level, service)
    try:
        version = metadata.version("ragmesh")
    except metadata.PackageNotFoundError:
        version = ""
    tracing.configure(settings, service, version)
