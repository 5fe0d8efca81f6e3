"""What changes when the web process runs under gevent (gunicorn's gevent worker patches the
standard library): there a call that blocks in C (an fsync) would stop every connection of the
process, and a read that waits can be given a deadline. Elsewhere both are plain calls."""
from __future__ import annotations

import contextlib
import sys


def under_gevent() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


def offload(fn, *args):
    """fn(*args) in a native thread while this greenlet waits (under gevent); else just fn(*args)."""
    if not under_gevent():
        return fn(*args)
    import gevent
    return gevent.get_hub().threadpool.apply(fn, args)


def deadline(seconds: float, error: BaseException):
    """Raise `error` in the code inside if it takes longer than `seconds` (under gevent a
    Timeout interrupts a read that waits); a threaded server has no such means (no limit)."""
    if not under_gevent():
        return contextlib.nullcontext()
    import gevent
    return gevent.Timeout(seconds, error)
