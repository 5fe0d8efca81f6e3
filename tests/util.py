"""Small helpers the tests share."""
from __future__ import annotations

import time


def wait_until(condition, timeout: float, step: float = 0.05):
    """Poll `condition` until it is truthy or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()
