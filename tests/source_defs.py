"""Helpers for the tests of sources defined as YAML: secrets, and each product's signing."""
from __future__ import annotations

import hashlib
import hmac
import uuid

SECRETS = {"GITLAB_WEBHOOK_TOKEN": "gl-token", "GITEA_WEBHOOK_SECRET": "gitea-secret",
           "GRAFANA_TOKEN": "grafana-token", "SENTRY_CLIENT_SECRET": "sentry-secret",
           "JIRA_WEBHOOK_SECRET": "jira-secret"}
ENDPOINT = {"gogs": "gitea"}      # Gogs delivers to the gitea source


def hex_hmac(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    return hmac.new(secret.encode(), body, algorithm).hexdigest()


def signed_headers(product: str, body: bytes, base: dict | None = None) -> dict[str, str]:
    """The headers a real delivery of `product` carries: base (index.json) plus ids and signature."""
    h = {"Content-Type": "application/json", **(base or {})}
    if product == "gitlab":
        h.update({"X-Gitlab-Token": SECRETS["GITLAB_WEBHOOK_TOKEN"], "Idempotency-Key": str(uuid.uuid4())})
    elif product == "gitea":
        sig = hex_hmac(SECRETS["GITEA_WEBHOOK_SECRET"], body)
        h.update({"X-Gitea-Signature": sig, "X-Gitea-Delivery": str(uuid.uuid4()),
                  "X-Hub-Signature-256": "sha256=" + sig})
    elif product == "gogs":
        h.update({"X-Gogs-Signature": hex_hmac(SECRETS["GITEA_WEBHOOK_SECRET"], body),
                  "X-Gogs-Delivery": str(uuid.uuid4())})
    elif product == "grafana":
        h["Authorization"] = "Bearer " + SECRETS["GRAFANA_TOKEN"]
    elif product == "sentry":
        h.update({"Sentry-Hook-Signature": hex_hmac(SECRETS["SENTRY_CLIENT_SECRET"], body),
                  "Request-ID": uuid.uuid4().hex})
    elif product == "jira":
        h.update({"X-Hub-Signature": "sha256=" + hex_hmac(SECRETS["JIRA_WEBHOOK_SECRET"], body),
                  "X-Atlassian-Webhook-Identifier": str(uuid.uuid4().int)[:18]})
    return h
