"""The ``ragmesh`` command: up, ingest, ask, status, mesh up, traces.

``ragmesh up`` runs the stack in the foreground and records its addresses in
``<data dir>/stack.json``; the other commands find the query service there (or at
``--addr``). A service that is down gives one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from ragmesh.gate.service import load_golden, score
from ragmesh.kit.clients import QueryClient
from ragmesh.kit.domain import (
    AskDone,
    AskInput,
    Citation,
    Citations,
    Delta,
    DocumentIn,
    JobState,
    JobStatus,
    Params,
)
from ragmesh.kit.errors import RagmeshError
from ragmesh.v1 import (
    retrieval_service_pb2,
    retrieval_service_pb2_grpc,
)
from ragmesh_lab.cli import evaluate
from ragmesh_lab.cli.documents import FileDocument, find_files, read_document
from ragmesh_lab.cli.supervisor import SERVICES, Stack, StackError, health, read_state
from ragmesh_lab.meshlab.manifests import TranslationError

DEFAULT_DIR = Path("var/ragmesh")
BATCH_DOCUMENTS = 64
BATCH_BYTES = 8 << 20
DONE_STATES = (JobState.SUCCEEDED, JobState.FAILED)


SCOPES = ("ask", "ingest", "delete")


class CliError(Exception):
    """A one-line error for the user."""


def query_address(args: argparse.Namespace) -> str:
    if args.addr:
        return str(args.addr)
    state = read_state(args.data_dir)
    if "ingress" in state:  # ragmesh mesh up: the way in is the ingress gateway
        return state["ingress"]["grpc"]
    if "query" not in state:
        raise CliError(f"no running stack in {args.data_dir} (start one: ragmesh up) and no --addr")
    return state["query"]["grpc"]


#: the index version this data directory's CLI writes reached, per query address: `ask`
#: reads its own writes (min_index_version) after an `ingest` or `delete`
WRITES_FILE = "read-your-writes.json"


def _writes(args: argparse.Namespace) -> dict[str, int]:
    try:
        data = json.loads((Path(args.data_dir) / WRITES_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def remember_writes(args: argparse.Namespace, address: str, version: int) -> None:
    """After this CLI's writes through ``address``: the index version they reached."""
    writes = _writes(args)
    if version <= writes.get(address, 0):
        return
    writes[address] = version
    path = Path(args.data_dir) / WRITES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(writes))


def run_until_stopped(stack: Stack) -> None:
    """Block until SIGINT/SIGTERM; a process that dies ends the run with an error."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        for p in stack.procs.values():
            if p.popen.poll() is not None:
                raise StackError(f"{p.name} exited ({p.popen.returncode}); see {p.log}")
    print("stopping ...", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    stack = Stack(args.data_dir)
    print(f"starting redis and {', '.join(SERVICES)} (logs in {args.data_dir}/logs) ...")
    try:
        if args.llm:
            start_llm(stack)
        if wants_milvus(args):
            start_milvus(stack)
        stack.up()
        print(f"{'service':<11} {'pid':>7}  {'grpc':<21} {'metrics':<21}")
        for name, port in (("redis", stack.redis_port), ("redis-cache", stack.cache_port)):
            address = f"127.0.0.1:{port}"  # the password stays in a file, off the command line
            print(f"{name:<11} {stack.procs[name].popen.pid:>7}  {address:<21}")
        for name in SERVICES:
            p = stack.procs[name]
            metrics = f"127.0.0.1:{p.metrics_port}"
            print(f"{name:<11} {p.popen.pid:>7}  {p.address:<21} {metrics:<21}")
        print(f"OpenAI-compatible API: http://127.0.0.1:{stack.procs['query'].http_port}/v1")
        print("ready: ragmesh ingest PATH... / ragmesh ask QUESTION; Ctrl-C stops", flush=True)
        run_until_stopped(stack)
        return 0
    finally:
        stack.down()
        print("stopped", flush=True)


def wants_milvus(args: argparse.Namespace) -> bool:
    """--milvus, or RAGMESH_INDEX_BACKEND=milvus without a server of one's own."""
    backend = os.environ.get("RAGMESH_INDEX_BACKEND", "").lower()
    return bool(args.milvus) or (backend == "milvus" and not os.environ.get("RAGMESH_MILVUS_URI"))


