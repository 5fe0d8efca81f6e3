"""Environment (and `.env`) → one frozen Settings object, validated once at start-up.

Every bad value raises SettingsError with one line that names the variable, so a typo in a
Heroku config var stops the dyno with a readable reason instead of a traceback later.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.events import parse_duration
from bridge.mail.limits import Window, parse_budget, provider

SECURITY_CHOICES = ("ssl", "starttls", "none")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def route_key(route: str) -> str:
    """`Team-A` → `TEAM_A`: the suffix of its `MAIL_TO_<ROUTE>` variable."""
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in route.upper())


SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


class EnvReader:
    """Typed reads of one mapping; each parser names the variable in its error."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def str(self, name: str, default: str = "") -> str:
        return self.env.get(name, default).strip()

    def int(self, name: str, default: int, minimum: int = 0) -> int:
        raw = self.str(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from None
        if value < minimum:
            raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
        return value

    def float(self, name: str, default: float, minimum: float = 0.0) -> float:
        raw = self.str(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if value < minimum:
            raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
        return value

    def size(self, name: str, default: int, minimum: int = 0) -> int:
        """Bytes: a whole number, optionally with KB, MB or GB (powers of 1024)."""
        raw = self.str(name).upper().replace(" ", "")
        if not raw:
            return default
        unit = next((u for u in ("KB", "MB", "GB", "K", "M", "G", "B") if raw.endswith(u)), "")
        try:
            value = int(raw[:len(raw) - len(unit)]) * SIZE_UNITS[unit[:1]]
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a size (bytes, or e.g. 64MB)") from None
        if value < minimum:
            raise SettingsError(f"{name}={raw!r} must be at least {minimum} bytes")
        return value

    def bool(self, name: str, default: bool) -> bool:
        raw = self.str(name).lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")

    def list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        raw = self.env.get(name)
        if raw is None or not raw.strip():
            return default
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        raw = self.str(name).lower() or default
        if raw not in choices:
            raise SettingsError(f"{name}={raw!r} must be one of {', '.join(choices)}")
        return raw

    def zone(self, name: str, default: str = "UTC") -> ZoneInfo:
        raw = self.str(name, default) or default
        try:
            return ZoneInfo(raw)
        except (ZoneInfoNotFoundError, ValueError):
            raise SettingsError(f"{name}={raw!r} is not a time zone (e.g. Asia/Shanghai)") from None

    def pairs(self, name: str) -> dict[str, str]:
        """`a=b,c=d` → {'a': 'b', 'c': 'd'}."""
        out = {}
        for item in self.list(name):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise SettingsError(f"{name}: {item!r} is not KEY=VALUE")
            out[key.strip()] = value.strip()
        return out


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: str
    user: str
    password: str = field(repr=False)
    timeout: float
    cert_file: str
    connections: int
    budget: tuple[Window, ...] = ()                   # SMTP_RATE, or the host's preset
    cooldowns: tuple[float, ...] = (60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)

    @property
    def account(self) -> str:
        """The key pause state and budget share in the database, across processes."""
        return f"{self.user}@{self.host}:{self.port}".lower()


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int
    security: str                        # ssl, starttls or none
    user: str
    password: str = field(repr=False)
    mailbox: str
    cert_file: str
    poll_seconds: float
    timeout: float


@dataclass(frozen=True)
class ReplySettings:
    """The way back (IMAP_URL set): where replies arrive, who may send them, what they reach."""

    imap: ImapSettings
    reply_to: str
    allowed_senders: tuple[str, ...]     # globs on the lower-cased address
    max_silence_seconds: int
    github_token: str = field(repr=False)
    github_api_url: str
    wechat_api_url: str
    wechat_appid: str
    wechat_secret: str = field(repr=False)
    alertmanager_url: str
    api_timeout: float


@dataclass(frozen=True)
class Settings:
    smtp: SmtpSettings | None            # None: deliver into the Maildir
    mail_from: str
    mail_to: tuple[str, ...]
    routes: Mapping[str, tuple[str, ...]]
    mail_dir: Path
    database_url: str = field(repr=False)
    send_in_web: bool
    batch_size: int
    intake_max_inflight: int
    intake_max_body_memory: int          # bytes of request bodies one process holds in memory
    retain_days: float                   # sent, ignored and digested rows are kept this long
    retain_dead_days: float              # dead rows are kept this long
    lease_seconds: float
    poll_seconds: float
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    digest_after: float
    digest_max: int
    timezone: ZoneInfo
    templates_dir: Path | None
    log_level: str
    admin_token: str = field(repr=False)
    secret_key: str = field(repr=False)
    # One frozen config object per source, built by that source's `load_config`.
    sources: Mapping[str, object] = field(default_factory=dict, repr=False)
    replies: ReplySettings | None = None   # None: IMAP_URL unset, replies off

    def recipients(self, route: str | None) -> tuple[str, ...] | None:
        """Recipients for a route (None: the default list); None when the route is unknown."""
        if route is None:
            return self.mail_to
        return self.routes.get(route_key(route))

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")


def _smtp_from_url(url: str) -> tuple[str, int, str, str, str]:
    parts = urllib.parse.urlsplit(url)
    schemes = {"smtps": "ssl", "smtp+ssl": "ssl", "smtp+starttls": "starttls", "smtp": "none"}
    if parts.scheme not in schemes or not parts.hostname:
        raise SettingsError("SMTP_URL must look like smtps://user:password@host:465 "
                            "(schemes: smtps, smtp+starttls, smtp)")
    security = schemes[parts.scheme]
    try:
        port = parts.port or {"ssl": 465, "starttls": 587, "none": 25}[security]
    except ValueError:
        raise SettingsError("SMTP_URL has a port that is not a number") from None
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    return parts.hostname, port, security, user, password


def _smtp(env: EnvReader) -> SmtpSettings | None:
    if env.str("SMTP_URL"):
        host, port, security, user, password = _smtp_from_url(env.str("SMTP_URL"))
    elif env.str("SMTP_HOST"):
        host = env.str("SMTP_HOST")
        port = env.int("SMTP_PORT", 465, minimum=1)
        default_security = {465: "ssl", 587: "starttls"}.get(port, "none")
        security = env.choice("SMTP_SECURITY", SECURITY_CHOICES, default_security)
        user, password = env.str("SMTP_USER"), env.env.get("SMTP_PASSWORD", "")
    else:
        return None
    if port > 65535:
        raise SettingsError(f"SMTP_PORT={port} is not a TCP port")
    if user and not password:
        raise SettingsError("SMTP_PASSWORD is empty while SMTP_USER is set "
                            "(QQ Mail / 163: use the authorization code, 授权码)")
    cert_file = env.str("SSL_CERT_FILE")
    if cert_file and not Path(cert_file).is_file():
        raise SettingsError(f"SSL_CERT_FILE={cert_file!r} is not a readable file")
    return SmtpSettings(host=host, port=port, security=security, user=user, password=password,
                        timeout=env.float("SMTP_TIMEOUT", 30.0, minimum=0.1),
                        cert_file=cert_file,
                        connections=env.int("SMTP_CONNECTIONS", 2, minimum=1),
                        budget=_budget(env, host), cooldowns=_cooldowns(env))


def _budget(env: EnvReader, host: str) -> tuple[Window, ...]:
    raw = env.str("SMTP_RATE")
    if raw.lower() in ("none", "off"):
        return ()
    if not raw:
        preset = provider(host)
        return preset.budget if preset else ()
    try:
        return parse_budget(raw)
    except ValueError as exc:
        raise SettingsError(f"SMTP_RATE: {exc}") from None


def _cooldowns(env: EnvReader) -> tuple[float, ...]:
    """SMTP_COOLDOWN: the pauses after the 1st, 2nd, ... limit answer in a row, in seconds."""
    raw = env.list("SMTP_COOLDOWN", ("60", "120", "300", "900", "1800", "3600"))
    try:
        steps = tuple(float(step) for step in raw)
    except ValueError:
        raise SettingsError(f"SMTP_COOLDOWN={','.join(raw)!r} is not a list of seconds (e.g. 60,120,300)") from None
    if any(step <= 0 for step in steps):
        raise SettingsError("SMTP_COOLDOWN: every step must be more than 0 seconds")
    return steps


IMAP_SCHEMES = {"imaps": "ssl", "imap+ssl": "ssl", "imap+starttls": "starttls", "imap": "none"}


def _imap(env: EnvReader, url: str) -> ImapSettings:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in IMAP_SCHEMES or not parts.hostname or not parts.username:
        raise SettingsError("IMAP_URL must look like imaps://user:password@imap.qq.com:993/INBOX "
                            "(schemes: imaps, imap+starttls, imap; percent-encode @ in the user)")
    security = IMAP_SCHEMES[parts.scheme]
    try:
        port = parts.port or (993 if security == "ssl" else 143)
    except ValueError:
        raise SettingsError("IMAP_URL has a port that is not a number") from None
    cert_file = env.str("SSL_CERT_FILE")
    if cert_file and not Path(cert_file).is_file():
        raise SettingsError(f"SSL_CERT_FILE={cert_file!r} is not a readable file")
    return ImapSettings(host=parts.hostname, port=port, security=security,
                        user=urllib.parse.unquote(parts.username),
                        password=urllib.parse.unquote(parts.password or ""),
                        mailbox=urllib.parse.unquote(parts.path.lstrip("/")) or "INBOX",
                        cert_file=cert_file,
                        poll_seconds=env.float("IMAP_POLL_SECONDS", 30.0, minimum=0.1),
                        timeout=env.float("IMAP_TIMEOUT", 30.0, minimum=0.1))


def _duration(env: EnvReader, name: str, default: str) -> int:
    raw = env.str(name, default) or default
    seconds = parse_duration(raw)
    if not seconds:
        raise SettingsError(f"{name}={raw!r} must look like 7d, 12h or 90m")
    return seconds


def _api_url(env: EnvReader, name: str, default: str) -> str:
    url = (env.str(name) or default).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SettingsError(f"{name} must start with http:// or https://")
    return url


def _replies(env: EnvReader, mail_from: str, mail_to: tuple[str, ...],
             routes: Mapping[str, tuple[str, ...]]) -> ReplySettings | None:
    url = env.str("IMAP_URL")
    if not url:
        return None
    recipients = [addr for group in (mail_to, *routes.values()) for addr in group]
    allowed = env.list("REPLY_ALLOWED_SENDERS") or tuple(dict.fromkeys(recipients))
    return ReplySettings(
        imap=_imap(env, url),
        reply_to=env.str("REPLY_TO") or mail_from,
        allowed_senders=tuple(glob.lower() for glob in allowed),
        max_silence_seconds=_duration(env, "REPLY_MAX_SILENCE", "7d"),
        github_token=env.str("GITHUB_TOKEN"),
        github_api_url=_api_url(env, "GITHUB_API_URL", "https://api.github.com"),
        wechat_api_url=_api_url(env, "WECHAT_API_URL", "https://api.weixin.qq.com"),
        wechat_appid=env.str("WECHAT_APPID"), wechat_secret=env.str("WECHAT_APPSECRET"),
        alertmanager_url=env.str("ALERTMANAGER_URL").rstrip("/"),
        api_timeout=env.float("REPLY_API_TIMEOUT", 15.0, minimum=0.1),
    )


def _session_key(admin_token: str) -> str:
    """Without SECRET_KEY: a key derived from ADMIN_TOKEN, so every gunicorn worker signs the
    deliveries page's session cookie alike (and a new token logs everyone out)."""
    if not admin_token:
        return os.urandom(32).hex()
    return hmac.new(admin_token.encode("utf-8"), b"bridge session cookie", hashlib.sha256).hexdigest()


def _database_url(env: EnvReader, root: Path) -> str:
    url = env.str("DATABASE_URL")
    if not url:
        return f"sqlite:///{root / 'var' / 'bridge.db'}"
    # Heroku still hands out postgres://, which SQLAlchemy 2 no longer accepts.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith(("sqlite:", "postgresql+psycopg:")):
        return url
    raise SettingsError("DATABASE_URL must be a postgres:// or sqlite:/// URL")


def _routes(env: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    reader = EnvReader(env)
    return {route_key(name[len("MAIL_TO_"):]): reader.list(name)
            for name in env if name.startswith("MAIL_TO_") and reader.list(name)}


def environment(environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """The mapping settings are read from: `environ` when given (tests), else os.environ after
    loading `.env`."""
    if environ is not None:
        return environ
    from dotenv import load_dotenv
    load_dotenv(Path.cwd() / ".env", override=False)
    return os.environ


def load_settings(environ: Mapping[str, str] | None = None, root: Path | None = None,
                  source_loaders: Mapping[str, Callable[[EnvReader], object]] | None = None) -> Settings:
    """Build Settings from a mapping (default: os.environ after loading `.env`).

    `source_loaders` (name → the source's `load_config`) is handed in by the app factory, so
    settings never imports the sources that import it.
    """
    environ = environment(environ)
    root = root or Path.cwd()
    env = EnvReader(environ)
    smtp = _smtp(env)
    mail_from = env.str("MAIL_FROM") or (smtp.user if smtp and "@" in smtp.user else "") \
        or f"bridge@{socket.gethostname()}"
    templates_dir = env.str("TEMPLATES_DIR")
    if templates_dir and not Path(templates_dir).is_dir():
        raise SettingsError(f"TEMPLATES_DIR={templates_dir!r} is not a folder")
    admin_token = env.str("ADMIN_TOKEN")
    mail_to = env.list("MAIL_TO") or (mail_from,)
    routes = _routes(environ)
    return Settings(
        smtp=smtp,
        mail_from=mail_from,
        mail_to=mail_to,
        routes=routes,
        mail_dir=(root / env.str("MAIL_DIR", "var/mail")).resolve(),
        database_url=_database_url(env, root),
        send_in_web=env.bool("SEND_IN_WEB", True),
        batch_size=env.int("SENDER_BATCH", 20, minimum=1),
        intake_max_inflight=env.int("INTAKE_MAX_INFLIGHT", 8, minimum=1),
        intake_max_body_memory=env.size("INTAKE_MAX_BODY_MEMORY", 64 * 1024 * 1024, minimum=1024 * 1024),
        retain_days=env.float("RETAIN_DAYS", 30.0, minimum=0.0),
        retain_dead_days=env.float("RETAIN_DEAD_DAYS", 90.0, minimum=0.0),
        lease_seconds=env.float("SENDER_LEASE_SECONDS", 60.0, minimum=1.0),
        poll_seconds=env.float("SENDER_POLL_SECONDS", 1.0, minimum=0.01),
        max_attempts=env.int("MAX_ATTEMPTS", 15, minimum=1),
        retry_base_seconds=env.float("RETRY_BASE_SECONDS", 10.0, minimum=0.0),
        retry_max_seconds=env.float("RETRY_MAX_SECONDS", 1800.0, minimum=0.0),
        digest_after=env.float("DIGEST_AFTER", 60.0, minimum=0.0),
        digest_max=env.int("DIGEST_MAX", 50, minimum=1),
        timezone=env.zone("BRIDGE_TIMEZONE"),
        templates_dir=Path(templates_dir) if templates_dir else None,
        log_level=env.choice("LOG_LEVEL", ("debug", "info", "warning", "error"), "info"),
        admin_token=admin_token,
        secret_key=env.str("SECRET_KEY") or _session_key(admin_token),
        sources={name: load(env) for name, load in (source_loaders or {}).items()},
        replies=_replies(env, mail_from, mail_to, routes),
    )
