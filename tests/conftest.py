"""Shared fixtures: app and client (Flask tutorial style), a real SMTP server, a throwaway
PostgreSQL, and the shared corpus read in place."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trustme

from bridge import create_app
from tests.smtpd import SmtpServer

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skip for a missing outside part; under CI=true a missing part is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


@pytest.fixture
def corpus():
    """../shared/corpus, read in place (never copied into the repo)."""
    need(CORPUS.is_dir(), f"the shared corpus is not at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="session")
def ca():
    return trustme.CA()


@pytest.fixture(scope="session")
def cafile(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def smtp_server(ca):
    """An implicit-TLS (465-like) server with AUTH, as QQ Mail runs it."""
    server = SmtpServer(ca, tls="implicit").start()
    yield server
    server.stop()


@pytest.fixture
def base_env(tmp_path):
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}",
        "MAIL_DIR": str(tmp_path / "mail"),
        "MAIL_TO": "team@example.com",
        "MAIL_FROM": "bridge@example.com",
        "RETRY_BASE_SECONDS": "0",
        "SENDER_POLL_SECONDS": "0.05",
    }


@pytest.fixture
def make_app(base_env):
    """create_app with the test environment plus overrides; stops any sender it started."""
    apps = []

    def make(**overrides):
        env = {k: v for k, v in {**base_env, **overrides}.items() if v is not None}
        app = create_app(env)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        svc = app.extensions["bridge"]
        svc.stop(timeout=5)
        svc.outbox.engine.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server (scripts/pg-tmp.sh), or DATABASE_URL_TEST when given."""
    given = os.environ.get("DATABASE_URL_TEST")
    if given:
        yield given
        return
    script = ROOT / "scripts" / "pg-tmp.sh"
    started = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True)
    need(started.returncode == 0, f"no PostgreSQL server could be started: {started.stderr.strip()[-300:]}")
    values = dict(line.split("=", 1) for line in started.stdout.split())
    yield values["DATABASE_URL"]
    subprocess.run(["bash", str(script), "stop", values["PGTMP_DIR"]], capture_output=True)


@pytest.fixture
def pg_url(postgres_url):
    """postgres_url with its tables dropped: each test starts on an empty database."""
    from bridge.outbox import make_engine, metadata

    engine = make_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    metadata.drop_all(engine)
    engine.dispose()
    return postgres_url


@pytest.fixture
def live_bridge(make_app):
    """A bridge on a real HTTP port with its sender running: make(**env) → base URL, app."""
    import threading

    from werkzeug.serving import make_server

    servers = []

    def make(**overrides):
        app = make_app(**overrides)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        app.extensions["bridge"].start_sender()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", app

    yield make
    for server in servers:
        server.shutdown()