def start_milvus(stack: Stack) -> None:
    """The Milvus server first, then retrieval's milvus backend points at it."""
    from ragmesh_lab.cli import milvus

    stack.workdir.mkdir(parents=True, exist_ok=True)
    print("starting milvus (about a minute the first time) ...", flush=True)
    proc = milvus.start_milvus(stack)
    print(f"milvus: {stack.env['RAGMESH_MILVUS_URI']}, pid {proc.popen.pid}", flush=True)


def start_llm(stack: Stack) -> None:
    """--llm: the model server first, then generation's openai engine points at it."""
    from ragmesh_lab.cli import llm

    stack.workdir.mkdir(parents=True, exist_ok=True)
    proc = llm.start_model_server(stack)
    url = stack.env["RAGMESH_GEN_OPENAI_URL"]
    print(f"model server: {llm.MODEL_ALIAS} (SmolLM2-135M-Instruct) at {url}, pid {proc.popen.pid}")


def _progress(job: JobStatus, width: int = 30) -> str:
    finished = job.documents_done + job.documents_failed
    filled = int(width * finished / max(1, job.documents_total))
    return (
        f"[{'#' * filled}{'-' * (width - filled)}] {finished}/{job.documents_total} documents, "
        f"{job.chunks_done} chunks  {job.state.name.lower()}"
    )


