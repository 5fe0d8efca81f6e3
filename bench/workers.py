"""Scale-out: mails/s with two `worker` processes against one, each with one SMTP connection,
to a server that takes 20 ms per message (bench/smtp_server.py `delay 0.02`, implicit TLS +
AUTH), draining the same pre-filled outbox on PostgreSQL (scripts/pg-tmp.sh; SQLite when no
PostgreSQL server can be started here).

    python -m bench.workers [--mails 400]
"""
from __future__ import annotations

import argparse
import contextlib
import subprocess

from bench.common import ROOT, SmtpProcess, bridge_env, rate, result, running, worker, workdir
from bench.delivery import prefill, requeue


@contextlib.contextmanager
def database(tmp):
    """A throwaway PostgreSQL URL, or None."""
    started = subprocess.run(["bash", str(ROOT / "scripts" / "pg-tmp.sh"), "start"], capture_output=True, text=True)
    if started.returncode:
        yield None
        return
    values = dict(line.split("=", 1) for line in started.stdout.split())
    try:
        yield values["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "pg-tmp.sh"), "stop", values["PGTMP_DIR"]])


def drain(server: SmtpProcess, env: dict, workers: int, count: int, tmp) -> float:
    requeue(env)
    server.command("reset")
    with contextlib.ExitStack() as stack:
        for n in range(workers):
            stack.enter_context(running(worker(tmp / f"worker-{workers}-{n}.log", env)))
        stats = server.wait_for(count, timeout=count * 0.05 + 60)
    if stats["count"] < count:
        raise RuntimeError(f"{workers} worker(s) sent {stats['count']} of {count}; see {tmp}")
    return rate(stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=400)
    args = parser.parse_args()
    tmp = workdir("workers")
    server = SmtpProcess(tmp / "smtp.log")
    with running(server), database(tmp) as url:
        server.command("delay 0.02")
        extra = {"DATABASE_URL": url} if url else {}
        env = bridge_env(tmp, SEND_IN_WEB="false", SMTP_CONNECTIONS="1", **server.env(), **extra)
        prefill(env, args.mails)
        one = drain(server, env, 1, args.mails, tmp)
        two = drain(server, env, 2, args.mails, tmp)
    result("workers", "2 worker processes vs 1", two, "mails/s", one,
           note=f"{args.mails} mails, server takes 20 ms per message, "
                f"{'PostgreSQL' if url else 'SQLite (no PostgreSQL here)'}")


if __name__ == "__main__":
    main()
