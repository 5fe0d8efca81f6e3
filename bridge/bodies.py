"""Request bodies as they arrive: checked while they stream in, spooled to disk when big, and
the bytes one process holds in memory for them capped (INTAKE_MAX_BODY_MEMORY).

The interface a source offers (optional; without it the web layer reads the whole body and calls
`verify(headers, body, config)` as before):

    body_check(headers, config) -> None | BodyCheck

None: verify on the whole body. A BodyCheck gets every chunk as it arrives (`update`) and
raises `Rejected(401, reason)` from `finish()` when the body is not what the credentials sign;
`body_check` itself raises Rejected(401) at once when the credentials are missing, before a
byte of the body is read. `HmacCheck` is the one such check every HMAC source uses.
"""
from __future__ import annotations

import base64
import contextlib
import hmac
import tempfile
import threading
import time
from typing import BinaryIO, Iterator, Mapping, Protocol

from bridge.cooperative import deadline
from bridge.events import Rejected, header

CHUNK = 64 * 1024
SPOOL_ABOVE = 1024 * 1024       # bodies larger than this go to a temporary file, not memory
BODY_SECONDS = 60.0             # how long a client may take to send a body
MATERIALISE_WAIT = 30.0         # how long a verified big body may wait for memory to parse in


class BodyCheck(Protocol):
    def update(self, chunk: bytes) -> None: ...

    def finish(self) -> None: ...


class HmacCheck:
    """An HMAC of the body computed as it streams in; `finish` compares it with the value the
    sender put in a header, in constant time. `before`/`after` are signed around the body, for
    schemes that sign more than the body (a timestamp, say)."""

    def __init__(self, secret: str, given: str, algorithm: str = "sha256", prefix: str = "",
                 encoding: str = "hex", before: bytes = b"", after: bytes = b"",
                 mismatch: str = "signature does not match the body"):
        self._mac = hmac.new(secret.encode("utf-8"), before, algorithm)
        self._given, self._prefix, self._encoding = given.strip(), prefix, encoding
        self._after, self._mismatch = after, mismatch

    def update(self, chunk: bytes) -> None:
        self._mac.update(chunk)

    def expected(self) -> str:
        mac = self._mac.copy()
        mac.update(self._after)
        digest = mac.digest()
        return self._prefix + (digest.hex() if self._encoding == "hex" else base64.b64encode(digest).decode())

    def finish(self) -> None:
        given = self._given.lower() if self._encoding == "hex" else self._given
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.expected().encode("ascii")):
            raise Rejected(401, self._mismatch)


def hmac_check(headers: Mapping[str, str], name: str, secret: str, secret_name: str, **options) -> HmacCheck:
    """The HmacCheck for the signature in header `name`; 401 at once when it is missing."""
    given = header(headers, name).strip()
    if not given:
        raise Rejected(401, f"missing {name} ({secret_name} is set)")
    return HmacCheck(secret, given, mismatch=f"signature does not match the body (check {secret_name})",
                     **options)


class MemoryBudget:
    """The bytes of request bodies one process holds in memory at once, capped: beyond the cap
    a request is answered 429 rather than the process growing until it is killed."""

    def __init__(self, cap: int):
        self.cap, self.held = cap, 0
        self._freed = threading.Condition()

    def take(self, n: int, wait: float = 0.0) -> None:
        if n > self.cap:  # no wait makes room for it: a retry would be refused again
            raise Rejected(413, f"body of {n} bytes is larger than INTAKE_MAX_BODY_MEMORY ({self.cap} bytes)")
        deadline = time.monotonic() + wait
        with self._freed:
            while self.held + n > self.cap:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Rejected(429, "too many request bodies in memory at once; retry shortly")
                self._freed.wait(left)
            self.held += n

    def give(self, n: int) -> None:
        with self._freed:
            self.held -= n
            self._freed.notify_all()


@contextlib.contextmanager
def received(stream: BinaryIO, length: int | None, limit: int, check: BodyCheck | None,
             budget: MemoryBudget) -> Iterator[bytes]:
    """Read the body from `stream`, feeding `check` as it comes, then hand it over as bytes.
    Small bodies are held in memory (counted in `budget` as they grow); bigger ones are spooled
    to a temporary file and read back only once `check` passed, when the budget has room. A body
    over `limit` is 413, one that takes longer than BODY_SECONDS to arrive is 408."""
    too_big(length, limit)
    held = 0
    # A body announced as big goes to disk from its first byte; one of unknown length from when
    # it grows past SPOOL_ABOVE.
    in_memory = length is None or length <= SPOOL_ABOVE
    try:
        with (tempfile.SpooledTemporaryFile(max_size=SPOOL_ABOVE) if in_memory else tempfile.TemporaryFile()) as spool:
            size = 0
            with deadline(BODY_SECONDS, Rejected(408, f"the body took longer than {BODY_SECONDS:.0f} s to arrive")):
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise Rejected(413, f"body is larger than {limit} bytes")
                    if check is not None:
                        check.update(chunk)
                    if size <= SPOOL_ABOVE and in_memory:
                        budget.take(len(chunk))
                        held += len(chunk)
                    elif held:  # SpooledTemporaryFile rolls over to disk: the memory is free
                        budget.give(held)
                        held = 0
                    spool.write(chunk)
            if check is not None:
                check.finish()
            if size > SPOOL_ABOVE:  # on disk: room for it in memory first
                budget.take(size, wait=MATERIALISE_WAIT)
                held += size
            spool.seek(0)
            body = spool.read()
        yield body
    finally:
        if held:
            budget.give(held)


def check_whole(check: BodyCheck | None, body: bytes) -> None:
    """A streaming check run over a body already in hand (tests, the CLI, a `signed` scheme)."""
    if check is not None:
        check.update(body)
        check.finish()


def too_big(length: int | None, limit: int) -> None:
    """413 on the announced length alone, before a byte of the body is read."""
    if length is not None and length > limit:
        raise Rejected(413, f"body is larger than {limit} bytes")
