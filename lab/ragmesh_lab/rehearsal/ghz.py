"""A ghz work-alike: ``python -m ragmesh_lab.rehearsal.ghz [ghz flags] HOST:PORT``.

The canaries' ``load`` webhooks run ghz (https://ghz.sh) in Flagger's load tester; ghz is a Go
binary that is not installable here, so the rehearsal puts this program on the webhook's PATH
under the name ``ghz``. It honours the flags the webhooks use, with ghz's meaning and defaults,
and fails where ghz fails:

- the schema comes from ``--protoset`` (a FileDescriptorSet), ``--proto`` (compiled with
  grpc_tools), or else from the server's reflection service, as ghz does; a reflection call the
  server (or its sidecar) refuses is an error and exit status 1, before any load;
- ``--call``, ``-d/--data`` (JSON, parsed against the request type: an unknown field is an
  error), ``-m/--metadata`` (JSON object), ``-c/--concurrency`` (50), ``-n/--total`` (200),
  ``-q/--rps`` (0: unlimited), ``-z/--duration`` (overrides -n), ``-t/--timeout`` (20s per call),
  ``--connect-timeout`` (10s), ``--insecure``, ``-O/--format`` (summary or json);
- the JSON report has ghz's fields (``count``, ``total``, ``average``, ``fastest``, ``slowest``,
  ``rps`` and the ``statusCodeDistribution``/``errorDistribution`` keyed by Go's code names,
  e.g. ``OK``, ``Unavailable``, ``PermissionDenied``); durations are nanoseconds.

Lab settings, environment variables set by the webhook runner (rehearsal/webhooks.py):
``RAGMESH_LAB_HOSTS`` (a JSON object mapping ``host:port`` to a loopback address: the lab's
stand-in for cluster DNS and the sidecar's capture), ``RAGMESH_LAB_MOUNTS`` (a JSON object
mapping a directory the pod mounts, e.g. ``/etc/ragmesh``, to a local one) and
``RAGMESH_REHEARSAL_TIMESCALE`` (a rehearsal that compresses time by N divides ``-z`` by N;
per-call timeouts are never compressed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


class GhzError(Exception):
    """What ghz prints before exiting with status 1."""


def duration(text: str) -> float:
    """A Go duration (``40s``, ``1m``, ``500ms``, ``1m30s``) in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, number, i = 0.0, "", 0
    if text in ("0", ""):
        return 0.0
    while i < len(text):
        if text[i].isdigit() or text[i] == ".":
            number += text[i]
            i += 1
            continue
        unit = next(
            (u for u in ("ns", "us", "µs", "ms", "s", "m", "h") if text.startswith(u, i)), ""
        )
        if not unit or not number:
            raise GhzError(f'time: invalid duration "{text}"')
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    if number:
        raise GhzError(f'time: missing unit in duration "{text}"')
    return total


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ghz", add_help=True, allow_abbrev=False)
    p.add_argument("--proto", default="")
    p.add_argument("--protoset", default="")
    p.add_argument("-i", "--import-paths", default="")
    p.add_argument("--call", required=True)
    p.add_argument("--insecure", action="store_true")
    p.add_argument("-d", "--data", default="{}")
    p.add_argument("-m", "--metadata", default="")
    p.add_argument("-c", "--concurrency", type=int, default=50)
    p.add_argument("-n", "--total", type=int, default=200)
    p.add_argument("-q", "--rps", type=int, default=0)
    p.add_argument("-z", "--duration", default="0")
    p.add_argument("-t", "--timeout", default="20s")
    p.add_argument("--connect-timeout", default="10s")
    p.add_argument("-O", "--format", default="summary", choices=("summary", "json", "pretty"))
    p.add_argument("host")
    return p


@dataclass(frozen=True)
class Method:
    path: str
    request: type[Message]
    response: type[Message]
    server_streaming: bool
    client_streaming: bool


