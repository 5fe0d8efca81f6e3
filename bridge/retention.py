"""How long the outbox keeps history (RETAIN_DAYS, RETAIN_DEAD_DAYS) and the prune that
enforces it: run by the sender on its own every PRUNE_EVERY seconds, or at once by
`flask --app bridge outbox prune`."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Mapping

from bridge.events import UNIT_SECONDS
from bridge.outbox import Outbox, Pruned

DAY = 86400.0
PRUNE_EVERY = 600.0     # seconds between two automatic prunes in one process
PRUNE_PAUSE = 0.05      # seconds between two batches of an automatic prune: intake goes first
AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '1.5d', '0s' → seconds; ValueError for anything else."""
    match = AGE.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not an age like 30d, 12h, 90m or 0s")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class Retention:
    days: float
    dead_days: float
    # source → seconds a pruned row's dedup key is kept (how late a redelivery may come)
    keep_keys: Mapping[str, float] = field(default_factory=dict)

    def prune(self, outbox: Outbox, older_than: float | None = None, dead_older_than: float | None = None,
              pause: float = 0.0, replies=None) -> Pruned:
        """Prune what is older than the settings say (or the ages given, in seconds); finished
        replies (`replies`: their store) go after as long as sent mail."""
        now = time.time()
        done = self.days * DAY if older_than is None else older_than
        dead = self.dead_days * DAY if dead_older_than is None else dead_older_than
        pruned = outbox.prune(now - done, now - dead, self.keep_keys, pause=pause)
        return pruned + Pruned(rows=replies.prune(now - done)) if replies is not None else pruned
