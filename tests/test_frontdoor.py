"""The front door, with the Procfile's real gunicorn: fresh boots with many workers, slow and
idle clients (flooded from a separate process, on 127.0.0.1 only), big unsigned bodies."""
import time
from concurrent.futures import ThreadPoolExecutor

from tests.procs import Proc

BOOTS, BOOT_WORKERS = 8, 4


def fresh_boot(tmp_path, i):
    d = tmp_path / f"boot{i}"
    d.mkdir()
    proc = Proc("web", {"WEB_CONCURRENCY": str(BOOT_WORKERS), "DATABASE_URL": f"sqlite:///{d / 'fresh.db'}",
                        "MAIL_DIR": str(d / "mail"), "PROMETHEUS_MULTIPROC_DIR": str(d / "metrics")},
                d / "web.log")
    try:
        proc.wait_healthy(30)
        time.sleep(1.5)                              # a worker that died at boot takes the master with it
        alive = proc.popen.poll() is None
    finally:
        proc.kill()
    return alive, proc.log.read_text()


def test_many_workers_boot_on_a_fresh_database_without_a_race(tmp_path):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: fresh_boot(tmp_path, i), range(BOOTS)))
    for alive, log in results:
        assert alive and "database is locked" not in log and "Worker failed to boot" not in log, log[-2000:]
