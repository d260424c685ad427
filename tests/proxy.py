"""A TCP proxy on loopback, written with trio, that drops and stalls connections at random.

Seeded, so a failing run can be replayed.  Used to put real network faults
between arcflow and PostgreSQL.
"""

from __future__ import annotations

import random

import attrs
import trio


@attrs.define
class FaultyProxy:
    """Forwards 127.0.0.1:<port> to ``target_port``; misbehaves with the given odds per chunk."""

    target_port: int
    target_host: str = "127.0.0.1"
    seed: int = 0
    drop_rate: float = 0.02
    stall_rate: float = 0.02
    stall_seconds: tuple[float, float] = (0.2, 3.0)
    port: int = 0
    drops: int = 0
    stalls: int = 0
    connections: int = 0
    enabled: bool = True
    _rng: random.Random = attrs.field(init=False)
    _listeners: list[trio.SocketListener] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self._listeners = listeners
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            server = await trio.open_tcp_stream(self.target_host, self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    break
                if self.enabled:
                    roll = self._rng.random()
                    if roll < self.drop_rate:
                        self.drops += 1
                        break  # drop both directions, mid-conversation
                    if roll < self.drop_rate + self.stall_rate:
                        self.stalls += 1
                        await trio.sleep(self._rng.uniform(*self.stall_seconds))
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()
