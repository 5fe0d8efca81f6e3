"""Intake with some of its stages answered from a cache, to see what each costs: rendering (the
one push's mail, rendered once), storing (answered at once, nothing written) and parsing (the
one push's event, with the request's delivery id and dedup key). Used in-process by
`python -m bench.stages` and under gunicorn by `python -m bench.stages --server`
(bench/ablated_wsgi.py)."""
from __future__ import annotations

import dataclasses

from bench.payloads import github_payload_headers

STAGES = ("render", "store", "parse")


def take_out(services, stages) -> None:
    """Answer `stages` (names from STAGES) of `services`' GitHub intake from a cache."""
    from bridge.outbox import Stored
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"no stage {sorted(unknown)}; stages are {', '.join(STAGES)}")
    body, headers = github_payload_headers()
    github = services.hooks["github"]
    config = services.settings.sources["github"]
    event = github.parse(dict(headers, **{"X-GitHub-Delivery": "cached"}), body, config)[0]
    rendered = services.renderer.render(event)
    if "render" in stages:
        services.renderer.render = lambda e: rendered
    if "store" in stages:
        services.outbox.enqueue = lambda mail: Stored(1, "accepted")
    if "parse" in stages:
        class Parsed:
            NAME, MAX_BODY, secret_headers, body_check = github.NAME, github.MAX_BODY, (), github.body_check

            @staticmethod
            def parse(headers, body, config, route=None):
                delivery = headers.get("X-Github-Delivery")
                return [dataclasses.replace(event, delivery_id=delivery,
                                            dedup_key=github.dedup_key("", delivery))]
        services.hooks["github"] = Parsed
