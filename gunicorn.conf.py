"""gunicorn settings for the Procfile's web process (Heroku-style: PORT, WEB_CONCURRENCY)."""
import glob
import os

# Prometheus multiprocess mode: every worker (and the Procfile's `worker` process, which the
# Procfile points at the same folder) writes its counters here and /metrics adds them up.
# Set before any worker imports prometheus_client, which reads it once at import.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.abspath(os.path.join("var", "metrics")))

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
# Threads mostly wait on the database; more of them keep /healthz answered under load.
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# Heroku sends SIGTERM and waits 30 s; the sender needs part of that to finish a message.
graceful_timeout = 25
timeout = 30
# Longer than gunicorn's 2 s default: a client that pauses ~2 s and reuses its pooled connection
# would otherwise race the server's close and see "connection aborted" instead of an answer.
keepalive = 10
accesslog = None
forwarded_allow_ips = "*"


def worker_exit(server, worker):
    # Finish the message in hand and give back the rest of the claim, within the grace period.
    import sys
    wsgi = sys.modules.get("bridge.wsgi")
    if wsgi is not None:
        wsgi.services.stop(timeout=graceful_timeout - 5)


def on_starting(server):
    # Counter files of processes that are gone are an earlier run's: start this one from zero.
    # Files of live processes (a `worker` started first) stay.
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*_*.db")):
        pid = path.rsplit("_", 1)[1][:-len(".db")]
        if pid.isdigit() and not _alive(int(pid)):
            os.remove(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
