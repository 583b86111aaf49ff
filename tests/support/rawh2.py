"""A bare HTTP/2 gRPC client for hostile-input tests.

grpcio refuses to send what a hostile peer (or a proxy passing it through) can: header
values with bytes outside printable ASCII, or bodies that are not the message they claim
to be. This client sends exactly the header block and body it is given, and returns the
response's status and message bodies.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class RawReply:
    """What came back on the stream."""

    headers: dict[str, str] = field(default_factory=dict)
    messages: list[bytes] = field(default_factory=list)

    @property
    def code(self) -> int:
        """The grpc-status (from the trailers, or a trailers-only reply); -1 when absent."""
        return int(self.headers.get("grpc-status", "-1"))

    @property
    def message(self) -> str:
        return self.headers.get("grpc-message", "")


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message."""
    return struct.pack(">BI", 0, len(message)) + message


def call(
    port: int,
    method: str,
    body: bytes,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    timeout: float = 20.0,
) -> RawReply:
    """POST one unary-request call to 127.0.0.1:``port`` and read until the stream ends."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
    )
    conn.initiate_connection()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", method.encode()),
        (b":authority", f"127.0.0.1:{port}".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *extra_headers,
    ]
    reply = RawReply()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, headers)
        conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        buffer = b""
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    for k, v in event.headers:
                        reply.headers[bytes(k).decode()] = bytes(v).decode("latin-1")
                elif isinstance(event, h2.events.DataReceived):
                    buffer += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    done = True
            sock.sendall(conn.data_to_send())
    while len(buffer) >= 5:
        _, length = struct.unpack_from(">BI", buffer)
        reply.messages.append(buffer[5 : 5 + length])
        buffer = buffer[5 + length :]
    return reply
