"""A grpc_health_probe work-alike: ``python -m ragmesh_lab.rehearsal.health_probe -addr=H:P``.

The canaries' ``smoke`` webhooks run grpc_health_probe (a Go binary) in Flagger's load tester;
the rehearsal puts this program on the webhook's PATH under that name. Flags and exit codes
are grpc_health_probe's: 0 SERVING, 1 bad flags, 2 connection failed, 3 the RPC failed,
4 not SERVING. ``-addr`` is resolved through ``RAGMESH_LAB_HOSTS`` (see ghz.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragmesh_lab.rehearsal.ghz import GhzError, duration, target


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grpc_health_probe", prefix_chars="-", allow_abbrev=False)
    p.add_argument("-addr", required=True)
    p.add_argument("-service", default="")
    p.add_argument("-connect-timeout", default="1s")
    p.add_argument("-rpc-timeout", default="1s")
    return p


async def probe(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(target(args.addr)) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), duration(args.connect_timeout))
        except TimeoutError:
            print(f"timeout: failed to connect service {args.addr!r}", file=sys.stderr)
            return 2
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=duration(args.rpc_timeout),
            )
        except grpc.aio.AioRpcError as e:
            print(f"error: health rpc failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 3
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            print(f"service unhealthy (responded with {status!r})", file=sys.stderr)
            return 4
        print(f"status: {status}")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit:
        return 1
    try:
        return asyncio.run(probe(args))
    except GhzError as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
