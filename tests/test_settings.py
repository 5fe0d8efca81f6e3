"""Settings: one frozen object, one clear line per bad value, secrets never shown."""
import subprocess
import sys

import pytest

from bridge.settings import SettingsError, load_settings


@pytest.mark.parametrize("env, names", [
    ({"SMTP_HOST": "smtp.qq.com", "SMTP_PORT": "abc"}, "SMTP_PORT"),
    ({"SMTP_HOST": "smtp.qq.com", "SMTP_SECURITY": "tls1"}, "SMTP_SECURITY"),
    ({"SMTP_HOST": "smtp.qq.com", "SMTP_PORT": "70000"}, "SMTP_PORT"),
    ({"SMTP_HOST": "smtp.qq.com", "SMTP_USER": "me@qq.com"}, "SMTP_PASSWORD"),
    ({"SMTP_URL": "http://example.com"}, "SMTP_URL"),
    ({"SEND_IN_WEB": "maybe"}, "SEND_IN_WEB"),
    ({"BRIDGE_TIMEZONE": "Mars/Olympus"}, "BRIDGE_TIMEZONE"),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
])
def test_bad_value_names_the_variable(env, names, tmp_path):
    with pytest.raises(SettingsError) as err:
        load_settings(env, root=tmp_path)
    assert names in str(err.value) and "\n" not in str(err.value)


def test_defaults_run_without_configuration(tmp_path):
    s = load_settings({}, root=tmp_path)
    assert s.smtp is None
    assert s.mail_dir == tmp_path / "var" / "mail"
    assert s.database_url == f"sqlite:///{tmp_path / 'var' / 'bridge.db'}"
    assert s.mail_from.startswith("bridge@") and s.mail_to == (s.mail_from,)
    assert s.send_in_web is True


def test_qq_mail_settings(tmp_path):
    s = load_settings({"SMTP_HOST": "smtp.qq.com", "SMTP_PORT": "465", "SMTP_USER": "12345@qq.com",
                       "SMTP_PASSWORD": "abcdefghijklmnop"}, root=tmp_path)
    assert (s.smtp.host, s.smtp.port, s.smtp.security) == ("smtp.qq.com", 465, "ssl")
    assert s.mail_from == "12345@qq.com"
    assert "abcdefghijklmnop" not in repr(s)


@pytest.mark.parametrize("url, expected", [
    ("smtps://me%40163.com:p%40ss@smtp.163.com", ("smtp.163.com", 465, "ssl", "me@163.com", "p@ss")),
    ("smtp+starttls://u:p@smtp.gmail.com:587", ("smtp.gmail.com", 587, "starttls", "u", "p")),
    ("smtp://relay.local", ("relay.local", 25, "none", "", "")),
])
def test_smtp_url(url, expected, tmp_path):
    smtp = load_settings({"SMTP_URL": url}, root=tmp_path).smtp
    assert (smtp.host, smtp.port, smtp.security, smtp.user, smtp.password) == expected


def test_port_picks_security(tmp_path):
    assert load_settings({"SMTP_HOST": "h", "SMTP_PORT": "587"}, root=tmp_path).smtp.security == "starttls"
    assert load_settings({"SMTP_HOST": "h", "SMTP_PORT": "25"}, root=tmp_path).smtp.security == "none"


def test_heroku_postgres_url_is_accepted(tmp_path):
    s = load_settings({"DATABASE_URL": "postgres://u:p@db.example.com:5432/d"}, root=tmp_path)
    assert s.database_url == "postgresql+psycopg://u:p@db.example.com:5432/d" and s.uses_postgres
    assert "u:p@" not in repr(s)


def test_routes_are_case_insensitive(tmp_path):
    s = load_settings({"MAIL_TO_TEAM_A": "a@x.org, b@x.org"}, root=tmp_path)
    assert s.recipients("team-a") == ("a@x.org", "b@x.org")
    assert s.recipients("Team-A") == ("a@x.org", "b@x.org")
    assert s.recipients("team-b") is None


def test_dotenv_is_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("MAIL_TO=from-dotenv@example.com\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAIL_TO", raising=False)
    assert load_settings().mail_to == ("from-dotenv@example.com",)


def test_start_up_stops_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "SMTP_HOST": "smtp.qq.com", "SMTP_PORT": "abc", "SMTP_PASSWORD": "hunter2"}
    run = subprocess.run([sys.executable, "-c", "import bridge; bridge.create_app()"], cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parent.parent)},
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip() == "bridge: configuration error: SMTP_PORT='abc' is not a whole number"
    assert "hunter2" not in run.stderr


def test_route_variables_of_any_case(tmp_path):
    s = load_settings({"MAIL_TO_team_b": "b@x.org"}, root=tmp_path)
    assert s.recipients("Team-B") == ("b@x.org",)
