"""A light HTTP/1.1 load generator (asyncio, keep-alive, raw sockets), so the client is not
the bottleneck on a 2-core machine: `flood(port, path, bodies, connections, seconds)`."""
from __future__ import annotations

import asyncio
import time
from collections import Counter


async def _one_connection(port, requests_iter, codes: Counter, deadline: float, latencies: list):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for head, body in requests_iter:
            if time.monotonic() > deadline:
                return
            started = time.monotonic()
            writer.write(head + body)
            await writer.drain()
            status = await reader.readline()
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and "close" in value.lower():
                    close = True
            await reader.readexactly(length)
            codes[int(status.split()[1])] += 1
            latencies.append(time.monotonic() - started)
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        codes["reset"] += 1
    finally:
        writer.close()


def flood(port: int, path: str, bodies, connections: int, seconds: float,
          headers: dict | None = None) -> tuple[Counter, list[float]]:
    """POST each body of `bodies` (an iterator shared by all connections) until it or the
    time runs out; returns status counts and latencies."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())

    def requests_iter():
        for body in bodies:
            head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n{extra}\r\n").encode()
            yield head, body

    shared = requests_iter()
    codes: Counter = Counter()
    latencies: list[float] = []

    async def main():
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_one_connection(port, shared, codes, deadline, latencies)
                               for _ in range(connections)))

    asyncio.run(main())
    return codes, latencies


def main() -> None:
    """`python -m tests.flood PORT PATH COUNT CONNECTIONS SECONDS`: run in a process of its
    own so the load generator does not share a GIL with whoever measures the server."""
    import json
    import sys

    port, path, count, connections, seconds = sys.argv[1:6]
    bodies = (json.dumps({"subject": f"flood {i}", "text": "t"}).encode() for i in range(int(count)))
    codes, latencies = flood(int(port), path, bodies, int(connections), float(seconds))
    print(json.dumps({"codes": {str(k): v for k, v in codes.items()}, "requests": len(latencies)}))


if __name__ == "__main__":
    main()