def _pool_from_files(
    files: Sequence[descriptor_pb2.FileDescriptorProto],
) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pending = {f.name: f for f in files}
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added or name not in pending:
            return
        for dep in pending[name].dependency:
            add(dep)
        pool.Add(pending[name])
        added.add(name)

    for name in list(pending):
        add(name)
    return pool


def _method(pool: descriptor_pool.DescriptorPool, call: str) -> Method:
    service_name, _, method_name = call.replace("/", ".").rpartition(".")
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        raise GhzError(f"cannot find service {service_name!r}") from None
    method = service.methods_by_name.get(method_name)
    if method is None:
        raise GhzError(f"service {service_name!r} does not include a method named {method_name!r}")
    return Method(
        path=f"/{service_name}/{method_name}",
        request=message_factory.GetMessageClass(method.input_type),
        response=message_factory.GetMessageClass(method.output_type),
        server_streaming=method.server_streaming,
        client_streaming=method.client_streaming,
    )


def from_protoset(path: str, call: str) -> Method:
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes()).file
    except OSError as e:
        raise GhzError(f"open {path}: {e.strerror}") from None
    return _method(_pool_from_files(files), call)


def from_proto(path: str, import_paths: str, call: str) -> Method:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.protoset"
        includes = [f"-I{p}" for p in filter(None, import_paths.split(","))]
        includes.append(f"-I{Path(path).parent or '.'}")
        done = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", *includes, "--include_imports",
             f"--descriptor_set_out={out}", path],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise GhzError(done.stderr.strip() or f"cannot compile {path}")
        return from_protoset(str(out), call)


async def from_reflection(channel: grpc.aio.Channel, call: str, timeout: float) -> Method:
    """Ask the server's reflection service for the file defining the service, as ghz does."""
    symbol = call.replace("/", ".").rpartition(".")[0]
    stream = channel.stream_stream(
        REFLECTION,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    rpc = stream(None, timeout=timeout)  # requests written below
    replies = []
    try:  # a server (or sidecar) that refuses may end the call before the request is written
        await rpc.write(request)
        await rpc.done_writing()
        replies = [r async for r in rpc]
    except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
        pass
    code = await rpc.code()  # the call's own status, whatever the write or read saw
    if code != grpc.StatusCode.OK:
        raise GhzError(f"rpc error: code = {go_code(code)} desc = {await rpc.details()}")
    files: list[descriptor_pb2.FileDescriptorProto] = []
    for reply in replies:
        if reply.HasField("error_response"):
            raise GhzError(f"cannot find service {symbol!r}: {reply.error_response.error_message}")
        for raw in reply.file_descriptor_response.file_descriptor_proto:
            files.append(descriptor_pb2.FileDescriptorProto.FromString(raw))
    return _method(_pool_from_files(files), call)


def go_code(code: grpc.StatusCode) -> str:
    """Go's name of a gRPC code (codes.Code.String()): OK, Unavailable, PermissionDenied..."""
    if code == grpc.StatusCode.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


def mounted(path: str) -> str:
    """``path`` as the pod sees it, resolved through the lab's volume mounts."""
    mounts: dict[str, str] = json.loads(os.environ.get("RAGMESH_LAB_MOUNTS") or "{}")
    for inside, local in mounts.items():
        if path == inside or path.startswith(inside.rstrip("/") + "/"):
            return local + path[len(inside.rstrip("/")) :]
    return path


def target(host: str) -> str:
    hosts: dict[str, str] = json.loads(os.environ.get("RAGMESH_LAB_HOSTS") or "{}")
    return hosts.get(host, host)


async def load(args: argparse.Namespace) -> dict[str, Any]:
    if not args.insecure:
        raise GhzError("the rehearsal's ghz speaks plaintext to the sidecar: pass --insecure")
    call_timeout = duration(args.timeout)
    scale = float(os.environ.get("RAGMESH_REHEARSAL_TIMESCALE") or "1")
    run_for = duration(args.duration) / scale
    metadata = tuple(json.loads(args.metadata).items()) if args.metadata else ()
    channel = grpc.aio.insecure_channel(target(args.host))
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), duration(args.connect_timeout))
        except TimeoutError:
            raise GhzError("context deadline exceeded") from None
        if args.protoset:
            method = from_protoset(mounted(args.protoset), args.call)
        elif args.proto:
            method = from_proto(mounted(args.proto), args.import_paths, args.call)
        else:
            method = await from_reflection(channel, args.call, call_timeout)
        if method.client_streaming:
            raise GhzError("client-streaming calls are not supported by the rehearsal's ghz")
        try:
            request = json_format.Parse(args.data, method.request())
        except json_format.ParseError as e:
            raise GhzError(str(e)) from None
        return await _drive(channel, method, request, args, run_for, call_timeout, metadata)
    finally:
        await channel.close(None)


