"""gunicorn settings for the Procfile's web process (Heroku-style: PORT, WEB_CONCURRENCY)."""
import contextlib
import glob
import os
import resource

# Prometheus multiprocess mode: every worker (and the Procfile's `worker` process, which the
# Procfile points at the same folder) writes its counters here and /metrics adds them up.
# Set before any worker imports prometheus_client, which reads it once at import.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.abspath(os.path.join("var", "metrics")))

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gevent: a connection is a greenlet (a few KB), not a thread, so clients that send slowly or
# not at all wait without taking anything another client needs; the app's threads (senders,
# group commit) become greenlets too, and the database drivers cooperate (psycopg 3 notices the
# monkey-patching; SQLite calls are short and its lock waits sleep). GUNICORN_WORKER_CLASS=gthread
# brings back the threaded worker (bench/frontdoor.py compares the two).
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
worker_connections = int(os.environ.get("GUNICORN_CONNECTIONS", "5000"))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))  # gthread only
# Heroku sends SIGTERM and waits 30 s; the sender needs part of that to finish a message.
graceful_timeout = 25
timeout = 30
# How long a client may take to send a request's line and headers, and how long a connection
# may sit idle between requests (the gevent worker applies it to both): a slow or silent client
# is closed after that. Longer than gunicorn's 2 s default: a client that pauses ~2 s and
# reuses its pooled connection would otherwise race the server's close and see "connection
# aborted". A body has its own limit (bridge/bodies.py, BODY_SECONDS).
keepalive = 10
accesslog = None
forwarded_allow_ips = "*"


def worker_exit(server, worker):
    # Finish the message in hand and give back the rest of the claim, within the grace period.
    import sys
    wsgi = sys.modules.get("bridge.wsgi")
    if wsgi is not None:
        wsgi.services.stop(timeout=graceful_timeout - 5)


def post_worker_init(worker):
    # Under gevent one thread serves every connection and SQLite's COMMITs run in native
    # threads (bridge/cooperative.py): a finished COMMIT waits for the GIL up to the switch
    # interval (5 ms by default), holding its intake slot; 0.5 ms took the flood test's stored
    # requests from ~1000 to ~1600 and /healthz p95 from ~72 to ~50 ms.
    if worker_class == "gevent":
        import sys
        sys.setswitchinterval(0.0005)


def on_starting(server):
    # Each open connection is a file descriptor: allow as many as the hard limit lets us.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = worker_connections * workers + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
    # Counter files of processes that are gone are an earlier run's: start this one from zero.
    # Files of live processes (a `worker` started first) stay.
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*_*.db")):
        pid = path.rsplit("_", 1)[1][:-len(".db")]
        if pid.isdigit() and not _alive(int(pid)):
            # another gunicorn on the same folder may be sweeping it at the same moment
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
