"""Unfriendly clients, run in a process of their own against 127.0.0.1 only:

    python -m tests.slow_clients PORT headers|body|idle N SECONDS
        N connections that trickle a request's headers, or announce a 1 MB body and trickle it,
        one byte every 2 s, or say nothing; each one the server closes is opened again. Prints
        {"opened": …, "closed by the server": …} as JSON at the end.
    python -m tests.slow_clients PORT big N MEGABYTES
        N POSTs of MEGABYTES each to /hooks/github at once, with a wrong signature; prints the
        status code each got ("reset" when the server closed before answering).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
from collections import Counter

DRIP = 2.0


def script(mode: str, port: int, i: int) -> tuple[bytes, bytes]:
    """(what is sent at once, what is then trickled a byte at a time)."""
    if mode == "headers":
        return b"", b"POST /hooks/generic HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000
    if mode == "body":  # half of them to a source that checks a signature as the body streams in
        path, extra = (("/hooks/generic", f"Idempotency-Key: slow-{i}") if i % 2 == 0 else
                       ("/hooks/github", "X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=" + "0" * 64))
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"{extra}\r\nContent-Length: 1000000\r\n\r\n").encode()
        return head + b'{"subject": "slow", "text": "', b"x" * 2000
    return b"", b""


async def slow_one(port: int, mode: str, i: int, until: float, stats: Counter) -> None:
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect failed"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["opened"] += 1
        burst, trickle = script(mode, port, i)
        try:
            writer.write(burst)
            for byte in trickle:
                read = asyncio.ensure_future(reader.read(1))
                done, _ = await asyncio.wait([read], timeout=DRIP)
                if done:
                    stats["closed by the server"] += 1
                    break
                read.cancel()
                if time.monotonic() >= until:
                    break
                writer.write(bytes([byte]))
            else:
                if not trickle:  # idle: wait to be closed, or for the end
                    try:
                        await asyncio.wait_for(reader.read(1), max(0.0, until - time.monotonic()))
                        stats["closed by the server"] += 1
                    except asyncio.TimeoutError:
                        pass
        except OSError:
            stats["reset by the server"] += 1
        finally:
            writer.close()


async def big_one(port: int, size: int) -> str:
    body = b'{"zen": "' + b"x" * (size - 12) + b'"}'
    wrong = "sha256=" + hmac.new(b"wrong", body[:1024], hashlib.sha256).hexdigest()
    head = (f"POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-GitHub-Event: push\r\nX-GitHub-Delivery: big\r\nX-Hub-Signature-256: {wrong}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        view = memoryview(body)
        for start in range(0, len(body), 1 << 20):
            writer.write(view[start:start + (1 << 20)])
            await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 120)
        writer.close()
        return status.split()[1].decode() if status else "reset"
    except (OSError, asyncio.IncompleteReadError):
        return "reset"


async def main(port: int, mode: str, n: int, amount: float) -> dict:
    if mode == "big":
        return dict(Counter(await asyncio.gather(*(big_one(port, int(amount * 1024 * 1024)) for _ in range(n)))))
    stats: Counter = Counter()
    until = time.monotonic() + amount
    tasks = []
    for i in range(n):  # paced, as from many clients
        tasks.append(asyncio.ensure_future(slow_one(port, mode, i, until, stats)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    return dict(stats)


if __name__ == "__main__":
    port, mode, n, amount = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(asyncio.run(main(port, mode, n, amount))))
