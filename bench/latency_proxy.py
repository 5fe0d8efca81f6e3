"""A TCP proxy that adds a fixed delay to each direction (10 ms each way = 20 ms round trip),
like a mail server in another city. Bytes keep their order and are not held back by each
other: each chunk leaves `delay` seconds after it arrived.

    python bench/latency_proxy.py LISTEN_PORT TARGET_PORT [DELAY_SECONDS]
"""
from __future__ import annotations

import asyncio
import sys

HOST = "127.0.0.1"


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def forward():
        while True:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    sender = asyncio.create_task(forward())
    try:
        while chunk := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, chunk))
    except ConnectionError:
        pass
    queue.put_nowait((loop.time() + delay, b""))
    try:
        await sender
    except ConnectionError:
        pass


async def handle(client_r, client_w, target_port: int, delay: float) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(HOST, target_port)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pump(client_r, server_w, delay), pump(server_r, client_w, delay))
    for writer in (client_w, server_w):
        writer.close()


async def main(listen_port: int, target_port: int, delay: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, target_port, delay), HOST, listen_port)
    print(f"proxy 127.0.0.1:{listen_port} -> {target_port}, +{delay * 1000:.0f} ms each way", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, target = int(sys.argv[1]), int(sys.argv[2])
    asyncio.run(main(listen, target, float(sys.argv[3]) if len(sys.argv) > 3 else 0.010))