def batches(docs: Sequence[FileDocument]) -> Iterator[Sequence[FileDocument]]:
    """Ingest calls of at most BATCH_DOCUMENTS documents and about BATCH_BYTES (a file
    larger than that goes alone), well below the servers' message limit."""
    batch: list[FileDocument] = []
    size = 0
    for d in docs:
        weight = len(d.text) + len(d.content)
        if batch and (len(batch) == BATCH_DOCUMENTS or size + weight > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(d)
        size += weight
    if batch:
        yield batch


def cmd_ingest(args: argparse.Namespace) -> int:
    address = query_address(args)
    cwd = Path.cwd().resolve()
    docs: list[FileDocument] = []
    try:
        for path in args.paths:  # ids relative to the working directory, else to the argument
            root = cwd if path.resolve().is_relative_to(cwd) else path.resolve().parent
            docs.extend(read_document(f, root) for f in find_files([path]))
    except ValueError as e:
        raise CliError(str(e)) from None
    if not docs:
        raise CliError("no .txt, .md, .html, .pdf or .docx files found")

    async def run() -> list[JobStatus]:
        async with grpc.aio.insecure_channel(address) as channel:
            client = QueryClient(channel, timeout=30, token=args.token, api_key=api_key(args))
            jobs = []
            for batch in batches(docs):
                jobs.append(
                    await client.ingest(
                        [
                            DocumentIn(
                                d.document_id,
                                d.title,
                                d.text,
                                {"type": d.kind},
                                d.source,
                                d.content,
                                d.media_type,
                            )
                            for d in batch
                        ]
                    )
                )
            print(f"queued {len(docs)} documents as job(s) {', '.join(jobs)}", file=sys.stderr)
            return await wait_for_jobs(client, jobs, args.timeout)

    return report_jobs(address, run, args)


async def wait_for_jobs(
    client: QueryClient, jobs: Sequence[str], timeout: float
) -> list[JobStatus]:
    """Poll ``jobs`` until each finished, drawing their progress on stderr."""
    deadline = time.monotonic() + timeout
    while True:
        status = [await client.job(j) for j in jobs]
        finished = all(s.state in DONE_STATES for s in status)
        total = JobStatus(
            "",
            max((s.state for s in status), key=lambda s: s.value) if finished else JobState.RUNNING,
            sum(s.documents_total for s in status),
            sum(s.documents_done for s in status),
            sum(s.documents_failed for s in status),
            sum(s.chunks_done for s in status),
            sum(s.chunks_failed for s in status),
            "",
        )
        print("\r" + _progress(total), end="", file=sys.stderr, flush=True)
        if finished:
            return status
        if time.monotonic() > deadline:
            raise CliError(f"jobs not finished after {timeout:.0f}s")
        await asyncio.sleep(0.2)


def report_jobs(
    address: str, run: Callable[[], Coroutine[Any, Any, list[JobStatus]]], args: argparse.Namespace
) -> int:
    """Run ``run`` (which queues jobs and waits for them); 1 when a document failed."""
    try:
        status = asyncio.run(run())
    except RagmeshError as e:
        print(file=sys.stderr)
        raise CliError(f"query service at {address}: {e}{token_hint(e, args)}") from None
    failed = sum(s.documents_failed for s in status)
    print(file=sys.stderr)
    remember_writes(args, address, max((s.index_version for s in status), default=0))
    for s in status:
        if s.last_error:
            print(f"job {s.job_id}: {s.last_error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """The caller's recent ingest jobs and their failed documents; ``jobs retry ID`` queues a
    job's failed documents again and waits for them."""
    address = query_address(args)
    if args.jobs_command == "retry":

        async def retry() -> list[JobStatus]:
            async with grpc.aio.insecure_channel(address) as channel:
                client = QueryClient(channel, timeout=30, token=args.token, api_key=api_key(args))
                job = await client.retry(args.job_id)
                print(f"queued the failed documents again as job {job}", file=sys.stderr)
                return await wait_for_jobs(client, [job], args.timeout)

        return report_jobs(address, retry, args)

    async def listed() -> list[JobStatus]:
        async with grpc.aio.insecure_channel(address) as channel:
            client = QueryClient(channel, timeout=30, token=args.token, api_key=api_key(args))
            return await client.jobs(args.limit)

    try:
        jobs = asyncio.run(listed())
    except RagmeshError as e:
        raise CliError(f"query service at {address}: {e}{token_hint(e, args)}") from None
    if not jobs:
        print("no ingest jobs (jobs are kept for RAGMESH_INGEST_JOB_TTL_SECONDS)")
    for j in jobs:
        print(
            f"{j.job_id}  {j.state.name.lower():<9}  {j.documents_done}/{j.documents_total} "
            f"documents, {j.documents_failed} failed, {j.chunks_done} chunks"
        )
        for document_id, error in j.failed_documents:
            print(f"    failed {document_id}: {error}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Remove documents (by the ids ingest gave them) from the caller's tenant."""
    address = query_address(args)

    async def run() -> list[JobStatus]:
        async with grpc.aio.insecure_channel(address) as channel:
            client = QueryClient(channel, timeout=30, token=args.token, api_key=api_key(args))
            jobs = [await client.delete_document(d) for d in args.document_ids]
            print(f"deleting {len(jobs)} documents as job(s) {', '.join(jobs)}", file=sys.stderr)
            status = await wait_for_jobs(client, jobs, args.timeout)
        print(f"\nremoved {sum(s.chunks_done for s in status)} chunks", end="", file=sys.stderr)
        return status

    return report_jobs(address, run, args)


def render_sources(citations: Sequence[Citation], answer: str) -> str:
    lines = ["", "Sources:"]
    for c in citations:
        used = "*" if f"[{c.marker}]" in answer else " "
        title = c.metadata.get("title", "")
        head = f"{used}[{c.marker}] {c.document_id}" + (f" — {title}" if title else "")
        if c.metadata.get("page"):
            head += f", page {c.metadata['page']}"
        lines.append(f"{head}  (score {c.score:.3f})")
        snippet = textwrap.shorten(c.snippet, 160, placeholder=" …")
        lines.append(textwrap.indent(snippet, "      "))
    return "\n".join(lines)


def cmd_ask(args: argparse.Namespace) -> int:
    address = query_address(args)
    filters = dict(f.split("=", 1) for f in args.filter)
    request = AskInput(
        question=args.question,
        top_k=args.top_k,
        filter=filters,
        params=Params(max_tokens=args.max_tokens),
        skip_cache=args.no_cache,
        # read your writes: this CLI's last ingest or delete through the same address
        min_index_version=(
            _writes(args).get(address, 0)
            if args.min_index_version is None
            else args.min_index_version
        ),
    )

    async def stream() -> tuple[tuple[Citation, ...], str, AskDone | None]:
        citations: tuple[Citation, ...] = ()
        answer, done = "", None
        async with grpc.aio.insecure_channel(address) as channel:
            client = QueryClient(
                channel, timeout=args.timeout, token=args.token, api_key=api_key(args)
            )
            async for event in client.ask(request):
                if isinstance(event, Citations):
                    citations = event.citations
                elif isinstance(event, Delta):
                    answer += event.text
                    print(event.text, end="", flush=True)
                else:
                    done = event
        return citations, answer, done

    try:
        citations, answer, done = asyncio.run(stream())
    except RagmeshError as e:
        print(file=sys.stderr)
        raise CliError(f"query service at {address}: {e}{token_hint(e, args)}") from None
    assert done is not None  # every Ask stream ends with one
    print("\n" + render_sources(citations, answer))
    t = done.timings
    print(
        f"({'cache hit' if done.cache_hit else 'generated'}; "
        f"first token {t.first_token_ms:.1f} ms, "
        f"total {t.total_ms:.1f} ms; {done.completion_tokens} tokens, {done.finish.name.lower()}; "
        f"index v{done.index_version})",
        file=sys.stderr,
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Answer quality over a golden set; 1 when a --min-* threshold is not met."""
    address = query_address(args)
    try:
        queries = load_golden(args.golden)
    except (OSError, RagmeshError) as e:
        raise CliError(str(e)) from None
    version = _writes(args).get(address, 0)
    try:
        answers = asyncio.run(
            evaluate.ask_all(address, queries, args.token, api_key(args), args.timeout, version)
        )
    except RagmeshError as e:
        raise CliError(f"query service at {address}: {e}{token_hint(e, args)}") from None
    scores = score(queries, answers)
    print(evaluate.report(args.golden, scores, args.json))
    failed = [
        f"{label} {getattr(scores, name):.3f} < {limit}"
        for name, label, _ in evaluate.FIGURES
        if (limit := getattr(args, f"min_{name}", None)) is not None
        and getattr(scores, name) < limit
    ]
    for line in failed:
        print(f"ragmesh eval: {line}", file=sys.stderr)
    return 1 if failed else 0


def token_hint(error: Exception, args: argparse.Namespace) -> str:
    """What to do when the ingress refused the caller."""
    text = str(error)
    if "unauthenticated" not in text and "permission_denied" not in text:
        return ""
    if args.api_key:
        return " (the ingress refused the API key: see ragmesh keys list, or create one)"
    return ' (the ingress requires a token: --token "$(ragmesh token --tenant T --scope ask)")'


def api_key(args: argparse.Namespace) -> str:
    """--api-key: the key itself, or @FILE to read it from a file (out of the process list)."""
    value = str(args.api_key)
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text().strip()
        except OSError as e:
            raise CliError(f"--api-key: {e}") from None
    return value


def key_file(args: argparse.Namespace) -> Path:
    return Path(args.file) if args.file else args.data_dir / "keys.jsonl"


def cmd_keys(args: argparse.Namespace) -> int:
    """API keys: create one (printed once; its record appended to the key file), list the
    key file's records, or revoke one (its record removed). The key file defaults to the
    local mesh's (<data dir>/keys.jsonl); in a cluster it is the Secret ragmesh-api-keys."""
    from ragmesh.keys.service import ApiKey, mint, parse_record
    from ragmesh.kit.errors import InvalidArgument

    path = key_file(args)
    lines = path.read_text().splitlines() if path.exists() else []
    if args.keys_command == "create":
        scopes = [s for s in args.scope.split(",") if s]
        expires = time.time() + args.expires_days * 86400 if args.expires_days else None
        try:
            key, record = mint(args.tenant, scopes, args.name, expires)
        except InvalidArgument as e:
            raise CliError(f"--{e.field.removesuffix('s')}: {e.problem}") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as out:
            out.write(record.record() + "\n")
        print(key)
        print(
            f"key {record.id} for tenant {record.tenant}, scopes {','.join(sorted(record.scopes))}"
            f": its digest is in {path}; the key itself is shown only now",
            file=sys.stderr,
        )
        return 0
    parsed: list[tuple[str, ApiKey | None]] = []  # every line, with its record if it is one
    for line in lines:
        try:
            parsed.append((line, parse_record(line)))
        except ValueError:
            parsed.append((line, None))  # comments, blank or malformed lines: kept as they are
    records = [r for _, r in parsed if r is not None]
    if args.keys_command == "list":
        print(f"{'id':<17} {'tenant':<16} {'scopes':<18} {'expires':<20} name")
        for r in records:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.expires)) if r.expires else "-"
            print(f"{r.id:<17} {r.tenant:<16} {','.join(sorted(r.scopes)):<18} {when:<20} {r.name}")
        return 0
    kept = [line for line, r in parsed if r is None or r.id != args.key_id]
    if len(kept) == len(lines):
        raise CliError(f"no key {args.key_id} in {path}")
    path.write_text("".join(line + "\n" for line in kept))
    print(f"revoked {args.key_id} (removed from {path})", file=sys.stderr)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """A development token from the local mesh's issuer, for the issuer and audience that
    mesh/authentication.yaml names (the local mesh verifies exactly those)."""
    from ragmesh_lab.meshlab import manifests
    from ragmesh_lab.meshlab.issuer import LocalIssuer

    rules = manifests.load(args.manifests).gateway_jwt
    if not rules:
        raise CliError(f"{args.manifests}/mesh has no RequestAuthentication for the gateway")
    scopes = [s for s in args.scope.split(",") if s]
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise CliError(f"--scope: unknown {sorted(unknown)} (scopes: {', '.join(SCOPES)})")
    issuer = LocalIssuer(args.data_dir / "pki" / "issuer")
    rule = rules[0]
    print(
        issuer.mint(
            issuer=rule.issuer,
            audience=rule.audiences[0] if rule.audiences else "",
            subject=args.subject,
            tenant=args.tenant,
            scopes=scopes,
            ttl=args.ttl,
        )
    )
    return 0


def cmd_mesh(args: argparse.Namespace) -> int:
    from ragmesh_lab.meshlab.lab import MeshLab

    lab = MeshLab(args.manifests, args.data_dir, rest_port=args.rest_port)
    print(f"starting the local mesh from the chart in {args.manifests}/charts ...", flush=True)
    try:
        if args.trace:
            lab.start_trace_receiver()
        if args.llm:
            start_llm(lab.stack)
        lab.up()
        print(f"{'sidecar':<22} {'identity':<58} listeners")
        for sc in lab.sidecars.values():
            ports = [f"in:{k}->{v}" for k, v in sc.inbound.items()]
            ports += [f"out:{k}->{v}" for k, v in sc.outbound.items() if v]
            print(f"{sc.name:<22} {sc.principal:<58} {' '.join(ports)}")
        print(f"ingress gateway: gRPC {lab.ingress_address}, REST {lab.rest_url}")
        print(f"OpenAI-compatible API (through the ingress): {lab.rest_url}/v1")
        print(
            "ready: ragmesh ingest PATH... / ragmesh ask QUESTION go through the ingress; "
            "Ctrl-C stops",
            flush=True,
        )
        if args.trace:
            print(f"tracing: spans go to {lab.traces_file}; read them with: ragmesh traces")
        run_until_stopped(lab.stack)
        return 0
    finally:
        lab.down()
        print("stopped", flush=True)


def cmd_rehearse(args: argparse.Namespace) -> int:
    from ragmesh_lab.rehearsal.run import rehearse
    from ragmesh_lab.rehearsal.stage import NoScenario

    workdir = args.data_dir / "rehearsals" / f"{args.service}-{args.scenario}"
    try:
        result = rehearse(args.manifests, args.service, args.scenario, workdir, args.timescale)
    except NoScenario as e:
        raise CliError(str(e)) from None
    return 0 if result.as_expected else 1


def sidecar_state(admin: str) -> str:
    """An Envoy's /ready answer from its admin socket (``unix:PATH``)."""
    from ragmesh_lab.meshlab.lab import admin_get

    try:
        return admin_get(admin.removeprefix("unix:"), "/ready", 2.0)[1].strip()
    except OSError:
        return "UNREACHABLE"


def http_health(address: str) -> str:
    """SERVING when ``GET /healthz`` answers 200, else UNREACHABLE or the status code."""
    import http.client

    connection = http.client.HTTPConnection(address, timeout=2)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError:
        return "UNREACHABLE"
    finally:
        connection.close()
    return "SERVING" if status == 200 else f"HTTP {status}"


def cmd_index(args: argparse.Namespace) -> int:
    from ragmesh.retrieval import backup

    index = args.index_dir or args.data_dir / "index"
    try:
        if args.index_command == "backup":
            m = backup.create(index, args.destination)
            print(f"backed up {index} at index version {m.version} into {args.destination}")
            return 0
        if read_state(args.data_dir):
            raise CliError(f"the stack in {args.data_dir} is running: stop it before a restore")
        m = backup.restore(args.backup, index, args.force)
        print(f"restored index version {m.version} into {index}")
        return 0
    except backup.BackupError as e:
        raise CliError(str(e)) from None


def cmd_status(args: argparse.Namespace) -> int:
    state = read_state(args.data_dir)
    if not state:
        raise CliError(f"no running stack in {args.data_dir} (start one: ragmesh up)")
    ok = True
    print(f"{'process':<26} {'pid':>7}  {'address':<21} status")
    for name, info in state.items():
        if "admin" in info:  # an Envoy sidecar: its admin /ready
            status = sidecar_state(info["admin"])
        elif name in ("redis", "redis-cache", "ingress", "otlp-receiver", "model-server"):
            status = "-"
        elif not info.get("grpc"):  # an HTTP application (the API key checker): GET /healthz
            status = http_health(info["http"])
        else:
            status = health(info["grpc"])
        ok = ok and status in ("SERVING", "LIVE", "-")
        address = info.get("admin") or info.get("grpc") or info["http"]
        print(f"{name:<26} {info['pid']:>7}  {address:<21} {status}")
    if "retrieval" in state and health(state["retrieval"]["grpc"]) == "SERVING":
        with grpc.insecure_channel(state["retrieval"]["grpc"]) as channel:
            index = retrieval_service_pb2_grpc.RetrievalServiceStub(channel).GetIndexInfo(
                retrieval_service_pb2.GetIndexInfoRequest(), timeout=5
            )
        model = f", vectors of {index.embedding_model}" if index.embedding_model else ""
        print(
            f"index: {index.count} chunks, dim {index.dimension}, version {index.index_version}"
            + model
        )
    return 0 if ok else 1


def cmd_traces(args: argparse.Namespace) -> int:
    from ragmesh_lab.meshlab import traces

    path = args.data_dir / "traces.jsonl"
    spans = traces.read(path)
    if not spans:
        raise CliError(f"no spans in {path} (start the mesh with: ragmesh mesh up --trace)")
    grouped = traces.group(spans)
    if args.trace_id:
        chosen = [grouped[t] for t in grouped if t.startswith(args.trace_id.lower())]
        if not chosen:
            raise CliError(f"no trace {args.trace_id} in {path}")
    else:
        chosen = list(grouped.values())[-args.last :]
    print("\n\n".join(traces.render(t) for t in chosen))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragmesh", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DIR, help="where up keeps its state")
    p.add_argument("--addr", default="", help="query service host:port (default: from up)")
    p.add_argument(
        "--token",
        default="",
        help="an end user's bearer token, which the ingress gateway requires (ragmesh token)",
    )
    p.add_argument(
        "--api-key",
        default="",
        help="a machine client's API key instead of a token (or @FILE: read it from FILE)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Redis and every service locally; Ctrl-C stops")
    ingest = sub.add_parser(
        "ingest", help="ingest .txt, .md, .html, .pdf and .docx files or directories"
    )
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument("--timeout", type=float, default=600.0)
    jobs = sub.add_parser("jobs", help="recent ingest jobs and their failed documents")
    jobs.add_argument("--limit", type=int, default=20)
    jobs_sub = jobs.add_subparsers(dest="jobs_command")
    retry = jobs_sub.add_parser("retry", help="queue a job's failed documents again")
    retry.add_argument("job_id", metavar="JOB_ID")
    retry.add_argument("--timeout", type=float, default=600.0)
    delete = sub.add_parser("delete", help="remove ingested documents by their ids")
    delete.add_argument("document_ids", nargs="+", metavar="DOCUMENT_ID")
    delete.add_argument("--timeout", type=float, default=120.0)
    ask = sub.add_parser("ask", help="ask a question; streams the answer with citations")
    ask.add_argument("question")
    ask.add_argument("--top-k", type=int, default=0)
    ask.add_argument("--max-tokens", type=int, default=0)
    ask.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")
    ask.add_argument("--no-cache", action="store_true")
    ask.add_argument(
        "--min-index-version",
        type=int,
        default=None,
        help="answer from an index of at least this version (default: the one this data "
        "directory's last ingest or delete reached; 0: any)",
    )
    ask.add_argument("--timeout", type=float, default=120.0)
    ev = sub.add_parser(
        "eval", help="answer quality of the running stack over a golden set (JSON lines)"
    )
    ev.add_argument("golden", type=Path, metavar="GOLDEN.jsonl")
    ev.add_argument("--json", action="store_true", help="print the figures as JSON")
    for name in ("hit1", "hit5", "fact", "refused"):
        ev.add_argument(
            f"--min-{name}", type=float, default=None, help=f"exit 1 when {name} is lower"
        )
    ev.add_argument("--timeout", type=float, default=120.0)
    sub.add_parser("status", help="health of every service of the running stack")
    mesh = sub.add_parser("mesh", help="the local mesh: every service behind an Envoy sidecar")
    mesh_sub = mesh.add_subparsers(dest="mesh_command", required=True)
    mesh_up = mesh_sub.add_parser("up", help="start the stack behind sidecars; Ctrl-C stops")
    mesh_up.add_argument(
        "--manifests", type=Path, default=Path("."), help="the repository: charts/ragmesh and mesh/"
    )
    mesh_up.add_argument(
        "--rest-port",
        type=int,
        default=8080,
        help="the ingress gateway's REST port on 127.0.0.1 (0: any free port)",
    )
    up.add_argument(
        "--milvus",
        action="store_true",
        help="keep the index in a real Milvus server started here (RAGMESH_INDEX_BACKEND=milvus "
        "does the same; with RAGMESH_MILVUS_URI set, retrieval uses that server instead)",
    )
    for command in (up, mesh_up):
        command.add_argument(
            "--llm",
            action="store_true",
            help="generate with a real model: SmolLM2-135M-Instruct behind llama.cpp's "
            "OpenAI-compatible server, through the openai engine (make llm installs it)",
        )
    mesh_up.add_argument(
        "--trace",
        action="store_true",
        help="run a local OTLP receiver; every Envoy and service sends it spans",
    )
    tk = sub.add_parser("token", help="mint a development token for the local mesh's ingress")
    tk.add_argument("--tenant", required=True, help="the tenant the token grants")
    tk.add_argument("--scope", default="ask", help="comma-separated: ask, ingest, delete")
    tk.add_argument("--subject", default="developer", help="the end user (the sub claim)")
    tk.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    tk.add_argument(
        "--manifests", type=Path, default=Path("."), help="the repository: charts/ragmesh and mesh/"
    )
    keys = sub.add_parser("keys", help="API keys for machine clients (the ingress checks them)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="mint a key: printed once, its digest kept")
    create.add_argument("--tenant", required=True, help="the tenant the key grants")
    create.add_argument("--scope", default="ask", help="comma-separated: ask, ingest, delete")
    create.add_argument("--name", default="", help="who or what uses it (shown by list)")
    create.add_argument("--expires-days", type=float, default=0, help="0: never expires")
    list_ = keys_sub.add_parser("list", help="the keys of the key file (never the keys)")
    revoke = keys_sub.add_parser("revoke", help="remove a key from the key file")
    revoke.add_argument("key_id", help="the key's id (rmk_<id>_...; ragmesh keys list)")
    for command in (create, list_, revoke):
        command.add_argument(
            "--file", default="", help="the key file (default: the local mesh's, in --data-dir)"
        )
    rh = sub.add_parser(
        "rehearse",
        help="play a Canary's release (Flagger's analysis) on the local mesh; prints a timeline",
    )
    rh.add_argument(
        "service",
        choices=("embedding", "retrieval", "generation", "query", "ingest"),
        help="a service with a Canary",
    )
    rh.add_argument(
        "--scenario",
        default="good",
        choices=("good", "errors", "latency", "quality", "no-traffic", "backlog", "no-openai"),
        help="the new release: good, or one that must be rolled back (default: good); "
        "backlog (ingest): a burst of documents, KEDA's decision in the timeline; no-openai "
        "(query): its OpenAI-compatible API off",
    )
    rh.add_argument(
        "--timescale",
        type=float,
        default=12.0,
        help="compress Flagger's clock N times (default 12: a 1m interval takes 5 s)",
    )
    rh.add_argument(
        "--manifests", type=Path, default=Path("."), help="the repository: charts/ragmesh and mesh/"
    )
    ix = sub.add_parser("index", help="back up and restore the stack's FAISS index")
    ix_sub = ix.add_subparsers(dest="index_command", required=True)
    bk = ix_sub.add_parser("backup", help="a consistent copy, taken while the stack serves")
    bk.add_argument("destination", type=Path, help="a new directory")
    rs = ix_sub.add_parser("restore", help="put a backup back (the stack stopped)")
    rs.add_argument("backup", type=Path)
    rs.add_argument("--force", action="store_true", help="replace the index there")
    for command in (bk, rs):
        command.add_argument(
            "--index-dir", type=Path, default=None, help="default: <data-dir>/index"
        )
    tr = sub.add_parser("traces", help="print the traces of ragmesh mesh up --trace as trees")
    tr.add_argument("trace_id", nargs="?", default="", help="a trace id (or its prefix)")
    tr.add_argument("--last", type=int, default=1, help="how many of the latest traces")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {
        "up": cmd_up,
        "ingest": cmd_ingest,
        "delete": cmd_delete,
        "ask": cmd_ask,
        "eval": cmd_eval,
        "jobs": cmd_jobs,
        "status": cmd_status,
        "mesh": cmd_mesh,
        "traces": cmd_traces,
        "rehearse": cmd_rehearse,
        "token": cmd_token,
        "keys": cmd_keys,
        "index": cmd_index,
    }
    try:
        return commands[args.command](args)
    except (CliError, StackError, TranslationError) as e:
        print(f"ragmesh: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
