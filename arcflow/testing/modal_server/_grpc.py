"""grpclib plumbing: a server whose HTTP/2 settings and connections we control.

* :class:`ListeningServer` is a :class:`grpclib.server.Server` that advertises
  ``SETTINGS_MAX_CONCURRENT_STREAMS`` of our choosing, remembers the HTTP/2
  connections it accepted (so an outage can reset them) and counts them;
* :class:`StatusDetailsCodec` encodes error details the way Modal's servers do
  (a ``modal.client.RPCStatus`` in ``grpc-status-details-bin``), which is how a
  ``RPCRetryPolicy`` (retry-after hint) reaches the SDK;
* :func:`fill_unimplemented` makes a generated servicer base concrete: every RPC
  we do not implement fails with UNIMPLEMENTED naming the method;
* :func:`make_jwt` / :func:`jwt_claims`: unsigned JWTs, enough for the SDK, which
  only reads their ``exp`` claim.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import json
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

import h2.settings
from google.protobuf import any_pb2
from google.protobuf.message import Message
from grpclib import GRPCError, Status
from grpclib.encoding.base import StatusDetailsCodecBase
from grpclib.protocol import Connection, EventsProcessor, H2Protocol, _set_nodelay
from grpclib.server import Server
from h2.connection import H2Connection
from h2.settings import SettingCodes
from modal_proto import api_pb2

__all__ = [
    "ListeningServer",
    "StatusDetailsCodec",
    "fill_unimplemented",
    "jwt_claims",
    "make_jwt",
]


class StatusDetailsCodec(StatusDetailsCodecBase):
    """Error details as ``modal.client.RPCStatus`` (wire-compatible with ``google.rpc.Status``)."""

    def encode(
        self, status: Status, message: str | None, details: Sequence[Message] | None
    ) -> bytes:
        proto = api_pb2.RPCStatus(code=status.value, message=message or "")
        for detail in details or ():
            packed = any_pb2.Any()
            packed.Pack(detail, type_url_prefix="type.modal.com/")
            proto.details.append(packed)
        data: bytes = proto.SerializeToString()
        return data

    def decode(self, status: Status, message: str | None, data: bytes) -> Any:
        return list(api_pb2.RPCStatus.FromString(data).details)


class _Protocol(H2Protocol):
    """H2Protocol announcing our own MAX_CONCURRENT_STREAMS in its initial SETTINGS frame.

    Same steps as grpclib's ``H2Protocol.connection_made``, with the local settings
    replaced before ``initiate_connection()`` sends them.
    """

    max_concurrent_streams = 100
    on_made: Callable[[_Protocol], None] | None = None
    on_lost: Callable[[_Protocol], None] | None = None
    transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _set_nodelay(sock)
        h2_conn = H2Connection(config=self.h2_config)
        h2_conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: h2_conn.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        h2_conn.initiate_connection()
        initial = h2_conn.local_settings.initial_window_size
        conn_delta = self.config.http2_connection_window_size - initial
        stream_delta = self.config.http2_stream_window_size - initial
        if conn_delta:
            h2_conn.increment_flow_control_window(conn_delta)
        if stream_delta:
            h2_conn.update_settings(
                {SettingCodes.INITIAL_WINDOW_SIZE: self.config.http2_stream_window_size}
            )
        self.connection = Connection(
            h2_conn, cast(asyncio.Transport, transport), config=self.config
        )
        self.connection.flush()
        self.connection.initialize()
        self.processor = EventsProcessor(self.handler, self.connection)
        self.transport = transport
        if self.on_made is not None:
            self.on_made(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost(self)


class ListeningServer(Server):
    """A grpclib Server with a stream limit per connection and a handle on its connections."""

    def __init__(
        self,
        handlers: Sequence[Any],
        *,
        max_concurrent_streams: int,
        on_connection: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(handlers, status_details_codec=StatusDetailsCodec())
        self._max_streams = max_concurrent_streams
        self._on_connection = on_connection
        self.protocols: set[_Protocol] = set()

    def _protocol_factory(self) -> H2Protocol:
        plain = super()._protocol_factory()
        protocol = _Protocol(plain.handler, plain.config, plain.h2_config)
        protocol.max_concurrent_streams = self._max_streams
        protocol.on_made = self._made
        protocol.on_lost = self.protocols.discard
        return protocol

    def _made(self, protocol: _Protocol) -> None:
        self.protocols.add(protocol)
        if self._on_connection is not None:
            self._on_connection()

    async def listen(self, sock: socket.socket) -> None:
        await self.start(sock=sock)

    def reset_connections(self) -> None:
        """Drop every accepted connection at once (the peer sees a reset, not a goodbye)."""
        for protocol in list(self.protocols):
            transport = getattr(protocol, "transport", None)
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        self.protocols.clear()


def bind(port: int = 0) -> socket.socket:
    """A listening-ready TCP socket on 127.0.0.1 (port 0: a free one).

    Made with ``IPPROTO_TCP`` explicitly: grpclib sets TCP_NODELAY only on sockets whose
    ``proto`` says TCP, and accepted sockets inherit the listener's (with 0, Nagle and
    delayed ACKs held every request/answer exchange ~40 ms: each exec cost 0.2 s).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def fill_unimplemented(
    cls: type, *, service: str, record: Callable[[Any, str], None] | None = None
) -> type:
    """Give every still-abstract RPC of ``cls`` a body that fails with UNIMPLEMENTED."""

    def make(name: str) -> Callable[..., Any]:
        async def unimplemented(self: Any, stream: Any) -> None:
            if record is not None:
                record(self, name)
            raise GRPCError(
                Status.UNIMPLEMENTED,
                f"{service}/{name} is not implemented by arcflow's local Modal server",
            )

        unimplemented.__name__ = name
        return unimplemented

    for name in sorted(getattr(cls, "__abstractmethods__", ())):
        setattr(cls, name, make(name))
    abc.update_abstractmethods(cls)
    return cls


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT carrying ``claims`` (the SDK only decodes ``exp``)."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims, sort_keys=True).encode())
    return f"{header}.{payload}.{_b64(b'arcflow-local-modal')}"


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a token made by :func:`make_jwt`, or None if it is not one."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    return claims if isinstance(claims, dict) else None
