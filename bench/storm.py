"""A storm against a provider's limit: 2 000 generic events in 60 s into a bridge whose SMTP
server takes at most 60 mails in any 60 s and answers "550 Sender frequency limited" past
that (as QQ Mail does; tests/limited_smtpd.py). No SMTP_RATE: the bridge learns the limit from
the refusal. Measured with digests (the default) and without (DIGEST_MAX=1, one mail per
event), each beside the best "one mail per event" can do at 60 a minute.

Without digests the drain takes the better part of an hour, so that run is watched for
--watch seconds and its drain time projected from the pace it kept (said so in the line).

    python -m bench.storm [--events 2000] [--seconds 60] [--limit 60/60] [--watch 150]
"""
from __future__ import annotations

import argparse
import re
import time

import trustme

from bench.common import bridge_env, result, workdir
from bridge import create_app
from tests.limited_smtpd import LimitedServer

MARK = re.compile(r"storm(\d{5})")


def carried(server) -> tuple[set[int], int]:
    """(event numbers in the inbox, digests among the mails)."""
    seen, digests = set(), 0
    for msg in list(server.messages):
        found = {int(n) for n in MARK.findall(msg["Subject"] + msg.get_body(("plain",)).get_content())}
        seen |= found
        digests += len(found) > 1
    return seen, digests


def run(label: str, args, **extra: str) -> dict:
    count, window = (float(x) for x in args.limit.split("/"))
    server = LimitedServer(trustme.CA(), rate=(int(count), window)).start()
    app = create_app({**bridge_env(workdir("storm-" + label), **server.env()), "LOG_LEVEL": "warning", **extra})
    svc = app.extensions["bridge"]
    svc.start_sender()
    client = app.test_client()
    started = time.monotonic()
    try:
        for i in range(args.events):  # spread evenly over --seconds
            time.sleep(max(0.0, started + i * args.seconds / args.events - time.monotonic()))
            client.post("/hooks/generic", json={"subject": f"storm{i:05d}: job {i} failed on runner-{i % 7}",
                                                "text": f"storm{i:05d}\nbuild {i} failed at step {i % 5}\n"
                                                        f"https://ci.example.com/builds/{i}"})
        posted = time.monotonic()
        deadline = posted + args.watch
        while time.monotonic() < deadline and len(carried(server)[0]) < args.events:
            time.sleep(0.5)
        ended = time.monotonic()
        seen, digests = carried(server)
        sample = next((m for m in server.messages if len(MARK.findall(m["Subject"])) == 0
                       and m["Subject"].startswith("[bridge]")), None)
        return {"seen": len(seen), "mails": len(server.messages), "digests": digests,
                "refused": server.refused_rate, "drain": ended - posted, "elapsed": ended - started,
                "dead": svc.outbox.counts().get("dead", 0), "sample": sample}
    finally:
        svc.sender.stop(timeout=10)
        server.stop()
        svc.outbox.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--limit", default="60/60", help="the server's limit: N mails per rolling SECONDS")
    parser.add_argument("--watch", type=float, default=150.0, help="seconds after the last POST to wait")
    parser.add_argument("--show-digest", action="store_true", help="print one digest's text part")
    args = parser.parse_args()
    count, window = (float(x) for x in args.limit.split("/"))
    # minutes after the last POST for one mail per event at the server's pace, never refused
    best = (args.events / count * window - args.seconds) / 60
    for label, extra in (("digests", {}), ("one-each", {"DIGEST_MAX": "1"})):
        r = run(label, args, **extra)
        whole = r["seen"] == args.events
        minutes = (r["drain"] if whole else r["elapsed"] * args.events / max(1, r["seen"]) - args.seconds) / 60
        note = (f"{r['seen']}/{args.events} events in {r['mails']} mails ({r['digests']} digests), "
                f"{r['refused']} refusals, {r['dead']} dead")
        if not whole:
            note += f"; projected from {r['seen']} events in {r['elapsed']:.0f} s"
        result("storm", f"{label}: minutes to drain after the last POST", minutes, "min", baseline=best,
               note=note)
        if args.show_digest and r["sample"] is not None:
            print(f"--- {r['sample']['Subject']}\n{r['sample'].get_body(('plain',)).get_content()}")


if __name__ == "__main__":
    main()
