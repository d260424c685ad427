"""A TCP proxy that delays every chunk by a fixed time each way: a slower network for the benchmarks.

``python -m benchmarks.delay_proxy LISTEN_PORT TARGET_PORT DELAY_S`` forwards
127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT; each chunk read is written on
``DELAY_S`` seconds later, in order, so a round trip through it takes
``2 * DELAY_S`` longer.  It prints ``ready`` once it listens.  Run it in a
process of its own, so it does not share the measured process's thread.
"""

from __future__ import annotations

import asyncio
import sys
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            received, data = await queue.get()
            if not data:
                writer.close()
                return
            wait = received + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(forward())
    while True:
        data = await reader.read(65536)
        queue.put_nowait((time.monotonic(), data))
        if not data:
            break
    await task


async def serve(listen: int, target: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(
            _pipe(client_r, server_w, delay),
            _pipe(server_r, client_w, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        sys.stderr.write(
            "usage: python -m benchmarks.delay_proxy LISTEN_PORT TARGET_PORT DELAY_S\n"
        )
        return 2
    try:
        asyncio.run(serve(int(args[0]), int(args[1]), float(args[2])))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