async def _drive(
    channel: grpc.aio.Channel,
    method: Method,
    request: Message,
    args: argparse.Namespace,
    run_for: float,
    call_timeout: float,
    metadata: tuple[tuple[str, str], ...],
) -> dict[str, Any]:
    if method.server_streaming:
        stream = channel.unary_stream(
            method.path, request_serializer=type(request).SerializeToString,
            response_deserializer=method.response.FromString,
        )  # fmt: skip
    else:
        unary = channel.unary_unary(
            method.path, request_serializer=type(request).SerializeToString,
            response_deserializer=method.response.FromString,
        )  # fmt: skip
    codes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    start = time.monotonic()
    issued = 0

    def may_issue() -> bool:
        if run_for > 0:
            return time.monotonic() - start < run_for
        return issued < int(args.total)

    async def one() -> None:
        began = time.monotonic()
        try:
            if method.server_streaming:
                async for _ in stream(request, timeout=call_timeout, metadata=metadata):
                    pass
            else:
                await unary(request, timeout=call_timeout, metadata=metadata)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as e:
            codes[go_code(e.code())] += 1
            errors[f"rpc error: code = {go_code(e.code())} desc = {e.details()}"] += 1
        latencies.append(time.monotonic() - began)

    async def worker() -> None:
        nonlocal issued
        while may_issue():
            if args.rps > 0:  # ghz's rate limit is across all workers
                due = start + issued / args.rps
                issued += 1
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if run_for > 0 and time.monotonic() - start >= run_for:
                    return
            else:
                issued += 1
            await one()

    await asyncio.gather(*(worker() for _ in range(max(1, args.concurrency))))
    total = time.monotonic() - start
    ns = [int(x * 1e9) for x in latencies]
    return {
        "count": len(ns),
        "total": int(total * 1e9),
        "average": int(sum(ns) / len(ns)) if ns else 0,
        "fastest": min(ns, default=0),
        "slowest": max(ns, default=0),
        "rps": len(ns) / total if total else 0.0,
        "errorDistribution": dict(errors),
        "statusCodeDistribution": dict(codes),
    }


def summary(report: dict[str, Any]) -> str:
    lines = [
        "Summary:",
        f"  Count:\t{report['count']}",
        f"  Total:\t{report['total'] / 1e6:.2f} ms",
        f"  Average:\t{report['average'] / 1e6:.2f} ms",
        f"  Requests/sec:\t{report['rps']:.2f}",
        "",
        "Status code distribution:",
        *(f"  [{code}]\t{n} responses" for code, n in report["statusCodeDistribution"].items()),
    ]
    if report["errorDistribution"]:
        lines += ["", "Error distribution:"]
        lines += [f"  [{n}]\t{e}" for e, n in report["errorDistribution"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # argparse's usage error: ghz exits 1 too
        return 0 if e.code == 0 else 1
    try:
        report = asyncio.run(load(args))
    except GhzError as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps(report) if args.format == "json" else summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
